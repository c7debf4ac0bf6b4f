"""Checkpoints and the privacy budget of learning sessions.

- The checkpoint file is written atomically and read back exactly; a bad name or a corrupt file is
  refused with a message.
- A FedAdam session interrupted by a checkpoint/restore reaches the same model as one that ran
  through (the optimizer moments survive), checked against a direct numpy computation.
- Over real sockets: a new aggregator process state (same checkpoint directory) resumes the round
  count and model, and reopens the round that was open when the old one stopped.
- DP: the close reply's epsilon equals dp-accounting's RDP epsilon for the same parameters, the
  gauge shows it, and a round that would exceed targetEpsilon is refused with PrivacyBudgetExhausted.
"""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest

from fedattn.aggregator import checkpoint
from fedattn.aggregator.learning_session import LearningSession
from fedattn.aggregator.server import Aggregator
from fedattn.api.spec import SessionSpec
from test_aggregator_server import CONTROL_IDENTITY, Harness, ctl, join, open_round

SPEC = {
    "rounds": 5,
    "minParticipants": 1,
    "strategy": {"name": "fedadam", "params": {"serverLearningRate": 0.1, "tau": 0.01}},
    "checkpoint": {"everyRounds": 1},
}


def _typed(spec: dict) -> SessionSpec:
    return SessionSpec.from_manifest({"mode": "learning", **spec})


def test_checkpoint_round_trip_and_refusals(tmp_path):
    arrays = {"global": np.arange(5, dtype=np.float32), "strategy.m": np.ones(5)}
    path = checkpoint.save(tmp_path, "s-1", arrays=arrays, meta={"round": 3, "x": [1, 2]})
    got, meta = checkpoint.load(tmp_path, "s-1")
    assert meta == {"round": 3, "x": [1, 2]}
    assert set(got) == set(arrays)
    for key, value in arrays.items():
        assert got[key].dtype == value.dtype
        np.testing.assert_array_equal(got[key], value)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    assert checkpoint.load(tmp_path, "other") is None
    with pytest.raises(checkpoint.CheckpointError, match="DNS-1123"):
        checkpoint.save(tmp_path, "../escape", arrays=arrays, meta={})
    path.write_bytes(b"not a zip archive")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path, "s-1")
    checkpoint.save_open_round(tmp_path, "s-1", round=4, participants=["b", "a"])
    assert checkpoint.load_open_round(tmp_path, "s-1") == (4, ["a", "b"])
    checkpoint.clear_open_round(tmp_path, "s-1")
    assert checkpoint.load_open_round(tmp_path, "s-1") is None


def _adam_reference(initial: np.ndarray, updates: list[np.ndarray], *, eta: float, tau: float) -> np.ndarray:
    """FedAdam (Reddi et al. Alg. 2, beta1 0.9, beta2 0.99, v0 = tau^2) for one update per round."""
    x, m, v = initial.astype(np.float64), np.zeros(initial.size), np.full(initial.size, tau**2)
    for update in updates:
        delta = update - x
        m = 0.9 * m + 0.1 * delta
        v = 0.99 * v + 0.01 * delta**2
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


def _run_round(state: LearningSession, round: int, update: np.ndarray) -> None:
    state.open_round(round, ["a"])
    state.accept(participant="a", round=round, arrays=[update], meta={"num_examples": 1})
    state.close_round(round)


def test_restored_fedadam_session_continues_with_its_moments():
    rng = np.random.default_rng(0)
    initial = rng.standard_normal(50).astype(np.float32)
    updates = [(initial + rng.standard_normal(50)).astype(np.float32) for _ in range(4)]

    def fresh() -> LearningSession:
        return LearningSession(name="s", spec=_typed(SPEC), weights={"a": 1.0}, initial=initial)

    first = fresh()
    for r in (1, 2):
        _run_round(first, r, updates[r - 1])
    arrays, meta = first.snapshot()
    resumed = fresh()
    resumed.restore(arrays, meta)
    assert resumed.round == 2 and resumed.last_result.round == 2
    assert resumed.close_round(2) == first.last_result  # a retried close gets the same answer
    for r in (3, 4):
        _run_round(resumed, r, updates[r - 1])
    reference = _adam_reference(initial, updates, eta=0.1, tau=0.01)
    np.testing.assert_allclose(resumed.global_params, reference, rtol=1e-4, atol=1e-5)

    other = LearningSession(name="s", spec=_typed({**SPEC, "strategy": {"name": "fedavg"}}), weights={"a": 1.0},
                            initial=initial)
    with pytest.raises(ValueError, match="checkpoint is for strategy 'fedadam'"):
        other.restore(arrays, meta)


def _restart(h: Harness, ckpt) -> Aggregator:
    """Replace the harness's aggregator by a new one on a new port with the same keys and checkpoints."""
    h.server.close()
    h.clients.clear()
    h.server = Aggregator(
        bind="tcp://127.0.0.1:0",
        server_public=h.server_keys.public,
        server_secret=h.server_keys.secret,
        allow_dir=h.allow_dir,
        checkpoint_dir=ckpt,
    )
    h.server.start()
    return h.server


def _configure(h: Harness, spec: dict, size: int, initial: np.ndarray) -> tuple:
    coord = h.client(CONTROL_IDENTITY)
    meta = {"mode": "learning", "spec": spec, "participants": {"alice": 1.0, "bob": 1.0}, "params": size}
    reply = ctl(coord, h.events, "ctl_configure", meta=meta, arrays=[initial])
    assert reply["ok"], reply
    return coord, reply


