"""The aggregator's pure parts: the FedAvg fold, KV union, event queue and allowlist."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from fedattn import pki
from fedattn.aggregator.allowlist import Allowlist, read_key_dir
from fedattn.aggregator.events import EventQueue
from fedattn.aggregator.kv import Barrier, check_part
from fedattn.aggregator.strategies.fedavg import FedAvg, FedProx, fold_weighted


def test_fold_weighted_matches_float64_reference_across_chunk_edges():
    rng = np.random.default_rng(0)
    size = 1000  # not a multiple of the chunk below
    acc = np.zeros(size)
    xs = [rng.standard_normal(size).astype(np.float32) for _ in range(5)]
    ws = [0.5, 3.0, 1e-3, 7.25, 1.0]
    fold_weighted(acc, xs[:2], ws[:2], scratch=np.empty(64))  # a group
    for x, w in zip(xs[2:], ws[2:], strict=True):  # and one by one
        fold_weighted(acc, [x], [w], scratch=np.empty(64))
    reference = sum(w * x.astype(np.float64) for x, w in zip(xs, ws, strict=True))
    np.testing.assert_allclose(acc, reference, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="does not match"):
        fold_weighted(acc, [xs[0][:-1]], [1.0], scratch=np.empty(64))
    with pytest.raises(ValueError, match="float64"):
        fold_weighted(acc.astype(np.float32), [xs[0]], [1.0], scratch=np.empty(64))


def test_fold_many_equals_folding_one_by_one_and_checks_everything_first():
    rng = np.random.default_rng(3)
    size = 3000
    xs = [rng.standard_normal(size).astype(np.float32) for _ in range(9)]  # > FOLD_GROUP
    ws = list(rng.uniform(0.1, 10, 9))
    one, many = FedAvg(size=size), FedAvg(size=size)
    for s in (one, many):
        s.begin_round(round=1, global_params=np.zeros(size, np.float32))
    for x, w in zip(xs, ws, strict=True):
        one.fold(x, w)
    many.fold_many(xs, ws)
    np.testing.assert_allclose(many.finish(), one.finish(), rtol=1e-6)
    assert many.folded == 9 and many.weight_total == pytest.approx(sum(ws))
    with pytest.raises(ValueError, match="weight"):
        many.fold_many(xs[:2], [1.0, -1.0])
    with pytest.raises(ValueError, match="shape"):
        many.fold_many([xs[0], xs[1][:-1]], [1.0, 1.0])
    assert many.folded == 9  # nothing of a rejected batch was folded


def test_fedavg_is_the_weighted_mean_and_resets_each_round():
    rng = np.random.default_rng(1)
    size = 777
    strategy = FedAvg(size=size)
    for _ in range(2):
        strategy.begin_round(round=1, global_params=np.zeros(size, np.float32))
        xs = [rng.standard_normal(size).astype(np.float32) for _ in range(4)]
        ws = rng.uniform(1, 50, 4)
        for x, w in zip(xs, ws, strict=True):
            strategy.fold(x, w)
        expected = sum(w * x.astype(np.float64) for x, w in zip(xs, ws, strict=True)) / ws.sum()
        got = strategy.finish()
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight"):
            strategy.fold(xs[0], bad)


def test_fedavg_fold_allocates_nothing_proportional_to_the_model():
    size = 2_000_000
    strategy = FedAvg(size=size)
    strategy.begin_round(round=1, global_params=np.zeros(size, np.float32))
    x = np.ones(size, np.float32)
    tracemalloc.start()
    for _ in range(8):
        strategy.fold(x, 2.0)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < size  # a single temporary of the update would be >= 4 * size bytes
    assert strategy.finish()[0] == 1.0


def test_finish_without_updates_and_fedprox_config():
    with pytest.raises(ValueError, match="no update"):
        FedAvg(size=3).finish()
    assert FedProx(size=3, params={"proximalMu": 0.25}).client_config() == {"proximal_mu": 0.25}


def block(positions, heads=2, dim=3):
    pos = np.asarray(positions, dtype=np.int64)
    k = np.broadcast_to(pos[None, :, None].astype(np.float32), (heads, pos.size, dim)).copy()
    return k, k + 0.5, pos


@pytest.mark.parametrize(
    ("part", "match"),
    [
        (block([1, 1]), "repeat"),
        (block([-1]), ">= 0"),
        ((np.zeros((2, 3, 4), np.float32), np.zeros((2, 3, 5), np.float32), np.arange(3)), "share a shape"),
        ((np.zeros((2, 3, 4), np.float32),) * 2 + (np.arange(2),), r"shape \(3,\)"),
        ((np.zeros((2, 3, 4), np.float32),) * 2 + (np.arange(3.0),), "integers"),
    ],
)
def test_check_part_rejects_malformed_blocks(part, match):
    with pytest.raises(ValueError, match=match):
        check_part(*part)


def test_barrier_checks_each_arrival_against_the_others():
    barrier = Barrier(layer=0, expected=frozenset({"a", "b"}))
    sent = ([np.zeros(1, np.uint8)], {"count": 2})  # the wire form is kept as it came, to be forwarded
    barrier.add("a", block([0, 2]), wire_form=sent)
    with pytest.raises(ValueError, match="another participant"):
        barrier.add("b", block([2]), wire_form=sent)
    with pytest.raises(ValueError, match="heads"):
        barrier.add("b", block([3], heads=4), wire_form=sent)
    assert not barrier.complete and barrier.missing() == ["b"]
    barrier.add("b", block([1]), wire_form=sent)
    assert barrier.complete and barrier.missing() == []
    assert barrier.wire_forms == {"a": sent, "b": sent}


def test_event_queue_is_bounded_ordered_and_keeps_what_could_not_be_sent():
    dropped = []
    queue = EventQueue(limit=3, on_drop=lambda: dropped.append(1))
    for i in range(5):
        queue.push({"n": i})
    assert len(queue) == 3 and len(dropped) == 2
    delivered = []

    def flaky(event):
        if event["n"] == 4:
            return False
        delivered.append(event)
        return True

    assert queue.flush(flaky, now=0.0) == 2
    assert [e["n"] for e in delivered] == [2, 3]
    assert [e["event_id"] for e in delivered] == [3, 4]
    assert queue.flush(lambda e: delivered.append(e) or True, now=0.0) == 1
    assert delivered[-1]["n"] == 4 and queue.unacked == 3  # sent, held until acknowledged
    queue.ack({"epoch": queue.epoch, "event_id": 5})
    assert len(queue) == 0


def test_unacknowledged_events_are_sent_again_and_acks_of_another_epoch_count_for_nothing():
    queue = EventQueue(resend_seconds=10.0)
    for i in range(3):
        queue.push({"n": i})
    sent: list[dict] = []
    assert queue.flush(lambda e: sent.append(e) or True, now=0.0) == 3
    queue.ack({"epoch": queue.epoch + 1, "event_id": 3})  # a restarted aggregator's numbers: not ours
    queue.ack({"epoch": queue.epoch, "event_id": 1})
    assert queue.flush(lambda e: sent.append(e) or True, now=9.9) == 0  # not due yet
    assert queue.flush(lambda e: sent.append(e) or True, now=10.0) == 2  # 2 and 3 again, in order
    assert [e["event_id"] for e in sent] == [1, 2, 3, 2, 3] and sent[3] == sent[1]


def test_allowlist_directory_ctl_allow_and_revoke(tmp_path):
    alice, bob, eve = pki.curve_keypair(), pki.curve_keypair(), pki.curve_keypair()
    (tmp_path / "alice.curve.pub").write_bytes(alice.public + b"\n")
    (tmp_path / "broken.curve.pub").write_bytes(b"not a key")
    (tmp_path / "README").write_text("ignored")
    assert read_key_dir(tmp_path) == {alice.public: "alice"}
    allow = Allowlist(tmp_path)
    assert allow.callback("*", alice.public) and allow.name_of(alice.public) == "alice"
    assert not allow.callback("*", bob.public)
    allow.allow("bob", bob.public)
    assert allow.name_of(bob.public) == "bob"
    allow.allow("bob", eve.public)  # a new key for bob replaces the old one
    assert not allow.callback("*", bob.public) and allow.name_of(eve.public) == "bob"
    allow.revoke("alice")
    allow.rescan()  # the file is still there, the revocation still wins
    assert not allow.callback("*", alice.public) and not allow.is_allowed("alice")
    (tmp_path / "alice.curve.pub").unlink()
    allow.allow("alice", alice.public)
    assert allow.is_allowed("alice")
    with pytest.raises(ValueError):
        allow.allow("x", b"short")
