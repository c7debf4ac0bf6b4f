"""A participant's side of secure aggregation: key exchange and share distribution through the aggregator,
then a masked fixed-point update; the protocol is :mod:`fedattn.aggregator.secure`'s docstring.

The aggregator relays public keys and sealed share bundles it cannot open, and only ever receives the
masked vector; the local model leaves this process only inside it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedattn import wire
from fedattn.aggregator.client import AggregatorClient, Timeout
from fedattn.learning import secagg

log = logging.getLogger(__name__)


def exchange_keys(
    channel: AggregatorClient, *, round: int, config: Mapping[str, Any], timeout_seconds: float
) -> tuple[secagg.SecAggClient | None, wire.Message | None]:
    """Run the key and share exchange of ``round``; returns the ready client, or None and the message that
    interrupted it (a new round's model, ``done``, an error) for the caller to handle."""
    keys = secagg.ClientKeys()
    channel.send("secagg_keys", round=round, meta={"public_key": keys.public})
    client: secagg.SecAggClient | None = None
    waiting: set[str] = set()
    deadline = time.monotonic() + timeout_seconds
    while client is None or waiting:
        try:
            msg = channel.recv(timeout_seconds=max(0.1, deadline - time.monotonic()))
        except Timeout:
            return None, None
        if msg.kind in ("ack", "welcome") or (msg.kind in ("error", "secagg_unmask") and msg.round != round):
            # NB: answers about an earlier round (e.g. our late shares for a round closed without us)
            log.info("ignored %s of round %d during the key exchange", msg.kind, msg.round)
            continue
        if msg.round != round or msg.kind not in ("secagg_keys", "secagg_shares"):
            return None, msg
        if msg.kind == "secagg_keys":
            public = {str(n): bytes(k) for n, k in msg.meta["keys"].items()}
            client = secagg.SecAggClient(
                name=channel.name, session=channel.session, round=round, public_keys=public, keys=keys,
                threshold=int(config["threshold"]),
            )
            waiting = set(public) - {channel.name}
            channel.send("secagg_shares", round=round, meta={"sealed": client.sealed_shares()})
        elif client is not None:
            for sender, bundle in msg.meta["from"].items():
                client.receive_shares(sender, bundle)
                waiting.discard(sender)
    return client, None


def masked(
    client: secagg.SecAggClient, params: np.ndarray, *, weight: float, config: Mapping[str, Any]
) -> np.ndarray:
    """``uint32[P+1]``: ``[weight * params, weight]`` in fixed point plus this round's masks."""
    packed = secagg.pack_weighted(params, weight)
    fixed = secagg.encode_fixed(packed, frac_bits=int(config["frac_bits"]), n_summands=len(client.peers))
    return client.mask(fixed)


def reveal(client: secagg.SecAggClient, meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``secagg_reveal`` meta answering ``secagg_unmask`` ``{survivors, dropped}``."""
    shares = client.reveal(survivors=meta["survivors"], dropped=meta["dropped"])
    return {"shares": secagg.reveal_to_meta(shares)}
