"""The aggregator over real sockets: CurveZMQ + ZAP on 127.0.0.1, a served ROUTER in a thread.

Every test drives the server only through the wire (participants and the coordinator are real
DEALERs with their own Curve keys) and reads its Prometheus metrics back.
"""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fedattn import pki, wire
from fedattn.aggregator.client import AggregatorClient, Timeout
from fedattn.aggregator.server import CONTROL_IDENTITY, Aggregator, Hooks
from fedattn.attention.exchange import block_message, read_reply

SESSION = "s1"
MEMBERS = ("alice", "bob", "carol")


class Harness:
    """A running aggregator plus the key material to connect to it as anyone."""

    def __init__(self, root: Path, *, hooks: Hooks | None = None, max_message_bytes: int = 4 << 20) -> None:
        self.allow_dir = root / "allow"
        self.allow_dir.mkdir()
        self.server_keys = pki.curve_keypair()
        self.keys = {name: pki.curve_keypair() for name in (CONTROL_IDENTITY, *MEMBERS, "mallory")}
        for name in (CONTROL_IDENTITY, *MEMBERS):  # mallory has a key but is not allowlisted
            (self.allow_dir / f"{name}.curve.pub").write_bytes(self.keys[name].public)
        self.server = Aggregator(
            bind="tcp://127.0.0.1:0",
            server_public=self.server_keys.public,
            server_secret=self.server_keys.secret,
            allow_dir=self.allow_dir,
            max_message_bytes=max_message_bytes,
            metrics_host="127.0.0.1",
            metrics_port=0,
            hooks=hooks,
        )
        self.server.start()
        self.clients: list[AggregatorClient] = []
        self.events: list[dict] = []

    def client(self, name: str, *, as_key: str | None = None, timeout: float = 10.0) -> AggregatorClient:
        keys = self.keys[as_key or name]
        c = AggregatorClient(
            endpoint=self.server.endpoint,
            server_public=self.server_keys.public,
            public=keys.public,
            secret=keys.secret,
            session=SESSION,
            name=name,
            timeout_seconds=timeout,
        )
        self.clients.append(c)
        return c

    def metric(self, name: str, **labels: str) -> float:
        return self.server.metrics.value(name, **labels)

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.close()


def ctl(coord: AggregatorClient, events: list[dict], kind: str, **kwargs) -> dict:
    """A control request; ``ctl_event`` pushes that arrive before the reply are collected."""
    coord.send(kind, **kwargs)
    while True:
        msg = coord.recv()
        if msg.kind == "ctl_event":
            events.append(msg.meta)
            continue
        assert msg.kind == "ctl_reply"
        return msg.meta


def wait_event(coord: AggregatorClient, events: list[dict], event: str, **match) -> dict:
    """Next ``ctl_event`` of this type (collected earlier or arriving now)."""
    while True:
        for e in events:
            if e["event"] == event and all(e.get(k) == v for k, v in match.items()):
                events.remove(e)
                return e
        msg = coord.recv()
        assert msg.kind == "ctl_event", msg.kind
        events.append(msg.meta)


@pytest.fixture
def h(tmp_path):
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def configure_learning(
    h: Harness, *, size: int, weights=None, initial=None, members=("alice", "bob"), spec: dict | None = None
):
    coord = h.client(CONTROL_IDENTITY)
    meta = {
        "mode": "learning",
        "spec": {"rounds": 3, "minParticipants": 1, "strategy": {"name": "fedavg"}, **(spec or {})},
        "participants": weights or dict.fromkeys(members, 1.0),
        "params": size,
    }
    reply = ctl(coord, h.events, "ctl_configure", meta=meta, arrays=[] if initial is None else [initial])
    assert reply["ok"], reply
    assert reply["params"] == size
    return coord


def join(h: Harness, name: str) -> AggregatorClient:
    """A learning participant's hello (attention ones announce their prompt, see ``announce``)."""
    c = h.client(name)
    welcome = c.request("hello")
    assert welcome.kind == "welcome" and welcome.meta == {"mode": "learning"}, welcome
    return c


def open_round(h: Harness, coord, r: int, members) -> None:
    reply = ctl(coord, h.events, "ctl_open_round", round=r, meta={"participants": list(members)})
    assert reply["ok"], reply


# --- authentication -------------------------------------------------------------------------------


