"""One secure-aggregation round at the aggregator: relay keys and sealed shares, sum masked inputs, unmask.

The math is :mod:`fedattn.learning.secagg` (Bonawitz et al.); this is the bookkeeping between its steps,
with no sockets: the server calls a method per message and sends what it returns. The aggregator only
ever holds public keys, sealed share bundles it cannot open (ChaCha20-Poly1305 under a key of the two
peers), masked uint32 vectors and, at the end, the unmasked *sum* -- never one participant's update.

Steps: every round member sends ``secagg_keys`` ``{public_key}``; once all did, each gets ``{keys}``.
Each sends ``secagg_shares`` ``{sealed: {peer: bytes}}``, forwarded to each peer as ``{from: {sender:
bytes}}``. Each sends its ``update`` as ``uint32[P+1]`` (``pack_weighted`` + ``encode_fixed`` + masks) with
``{masked: true}``. When every member's input is in, or at ``ctl_close_round`` with what arrived (the
others count as dropped), survivors get ``secagg_unmask`` ``{survivors, dropped}`` and answer
``secagg_reveal`` ``{shares}``; with ``threshold`` survivors' shares the sum is unmasked and its
weighted mean is the round's single update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedattn import wire
from fedattn.learning import secagg

FRAC_BITS = 16


class SecureRound:
    """State of one round's secure aggregation over ``members`` for a model of ``size`` parameters."""

    def __init__(
        self, *, session: str, round: int, members: frozenset[str], threshold: int, size: int
    ) -> None:
        self.session, self.round, self.size = session, round, size
        self.members, self.threshold = members, threshold
        self.keys: dict[str, bytes] = {}
        self.server: secagg.SecAggServer | None = None
        self.survivors: set[str] = set()
        self.reveals: dict[str, dict[str, tuple[str, int, int]]] = {}
        self.mean: np.ndarray | None = None
        self.unmask_started: float | None = None  # time.perf_counter() when survivors were asked
        self.asked_at: float | None = None  # time.monotonic() of the same moment (the timeout's clock)
        self.excluded: dict[str, str] = {}  # member -> why it is out of this round (no key, bad reveal)
        self.failed: str | None = None  # why this round cannot be unmasked, once that is certain

    def client_config(self) -> dict[str, Any]:
        return {"secagg": {"threshold": self.threshold, "frac_bits": FRAC_BITS}}

    def add_key(self, name: str, public_key: Any) -> dict[str, bytes] | None:
        """Record a member's public key; returns every key once all members sent theirs."""
        if self.server is not None or name in self.keys:
            raise wire.WireError("duplicate", f"{name} already sent its key for round {self.round}")
        if not isinstance(public_key, bytes) or len(public_key) != 32:
            raise wire.WireError("bad_meta", "secagg_keys needs meta.public_key: 32 bytes (X25519)")
        self.keys[name] = public_key
        if self.keys.keys() < self.members:
            return None
        return self._start_server()

    def _start_server(self) -> dict[str, bytes]:
        self.server = secagg.SecAggServer(
            session=self.session, round=self.round, public_keys=self.keys, threshold=self.threshold,
            size=self.size + 1,
        )
        return dict(self.keys)

    def give_up_waiting_for_keys(self) -> dict[str, bytes] | None:
        """At the timeout of the key exchange: go on with the members whose keys arrived (those missing
        are excluded and recorded), or fail the round below the threshold. Returns the keys to send."""
        missing = sorted(self.members - self.keys.keys())
        for name in missing:
            self.excluded[name] = "sent no key in time"
        if len(self.keys) < self.threshold:
            self.failed = (
                f"secure round {self.round}: {len(self.keys)} keys arrived, {self.threshold} needed;"
                f" missing {missing}"
            )
            return None
        return self._start_server()

    def give_up_waiting_for_reveals(self) -> None:
        """At the timeout of the unmasking: the round cannot be unmasked; say who did not reveal."""
        missing = sorted(self.survivors - self.reveals.keys() - self.excluded.keys())
        self.failed = (
            f"secure round {self.round}: {len(self.reveals)} of the {self.threshold} reveals needed arrived"
            f" in time; no (valid) reveal from {sorted({*missing, *self.excluded})}"
        )

    def route_shares(self, name: str, sealed: Any) -> dict[str, bytes]:
        """``{peer: bundle}`` to forward; each peer must be in the round's key set."""
        if self.server is None:
            raise wire.WireError("stale_round", "shares before every key was exchanged")
        if not isinstance(sealed, Mapping) or set(sealed) != set(self.keys) - {name}:
            raise wire.WireError("bad_meta", "secagg_shares needs meta.sealed with one bundle per other peer")
        if not all(isinstance(b, bytes) for b in sealed.values()):
            raise wire.WireError("bad_meta", "sealed bundles must be bytes")
        return dict(sealed)

    def add_masked(self, name: str, arrays: list[np.ndarray]) -> bool:
        """Sum one masked input; True when every key holder's input is in (time to unmask)."""
        if self.server is None:
            raise wire.WireError("stale_round", "a masked update before the key exchange finished")
        if len(arrays) != 1 or arrays[0].dtype != np.uint32 or arrays[0].shape != (self.size + 1,):
            raise wire.WireError("shape_mismatch", f"a masked update is one uint32[{self.size + 1}] array")
        try:
            self.server.add(name, arrays[0])
        except secagg.SecAggError as exc:
            raise wire.WireError("rejected_by_strategy", str(exc)) from None
        return self.server.received == set(self.keys)

    def start_unmask(self) -> tuple[list[str], list[str]]:
        """Fix survivors and dropped (later inputs are refused); raises ValueError below the threshold."""
        if self.server is None:
            raise ValueError("the key exchange never finished; nothing can be unmasked")
        if self.server.closed:
            return sorted(self.survivors), sorted(set(self.keys) - self.survivors)
        try:
            survivors, dropped = self.server.close()
        except secagg.SecAggError as exc:
            raise ValueError(str(exc)) from None
        self.survivors = survivors
        return sorted(survivors), sorted(dropped)

    def add_reveal(self, name: str, shares: Any) -> bool:
        """Take one survivor's revealed shares; True once the sum is unmasked (``self.mean`` is set)."""
        if self.server is None or not self.server.closed or name not in self.survivors:
            raise wire.WireError("stale_round", f"no reveal is expected from {name} now")
        if name in self.reveals:
            raise wire.WireError("duplicate", f"{name} already revealed its shares")
        try:
            self.reveals[name] = secagg.reveal_from_meta(shares)
        except secagg.SecAggError as exc:
            raise wire.WireError("bad_meta", str(exc)) from None
        # NB: any `threshold` survivors hold enough shares of every owner; later reveals are not needed
        if self.mean is not None or len(self.reveals) < self.threshold:
            return False
        try:
            total = self.server.unmask(self.reveals)
            mean = secagg.unpack_weighted(secagg.decode_fixed(total, frac_bits=FRAC_BITS))
            self.mean = mean.astype(np.float32)
        except secagg.SecAggError as exc:
            # NB: the reveal that made unmasking fail is excluded, so the others' can still reach the threshold
            del self.reveals[name]
            self.excluded[name] = f"its reveal made unmasking fail: {exc}"
            raise wire.WireError("rejected_by_strategy", f"unmasking failed with {name}'s shares: {exc}") from None
        return True
