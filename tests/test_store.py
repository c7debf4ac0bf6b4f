"""The store against real PostgreSQL (fresh database per test) and SQLite (a file in tmp_path)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fedattn.store import Contribution, Event, Store, StoreUnavailable, backend_for, open_store
from fedattn.store.migrations import load_migrations, split_statements

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["postgresql", "sqlite"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return request.getfixturevalue("fresh_database")
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
async def store(dsn: str):
    s = await open_store(dsn)
    yield s
    await s.close()


async def _session(store: Store, name: str = "s1") -> None:
    await store.create_session(name=name, mode="learning", spec={"mode": "learning"}, phase="Pending", created_at=1.0)


def _failures(store: Store, reason: str) -> float:
    got = store.writes.metrics.registry.get_sample_value("fedattn_store_write_failures_total", {"reason": reason})
    return got or 0.0


def test_split_statements_drops_comments_and_blank_parts():
    sql = "-- a comment; with a semicolon\nCREATE TABLE a (x INT);\n\n  -- another\nCREATE INDEX i ON a (x);\n"
    assert split_statements(sql) == ("CREATE TABLE a (x INT)", "CREATE INDEX i ON a (x)")


def test_dsn_chooses_backend_and_rejects_others():
    assert backend_for("postgresql://u@127.0.0.1:1/db").name == "postgresql"
    sqlite = backend_for("sqlite:////var/lib/fedattn/store.db")
    assert sqlite.name == "sqlite" and str(sqlite.path) == "/var/lib/fedattn/store.db"
    with pytest.raises(ValueError, match="unsupported store DSN 'h/db'"):
        backend_for("mysql://user:secret@h/db")


async def test_migrations_are_idempotent(dsn: str):
    versions = [m.version for m in load_migrations()]
    first = await open_store(dsn)
    second = await open_store(dsn)
    try:
        rows = await second._fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == versions
    finally:
        await first.close()
        await second.close()


async def test_an_older_schema_is_upgraded_in_place_and_a_newer_one_refused(dsn: str):
    old = backend_for(dsn)
    await old.open()
    try:
        assert await old.migrate(load_migrations()[:1]) == [1]
        await old.execute(
            [
                (
                    "INSERT INTO sessions (name, mode, spec, phase, created_at) VALUES (%s, %s, %s, %s, %s)",
                    ("s1", "learning", "{}", "Running", 1.0),
                ),
                ("INSERT INTO participants (session, name, phase) VALUES (%s, %s, %s)", ("s1", "alice", "Joined")),
            ]
        )
    finally:
        await old.close()
    store = await open_store(dsn)
    try:
        [alice] = await store.list_participants("s1")
        assert (alice.name, alice.phase, alice.position) == ("alice", "Joined", 0)
        await store.backend.execute(
            [("INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)", (99, "future", 0.0))]
        )
    finally:
        await store.close()
    with pytest.raises(RuntimeError, match=r"schema versions \[99\] this fedattn does not know"):
        await open_store(dsn)


async def test_concurrent_migrations_apply_each_version_once(dsn: str):
    stores = [Store(backend_for(dsn)) for _ in range(4)]
    applied = await asyncio.gather(*(s.start() for s in stores))
    try:
        assert sorted(v for a in applied for v in a) == [m.version for m in load_migrations()]
        rows = await stores[0]._fetch("SELECT COUNT(*) FROM schema_migrations")
        assert rows[0][0] == len(load_migrations())
    finally:
        for s in stores:
            await s.close()


async def test_session_participant_round_round_trip(store: Store):
    spec = {"mode": "learning", "rounds": 3, "resilience": {"timeoutSeconds": 30}}
    await store.create_session(name="s1", mode="learning", spec=spec, phase="Pending", created_at=10.0)
    # NB: creating again is a no-op, not an error (idempotent retry), and keeps the first spec.
    await store.create_session(name="s1", mode="learning", spec={"other": 1}, phase="Pending", created_at=11.0)
    await store.update_session("s1", phase="Running", message="", round=1, started_at=12.0)
    await store.update_session("s1", phase="Succeeded", message="done", round=3, started_at=99.0, completed_at=20.0)
    await store.upsert_participant("s1", "alice", weight=2.0, phase="Pending", position=1)
    await store.upsert_participant("s1", "bob", weight=1.0, phase="Pending", position=0)
    await store.update_participant("s1", "alice", phase="Joined", joined_at=13.0, last_heartbeat=13.0)
    await store.update_participant("s1", "alice", phase="Done", result={"accuracy": 0.9})
    await store.open_round("s1", 1, participants=2, opened_at=14.0)
    await store.close_round("s1", 1, state="Closed", closed_at=15.0, contributions=2, weight_total=3.0, accuracy=0.5)
    await store.open_round("s1", 2, participants=2, opened_at=16.0)
    await store.close_round(
        "s1", 2, state="Closed", closed_at=17.0, contributions=2, epsilon=4.733185, update_bytes=2**40 + 3
    )

    session = await store.get_session("s1")
    assert session is not None
    assert (session.spec, session.phase, session.message, session.round) == (spec, "Succeeded", "done", 3)
    assert (session.created_at, session.started_at, session.completed_at) == (10.0, 12.0, 20.0)
    assert await store.get_session("nope") is None
    assert [s.name for s in await store.list_sessions()] == ["s1"]
    bob, alice = await store.list_participants("s1")  # by position
    assert (bob.name, bob.position, alice.position) == ("bob", 0, 1)
    assert (alice.weight, alice.phase, alice.joined_at, alice.last_heartbeat) == (2.0, "Done", 13.0, 13.0)
    assert alice.result == {"accuracy": 0.9}
    r1, r2 = await store.list_rounds("s1")
    assert (r1.epsilon, r1.update_bytes) == (None, None)
    assert (r2.epsilon, r2.update_bytes) == (4.733185, 2**40 + 3)  # float8 and BIGINT on both backends
    assert (r1.state, r1.participants, r1.contributions, r1.weight_total, r1.accuracy) == (
        "Closed",
        2,
        2,
        3.0,
        0.5,
    )
    assert r1.aggregation_seconds is None


async def test_contribution_recording_is_idempotent_and_counted(store: Store):
    await _session(store, "s1")
    await _session(store, "s2")
    first = Contribution("s1", "alice", 1, 0, 0, bytes=100, latency_ms=1.5, weight=3.0, checksum=2**32 - 1)
    for retry in (first, Contribution("s1", "alice", 1, 0, 0, bytes=999)):
        await store.record_contribution(retry)
    await store.record_contribution(Contribution("s1", "bob", 1))
    await store.record_contribution(Contribution("s1", "alice", 2))
    await store.record_contribution(Contribution("s2", "alice", 1, layer_start=4, layer_end=4))
    assert await store.contributions_recorded("s1") == 3
    assert await store.contributions_recorded("s2") == 1
    assert await store.contributions_recorded() == 4
    stored = (await store.list_contributions("s1"))[0]
    assert (stored.participant, stored.bytes, stored.checksum, stored.latency_ms) == (
        "alice",
        100,
        2**32 - 1,
        1.5,
    )


async def test_events_are_idempotent_on_their_id(store: Store):
    await _session(store)
    event = Event("s1", "rejected", participant="bob", round=2, reason="duplicate", message="again", data={"seq": 4})
    await store.record_event(event)
    await store.record_event(event)
    await store.record_event(Event("s1", "hello", participant="alice"))
    [stored] = await store.list_events("s1", kind="rejected")
    assert stored == event
    assert len(await store.list_events("s1")) == 2


async def test_permanent_failure_is_logged_counted_and_the_queue_keeps_serving(store: Store, caplog):
    await _session(store)
    before = _failures(store, "permanent")
    # NB: submitted back to back, so they share a batch; the bad one (unknown session) must not
    # take the good ones down with it.
    good1 = store.record_contribution(Contribution("s1", "alice", 1))
    bad = store.record_contribution(Contribution("no-such-session", "alice", 1))
    good2 = store.record_contribution(Contribution("s1", "bob", 1))
    await asyncio.gather(good1, good2)
    with pytest.raises(StoreUnavailable, match=r"no-such-session.*permanent"):
        await bad
    assert _failures(store, "permanent") == before + 1
    assert store.health()["write_failures"] == 1
    assert any(r.levelname == "ERROR" and "no-such-session" in r.getMessage() for r in caplog.records)
    assert await store.contributions_recorded("s1") == 2


async def test_full_buffer_fails_the_write_loudly(dsn: str):
    store = await open_store(dsn, capacity=1)
    try:
        await _session(store)
        before = _failures(store, "buffer_full")
        # NB: no await in between, so the writer has not taken the first one yet.
        kept = store.record_contribution(Contribution("s1", "alice", 1))
        refused = store.record_contribution(Contribution("s1", "bob", 1))
        assert refused.done()
        with pytest.raises(StoreUnavailable, match="buffer_full"):
            await refused
        await kept
        assert _failures(store, "buffer_full") == before + 1
        assert await store.contributions_recorded("s1") == 1
    finally:
        await store.close()


CRASHER = textwrap.dedent(
    """
    import asyncio, os, sys
    from fedattn.store import Contribution, Event, open_store

    async def main():
        store = await open_store(sys.argv[1])
        await store.create_session(name="s1", mode="learning", spec={}, phase="Running", created_at=1.0)
        await store.record_contribution(Contribution("s1", "alice", 1, bytes=7))
        await store.record_event(Event("s1", "rejected", participant="bob", reason="late"))
        print("acknowledged", flush=True)
        os._exit(9)  # crash: no close, no flush, no cleanup

    asyncio.run(main())
    """
)


async def test_acknowledged_writes_survive_a_crash(dsn: str):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "operator")}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", CRASHER, dsn], capture_output=True, text=True, env=env
    )
    assert done.returncode == 9 and done.stdout.strip() == "acknowledged", done.stderr
    store = await open_store(dsn)
    try:
        [c] = await store.list_contributions("s1")
        assert (c.participant, c.bytes) == ("alice", 7)
        assert [e.reason for e in await store.list_events("s1")] == ["late"]
    finally:
        await store.close()


async def test_writes_buffered_during_a_postgres_restart_all_land_once(postgres_server, fresh_database):
    store = await open_store(fresh_database, backoff_max_seconds=0.5)
    try:
        await _session(store)
        total, stop_at, start_at = 300, 100, 200
        futures = []
        for i in range(total):
            if i == stop_at:
                await store.writes.flush()
                await asyncio.to_thread(postgres_server.stop)
            if i == start_at:
                while store.health()["retrying_since"] is None:  # the writer noticed and is retrying
                    await asyncio.sleep(0.05)
                assert store.health()["buffered_writes"] >= start_at - stop_at
                with pytest.raises(StoreUnavailable):
                    await store.ping()
                await asyncio.to_thread(postgres_server.start)
            futures.append(store.record_contribution(Contribution("s1", f"p{i % 7}", i)))
            await asyncio.sleep(0)
        await asyncio.gather(*futures)
        assert store.health() == {
            "backend": "postgresql",
            "buffered_writes": 0,
            "write_failures": 0,
            "retrying_since": None,
        }
        stored = await store.list_contributions("s1")
        assert sorted(c.round for c in stored) == list(range(total))
    finally:
        if not postgres_server.running():
            postgres_server.start()
        await store.close()