def test_unlisted_key_is_refused_until_its_file_appears(h):
    mallory = h.client("mallory", timeout=1.5)
    mallory.send("hello")
    with pytest.raises(Timeout):
        mallory.recv()
    assert h.metric("fedattn_aggregator_bytes_received_total") == 0
    # the directory is rescanned: once the key file exists, a new connection with that key gets in
    # (libzmq does not reconnect a DEALER whose handshake was refused)
    (h.allow_dir / "mallory.curve.pub").write_bytes(h.keys["mallory"].public)
    deadline = time.monotonic() + 20
    while not h.server.allowlist.is_allowed("mallory"):
        assert time.monotonic() < deadline, "allowlist directory was not rescanned"
        time.sleep(0.05)
    reply = h.client("mallory").request("hello")
    assert reply.kind == "error" and reply.meta["code"] == "unknown_session"


def test_valid_key_with_a_lying_name_is_rejected(h):
    configure_learning(h, size=4)
    liar = h.client("bob", as_key="alice")
    reply = liar.request("hello")
    assert reply.kind == "error"
    assert reply.meta["code"] == "identity_mismatch"
    assert "alice" in reply.meta["message"]
    assert h.metric("fedattn_aggregator_rejected_total", reason="identity_mismatch") == 1
    assert "bob" not in h.server.sessions[SESSION].routes


def test_participant_may_not_send_control_requests(h):
    configure_learning(h, size=4)
    alice = h.client("alice")
    reply = alice.request("ctl_finish", meta={"reason": "mine"})
    assert reply.meta["code"] == "unexpected_kind"


def test_ctl_allow_and_revoke(h):
    coord = configure_learning(h, size=4)
    dave_keys = pki.curve_keypair()
    h.keys["dave"] = dave_keys
    assert ctl(coord, h.events, "ctl_allow", meta={"participant": "dave", "public_key": dave_keys.public.decode()})[
        "ok"
    ]
    dave = h.client("dave")
    assert dave.request("hello").meta["code"] == "not_in_session"  # authenticated: the session answers
    live = join(h, "alice")
    assert ctl(coord, h.events, "ctl_revoke", meta={"participant": "alice"})["ok"]
    refused = live.request("bye")
    assert refused.kind == "error" and refused.meta["code"] == "unauthenticated"
    # alice's file is still in the directory, but the revocation wins, for new and live connections
    late = h.client("alice", timeout=1.5)
    late.send("hello")
    with pytest.raises(Timeout):
        late.recv()


# --- malformed input ------------------------------------------------------------------------------


def _mutate_header(frames, **changes):
    header = msgpack.unpackb(bytes(frames[0]), raw=False)
    for key, value in changes.items():
        if key.startswith("array_"):
            header["arrays"][0][key[len("array_") :]] = value
        else:
            header[key] = value
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def _update_frames(x: np.ndarray, *, seq: int, round: int = 1):
    return wire.encode(
        kind="update",
        session=SESSION,
        participant="alice",
        round=round,
        seq=seq,
        meta={"num_examples": 10},
        arrays=[x],
    )


