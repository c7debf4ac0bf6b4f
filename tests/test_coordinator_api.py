"""The coordinator in-process with real TLS (session PKI), a real aggregator, and a real store.

Participants speak to the aggregator through the real blocking DEALER client (run in threads).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from dataclasses import replace
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from fedattn import pki
from fedattn.aggregator.client import AggregatorClient
from fedattn.aggregator.server import Aggregator, Hooks
from fedattn.attention.exchange import block_message
from fedattn.coordinator import rounds
from fedattn.coordinator.server import Config, Running, serve

PARTICIPANTS = ["alice", "bob", "carol"]
P_SIZE = 16


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    root = tmp_path / "pki"
    pki.write_session_pki(
        root, session="s", participants=[*PARTICIPANTS, "operator"], server_names=["127.0.0.1", "localhost"]
    )
    return root


@pytest.fixture
def aggregator(pki_dir: Path):
    server = pki.Paths(pki_dir, "server")
    agg = Aggregator(
        bind="tcp://127.0.0.1:*",
        server_public=server.curve_public.read_bytes(),
        server_secret=server.curve_secret.read_bytes(),
        allow_dir=pki_dir,
        hooks=Hooks(initial_params=lambda session, spec: np.zeros(P_SIZE, dtype=np.float32)),
        tick_seconds=0.02,
    )
    agg.start()
    yield agg
    agg.close()


def config(pki_dir: Path, aggregator: Aggregator, dsn: str) -> Config:
    server = pki.Paths(pki_dir, "server")
    client = pki.Paths(pki_dir, "coordinator-client")
    return Config(
        tls_cert=server.cert,
        tls_key=server.key,
        tls_ca=server.ca,
        store_dsn=dsn,
        aggregator=aggregator.endpoint,
        aggregator_public_key=server.curve_public,
        client_curve_public=client.curve_public,
        client_curve_secret=client.curve_secret,
        tick_seconds=0.02,
        control_timeout_seconds=2.0,
    )


@pytest.fixture
async def coordinator(pki_dir: Path, aggregator: Aggregator, tmp_path: Path):
    running = await serve(config(pki_dir, aggregator, f"sqlite:///{tmp_path / 'store.db'}"))
    yield running
    await running.stop()


class Api:
    """An HTTPS client holding one identity's certificate."""

    def __init__(self, running: Running, ctx: ssl.SSLContext) -> None:
        self.base = f"https://127.0.0.1:{running.api_port}"
        self.ctx = ctx

    async def call(self, method: str, path: str, body=None, *, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.base + path, data=data, ssl=self.ctx) as resp,
        ):
            return resp.status, await resp.json(content_type=None)


def as_(running: Running, pki_dir: Path, name: str) -> Api:
    paths = pki.Paths(pki_dir, name)
    return Api(running, pki.client_ssl_context(ca=paths.ca, cert=paths.cert, key=paths.key))


def manifests(name: str = "s", *, mode: str = "learning", **spec) -> dict:
    session_spec = {"mode": mode, "minParticipants": 2, "roundTimeoutSeconds": 30, "waitAfterMinSeconds": 0}
    if mode == "learning":
        session_spec["rounds"] = 2
    else:
        session_spec["publisher"] = "alice"
    session_spec.update(spec)
    return {
        "manifest": {
            "apiVersion": "fedattn.io/v1alpha1",
            "kind": "FedSession",
            "metadata": {"name": name},
            "spec": session_spec,
        },
        "participants": [
            {
                "apiVersion": "fedattn.io/v1alpha1",
                "kind": "FedParticipant",
                "metadata": {"name": p},
                "spec": {"sessionRef": name},
            }
            for p in PARTICIPANTS
        ],
    }


async def wait_for(predicate, what: str):
    """Poll until ``predicate()`` (bounded by pytest-timeout, not by a wall-clock assertion)."""
    while not await predicate():
        await asyncio.sleep(0.02)


# -- TLS and authorization -------------------------------------------------------------------------


