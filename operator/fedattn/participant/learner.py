"""A learning-mode participant: receive the global model, train on the private shard, send the update.

The shard is derived from the session spec and this participant's index, so the data never travels;
only the trained parameter vector does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from fedattn import wire
from fedattn.aggregator.client import AggregatorClient, Timeout
from fedattn.api.spec import SessionSpec
from fedattn.learning import data, models, secagg, session
from fedattn.learning.compression import CompressionSpec, ErrorFeedback
from fedattn.learning.trainer import TrainConfig, train
from fedattn.participant import secure

log = logging.getLogger(__name__)

#: ``--simulate-byzantine`` behaviours (simulation only: a test bench for the robust rules)
BYZANTINE = ("signflip",)


def byzantine_update(global_params: np.ndarray, local: np.ndarray, *, mode: str, scale: float) -> np.ndarray:
    """What a simulated Byzantine client sends instead of its honest model ``local``.

    ``signflip``: the honest delta reversed and scaled, ``global - scale * (local - global)`` -- the
    attack of Blanchard et al. / Yin et al. that drags a plain mean away from the optimum.
    """
    if mode != "signflip":
        raise ValueError(f"unknown byzantine simulation {mode!r}; choose one of {BYZANTINE}")
    return (global_params - scale * (local - global_params)).astype(np.float32)


def _payload(
    feedback: ErrorFeedback | None, global_params: np.ndarray, params: np.ndarray
) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """The update's arrays and meta: the model itself, or its compressed delta with error feedback."""
    if feedback is None:
        return (params,), {}
    arrays, description = feedback.compress(params - global_params)
    return tuple(arrays), {"compression": description}

def private_shard(spec: SessionSpec, *, index: int, parts: int) -> data.Split:
    return data.participant_split(
        session.dataset(spec),
        index=index,
        parts=parts,
        alpha=spec.training.dirichlet_alpha,
        seed=spec.training.seed,
    )


def run_learning(
    channel: AggregatorClient,
    *,
    spec: SessionSpec,
    name: str,
    index: int,
    parts: int,
    session_over: Callable[[], bool],
    idle_timeout_seconds: float,
    rehello_seconds: float,
    byzantine: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """Serve rounds until the aggregator says ``done`` (or the coordinator says the session ended).

    Returns this participant's own record: rounds trained, examples, last loss, the final model's
    held-out accuracy and why it stopped. A round the aggregator rejects (e.g. ``stale_round``
    because we were too slow) is logged and skipped, never retried blindly: the next ``model``
    message starts the next round. After
    ``rehello_seconds`` without a message it says ``hello`` again: a restarted aggregator does not
    know where we are, and answers a hello during an open round with that round's model.
    ``byzantine=(mode, scale)`` turns this participant into a simulated attacker
    (:func:`byzantine_update`); with ``spec.compression`` the update is a compressed delta.
    """
    arch: models.Architecture = session.architecture(spec)
    shard = private_shard(spec, index=index, parts=parts)
    config = TrainConfig.from_spec(spec.training)
    seed = session.seed(spec)
    codec = CompressionSpec.from_manifest(spec.compression)
    feedback = None
    if codec.codec != "dense":
        feedback = ErrorFeedback(size=arch.size, spec=codec)
    ctx = {"session": channel.session, "participant": name}
    channel.send("hello")
    trained: list[int] = []
    last_loss = None
    idle_since = last_hello = time.monotonic()
    leftover: wire.Message | None = None  # a message that interrupted a secure round's key exchange
    secure_client: secagg.SecAggClient | None = None  # this round's, until the aggregator asks it to reveal
    while True:
        try:
            msg, leftover = leftover or channel.recv(timeout_seconds=1.0), None
        except Timeout:
            now = time.monotonic()
            if session_over() or now - idle_since > idle_timeout_seconds:
                return {"rounds": trained, "examples": len(shard), "loss": last_loss,
                        "reason": "session over"}
            if now - max(idle_since, last_hello) > rehello_seconds:
                channel.send("hello")
                last_hello = now
            continue
        idle_since = time.monotonic()
        if msg.kind == "model":
            started = time.perf_counter()
            round_seed = seed * 1_000_003 + msg.round * 101 + index
            round_config = replace(config, proximal_mu=float(msg.meta.get("proximal_mu", 0.0)))
            global_params = msg.arrays[0]
            params, last_loss = train(arch, global_params, shard, round_config, seed=round_seed)
            if byzantine is not None:
                params = byzantine_update(global_params, params, mode=byzantine[0], scale=byzantine[1])
            if "secagg" in msg.meta:
                secure_client, leftover = secure.exchange_keys(
                    channel, round=msg.round, config=msg.meta["secagg"], timeout_seconds=idle_timeout_seconds
                )
                if secure_client is None:
                    log.warning("secure aggregation did not complete", extra={**ctx, "round": msg.round})
                    continue
                masked = secure.masked(secure_client, params, weight=len(shard), config=msg.meta["secagg"])
                arrays, extra = (masked,), {"masked": True}
            else:
                arrays, extra = _payload(feedback, global_params, params)
            channel.send(
                "update",
                round=msg.round,
                arrays=arrays,
                meta={
                    "num_examples": len(shard),
                    "train_loss": last_loss,
                    "compute_seconds": time.perf_counter() - started,
                    **extra,
                },
            )
            trained.append(msg.round)
            log.info("trained round %d loss %.4f", msg.round, last_loss, extra={**ctx, "round": msg.round})
        elif msg.kind == "secagg_unmask" and secure_client is not None and secure_client.round == msg.round:
            channel.send("secagg_reveal", round=msg.round, meta=secure.reveal(secure_client, msg.meta))
        elif msg.kind == "error":
            log.warning("aggregator rejected: %s", msg.meta, extra={**ctx, "round": msg.round})
            if msg.meta.get("code") == "unknown_session" and not trained:
                # NB: we raced the coordinator's configure of this session; say hello again shortly.
                time.sleep(1.0)
                channel.send("hello")
        elif msg.kind == "done":
            final = msg.arrays[0] if msg.arrays else None
            accuracy = None
            if final is not None:
                ds = session.dataset(spec)
                accuracy = models.accuracy(arch, final, ds.test.x, ds.test.y)
            return {"rounds": trained, "examples": len(shard), "loss": last_loss,
                    "final_accuracy": accuracy, "reason": msg.meta.get("reason")}