def test_each_malformed_update_is_named_and_others_are_still_served(h):
    size = 256
    coord = configure_learning(h, size=size)
    alice, bob = join(h, "alice"), join(h, "bob")
    open_round(h, coord, 1, ["alice", "bob"])
    assert alice.recv().kind == "model" and bob.recv().kind == "model"
    good = np.linspace(-1, 1, size, dtype=np.float32)
    nan = good.copy()
    nan[3] = np.nan
    inf = good.copy()
    inf[7] = -np.inf
    corrupt = list(_update_frames(good, seq=alice.next_seq()))
    flipped = bytearray(corrupt[1])
    flipped[5] ^= 0xFF
    corrupt[1] = bytes(flipped)
    cases = {
        "bad_dtype": _mutate_header(_update_frames(good, seq=alice.next_seq()), array_dtype="complex64"),
        "length_mismatch": [*_update_frames(good, seq=alice.next_seq())[:1], bytes(corrupt[1])[:-4]],
        "checksum": corrupt,
        "non_finite": _update_frames(nan, seq=alice.next_seq()),
        "oversized": _update_frames(np.zeros(100 * size, np.float32), seq=alice.next_seq()),
        "shape_mismatch": _update_frames(good[:-1], seq=alice.next_seq()),
        "malformed_header": [b"\x93not a map", bytes(memoryview(good).cast("B"))],
        "bad_version": _mutate_header(_update_frames(good, seq=alice.next_seq()), v=99),
        "frame_count": _update_frames(good, seq=alice.next_seq())[:1],
    }
    cases["non_finite_inf"] = _update_frames(inf, seq=alice.next_seq())
    for code, frames in cases.items():
        alice.send_frames(frames)
        reply = alice.recv()
        assert reply.kind == "error", code
        assert reply.meta["code"] == code.removesuffix("_inf"), (code, reply.meta)
        assert reply.meta["message"]
    # a wrong-dtype float16 vector of the right length is a shape/dtype mismatch for the session
    assert (
        alice.request("update", round=1, meta={"num_examples": 3}, arrays=[good.astype(np.float16)]).meta["code"]
        == "shape_mismatch"
    )
    assert alice.request("update", round=1, meta={"num_examples": -3}, arrays=[good]).meta["code"] == "bad_meta"
    # bob, in the same round, is served and folded; alice can still contribute after her garbage
    assert bob.request("update", round=1, meta={"num_examples": 3}, arrays=[-good]).kind == "ack"
    assert alice.request("update", round=1, meta={"num_examples": 1}, arrays=[good]).kind == "ack"
    reply = ctl(coord, h.events, "ctl_close_round", round=1)
    assert reply["ok"] and reply["contributions"] == 2 and reply["weight_total"] == 4.0
    assert h.metric("fedattn_aggregator_rejected_total", reason="non_finite") == 2
    assert h.metric("fedattn_aggregator_rejected_total", reason="checksum") == 1
    assert h.metric("fedattn_aggregator_contributions_accepted_total", kind="update") == 2
    rejected = [e for e in h.events if e["event"] == "rejected"]
    assert {e["reason"] for e in rejected} >= {"checksum", "oversized", "non_finite"}


def test_frame_above_socket_limit_is_dropped_and_others_keep_going(tmp_path):
    h = Harness(tmp_path, max_message_bytes=64 * 1024)
    try:
        coord = configure_learning(h, size=16)
        bob = join(h, "bob")
        big = h.client("alice", timeout=1.5)
        big.send("hello", arrays=[np.zeros(100_000, np.float32)])  # 400 KB frame > maxmsgsize
        with pytest.raises(Timeout):  # libzmq drops it and disconnects: no reply is possible
            big.recv()
        assert bob.request("bye").kind == "ack"
        assert ctl(coord, h.events, "ctl_status")["ok"]
    finally:
        h.close()


# --- learning rounds ------------------------------------------------------------------------------


def test_stale_and_duplicate_updates_are_rejected_and_counted(h):
    size = 32
    coord = configure_learning(h, size=size)
    alice, bob = join(h, "alice"), join(h, "bob")
    open_round(h, coord, 1, ["alice", "bob"])
    alice.recv(), bob.recv()
    x = np.ones(size, np.float32)
    seq = alice.send("update", round=1, meta={"num_examples": 5}, arrays=[x])
    assert alice.recv().kind == "ack"
    # same message again (replayed seq), then a fresh message for a round already contributed to
    alice.send("update", round=1, meta={"num_examples": 5}, arrays=[x], seq=seq)
    assert alice.recv().meta["code"] == "duplicate"
    assert alice.request("update", round=1, meta={"num_examples": 5}, arrays=[x]).meta["code"] == "duplicate"
    assert ctl(coord, h.events, "ctl_close_round", round=1)["ok"]
    late = bob.request("update", round=1, meta={"num_examples": 5}, arrays=[x])
    assert late.kind == "error" and late.meta["code"] == "stale_round"
    assert h.metric("fedattn_aggregator_rejected_total", reason="duplicate") == 2
    assert h.metric("fedattn_aggregator_rejected_total", reason="stale_round") == 1
    assert h.metric("fedattn_aggregator_rounds_closed_total") == 1


def test_round_numbers_only_move_forward_and_configure_is_idempotent(h):
    coord = configure_learning(h, size=8)
    again = {"mode": "learning", "spec": {}, "participants": {"alice": 1.0, "bob": 1.0}, "params": 8}
    assert ctl(coord, h.events, "ctl_configure", meta=again)["ok"]
    other = {**again, "participants": {"alice": 1.0}}
    assert not ctl(coord, h.events, "ctl_configure", meta=other)["ok"]
    unknown = ctl(coord, h.events, "ctl_open_round", round=9, meta={"participants": ["zed"]})
    assert not unknown["ok"] and "zed" in unknown["error"]
    open_round(h, coord, 5, ["alice"])  # e.g. a coordinator continuing after an aggregator restart
    assert "still open" in ctl(coord, h.events, "ctl_open_round", round=6, meta={"participants": ["alice"]})["error"]
    reply = ctl(coord, h.events, "ctl_close_round", round=5)
    assert not reply["ok"] and "no contributions" in reply["error"]