async def test_no_client_certificate_is_refused_at_the_handshake(coordinator, pki_dir):
    anonymous = Api(coordinator, pki.client_ssl_context(ca=pki_dir / "ca.crt"))
    with pytest.raises(aiohttp.ClientError):
        await anonymous.call("GET", "/v1/sessions")


async def test_certificate_from_another_ca_is_refused(coordinator, pki_dir, tmp_path):
    other = tmp_path / "other"
    pki.write_session_pki(other, session="x", participants=["operator"], server_names=["127.0.0.1"])
    stranger = pki.Paths(other, "operator")
    # NB: trusts our server, but presents a certificate signed by another CA under the same name.
    ctx = pki.client_ssl_context(ca=pki_dir / "ca.crt", cert=stranger.cert, key=stranger.key)
    with pytest.raises(aiohttp.ClientError):
        await Api(coordinator, ctx).call("GET", "/v1/sessions")


async def test_participant_cannot_act_as_another_or_as_the_operator(coordinator, pki_dir):
    operator, alice = as_(coordinator, pki_dir, "operator"), as_(coordinator, pki_dir, "alice")
    assert (await operator.call("POST", "/v1/sessions", manifests()))[0] == 201
    status, body = await alice.call("POST", "/v1/sessions/s/participants/bob/join", {})
    assert (status, body["error"]) == (403, "forbidden") and "alice may not act as bob" in body["message"]
    assert (await alice.call("POST", "/v1/sessions", manifests("t")))[0] == 403
    assert (await alice.call("POST", "/v1/sessions/s/participants/bob/evict", {}))[0] == 403
    assert (await alice.call("GET", "/v1/sessions"))[0] == 403
    assert (await alice.call("GET", "/v1/sessions/s"))[0] == 200  # a member may read its session


async def test_oversized_body_is_413(coordinator, pki_dir):
    operator = as_(coordinator, pki_dir, "operator")
    big = json.dumps({"manifest": {"pad": "x" * (1024 * 1024)}}).encode()
    status, body = await operator.call("POST", "/v1/sessions", raw=big)
    assert (status, body["error"]) == (413, "too_large")
    # the server keeps serving
    assert (await operator.call("GET", "/v1/sessions"))[0] == 200


