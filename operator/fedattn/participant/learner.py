"""A learning-mode participant: receive the global model, let the client train it, send the update.

The client (fedattn.client: the user's, or the built-in digits one) holds the private data; only
its named parameter arrays travel. Compression, secure aggregation and the Byzantine simulation
work on the arrays flattened in the session's layout (fedattn.learning.named), as the aggregator does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedattn import wire
from fedattn.aggregator.client import AggregatorClient, Timeout
from fedattn.api.spec import SessionSpec
from fedattn.client import Client, ClientError, as_arrays, clean_metrics, count
from fedattn.learning import secagg
from fedattn.learning.compression import CompressionSpec, ErrorFeedback
from fedattn.learning.named import Layout, LayoutError, names_of
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
    feedback: ErrorFeedback | None, layout: Layout, global_flat: np.ndarray, params: list[np.ndarray],
    names: list[str] | None,
) -> tuple[tuple[np.ndarray, ...], dict[str, Any]]:
    """The update's arrays and meta: the named arrays themselves (the client's names, else the
    session's in order), or the compressed delta of their flat vector (with error feedback)."""
    if feedback is None:
        return tuple(params), {"names": names if names is not None else list(layout.names)}
    arrays, description = feedback.compress(layout.flatten(params) - global_flat)
    return tuple(arrays), {"compression": description}


def _received(msg: wire.Message) -> tuple[Layout, list[np.ndarray]]:
    """The model a ``model``/``evaluate``/``done`` message carries, as writable arrays and their layout."""
    arrays = [np.array(a) for a in msg.arrays]  # NB: the frames are read-only; clients train in place
    return Layout.of(arrays, names_of(msg.meta)), arrays


@dataclass(frozen=True)
class Kept:
    """An update as sent, kept to be sent again if the aggregator restarts before aggregating it."""

    round: int
    arrays: tuple[np.ndarray, ...]
    meta: dict[str, Any]


def _config(msg: wire.Message) -> dict[str, Any]:
    """What the strategy asks of clients this round (Flower's configure_fit config)."""
    return {"server_round": msg.round, **(msg.meta.get("config") or {})}