def test_a_restarted_participant_is_not_taken_for_a_replay(h):
    coord = configure_learning(h, size=8)
    first = join(h, "alice")
    open_round(h, coord, 1, ["alice"])
    assert first.recv().kind == "model"
    first.close()
    h.clients.remove(first)
    again = join(h, "alice")  # a new process: new DEALER, new routing id, fresh seq counter
    assert again.recv().kind == "model"  # the open round's model comes with the new hello
    ack = again.request("update", round=1, meta={"num_examples": 2}, arrays=[np.ones(8, np.float32)])
    assert ack.kind == "ack", ack.meta


def test_update_from_member_left_out_of_the_round(h):
    coord = configure_learning(h, size=8, members=("alice", "bob", "carol"))
    carol = join(h, "carol")
    open_round(h, coord, 1, ["alice", "bob"])
    reply = carol.request("update", round=1, meta={"num_examples": 1}, arrays=[np.zeros(8, np.float32)])
    assert reply.meta["code"] == "not_in_round"


def test_fedavg_matches_closed_form_and_reports_accuracy(tmp_path):
    size = 10_000
    rng = np.random.default_rng(7)
    initial = rng.standard_normal(size).astype(np.float32)
    h = Harness(tmp_path, hooks=Hooks(evaluator=lambda session, spec: lambda p: float(np.mean(p > 0))))
    try:
        weights = {"alice": 1.0, "bob": 2.0, "carol": 0.5}
        coord = configure_learning(h, size=size, weights=weights, initial=initial)
        clients = {n: join(h, n) for n in weights}
        expected = initial.astype(np.float64)
        sent_crc = {}
        for r in (1, 2):
            open_round(h, coord, r, list(weights))
            updates, w = [], []
            for name, c in clients.items():
                model = c.recv()
                assert model.kind == "model" and model.round == r
                np.testing.assert_allclose(model.arrays[0], expected, rtol=1e-6, atol=1e-6)
                examples = int(rng.integers(1, 100))
                x = (model.arrays[0] + rng.standard_normal(size)).astype(np.float32)
                assert c.request("update", round=r, meta={"num_examples": examples}, arrays=[x]).kind == "ack"
                updates.append(x.astype(np.float64))
                sent_crc[(name, r)] = wire.checksum(x)
                w.append(examples * weights[name])
            reply = ctl(coord, h.events, "ctl_close_round", round=r)
            expected = sum(wi * xi for wi, xi in zip(w, updates, strict=True)) / sum(w)
            assert reply["ok"] and reply["contributions"] == 3
            assert reply["weight_total"] == pytest.approx(sum(w))
            assert reply["accuracy"] == pytest.approx(np.mean(expected > 0), abs=1e-3)
            assert h.metric("fedattn_aggregator_accuracy_ratio", session=SESSION) == reply["accuracy"]
            assert reply["aggregation_seconds"] > 0
        assert ctl(coord, h.events, "ctl_finish", meta={"reason": "rounds"})["ok"]
        for c in clients.values():
            done = c.recv()
            assert done.kind == "done" and done.meta == {"reason": "rounds"}
            np.testing.assert_allclose(done.arrays[0], expected, rtol=1e-6, atol=1e-6)
            assert wire.checksum(done.arrays[0]) == reply["model_checksum"]
        contributions = [e for e in h.events if e["event"] == "contribution"]
        h.events[:] = [e for e in h.events if e["event"] != "contribution"]
        while len(contributions) < 6:
            contributions.append(wait_event(coord, h.events, "contribution"))
        assert {(e["participant"], e["round"]) for e in contributions} == {(n, r) for n in weights for r in (1, 2)}
        assert all(e["bytes"] == size * 4 for e in contributions)
        assert all(e["checksum"] == sent_crc[(e["participant"], e["round"])] for e in contributions)
    finally:
        h.close()


def test_model_is_sent_to_a_participant_who_says_hello_after_the_round_opened(h):
    coord = configure_learning(h, size=8, initial=np.full(8, 0.5, np.float32))
    open_round(h, coord, 1, ["alice", "bob"])
    alice = h.client("alice")
    assert alice.request("hello").kind == "welcome"
    model = alice.recv()
    assert model.kind == "model" and model.round == 1 and model.meta["config"]["rounds"] == 3
    np.testing.assert_array_equal(model.arrays[0], np.full(8, 0.5, np.float32))