def test_a_restarted_aggregator_resumes_and_reopens_the_open_round(tmp_path):
    size, ckpt = 32, tmp_path / "ckpt"
    initial = np.zeros(size, np.float32)
    h = Harness(tmp_path)
    try:
        _restart(h, ckpt)  # an aggregator that checkpoints into ckpt from the start
        coord, _ = _configure(h, SPEC, size, initial)
        alice = join(h, "alice")
        open_round(h, coord, 1, ["alice"])
        assert alice.recv().kind == "model"
        assert alice.request("update", round=1, arrays=[np.ones(size, np.float32)],
                             meta={"num_examples": 3}).kind == "ack"
        closed = ctl(coord, h.events, "ctl_close_round", round=1)
        assert closed["ok"] and closed["update_bytes"] == 4 * size
        open_round(h, coord, 2, ["alice", "bob"])

        _restart(h, ckpt)
        coord, reply = _configure(h, SPEC, size, initial)
        assert (reply["round"], reply["open"]) == (2, True)  # round 2 reopened from the checkpoint
        assert not ctl(coord, h.events, "ctl_close_round", round=1)["ok"]  # round 2 is open now
        open_round(h, coord, 2, ["alice", "bob"])  # the coordinator's retry of round 2 is a no-op
        alice = join(h, "alice")
        model = alice.recv()
        assert (model.kind, model.round) == ("model", 2)
        # FedAdam's first step from 0 towards 1: m = 0.1, v = 0.99 tau^2 + 0.01, x = eta m / (sqrt(v) + tau)
        expected = 0.1 * 0.1 / (np.sqrt(0.99 * 1e-4 + 0.01) + 0.01)
        np.testing.assert_allclose(model.arrays[0], np.full(size, expected), rtol=1e-5)
    finally:
        h.close()


def test_epsilon_per_round_matches_dp_accounting_and_the_budget_stops_rounds(tmp_path):
    size, z, delta = 16, 1.0, 1e-5
    budget = 8.0  # epsilon is about 4.7, 7.1, 9.0 after rounds 1-3: two rounds fit
    accountant = dp_accounting.rdp.RdpAccountant()
    expected = []
    for _ in range(3):
        accountant.compose(dp_accounting.GaussianDpEvent(z))
        expected.append(accountant.get_epsilon(delta))
    allowed = sum(e <= budget for e in expected)
    assert 1 <= allowed < 3, expected  # the parameters must exercise both outcomes
    spec = {"minParticipants": 1,
            "privacy": {"dp": {"noiseMultiplier": z, "clipNorm": 1.0, "targetEpsilon": budget,
                               "delta": delta}}}
    h = Harness(tmp_path)
    try:
        coord, _ = _configure(h, spec, size, np.zeros(size, np.float32))
        alice = join(h, "alice")
        for r in range(1, allowed + 1):
            open_round(h, coord, r, ["alice"])
            alice.recv()
            assert alice.request("update", round=r, arrays=[np.ones(size, np.float32)],
                                 meta={"num_examples": 1}).kind == "ack"
            reply = ctl(coord, h.events, "ctl_close_round", round=r)
            assert reply["epsilon"] == pytest.approx(expected[r - 1], rel=1e-9)
            assert h.metric("fedattn_aggregator_dp_epsilon", session="s1") == pytest.approx(expected[r - 1])
            assert h.metric("fedattn_aggregator_dp_epsilon_target", session="s1") == budget  # alerts divide by it
        assert reply["stop"].startswith("PrivacyBudgetExhausted")
        refused = ctl(coord, h.events, "ctl_open_round", round=allowed + 1, meta={"participants": ["alice"]})
        assert not refused["ok"] and refused["error"].startswith("PrivacyBudgetExhausted"), refused
    finally:
        h.close()


def test_a_sign_flipping_member_scores_negative_and_is_evicted():
    size, weights = 20, {"a": 1.0, "b": 1.0, "evil": 1.0}
    spec = {"minParticipants": 3, "strategy": {"name": "median"}, "eviction": {"minScore": 0.0, "afterRounds": 2}}
    state = LearningSession(name="s", spec=_typed(spec), weights=weights, initial=np.zeros(size, np.float32))
    rng = np.random.default_rng(1)
    direction = np.ones(size, np.float32)
    results = []
    for r in (1, 2, 3):
        state.open_round(r, sorted(weights))
        g = state.global_params.copy()
        for name in ("a", "b"):
            honest = g + 0.1 * direction + 0.01 * rng.standard_normal(size).astype(np.float32)
            state.accept(participant=name, round=r, arrays=[honest], meta={"num_examples": 1})
        state.accept(participant="evil", round=r, arrays=[g - 1.0 * direction], meta={"num_examples": 1})
        results.append(state.close_round(r))
    assert results[0].scores is None  # no previous step to compare with in round 1
    for result in results[1:]:
        assert result.scores["a"] > 0.9 and result.scores["b"] > 0.9 and result.scores["evil"] < -0.9
    assert results[1].evict == [] and results[2].evict == ["evil"]  # two low rounds in a row
    assert results[2].reliability["evil"] < 0.5 < results[2].reliability["a"]  # EMA from 1.0, decay 0.8
    assert "evict" in results[2].meta() and results[2].meta()["evict"] == ["evil"]
