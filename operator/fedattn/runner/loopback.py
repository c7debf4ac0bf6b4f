"""Every participant of one prompt over a real aggregator on loopback (CurveZMQ, ZAP allowlist).

The same ``run_prefill(model, layout, *, plan)`` shape as the in-memory driver
(:func:`fedattn.attention.driver.run_prefill`), but each participant's exchange is the network one a
participant process uses (:func:`fedattn.participant.attender.zmq_exchange`), its position offset
comes from the aggregator's prompt-layout handshake, and the K/V union is the aggregator's. Tests
compare its logits with the single-process reference; the FedAttn sweep measures sync latency with it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from threadpoolctl import threadpool_limits

from fedattn import pki, wire
from fedattn.aggregator.client import AggregatorClient
from fedattn.aggregator.server import Aggregator
from fedattn.attention.driver import run_threads
from fedattn.attention.gguf_model import LlamaModel
from fedattn.attention.layout import PromptLayout
from fedattn.attention.participant import PrefillResult, participant_prefill
from fedattn.attention.reference import FedAttnPlan
from fedattn.participant.attender import await_kind, zmq_exchange

SESSION = "loopback"
TIMEOUT_SECONDS = 120  # NB: an integer, as spec.roundTimeoutSeconds must be


def _names(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


def _configure(aggregator: Aggregator, server: pki.CurveKeyPair, control: pki.CurveKeyPair, names: list[str],
               *, plan: FedAttnPlan) -> None:
    if plan.holder_sync_layers not in (None, frozenset()):
        raise ValueError("the wire serves holders at every sync layer or at none (spec.holderSync)")
    spec = {"mode": "attention", "minParticipants": len(names), "roundTimeoutSeconds": TIMEOUT_SECONDS,
            "publisher": names[-1], "kvCodec": str(plan.kv_codec),
            "holderSync": "all" if plan.holder_sync_layers is None else "none",
            "syncLayers": sorted(plan.sync_layers)}
    with AggregatorClient(endpoint=aggregator.endpoint, server_public=server.public, public=control.public,
                          secret=control.secret, session=SESSION, name=pki.CONTROL_CLIENT,
                          timeout_seconds=TIMEOUT_SECONDS) as link:
        reply = link.request("ctl_configure", meta={"mode": "attention", "spec": spec,
                                                    "participants": dict.fromkeys(names, 1.0)})
        if not reply.meta.get("ok"):
            raise RuntimeError(f"aggregator refused the loopback session: {reply.meta}")


def run_prefill(model: LlamaModel, layout: PromptLayout, *, plan: FedAttnPlan) -> list[PrefillResult]:
    """Every participant's prefill through an in-process aggregator, in participant order."""
    names = _names(layout.n_participants)
    keys = {name: pki.curve_keypair() for name in [pki.CONTROL_CLIENT, *names]}
    server = pki.curve_keypair()
    with tempfile.TemporaryDirectory() as tmp:
        allow = Path(tmp)
        for name, pair in keys.items():
            (allow / f"{name}.curve.pub").write_bytes(pair.public)
        aggregator = Aggregator(bind="tcp://127.0.0.1:0", server_public=server.public,
                                server_secret=server.secret, allow_dir=allow)
        aggregator.start()
        try:
            _configure(aggregator, server, keys[pki.CONTROL_CLIENT], names, plan=plan)
            return _run_participants(model, layout, plan=plan, aggregator=aggregator, server=server,
                                     keys=keys, names=names)
        finally:
            aggregator.close()


def _run_participants(model, layout, *, plan, aggregator, server, keys, names) -> list[PrefillResult]:
    clients = [
        AggregatorClient(endpoint=aggregator.endpoint, server_public=server.public, public=keys[n].public,
                         secret=keys[n].secret, session=SESSION, name=n, timeout_seconds=TIMEOUT_SECONDS)
        for n in names
    ]

    def task(index: int):
        def prefill() -> PrefillResult:
            channel = clients[index]
            own = layout.ids_of(index)
            cfg = model.config
            shape = {"n_layers": cfg.n_layers, "n_kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim}
            channel.send("hello", meta={"tokens": len(own), "prefix": layout.n_prefix, "model": shape})
            welcome = await_kind(channel, "welcome", timeout_seconds=TIMEOUT_SECONDS)
            start = layout.n_prefix + int(welcome.meta["tokens_before"])
            if start != int(layout.positions_of(index)[0]):
                raise wire.WireError("bad_layout", f"aggregator placed {names[index]} at {start}")
            return participant_prefill(
                model, participant=index, own_ids=own, own_positions=layout.positions_of(index),
                prefix_ids=layout.prefix_ids, plan=plan,
                exchange=zmq_exchange(channel, codec=plan.kv_codec, timeout_seconds=TIMEOUT_SECONDS),
                publisher=index == len(names) - 1,
            )

        return prefill

    try:
        # NB: participants run in parallel threads; BLAS pools on top of them would oversubscribe the cores.
        with threadpool_limits(limits=1, user_api="blas"):
            return run_threads([task(i) for i in range(len(names))], on_error=lambda: None)
    finally:
        for client in clients:
            client.close()