def test_hello_before_configure_still_gets_the_model(h):
    alice = h.client("alice")
    early = alice.request("hello")
    assert early.kind == "error" and early.meta["code"] == "unknown_session"
    coord = configure_learning(h, size=8, initial=np.full(8, 2.0, np.float32))
    reply = ctl(coord, h.events, "ctl_open_round", round=1, meta={"participants": ["alice", "bob"]})
    assert reply["sent"] == ["alice"] and reply["waiting_for_hello"] == ["bob"]
    model = alice.recv()
    assert model.kind == "model" and model.round == 1
    np.testing.assert_array_equal(model.arrays[0], np.full(8, 2.0, np.float32))


def test_compressed_delta_is_decoded_against_the_global_model(h):
    from fedattn.learning import compression

    size = 1000
    initial = np.linspace(-1, 1, size, dtype=np.float32)
    session_compression = {"quantizeBits": 0, "topK": 0.003}
    coord = configure_learning(h, size=size, initial=initial, spec={"compression": session_compression})
    alice = join(h, "alice")
    open_round(h, coord, 1, ["alice"])
    alice.recv()
    delta = np.zeros(size, np.float32)
    delta[[3, 500, 999]] = [0.5, -2.0, 1.25]
    spec = compression.CompressionSpec(top_k=session_compression["topK"])
    arrays, meta = compression.encode(delta, spec=spec)
    assert sum(a.nbytes for a in arrays) < delta.nbytes / 10
    ack = alice.request("update", round=1, arrays=arrays, meta={"num_examples": 4, "compression": meta})
    assert ack.kind == "ack", ack.meta
    assert ctl(coord, h.events, "ctl_close_round", round=1)["ok"]
    assert ctl(coord, h.events, "ctl_finish", meta={"reason": "rounds"})["ok"]
    done = alice.recv()
    np.testing.assert_allclose(done.arrays[0], initial + delta, rtol=1e-6, atol=1e-7)
    bad = {**meta, "size": size + 1}
    open_round(h, coord, 2, ["alice"])
    alice.recv()
    err = alice.request("update", round=2, arrays=arrays, meta={"num_examples": 4, "compression": bad})
    assert err.kind == "error" and err.meta["code"] == "bad_encoding"


def test_dp_session_folds_through_the_wrapped_rule(h):
    coord = h.client(CONTROL_IDENTITY)
    size = 64
    spec = {"minParticipants": 1, "privacy": {"dp": {"noiseMultiplier": 1.0, "clipNorm": 0.5}}}
    meta = {"mode": "learning", "spec": spec, "participants": {"alice": 1.0, "bob": 1.0}, "params": size}
    assert ctl(coord, h.events, "ctl_configure", meta=meta)["ok"]
    alice, bob = join(h, "alice"), join(h, "bob")
    open_round(h, coord, 1, ["alice", "bob"])
    alice.recv(), bob.recv()
    for c, value in ((alice, 10.0), (bob, 10.0)):
        ack = c.request("update", round=1, meta={"num_examples": 1}, arrays=[np.full(size, value, np.float32)])
        assert ack.kind == "ack", ack.meta
    reply = ctl(coord, h.events, "ctl_close_round", round=1)
    assert reply["ok"] and reply["contributions"] == 2, reply
    assert ctl(coord, h.events, "ctl_finish", meta={"reason": "rounds"})["ok"]
    final = alice.recv().arrays[0]
    # each update's change (10 per coordinate) is clipped to norm 0.5, i.e. 0.0625 per coordinate, then
    # noised (std 0.25): without clipping the mean would be 10 everywhere, without noise constant
    assert np.all(np.isfinite(final)) and np.abs(final).max() < 5.0
    assert np.std(final) > 0.01


# --- events and probes ----------------------------------------------------------------------------


def test_events_wait_for_a_coordinator_that_was_away(h):
    coord = configure_learning(h, size=8)
    coord.close()
    h.clients.remove(coord)
    time.sleep(0.5)  # NB: let the ROUTER see the disconnect, else the event goes down the dying pipe
    alice = join(h, "alice")
    assert alice.request("bye").kind == "ack"
    assert len(h.server.events) >= 1  # queued, not dropped
    back = h.client(CONTROL_IDENTITY)
    events: list[dict] = []
    status = ctl(back, events, "ctl_status")
    assert status["sessions"][SESSION]["hello"] == []  # bye removed alice's route
    hello = wait_event(back, events, "hello", participant="alice")
    assert hello["session"] == SESSION and hello["event_id"] >= 1