@pytest.mark.parametrize(
    ("raw", "expect"),
    [
        (b'{"manifest": ', "not valid JSON"),
        (b"[1, 2]", "must be a JSON object, got list"),
        (b'{"manifest": NaN}', "NaN is not a valid JSON number"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
async def test_malformed_json_is_400_with_a_message(coordinator, pki_dir, raw, expect):
    status, body = await as_(coordinator, pki_dir, "operator").call("POST", "/v1/sessions", raw=raw)
    assert (status, body["error"]) == (400, "malformed")
    assert expect in body["message"]


@pytest.mark.parametrize(
    ("change", "expect"),
    [
        ({"spec": {"mode": "bogus"}}, "spec.mode"),
        ({"spec": {"minParticipants": 5}}, "spec.minParticipants is 5 but only 3 participants"),
        ({"spec": {"mode": "attention", "publisher": "zed"}}, "spec.publisher 'zed' must be one of"),
        ({"participants": []}, "participants must be a non-empty list"),
        ({"sessionRef": "other"}, "sessionRef is 'other', not 's'"),
    ],
)
async def test_invalid_spec_is_422(coordinator, pki_dir, change, expect):
    body = manifests()
    if "spec" in change:
        body["manifest"]["spec"].update(change["spec"])
    if "participants" in change:
        body["participants"] = change["participants"]
    if "sessionRef" in change:
        body["participants"][1]["spec"]["sessionRef"] = change["sessionRef"]
    status, reply = await as_(coordinator, pki_dir, "operator").call("POST", "/v1/sessions", body)
    assert (status, reply["error"]) == (422, "invalid")
    assert expect in reply["message"]


async def test_create_is_idempotent_and_conflicts_on_another_spec(coordinator, pki_dir):
    operator = as_(coordinator, pki_dir, "operator")
    assert await operator.call("POST", "/v1/sessions", manifests()) == (201, {"name": "s", "created": True})
    assert await operator.call("POST", "/v1/sessions", manifests()) == (200, {"name": "s", "created": False})
    status, body = await operator.call("POST", "/v1/sessions", manifests(rounds=5))
    assert (status, body["error"]) == (409, "conflict")
    status, body = await operator.call("GET", "/v1/sessions/nope")
    assert (status, body["error"]) == (404, "no_session")
    status, body = await operator.call("POST", "/v1/sessions/s/participants/zed/join", {})
    assert status == 404 and "'zed' is not a participant" in body["message"]
    assert (await operator.call("DELETE", "/v1/sessions"))[0] == 405


async def test_probes_and_metrics(coordinator, pki_dir):
    base = f"http://127.0.0.1:{coordinator.metrics_port}"
    await as_(coordinator, pki_dir, "operator").call("GET", "/v1/sessions/nope")
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            async with http.get(base + "/readyz") as resp:
                return resp.status == 200

        await wait_for(ready, "link up")
        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(base + "/metrics") as resp:
            text = await resp.text()
    assert 'fedattn_coordinator_http_requests_total{code="404",path="/v1/sessions/{session}"} 1.0' in text
    assert "fedattn_coordinator_control_link_up 1.0" in text
    assert "fedattn_store_buffered_writes 0.0" in text


async def test_readyz_is_503_while_the_aggregator_is_down(pki_dir, aggregator, tmp_path):
    aggregator.close()
    running = await serve(config(pki_dir, aggregator, f"sqlite:///{tmp_path / 'store.db'}"))
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{running.metrics_port}/readyz") as resp,
        ):
            assert resp.status == 503
            assert "aggregator control link" in await resp.text()
    finally:
        await running.stop()


# -- whole sessions -------------------------------------------------------------------------------


def dealer(pki_dir: Path, aggregator: Aggregator, session: str, name: str) -> AggregatorClient:
    me = pki.Paths(pki_dir, name)
    return AggregatorClient.from_files(
        endpoint=aggregator.endpoint,
        server_public=pki_dir / "server.curve.pub",
        public=me.curve_public,
        secret=me.curve_secret,
        session=session,
        name=name,
        timeout_seconds=20,
    )


def train(
    pki_dir: Path, aggregator: Aggregator, session: str, name: str, value: float, *, gate: threading.Event | None = None
) -> list[str]:
    """A participant's data-plane life: hello, one update per model received, until done.

    With ``gate``, updates after round 1 wait until it is set.
    """
    kinds = []
    with dealer(pki_dir, aggregator, session, name) as client:
        client.send("hello")
        while True:
            msg = client.recv()
            kinds.append(msg.kind)
            if msg.kind == "model":
                if gate is not None and msg.round > 1:
                    gate.wait()
                update = np.full(P_SIZE, value, dtype=np.float32)
                client.send("update", round=msg.round, arrays=[update], meta={"num_examples": 10})
            elif msg.kind == "done":
                return kinds


async def heartbeats(api: Api, session: str, name: str) -> None:
    while True:
        await api.call("POST", f"/v1/sessions/{session}/participants/{name}/heartbeat", {})
        await asyncio.sleep(0.2)


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_store_coordinator(request, pki_dir, aggregator, tmp_path):
    if request.param == "postgresql":
        dsn = request.getfixturevalue("fresh_database")
    else:
        dsn = f"sqlite:///{tmp_path / 'store.db'}"
    running = await serve(config(pki_dir, aggregator, dsn))
    yield running
    await running.stop()


async def test_learning_session_runs_its_rounds_and_records_every_contribution(
    any_store_coordinator, pki_dir, aggregator
):
    running = any_store_coordinator
    operator = as_(running, pki_dir, "operator")
    assert (await operator.call("POST", "/v1/sessions", manifests("learn", minParticipants=3)))[0] == 201
    beats = []
    for name in PARTICIPANTS:
        api = as_(running, pki_dir, name)
        status, joined = await api.call("POST", f"/v1/sessions/learn/participants/{name}/join", {})
        assert status == 200
        assert joined["aggregator"]["endpoint"] == aggregator.endpoint
        assert joined["participants"] == PARTICIPANTS and joined["index"] == PARTICIPANTS.index(name)
        beats.append(asyncio.create_task(heartbeats(api, "learn", name)))
    try:
        kinds = await asyncio.gather(
            *(asyncio.to_thread(train, pki_dir, aggregator, "learn", n, float(i)) for i, n in enumerate(PARTICIPANTS))
        )
    finally:
        for task in beats:
            task.cancel()
    assert all(k == ["welcome", "model", "ack", "model", "ack", "done"] for k in kinds), kinds

    async def finished() -> bool:
        return (await operator.call("GET", "/v1/sessions/learn"))[1]["phase"] == "Succeeded"

    await wait_for(finished, "session succeeded")
    await running.coordinator.store.writes.flush()
    status = (await operator.call("GET", "/v1/sessions/learn"))[1]
    assert status["round"] == 2 and status["rounds_total"] == 2
    assert [(r["round"], r["state"], r["contributions"], r["weight_total"]) for r in status["rounds"]] == [
        (1, "Closed", 3, 30.0),
        (2, "Closed", 3, 30.0),
    ]
    assert status["contributions_recorded"] == 6
    assert status["participants"] == {"joined": 3, "ready": 3, "total": 3}
    assert {p: s["contributions"] for p, s in status["participant_status"].items()} == dict.fromkeys(PARTICIPANTS, 2)
    assert status["started_at"] and status["completed_at"]
    store = running.coordinator.store
    assert [r.state for r in await store.list_rounds("learn")] == ["Closed", "Closed"]
    assert (await store.get_session("learn")).phase == "Succeeded"
    assert running.metrics.value("fedattn_coordinator_rounds_total") == 2
    assert running.metrics.value("fedattn_coordinator_sessions", phase="Succeeded") == 1
    assert running.metrics.value("fedattn_coordinator_sessions", phase="Running") == 0
    assert running.metrics.value("fedattn_coordinator_contributions_recorded_total") == 6


async def test_duplicate_submission_is_rejected_recorded_and_counted(coordinator, pki_dir, aggregator):
    operator = as_(coordinator, pki_dir, "operator")
    await operator.call("POST", "/v1/sessions", manifests("dup", minParticipants=3))
    for name in PARTICIPANTS:
        await as_(coordinator, pki_dir, name).call("POST", f"/v1/sessions/dup/participants/{name}/join", {})

    def duplicate() -> str:
        with dealer(pki_dir, aggregator, "dup", "alice") as client:
            client.send("hello", seq=5)
            client.recv()  # welcome
            client.send("hello", seq=5)  # same seq again: a replay
            return client.recv().meta["code"]

    assert await asyncio.to_thread(duplicate) == "duplicate"
    store = coordinator.coordinator.store

    async def recorded() -> bool:
        await store.writes.flush()
        return bool(await store.list_events("dup", kind="rejected"))

    await wait_for(recorded, "rejection recorded")
    [event] = await store.list_events("dup", kind="rejected")
    assert (event.participant, event.reason) == ("alice", "duplicate")
    assert coordinator.metrics.value("fedattn_coordinator_contributions_rejected_total", reason="duplicate") == 1


async def test_attention_session_records_syncs_and_results(coordinator, pki_dir, aggregator):
    operator = as_(coordinator, pki_dir, "operator")
    body = manifests("attn", mode="attention", minParticipants=3)
    assert (await operator.call("POST", "/v1/sessions", body))[0] == 201
    for name in PARTICIPANTS:
        await as_(coordinator, pki_dir, name).call("POST", f"/v1/sessions/attn/participants/{name}/join", {})

    def sync(index: int, name: str) -> list[int]:
        layers = []
        with dealer(pki_dir, aggregator, "attn", name) as client:
            shape = {"n_layers": 4, "n_kv_heads": 1, "head_dim": 4}
            client.send("hello", meta={"tokens": 2, "prefix": 0, "model": shape})
            before = client.recv().meta["tokens_before"]
            for layer in (0, 2):
                k = np.full((1, 2, 4), index, dtype=np.float32)
                positions = np.array([before, before + 1], dtype=np.int64)
                arrays, meta = block_message(k, k.copy(), positions, "int4")  # the default kvCodec
                client.send("kv", layer=layer, arrays=arrays, meta=meta)
                layers.append(client.recv().layer)
        return layers

    got = await asyncio.gather(*(asyncio.to_thread(sync, i, n) for i, n in enumerate(PARTICIPANTS)))
    assert got == [[0, 2]] * 3
    for name in PARTICIPANTS:
        result = {"fidelity": {"top1": 1.0}, "text": f"answer of {name}"}
        api = as_(coordinator, pki_dir, name)
        assert await api.call("POST", f"/v1/sessions/attn/participants/{name}/leave", {"result": result}) == (200, {})

    async def finished() -> bool:
        status = (await operator.call("GET", "/v1/sessions/attn"))[1]
        return status["phase"] == "Succeeded" and status["syncs"] == 2

    await wait_for(finished, "attention session done")
    await coordinator.coordinator.store.writes.flush()
    status = (await operator.call("GET", "/v1/sessions/attn"))[1]
    assert status["results"]["bob"] == {"fidelity": {"top1": 1.0}, "text": "answer of bob"}
    assert set(status["results"]) == set(PARTICIPANTS)
    seen_by_alice = (await as_(coordinator, pki_dir, "alice").call("GET", "/v1/sessions/attn"))[1]["results"]
    assert seen_by_alice == {"alice": {"fidelity": {"top1": 1.0}, "text": "answer of alice"}}
    assert status["avg_sync_latency_ms"] >= 0 and status["contributions_recorded"] == 2
    rows = await coordinator.coordinator.store.list_contributions("attn")
    assert [(c.participant, c.layer_start, c.layer_end) for c in rows] == [("*", 0, 0), ("*", 2, 2)]
    [stored] = [p for p in await coordinator.coordinator.store.list_participants("attn") if p.name == "carol"]
    assert stored.phase == "Done" and stored.result["text"] == "answer of carol"


async def test_evicted_participant_is_revoked_and_refused(coordinator, pki_dir, aggregator):
    operator, bob = as_(coordinator, pki_dir, "operator"), as_(coordinator, pki_dir, "bob")
    await operator.call("POST", "/v1/sessions", manifests("ev"))
    assert (await bob.call("POST", "/v1/sessions/ev/participants/bob/join", {}))[0] == 200
    assert await operator.call("POST", "/v1/sessions/ev/participants/bob/evict", {"reason": "bad data"}) == (200, {})
    status, body = await bob.call("POST", "/v1/sessions/ev/participants/bob/heartbeat", {})
    assert (status, body["error"]) == (403, "evicted")
    assert (await bob.call("POST", "/v1/sessions/ev/participants/bob/join", {}))[0] == 403

    async def revoked() -> bool:
        return not aggregator.allowlist.is_allowed("bob")

    await wait_for(revoked, "bob revoked at the aggregator")
    status = (await operator.call("GET", "/v1/sessions/ev"))[1]
    assert status["participant_status"]["bob"]["phase"] == "Evicted"


async def test_silent_participant_is_marked_failed_and_recorded(coordinator, pki_dir):
    operator = as_(coordinator, pki_dir, "operator")
    body = manifests("hb", resilience={"timeoutSeconds": 1})
    assert (await operator.call("POST", "/v1/sessions", body))[0] == 201
    apis = {name: as_(coordinator, pki_dir, name) for name in PARTICIPANTS}
    for name, api in apis.items():
        await api.call("POST", f"/v1/sessions/hb/participants/{name}/join", {})
    beats = [asyncio.create_task(heartbeats(apis[n], "hb", n)) for n in ("alice", "bob")]
    try:

        async def carol_failed() -> bool:
            status = (await operator.call("GET", "/v1/sessions/hb"))[1]
            return status["participant_status"]["carol"]["phase"] == "Failed"

        await wait_for(carol_failed, "carol marked failed")
        status = (await operator.call("GET", "/v1/sessions/hb"))[1]
        assert {p: s["phase"] for p, s in status["participant_status"].items()} == {
            "alice": "Joined",
            "bob": "Joined",
            "carol": "Failed",
        }
        reply = await apis["carol"].call("POST", "/v1/sessions/hb/participants/carol/heartbeat", {})
        assert reply[0] == 200 and reply[1]["phase"] == "Failed"  # it learns it must join again
    finally:
        for task in beats:
            task.cancel()
    store = coordinator.coordinator.store
    await store.writes.flush()
    [event] = await store.list_events("hb", kind="failed")
    assert (event.participant, event.reason) == ("carol", "HeartbeatTimeout")


async def test_a_restarted_coordinator_resumes_the_open_round_from_the_store(pki_dir, aggregator, tmp_path):
    cfg = config(pki_dir, aggregator, f"sqlite:///{tmp_path / 'store.db'}")
    first = await serve(cfg)
    operator = as_(first, pki_dir, "operator")
    await operator.call("POST", "/v1/sessions", manifests("again", minParticipants=3))
    for name in PARTICIPANTS:
        await as_(first, pki_dir, name).call("POST", f"/v1/sessions/again/participants/{name}/join", {})
    gate = threading.Event()
    training = asyncio.gather(
        *(asyncio.to_thread(train, pki_dir, aggregator, "again", n, 1.0, gate=gate) for n in PARTICIPANTS)
    )
    try:

        async def round_two_open() -> bool:
            return (await operator.call("GET", "/v1/sessions/again/round"))[1] == {
                "round": 2,
                "state": "open",
                "deadline": ANY_DEADLINE,
            }

        await wait_for(round_two_open, "round 2 open")
        await first.stop()
        second = await serve(cfg)
        try:
            operator = as_(second, pki_dir, "operator")
            status = (await operator.call("GET", "/v1/sessions/again"))[1]
            assert (status["phase"], status["round"]) == ("Running", 2)
            assert status["participant_status"]["alice"] == {
                "phase": "Contributing",
                "last_heartbeat": status["participant_status"]["alice"]["last_heartbeat"],
                "contributions": 1,
                "last_latency_ms": status["participant_status"]["alice"]["last_latency_ms"],
            }
            gate.set()
            kinds = await training

            async def finished() -> bool:
                return (await operator.call("GET", "/v1/sessions/again"))[1]["phase"] == "Succeeded"

            await wait_for(finished, "finished after the restart")
            assert all(k[-1] == "done" for k in kinds)
            await second.coordinator.store.writes.flush()
            status = (await operator.call("GET", "/v1/sessions/again"))[1]
            assert [(r["round"], r["state"], r["contributions"]) for r in status["rounds"]] == [
                (1, "Closed", 3),
                (2, "Closed", 3),
            ]
            assert status["contributions_recorded"] == 6
            assert status["rounds"][1]["scores"].keys() == set(PARTICIPANTS)  # cosines from round 2 on
            assert all(r["update_bytes"] > 0 for r in status["rounds"])
        finally:
            await second.stop()
        third = await serve(cfg)  # a finished session comes back with the same per-round status
        try:
            restored = (await as_(third, pki_dir, "operator").call("GET", "/v1/sessions/again"))[1]
            assert restored["rounds"] == status["rounds"]
        finally:
            await third.stop()
    finally:
        gate.set()
        await asyncio.gather(training, return_exceptions=True)


class _AnyDeadline:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str) and other.endswith("Z")


ANY_DEADLINE = _AnyDeadline()


async def test_unreachable_aggregator_fails_the_session_fast_through_the_circuit_breaker(pki_dir, aggregator, tmp_path):
    aggregator.close()
    running = await serve(config(pki_dir, aggregator, f"sqlite:///{tmp_path / 'store.db'}"))
    try:
        operator = as_(running, pki_dir, "operator")
        resilience = {"timeoutSeconds": 1, "retries": 3, "backoffSeconds": 0, "circuitBreaker": {"failures": 1}}
        assert (await operator.call("POST", "/v1/sessions", manifests("cb", resilience=resilience)))[0] == 201

        async def failed() -> bool:
            return (await operator.call("GET", "/v1/sessions/cb"))[1]["phase"] == "Failed"

        await wait_for(failed, "session failed")
        message = (await operator.call("GET", "/v1/sessions/cb"))[1]["message"]
        # NB: the first attempt timed out and opened the breaker; the retry failed at once.
        assert message.startswith("AggregatorUnavailable: ctl_configure: circuit breaker to the aggregator is open")
        await running.coordinator.store.writes.flush()
        assert (await running.coordinator.store.get_session("cb")).phase == "Failed"
    finally:
        await running.stop()


async def test_changes_are_acknowledged_only_once_committed(pki_dir, aggregator, postgres_server, fresh_database):
    running = await serve(replace(config(pki_dir, aggregator, fresh_database), ack_timeout_seconds=1.0))
    try:
        operator, alice = as_(running, pki_dir, "operator"), as_(running, pki_dir, "alice")
        assert (await operator.call("POST", "/v1/sessions", manifests("ack")))[0] == 201
        await asyncio.to_thread(postgres_server.stop)
        try:
            status, body = await alice.call("POST", "/v1/sessions/ack/participants/alice/join", {})
            assert (status, body["error"]) == (503, "store_unavailable")
            # heartbeats need no durability: they keep working while the database is down
            assert (await alice.call("POST", "/v1/sessions/ack/participants/alice/heartbeat", {}))[0] == 200
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{running.metrics_port}/readyz") as resp,
            ):
                assert resp.status == 503 and "store:" in await resp.text()
        finally:
            await asyncio.to_thread(postgres_server.start)
        # NB: the writer and the pool reconnect with backoff; a participant retries 503s, so do we.
        while (reply := await alice.call("POST", "/v1/sessions/ack/participants/alice/join", {}))[0] != 200:
            assert reply == (503, {"error": "store_unavailable", "message": reply[1]["message"]})
        await running.coordinator.store.writes.flush()
        [stored] = [p for p in await running.coordinator.store.list_participants("ack") if p.name == "alice"]
        assert stored.phase == "Joined" and stored.joined_at is not None
        assert len(await running.coordinator.store.list_events("ack", kind="join")) >= 2  # retries are audited too
        assert running.coordinator.store.health()["write_failures"] == 0
    finally:
        if not postgres_server.running():
            postgres_server.start()
        await running.stop()