def run_learning(
    channel: AggregatorClient,
    *,
    client: Client,
    spec: SessionSpec,
    name: str,
    session_over: Callable[[], bool],
    idle_timeout_seconds: float,
    rehello_seconds: float,
    byzantine: tuple[str, float] | None = None,
) -> dict[str, Any]:
    """Serve rounds until the aggregator says ``done`` (or the coordinator says the session ended).

    Returns this participant's own record: rounds trained, examples, last loss, the final model's
    federated evaluation on this participant's data. A round the aggregator rejects (e.g.
    ``stale_round`` because we were too slow, ``shape_mismatch`` for an update that does not fit the
    session's model) is logged and skipped, never retried blindly: the next ``model`` message starts
    the next round. After ``rehello_seconds`` without a message it says ``hello`` again: a restarted
    aggregator does not know where we are, and answers a hello during an open round with that
    round's model; if that is the round we sent an update for, the update died with the old
    aggregator and is sent again as it was (``acknowledged`` in the record lists the rounds whose
    update the aggregator acknowledged). A ``welcome`` that asks for parameters (the session has no initial model) is
    answered with the client's ``get_parameters``. ``byzantine=(mode, scale)`` turns this
    participant into a simulated attacker (:func:`byzantine_update`); with ``spec.compression`` the
    update is a compressed delta.
    """
    codec = CompressionSpec.from_manifest(spec.compression)
    feedback: ErrorFeedback | None = None
    ctx = {"session": channel.session, "participant": name}
    channel.send("hello")
    trained: list[int] = []
    examples = 0
    last_loss = None
    idle_since = last_hello = time.monotonic()
    leftover: wire.Message | None = None  # a message that interrupted a secure round's key exchange
    secure_client: secagg.SecAggClient | None = None  # this round's, until the aggregator asks it to reveal
    kept: Kept | None = None  # the last update sent, until a later round's model shows it was aggregated
    acknowledged: list[int] = []
    while True:
        try:
            msg, leftover = leftover or channel.recv(timeout_seconds=1.0), None
        except Timeout:
            now = time.monotonic()
            if session_over() or now - idle_since > idle_timeout_seconds:
                return {"rounds": trained, "acknowledged": acknowledged, "examples": examples, "loss": last_loss,
                        "reason": "session over"}
            if now - max(idle_since, last_hello) > rehello_seconds:
                channel.send("hello")
                last_hello = now
            continue
        idle_since = time.monotonic()
        if msg.kind == "welcome" and msg.meta.get("need_parameters"):
            names, params = as_arrays(client.get_parameters({}), what="get_parameters")
            channel.send("parameters", arrays=params, meta={"names": list(Layout.of(params, names).names)})
        elif msg.kind == "model" and kept is not None and kept.round == msg.round and "secagg" not in msg.meta:
            # NB: the model of a round we already sent an update for: a restarted aggregator reopened the
            # round without the updates that died with it. The same update again, not a retrained one.
            log.warning("re-sending round %d's update to a restarted aggregator", msg.round,
                        extra={**ctx, "round": msg.round})
            channel.send("update", round=kept.round, arrays=kept.arrays, meta=kept.meta)
        elif msg.kind == "model":
            started = time.perf_counter()
            layout, global_params = _received(msg)
            names, new, examples, metrics = _fit(client, global_params, _config(msg))
            global_flat = layout.flatten(global_params)
            if byzantine is not None or "secagg" in msg.meta or codec.codec != "dense":
                try:  # NB: these work on the flat vector; the plain path lets the aggregator refuse a misfit
                    layout.check(new)
                except LayoutError as exc:
                    log.error("the client's model does not fit the session's: %s", exc,
                              extra={**ctx, "round": msg.round})
                    continue
            if codec.codec != "dense" and feedback is None:
                feedback = ErrorFeedback(size=layout.size, spec=codec)
            if byzantine is not None:
                flipped = byzantine_update(global_flat, layout.flatten(new), mode=byzantine[0], scale=byzantine[1])
                new = layout.unflatten(flipped)
            if "secagg" in msg.meta:
                secure_client, leftover = secure.exchange_keys(
                    channel, round=msg.round, config=msg.meta["secagg"], timeout_seconds=idle_timeout_seconds
                )
                if secure_client is None:
                    log.warning("secure aggregation did not complete", extra={**ctx, "round": msg.round})
                    continue
                masked = secure.masked(secure_client, layout.flatten(new), weight=examples, config=msg.meta["secagg"])
                arrays, extra = (masked,), {"masked": True}
            else:
                arrays, extra = _payload(feedback, layout, global_flat, new, names)
            last_loss = metrics.get("train_loss", metrics.get("loss"))
            meta = {
                "num_examples": examples,
                "train_loss": last_loss,
                "metrics": metrics,
                "compute_seconds": time.perf_counter() - started,
                **extra,
            }
            channel.send("update", round=msg.round, arrays=arrays, meta=meta)
            kept = Kept(round=msg.round, arrays=tuple(arrays), meta=meta)
            trained.append(msg.round)
            log.info("trained round %d loss %s", msg.round, last_loss, extra={**ctx, "round": msg.round})
        elif msg.kind == "evaluate":
            _, params = _received(msg)
            channel.send("evaluation", round=msg.round, meta=_evaluate(client, params, _config(msg)))
        elif msg.kind == "secagg_unmask" and secure_client is not None and secure_client.round == msg.round:
            channel.send("secagg_reveal", round=msg.round, meta=secure.reveal(secure_client, msg.meta))
        elif msg.kind == "ack" and msg.round not in acknowledged:
            acknowledged.append(msg.round)
        elif msg.kind == "error":
            log.warning("aggregator rejected: %s", msg.meta, extra={**ctx, "round": msg.round})
            if msg.meta.get("code") == "unknown_session":
                # NB: the aggregator is not configured for the session yet: we raced the coordinator's
                # configure, or the aggregator restarted. Say hello again shortly; its answer (the open
                # round's model) makes us send again an update it lost.
                time.sleep(1.0)
                channel.send("hello")
                last_hello = time.monotonic()
        elif msg.kind == "done":
            evaluation = None
            # NB: evaluate is optional in the Client contract (Flower's default raises); without it
            # this participant's own record simply has no final figures
            if msg.arrays and callable(getattr(client, "evaluate", None)):
                _, params = _received(msg)
                evaluation = _evaluate(client, params, {"server_round": msg.round, "final": True})
            accuracy = (evaluation or {}).get("metrics", {}).get("accuracy")
            return {"rounds": trained, "acknowledged": acknowledged, "examples": examples, "loss": last_loss,
                    "final_accuracy": accuracy, "final_evaluation": evaluation, "reason": msg.meta.get("reason")}


def _fit(
    client: Client, params: list[np.ndarray], config: dict[str, Any]
) -> tuple[list[str] | None, list[np.ndarray], int, dict[str, float]]:
    """The client's ``fit``: (names or None, arrays, num_examples, metrics), checked for form (the
    aggregator checks them against the session's model)."""
    result = client.fit(params, config)
    if not isinstance(result, tuple) or len(result) != 3:
        raise ClientError("fit must return (parameters, num_examples, metrics)")
    names, arrays = as_arrays(result[0], what="fit")
    return names, arrays, count(result[1], what="fit"), clean_metrics(result[2], what="fit")


def _evaluate(client: Client, params: list[np.ndarray], config: dict[str, Any]) -> dict[str, Any]:
    """The client's ``evaluate`` as an ``evaluation`` message's meta."""
    result = client.evaluate(params, config)
    if not isinstance(result, tuple) or len(result) != 3:
        raise ClientError("evaluate must return (loss, num_examples, metrics)")
    loss = clean_metrics({"loss": result[0]}, what="evaluate")["loss"]
    return {"loss": loss, "num_examples": count(result[1], what="evaluate"),
            "metrics": clean_metrics(result[2], what="evaluate")}

