"""The FedAvg poisoning table: one member of three (P=650) tries to brick or take over the model.

Each row is one attacker update in a round where alice and bob send ``global + HONEST_STEP`` with
100 examples each. A row passes when the update is refused with a named code, or when the new global
model is finite and the attacker moved it no further than its bounded weight allows: its share of
the weights is at most ``maxExamples / (maxExamples + 200)``, and with ``updateLimits.clipNorm`` its
delta counts with L2 norm at most ``clipNorm``. A round whose aggregate is not finite keeps the old
model and says why in the ``ctl_close_round`` reply.

FedAvg is not Byzantine-robust: within its weight an attacker still steers the mean (docs point to
krum, median and trimmed mean); what it must not do is brick the session or outweigh everyone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from fedattn.aggregator.learning_session import LearningSession
from fedattn.api.spec import SessionSpec
from fedattn.learning import compression
from test_aggregator_server import CONTROL_IDENTITY, SESSION, Harness, ctl, join, open_round

SIZE = 650
HONEST_EXAMPLES = 100
MAX_EXAMPLES = 1000
HONEST_STEP = 0.01
CLIP_NORM = 1.0
F32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Row:
    """One attack: what carol sends (arrays and meta), in a session with ``spec`` on top of FedAvg."""

    name: str
    arrays: Any  # (global model) -> list of arrays
    meta: dict[str, Any]
    spec: dict[str, Any]


def _dense(value: float):
    return lambda g: [np.full(SIZE, value, dtype=np.float32)]


def _int8_overflow(g):
    return [np.full(SIZE, 127, dtype=np.int8), np.full(1, 3e38, dtype=np.float32)]


def _topk_huge(g):
    return [np.arange(0, SIZE, 10, dtype=np.int32), np.full(SIZE // 10, 3.4e38, dtype=np.float32)]


TOPK = {"compression": {"quantizeBits": 0, "topK": 0.1}}
INT8_META = {"codec": "int8", "size": SIZE, "chunk": 1024}
TOPK_META = {"codec": "topk", "size": SIZE, "k": SIZE // 10}
CLIPPED = {"updateLimits": {"maxExamples": MAX_EXAMPLES, "clipNorm": CLIP_NORM}}
LIMITED = {"updateLimits": {"maxExamples": MAX_EXAMPLES}}

ROWS = [
    Row("num_examples=1e9, model 5.0", _dense(5.0), {"num_examples": 1e9}, LIMITED),
    Row("num_examples=1e308", _dense(5.0), {"num_examples": 1e308}, LIMITED),
    Row("int8 meta without compression", _int8_overflow, {"num_examples": 100, "compression": INT8_META}, LIMITED),
    Row(
        "int8 codes 127 x scale 3e38 (overflow on decoding)",
        _int8_overflow,
        {"num_examples": 100, "compression": INT8_META},
        {**LIMITED, "compression": {"quantizeBits": 8, "topK": 1.0}},
    ),
    # NB: within its third of the weight FedAvg follows the attacker to ~1e38: finite, bounded, useless;
    # only clipNorm (below) or a robust rule bounds the magnitude.
    Row("float32-max values", _dense(F32_MAX), {"num_examples": 100}, LIMITED),
    Row("top-k deltas of 3.4e38", _topk_huge, {"num_examples": 100, "compression": TOPK_META}, {**LIMITED, **TOPK}),
    Row("float32-max values, clipNorm", _dense(F32_MAX), {"num_examples": MAX_EXAMPLES}, CLIPPED),
    Row(
        "top-k deltas of 3.4e38, clipNorm",
        _topk_huge,
        {"num_examples": MAX_EXAMPLES, "compression": TOPK_META},
        {**CLIPPED, **TOPK},
    ),
    Row("model 5.0 at the example limit, clipNorm", _dense(5.0), {"num_examples": MAX_EXAMPLES}, CLIPPED),
]


def dense_model(row: Row, start: np.ndarray) -> np.ndarray:
    """The full model carol's update stands for (float64, so the reference itself cannot overflow)."""
    arrays = row.arrays(start)
    codec = row.meta.get("compression")
    if codec is None:
        return np.asarray(arrays[0], np.float64)
    return start + compression.decode(arrays, codec, size=SIZE).astype(np.float64)