async def test_a_create_is_acted_on_only_once_committed_and_a_retry_waits_for_it_too(
    pki_dir, aggregator, postgres_server, fresh_database
):
    """Commit, then act (issue 14 item 8): a session whose rows are not durable is neither acknowledged
    (also not to a retry) nor configured at the aggregator nor joinable."""
    running = await serve(replace(config(pki_dir, aggregator, fresh_database), ack_timeout_seconds=1.0))
    operator, alice = as_(running, pki_dir, "operator"), as_(running, pki_dir, "alice")
    try:
        await asyncio.to_thread(postgres_server.stop)
        try:
            for _ in range(2):  # the create, then its retry: neither is acknowledged
                status, body = await operator.call("POST", "/v1/sessions", manifests("late"))
                assert (status, body["error"]) == (503, "store_unavailable"), (status, body)
            assert "late" not in aggregator.sessions
            assert (await alice.call("POST", "/v1/sessions/late/participants/alice/join", {}))[0] == 404
        finally:
            await asyncio.to_thread(postgres_server.start)
        while (reply := await operator.call("POST", "/v1/sessions", manifests("late")))[0] == 503:
            pass
        assert reply[0] in (200, 201), reply
        assert (await running.coordinator.store.get_session("late")) is not None
        while "late" not in aggregator.sessions:
            await asyncio.sleep(0.02)
    finally:
        if not postgres_server.running():
            postgres_server.start()
        await running.stop()