def test_probes_and_metrics_over_http(h):
    coord = configure_learning(h, size=8)
    assert ctl(coord, h.events, "ctl_status")["ok"]
    base = f"http://127.0.0.1:{h.server.metrics_port}"
    with urllib.request.urlopen(f"{base}/healthz") as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{base}/readyz") as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{base}/metrics") as r:
        text = r.read().decode()
    received = [line for line in text.splitlines() if line.startswith("fedattn_aggregator_bytes_received_total ")]
    assert received and float(received[0].split()[1]) > 0
    for name in (
        "bytes_sent_total",
        "aggregation_seconds_bucket",
        "sync_latency_seconds_bucket",
        "rounds_closed_total",
    ):
        assert f"fedattn_aggregator_{name}" in text


# --- attention: KV sync barrier -------------------------------------------------------------------

HEADS, DIM = 2, 4
#: what attention participants announce about the model (8 layers, default syncInterval 2: 0, 2, 4, 6 sync)
MODEL_SHAPE = {"n_layers": 8, "n_kv_heads": HEADS, "head_dim": DIM}


def kv_block(positions) -> list[np.ndarray]:
    """K/V rows that encode their own position, so where a row lands can be checked exactly."""
    pos = np.asarray(positions, dtype=np.int64)
    k = (pos[None, :, None] * 100 + np.arange(HEADS)[:, None, None] * 10 + np.arange(DIM)[None, None, :]).astype(
        np.float32
    )
    return [k, -k, pos]


def kv_msg(positions) -> dict:
    """A float32 ``kv`` message with its positions as a trailing array (any block may be sent so)."""
    return {"arrays": kv_block(positions), "meta": {"count": len(positions)}}


def configure_attention(h: Harness, *, min_participants: int = 3, timeout: int = 300):
    coord = h.client(CONTROL_IDENTITY)
    meta = {
        "mode": "attention",
        # NB: float32 blocks keep the forwarded rows readable; the int4 default has its own test below
        "spec": {"minParticipants": min_participants, "roundTimeoutSeconds": timeout, "kvCodec": "float32"},
        "participants": dict.fromkeys(MEMBERS, 1.0),
    }
    assert ctl(coord, h.events, "ctl_configure", meta=meta)["ok"]
    return coord


def announce(h: Harness, tokens: dict[str, int]) -> dict[str, AggregatorClient]:
    """Attention hello: each participant says how many private prompt tokens it holds."""
    clients = {}
    for name, count in tokens.items():
        clients[name] = h.client(name)
        clients[name].send("hello", meta={"tokens": count, "prefix": 0, "model": MODEL_SHAPE})
    return clients


def test_prompt_layout_is_announced_once_everyone_said_hello(h):
    coord = configure_attention(h)
    clients = announce(h, {"alice": 5, "bob": 3})
    with pytest.raises(Timeout):  # carol is missing: no layout yet
        clients["alice"].recv(timeout_seconds=0.5)
    clients |= announce(h, {"carol": 2})
    befores = {}
    for name, c in clients.items():
        welcome = c.recv()
        assert welcome.kind == "welcome" and welcome.meta["participants"] == list(MEMBERS)
        befores[name] = welcome.meta["tokens_before"]
    assert befores == {"alice": 0, "bob": 5, "carol": 8}
    bad = h.client("alice").request("hello", meta={"tokens": 0})
    assert bad.kind == "error" and bad.meta["code"] == "bad_layout"
    assert ctl(coord, h.events, "ctl_status")["ok"]


