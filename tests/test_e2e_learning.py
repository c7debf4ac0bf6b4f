"""End to end: real coordinator, aggregator and participant processes on loopback, real TLS and Curve.

- ``fedattn run examples/learning-digits.yaml --json`` learns digits as well as centralized training
  (within 0.03) and every contribution is in the store (counted independently in SQLite).
- On a real PostgreSQL: a participant killed mid-session does not stop the session (quorum holds);
  a duplicate and a late update are rejected with their reasons, counted in metrics and audited.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
import pytest

from fedattn.aggregator.client import AggregatorClient
from fedattn.coordinator.client import CoordinatorClient, identity_from_dir
from fedattn.participant.heartbeat import Heartbeat
from fedattn.runner import local, manifests
from fedattn.runner.processes import supervised
from polling import wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _metric(port: int, name: str, **labels: str) -> float:
    """A sample's value from a component's /metrics (0 when absent)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        series, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if series == name and got == want:
            return float(value)
    return 0.0


def test_run_digits_example_matches_centralized_and_records_everything(tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "fedattn.cli", "run", str(ROOT / "examples/learning-digits.yaml"), "--json",
         "--workdir", str(workdir), "--timeout-seconds", "600"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["phase"] == "Succeeded"
    assert summary["rounds"] == 20 and len(summary["accuracy"]) == 20
    assert summary["final_accuracy"] >= 0.90
    assert abs(summary["final_accuracy"] - summary["centralized_accuracy"]) <= 0.03
    per_participant = sum(p["contributions"] for p in summary["participants"].values())
    with sqlite3.connect(workdir / "store.sqlite3") as db:
        (rows,) = db.execute("SELECT count(*) FROM contributions WHERE session = 'digits'").fetchone()
    assert rows == summary["contributions_recorded"] == per_participant
    assert rows >= 20 * 4  # every round closed with at least the quorum


def _bundle(rounds: int, names: list[str], min_participants: int) -> manifests.Bundle:
    bundle = manifests.load(ROOT / "examples/learning-digits.yaml")
    session = copy.deepcopy(bundle.session)
    session["metadata"]["name"] = "resilience"
    session["spec"].update(rounds=rounds, minParticipants=min_participants, waitAfterMinSeconds=1,
                           roundTimeoutSeconds=20)
    session["spec"]["resilience"]["timeoutSeconds"] = 3
    session["spec"]["training"]["localEpochs"] = 1
    participants = []
    for name in names:
        p = copy.deepcopy(bundle.participants[0])
        p["metadata"]["name"] = name
        p["spec"]["sessionRef"] = "resilience"
        participants.append(p)
    return manifests.Bundle(session=session, participants=participants, private={})



def test_killed_participant_duplicate_and_late_updates_on_postgres(tmp_path, fresh_database):
    names = ["p1", "p2", "p3", "p4", "rogue"]
    bundle = _bundle(rounds=6, names=names, min_participants=3)
    with supervised(tmp_path / "logs") as supervisor:
        # The test drives "rogue" itself, so start everything but its process.
        session = local.start(bundle, workdir=tmp_path, supervisor=supervisor, store_dsn=fresh_database,
                              participants=names[:-1])
        identity = identity_from_dir(local.participant_pki_dir(tmp_path, "rogue"), "rogue")
        api = CoordinatorClient(base_url=session.endpoints.coordinator, identity=identity)
        joined = api.join("resilience", "rogue")
        rogue = AggregatorClient.from_files(
            endpoint=joined["aggregator"]["endpoint"], server_public=tmp_path / "pki" / "server.curve.pub",
            public=identity.curve_public, secret=identity.curve_secret, session="resilience", name="rogue",
            timeout_seconds=30,
        )
        with Heartbeat(api, session="resilience", participant="rogue", interval=1.0), rogue:
            rogue.send("hello")
            model = _next_of(rogue, "model")
            first_round = model.round
            rogue.send("update", round=first_round, arrays=[model.arrays[0].copy()], meta={"num_examples": 10})
            assert _next_of(rogue, "ack", "error").kind == "ack"
            rogue.send("update", round=first_round, arrays=[model.arrays[0].copy()], meta={"num_examples": 10})
            dup = _next_of(rogue, "ack", "error")
            assert (dup.kind, dup.meta["code"]) == ("error", "duplicate"), dup.meta

            # Kill a participant while rounds are running; the quorum (3) still holds.
            supervisor.kill("participant-p4")
            killed_at = session.status()["round"]

            # A late update: for the round we already passed, after it closed.
            wait_for(lambda: session.status()["round"] > first_round + 1, timeout=120, what="two more rounds")
            rogue.send("update", round=first_round, arrays=[model.arrays[0].copy()], meta={"num_examples": 10})
            late = _next_of(rogue, "ack", "error")
            assert (late.kind, late.meta["code"]) in {("error", "stale_round"), ("error", "duplicate")}, late.meta
            rogue.send("update", round=first_round + 1, arrays=[model.arrays[0].copy()], meta={"num_examples": 10})
            late = _next_of(rogue, "ack", "error")
            assert (late.kind, late.meta["code"]) == ("error", "stale_round"), late.meta
        status = local.follow(session, on_status=lambda s: None, timeout_seconds=300)
        assert status["phase"] == "Succeeded", status["message"]
        assert status["participant_status"]["p4"]["phase"] == "Failed"
        closed = [r for r in status["rounds"] if r["state"] == "Closed"]
        assert len(closed) == 6
        assert all(r["contributions"] >= 3 for r in closed)
        after_kill = [r for r in closed if r["round"] > killed_at + 1]
        assert after_kill and all(r["contributions"] <= 4 for r in after_kill)

        port = session.endpoints.coordinator_metrics
        assert _metric(port, "fedattn_coordinator_contributions_rejected_total", reason="duplicate") >= 1
        assert _metric(port, "fedattn_coordinator_contributions_rejected_total", reason="stale_round") >= 1
        with psycopg.connect(fresh_database) as db:
            reasons = {r for (r,) in db.execute(
                "SELECT reason FROM events WHERE session = 'resilience' AND participant = 'rogue'")}
            (rows,) = db.execute("SELECT count(*) FROM contributions WHERE session = 'resilience'").fetchone()
        assert {"duplicate", "stale_round"} <= reasons
        assert rows == status["contributions_recorded"] == sum(
            p["contributions"] for p in status["participant_status"].values())


def _next_of(client: AggregatorClient, *kinds: str):
    """The next message of one of ``kinds`` (others, e.g. a new round's model, are skipped)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        msg = client.recv(timeout_seconds=60)
        if msg.kind in kinds:
            return msg
    raise AssertionError(f"no {kinds} message")