async def test_a_resent_event_counts_once_but_a_restarted_aggregators_event_ids_do_not_collide(coordinator, pki_dir):
    await as_(coordinator, pki_dir, "operator").call("POST", "/v1/sessions", manifests("ev2"))
    event = {"session": "ev2", "event": "rejected", "participant": "bob", "round": 1, "reason": "late", "event_id": 1}
    for meta in (event, dict(event), {**event, "round": 2}):  # the last: event 1 of a restarted aggregator
        coordinator.coordinator.events.on_event(meta)
    assert coordinator.metrics.value("fedattn_coordinator_contributions_rejected_total", reason="late") == 2
    await coordinator.coordinator.store.writes.flush()
    assert [e.round for e in await coordinator.coordinator.store.list_events("ev2", kind="rejected")] == [1, 2]


async def test_a_restarted_aggregator_gets_its_sessions_configured_again(coordinator, pki_dir, aggregator):
    operator = as_(coordinator, pki_dir, "operator")
    await operator.call("POST", "/v1/sessions", manifests("back"))
    assert (await as_(coordinator, pki_dir, "alice").call("POST", "/v1/sessions/back/participants/alice/join", {}))[
        0
    ] == 200
    aggregator.close()
    server = pki.Paths(pki_dir, "server")
    again = Aggregator(
        bind=aggregator.endpoint,  # same address: the coordinator's DEALER reconnects by itself
        server_public=server.curve_public.read_bytes(),
        server_secret=server.curve_secret.read_bytes(),
        allow_dir=pki_dir,
        hooks=aggregator.hooks,
        tick_seconds=0.02,
    )
    again.start()
    try:

        async def configured() -> bool:
            return "back" in again.sessions

        await wait_for(configured, "session configured at the new aggregator")
        assert sorted(again.sessions["back"].weights) == PARTICIPANTS
        reply = await as_(coordinator, pki_dir, "bob").call("POST", "/v1/sessions/back/participants/bob/join", {})
        assert reply[0] == 200
    finally:
        again.close()