def configure(agg: Harness, spec: dict[str, Any]):
    coord = agg.client(CONTROL_IDENTITY)
    meta = {
        "mode": "learning",
        "spec": {"rounds": 3, "minParticipants": 1, "strategy": {"name": "fedavg"}, **spec},
        "participants": dict.fromkeys(("alice", "bob", "carol"), 1.0),
        "params": SIZE,
    }
    assert ctl(coord, agg.events, "ctl_configure", meta=meta)["ok"]
    return coord


def attack(agg: Harness, row: Row) -> dict[str, Any]:
    """Run one round with the attack; returns what happened (for the assertions and the table)."""
    coord = configure(agg, row.spec)
    clients = {n: join(agg, n) for n in ("alice", "bob", "carol")}
    open_round(agg, coord, 1, list(clients))
    start = None
    for c in clients.values():
        model = c.recv()
        assert model.kind == "model"
        start = model.arrays[0].copy()
    honest = start + np.float32(HONEST_STEP)
    for name in ("alice", "bob"):
        assert (
            clients[name].request("update", round=1, meta={"num_examples": HONEST_EXAMPLES}, arrays=[honest]).kind
            == "ack"
        )
    reply = clients["carol"].request("update", round=1, meta=row.meta, arrays=row.arrays(start))
    closed = ctl(coord, agg.events, "ctl_close_round", round=1)
    assert closed["ok"], closed
    new = agg.server.sessions[SESSION].global_params.copy()
    return {"reply": reply, "closed": closed, "start": start, "honest": honest, "new": new}


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_one_member_can_neither_brick_nor_take_over_the_model(agg, row):
    got = attack(agg, row)
    reply, new, start, honest = got["reply"], got["new"], got["start"], got["honest"]
    assert np.isfinite(new).all(), f"{row.name}: {int((~np.isfinite(new)).sum())} non-finite values"
    if reply.kind == "error":
        assert reply.meta["code"] in {"bad_meta", "bad_encoding", "non_finite"}, reply.meta
        np.testing.assert_allclose(new, honest, rtol=1e-6)  # the honest mean, untouched
        return
    assert reply.kind == "ack", reply.meta
    if np.array_equal(new, start):
        assert got["closed"].get("model_kept"), "the old model was kept without saying why"
        return
    share = MAX_EXAMPLES / (MAX_EXAMPLES + 2 * HONEST_EXAMPLES)
    clip = row.spec.get("updateLimits", {}).get("clipNorm")
    if clip is not None:
        # the attacker's clipped delta, at most ``clip`` long, weighs at most ``share``
        moved = float(np.linalg.norm(new.astype(np.float64) - honest))
        assert moved <= share * (clip + np.linalg.norm(honest - start)) * (1 + 1e-5), moved
    else:
        attacker = dense_model(row, start)
        bound = share * float(np.abs(attacker - honest).max())
        assert float(np.abs(new - honest).max()) <= bound * (1 + 1e-5)


def test_a_non_finite_aggregate_keeps_the_old_model_and_says_why():
    """FedAvgM with a huge server learning rate overflows float32 on honest input: the round says so."""
    spec = SessionSpec.from_manifest(
        {
            "mode": "learning",
            "minParticipants": 1,
            "strategy": {"name": "fedavgm", "params": {"serverLearningRate": 1e30}},
        }
    )
    session = LearningSession(name="s", spec=spec, weights={"alice": 1.0}, initial=np.zeros(SIZE, np.float32))
    session.open_round(1, ["alice"])
    session.accept(participant="alice", round=1, arrays=[np.full(SIZE, 1e9, np.float32)], meta={"num_examples": 1})
    result = session.close_round(1)
    assert result.model_kept and "non-finite" in result.model_kept and result.meta()["model_kept"]
    np.testing.assert_array_equal(session.global_params, np.zeros(SIZE, np.float32))
