"""Restarts on a durable store, with real processes: coordinator and aggregator SIGKILLed mid-round and
started again (fresh processes, same SQLite file and checkpoint directory) while participants go on.

A third participant is driven by the test, so the round the kills land in is held open for certain: the
two participant processes have contributed to it (acknowledged, recorded), the held one has not. After
both restarts the session must finish, and no acknowledged update may be missing: every round the
aggregator closed aggregated as many updates as the store holds rows for it, every acknowledged update
has its row, and no update is a row twice.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from fedattn.aggregator.client import AggregatorClient, Timeout
from fedattn.coordinator.client import CoordinatorClient, identity_from_dir
from fedattn.participant.heartbeat import Heartbeat, heartbeat_policy
from fedattn.resilience import Policy
from fedattn.runner import local
from fedattn.runner.processes import supervised, wait_ready
from polling import wait_for
from test_e2e_learning import _bundle

pytestmark = pytest.mark.slow
HELD_ROUND = 3


class HeldParticipant(threading.Thread):
    """A participant that answers every round's model at once, except ``HELD_ROUND`` until released;
    it says hello again after 3 s without a message, as the real one does."""

    def __init__(self, channel: AggregatorClient) -> None:
        super().__init__(name="held-participant", daemon=True)
        self.channel = channel
        self.release = threading.Event()
        self.stop = threading.Event()
        self.acknowledged: list[int] = []
        self.waiting_in: int | None = None

    def run(self) -> None:
        self.channel.send("hello")
        idle = time.monotonic()
        held = None
        while not self.stop.is_set():
            if held is not None and self.release.is_set():
                self.channel.send("update", round=held.round, arrays=[held.arrays[0].copy()], meta={"num_examples": 10})
                held = None
            try:
                msg = self.channel.recv(timeout_seconds=0.2)
            except Timeout:
                if time.monotonic() - idle > 3:
                    self.channel.send("hello")
                    idle = time.monotonic()
                continue
            idle = time.monotonic()
            if msg.kind == "model" and msg.round not in self.acknowledged:
                if msg.round == HELD_ROUND and not self.release.is_set():
                    held, self.waiting_in = msg, msg.round
                else:
                    self.channel.send("update", round=msg.round, arrays=[msg.arrays[0].copy()],
                                      meta={"num_examples": 10})
            elif msg.kind == "ack" and msg.round not in self.acknowledged:
                self.acknowledged.append(msg.round)
            elif msg.kind == "done":
                return


def _rows(store: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(store) as db:
        return list(db.execute("SELECT participant, round FROM contributions WHERE session = 'resilience'"))


def test_coordinator_and_aggregator_killed_mid_round_lose_no_acknowledged_update(tmp_path):
    names = ["p1", "p2", "held"]
    bundle = _bundle(rounds=6, names=names, min_participants=3)
    store = tmp_path / "store.sqlite3"
    with supervised(tmp_path / "logs") as supervisor:
        session = local.start(bundle, workdir=tmp_path, supervisor=supervisor, participants=names[:-1])
        identity = identity_from_dir(local.participant_pki_dir(tmp_path, "held"), "held")  # NB: its own keys only
        api = CoordinatorClient(base_url=session.endpoints.coordinator, identity=identity)
        joined = api.join("resilience", "held")
        channel = AggregatorClient.from_files(
            endpoint=joined["aggregator"]["endpoint"], server_public=tmp_path / "pki" / "server.curve.pub",
            public=identity.curve_public, secret=identity.curve_secret, session="resilience", name="held",
            timeout_seconds=30,
        )
        held = HeldParticipant(channel)
        beats = CoordinatorClient(base_url=session.endpoints.coordinator, identity=identity,
                                  policy=heartbeat_policy(Policy.default(), interval=1.0))
        with Heartbeat(beats, session="resilience", participant="held", interval=1.0), channel:
            held.start()
            wait_for(lambda: held.waiting_in == HELD_ROUND and {("p1", HELD_ROUND), ("p2", HELD_ROUND)} <= set(
                _rows(store)), timeout=180, what="round 3 open with p1 and p2 recorded, held withheld")

            supervisor.kill("coordinator")
            coordinator = supervisor.restart("coordinator")
            wait_ready(f"http://127.0.0.1:{session.endpoints.coordinator_metrics}/readyz", proc=coordinator)
            assert session.status()["round"] == HELD_ROUND  # resumed from the store, the round still open

            supervisor.kill("aggregator")  # p1's and p2's acknowledged round-3 updates die with it
            aggregator = supervisor.restart("aggregator")
            wait_ready(f"http://127.0.0.1:{session.endpoints.aggregator_metrics}/readyz", proc=aggregator)
            held.release.set()

            status = local.follow(session, on_status=lambda s: None, timeout_seconds=300)
            held.stop.set()
            held.join(10)
        assert status["phase"] == "Succeeded", status["message"]
        exits = local.wait_participants(session)
    assert set(exits.values()) == {0}, exits

    rows = _rows(store)
    assert len(rows) == len(set(rows)), "an update sent again became a second row"
    acknowledged = {("held", r) for r in held.acknowledged}
    for name in ("p1", "p2"):
        record = json.loads((tmp_path / "results" / f"{name}.json").read_text())
        acknowledged |= {(name, r) for r in record["acknowledged"]}
    assert acknowledged <= set(rows), f"acknowledged but not recorded: {acknowledged - set(rows)}"
    closed = [r for r in status["rounds"] if r["state"] == "Closed"]
    assert [r["round"] for r in closed] == list(range(1, 7))
    for entry in closed:  # what the aggregator aggregated, per its close reply, against the store's rows
        assert entry["contributions"] == sum(1 for _, r in rows if r == entry["round"]) == 3, entry