async def test_a_command_the_restarted_aggregator_refuses_as_unknown_configures_the_session_first(
    coordinator, pki_dir, aggregator
):
    # NB: no retries, so no queued re-configure can slip in between two attempts
    create = manifests("gone", resilience={"retries": 0})
    await as_(coordinator, pki_dir, "operator").call("POST", "/v1/sessions", create)
    session = coordinator.coordinator.sessions["gone"]
    await asyncio.wait_for(session.configured.wait(), 10)
    aggregator.close()
    server = pki.Paths(pki_dir, "server")
    again = Aggregator(
        bind=aggregator.endpoint,
        server_public=server.curve_public.read_bytes(),
        server_secret=server.curve_secret.read_bytes(),
        allow_dir=pki_dir,
        hooks=aggregator.hooks,
        tick_seconds=0.02,
    )
    again.start()
    try:
        # NB: the driver's own handler, not its queue: the queued re-configure must not be what saves it
        finish = coordinator.coordinator.driver.handlers[rounds.Finish]
        await finish(session, rounds.Finish(reason="completed"))
        assert "gone" in again.sessions  # configured before the finish, which then went through
    finally:
        again.close()


async def test_odd_numbers_in_aggregator_events_are_stored_as_null_not_lost(coordinator, pki_dir):
    operator = as_(coordinator, pki_dir, "operator")
    await operator.call("POST", "/v1/sessions", manifests("odd"))
    odd = {"bytes": 64, "latency_ms": float("nan"), "weight": "heavy", "checksum": 2**64 - 1}
    coordinator.coordinator.events.on_event(
        {"session": "odd", "event": "contribution", "participant": "alice", "round": 1, **odd}
    )
    coordinator.coordinator.events.on_event({"session": "odd", "event": "sync", "layer": 3, "latency_ms": float("inf")})
    store = coordinator.coordinator.store
    await store.writes.flush()
    got = [(c.participant, c.bytes, c.latency_ms, c.weight, c.checksum) for c in await store.list_contributions("odd")]
    assert sorted(got, key=str) == [("*", 0, 0.0, None, None), ("alice", 64, None, None, None)]
    assert store.health()["write_failures"] == 0
    status, body = await operator.call("GET", "/v1/sessions/odd")  # NB: still valid JSON (no NaN)
    assert status == 200 and body["participant_status"]["alice"]["last_latency_ms"] is None