def test_kv_each_participant_gets_the_blocks_before_it_in_prompt_order(h):
    coord = configure_attention(h)
    # slices 0..4, 5..7, 8..9; alice sends a sparse subset of hers (kvKeepRatio < 1)
    own = {"alice": [0, 2, 4], "bob": [5, 6, 7], "carol": [8, 9]}
    clients = announce(h, {"alice": 5, "bob": 3, "carol": 2})
    assert all(c.recv().kind == "welcome" for c in clients.values())
    for name in MEMBERS:
        clients[name].send("kv", layer=2, **kv_msg(own[name]))
    for name, c in clients.items():
        msg = c.recv()
        assert msg.kind == "kv_global" and msg.layer == 2 and msg.meta["participants"] == sorted(MEMBERS)
        k, v, positions = read_reply(msg.arrays, msg.meta["blocks"], "float32")
        visible = sorted(p for ps in own.values() for p in ps if p < min(own[name]))  # never its own rows
        np.testing.assert_array_equal(positions, visible)
        if visible:
            np.testing.assert_array_equal(k, kv_block(visible)[0])
            np.testing.assert_array_equal(v, -k)
    sync = wait_event(coord, h.events, "sync", layer=2)
    assert sync["bytes"] > 0 and sync["latency_ms"] >= 0
    assert h.metric("fedattn_aggregator_sync_latency_seconds_count") == 1
    assert h.metric("fedattn_aggregator_contributions_accepted_total", kind="kv") == 3
    late = clients["alice"].request("kv", layer=2, **kv_msg([11]))
    assert late.meta["code"] == "stale_round"


def test_kv_rejects_overlap_bad_shapes_nan_and_duplicates(h):
    configure_attention(h)
    clients = announce(h, {"alice": 3, "bob": 2, "carol": 1})  # carol sends no KV: the barrier waits for her
    assert all(c.recv().kind == "welcome" for c in clients.values())
    alice, bob = clients["alice"], clients["bob"]
    alice.send("kv", layer=0, **kv_msg([0, 1, 2]))
    # NB: two sockets race; bob's overlapping block must arrive after alice's was taken.
    deadline = time.monotonic() + 10
    while h.metric("fedattn_aggregator_contributions_accepted_total", kind="kv") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert bob.request("kv", layer=0, **kv_msg([2, 3])).meta["code"] == "bad_kv"  # 2 is alice's
    k, v, pos = kv_block([3, 4])
    two = {"count": 2}
    k1, v1, pos1 = kv_block([3])  # NB: one row, so twice the heads still fits the layout's payload bound
    wrong_heads = [np.concatenate([k1, k1]), np.concatenate([v1, v1]), pos1]
    assert "heads" in bob.request("kv", layer=0, arrays=wrong_heads, meta={"count": 1}).meta["message"]
    k_nan = k.copy()
    k_nan[0, 0, 0] = np.nan
    assert bob.request("kv", layer=0, arrays=[k_nan, v, pos], meta=two).meta["code"] == "non_finite"
    assert bob.request("kv", layer=0, arrays=[k, v], meta=two).meta["code"] == "shape_mismatch"
    assert bob.request("kv", layer=0, arrays=[k, v, pos]).meta["code"] == "shape_mismatch"  # no count
    assert bob.request("kv", layer=0, arrays=[k, v], meta={"start": 3, "count": 3}).meta["code"] == "shape_mismatch"
    assert alice.request("kv", layer=0, **kv_msg([5])).meta["code"] == "duplicate"
    # bob's good block is still taken: 2 of 3 present, barrier waits for carol
    bob.send("kv", layer=0, arrays=[k, v], meta={"start": 3, "count": 2})
    with pytest.raises(Timeout):
        bob.recv(timeout_seconds=0.5)
    assert sorted(h.server.sessions[SESSION].barriers[0].parts) == ["alice", "bob"]


def test_coded_blocks_are_forwarded_as_sent_and_holders_that_do_not_listen_get_none(h):
    coord = h.client(CONTROL_IDENTITY)
    spec = {"minParticipants": 3, "publisher": "carol", "kvCodec": "int4", "holderSync": "none"}
    meta = {"mode": "attention", "spec": spec, "participants": dict.fromkeys(MEMBERS, 1.0)}
    assert ctl(coord, h.events, "ctl_configure", meta=meta)["ok"]
    own = {"alice": [0, 1, 2], "bob": [3, 4], "carol": [5, 6]}  # the layout's slices (prefix 0)
    clients = announce(h, {n: len(p) for n, p in own.items()})
    assert all(c.recv().kind == "welcome" for c in clients.values())
    rng = np.random.default_rng(0)
    sent = {}
    for name in ("alice", "bob"):
        k, v = rng.normal(size=(2, HEADS, len(own[name]), DIM)).astype(np.float32)
        sent[name] = block_message(k, v, np.array(own[name]), "int4")
        assert sent[name][1] == {"start": own[name][0], "count": len(own[name])}
    # a float32 block in an int4 session is refused; so is a block out of prompt order
    # NB: one float32 row fits the int4 payload bound of the longest slice; more are refused as oversized
    refused = clients["alice"].request("kv", layer=1, **kv_msg(own["alice"][:1]))
    assert refused.meta["code"] == "shape_mismatch" and "int4" in refused.meta["message"]
    early = block_message(*rng.normal(size=(2, HEADS, 2, DIM)).astype(np.float32), np.array([1, 2]), "int4")
    clients["bob"].send("kv", layer=1, arrays=sent["bob"][0], meta=sent["bob"][1])
    # NB: two sockets race; alice's out-of-order block must arrive after bob's was taken.
    deadline = time.monotonic() + 10
    while h.metric("fedattn_aggregator_contributions_accepted_total", kind="kv") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    late = clients["alice"].request("kv", layer=1, arrays=early[0], meta={"start": 3, "count": 2})
    assert late.meta["code"] == "bad_kv" and "prompt order" in late.meta["message"]
    clients["alice"].send("kv", layer=1, arrays=sent["alice"][0], meta=sent["alice"][1])
    clients["carol"].send("kv", layer=1, arrays=[], meta={"start": 0, "count": 0})  # the publisher sends no rows
    for name in ("alice", "bob"):
        got = clients[name].recv()
        assert got.kind == "kv_global" and got.meta["blocks"] == [] and got.arrays == []
    got = clients["carol"].recv()
    assert got.meta["blocks"] == [sent["alice"][1], sent["bob"][1]]
    forwarded = [*sent["alice"][0], *sent["bob"][0]]
    assert len(got.arrays) == len(forwarded)
    for a, b in zip(got.arrays, forwarded, strict=True):
        np.testing.assert_array_equal(a, b)
    k, v, positions = read_reply(got.arrays, got.meta["blocks"], "int4")
    np.testing.assert_array_equal(positions, [0, 1, 2, 3, 4])
    assert k.shape == v.shape == (HEADS, 5, DIM)


def test_kv_barrier_timeout_serves_quorum_and_reports_the_missing(h):
    coord = configure_attention(h, min_participants=2, timeout=1)
    clients = announce(h, {"alice": 2, "bob": 1, "carol": 1})
    assert all(c.recv().kind == "welcome" for c in clients.values())
    alice, bob = clients["alice"], clients["bob"]  # carol announced, then sends nothing
    alice.send("kv", layer=4, **kv_msg([0, 1]))
    bob.send("kv", layer=4, **kv_msg([2]))
    got = bob.recv(timeout_seconds=10)
    assert got.kind == "kv_global" and got.meta["participants"] == ["alice", "bob"]
    np.testing.assert_array_equal(read_reply(got.arrays, got.meta["blocks"], "float32")[2], [0, 1])
    assert alice.recv(timeout_seconds=10).kind == "kv_global"
    missed = wait_event(coord, h.events, "sync_missed", layer=4)
    assert missed["participants"] == ["carol"]
    # without quorum the waiting participant is told, and the layer can be retried
    alice.send("kv", layer=6, **kv_msg([0, 1]))
    err = alice.recv(timeout_seconds=10)
    assert err.kind == "error" and err.meta["code"] == "sync_timeout"


# --- dispatch -------------------------------------------------------------------------------------


def test_every_control_kind_has_exactly_one_handler(h):
    assert set(h.server._control) == wire.CONTROL_KINDS


def test_a_learning_session_refuses_attention_messages_by_name(h):
    configure_learning(h, size=4)
    alice = join(h, "alice")
    kv = alice.request("kv", layer=0, **kv_msg([0, 1]))
    assert kv.kind == "error"
    assert (kv.meta["code"], kv.meta["message"]) == ("unexpected_kind", "kv is for attention sessions")
    keys = alice.request("secagg_keys", round=0, meta={"public_key": "x"})
    assert (keys.meta["code"], keys.meta["message"]) == ("stale_round", "no secure aggregation round 0 is open")


def test_an_attention_session_refuses_learning_messages_by_name(h):
    configure_attention(h)
    carol = h.client("carol")
    update = carol.request("update", round=1, arrays=[np.ones(4, np.float32)], meta={"num_examples": 1})
    assert (update.meta["code"], update.meta["message"]) == ("unexpected_kind", "update is for learning sessions")
    reveal = carol.request("secagg_reveal", round=1, meta={"shares": {}})
    assert (reveal.meta["code"], reveal.meta["message"]) == ("stale_round", "no secure aggregation round 1 is open")
