"""100,000 mutated wire messages from an allowlisted member (and an outsider with a valid key).

Bounded by count, not time. Checked throughout: the aggregator's serve loop is alive and no message
hit an internal error (every one was either taken or refused with a named code), the honest member
gets its ``welcome`` between bursts; at the end: memory did not grow with the flood and neither did
the store (rejections are metrics, not one row each).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import zmq
from mutator import hostile_messages

from fedattn import wire
from fedattn.aggregator.client import curve_dealer
from fedattn.aggregator.server import Aggregator
from test_aggregator_server import CONTROL_IDENTITY, ctl
from test_coordinator_api import P_SIZE, as_, dealer, manifests

MESSAGES = 100_000
BURST = 500
PROBE_EVERY = 10_000
#: growth of this process's resident memory (aggregator + coordinator + the test) over the flood
RSS_LIMIT_MIB = 64
#: rows the whole flood may leave in the store (sampled rejections, not one row per message)
STORE_ROW_LIMIT = 500
LEARNING = {"mode": "learning", "spec": {"minParticipants": 1}, "participants": {"alice": 1.0, "bob": 1.0}, "params": 8}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def flood(pki_dir: Path, aggregator: Aggregator, *, attacker: str, count: int, seed: int) -> dict[str, int]:
    """Send ``count`` hostile messages as ``attacker``; between bursts, alice must be served."""
    paths = {n: (pki_dir / f"{n}.curve.pub", pki_dir / f"{n}.curve.sec") for n in (attacker,)}
    ctx = zmq.Context()
    sock = curve_dealer(
        ctx,
        server_public=(pki_dir / "server.curve.pub").read_bytes(),
        public=paths[attacker][0].read_bytes(),
        secret=paths[attacker][1].read_bytes(),
    )
    sock.connect(aggregator.endpoint)
    honest = dealer(pki_dir, aggregator, "s", "alice")
    replies = probes = 0
    try:
        messages = hostile_messages(
            count=count,
            seed=seed,
            session="s",
            attention_session="a",
            name=attacker,
            size=P_SIZE,
            first_seq=time.time_ns() // 1000,
        )
        for i, frames in enumerate(messages, start=1):
            sock.send_multipart(frames)
            if i % BURST == 0:
                while sock.poll(0 if i % PROBE_EVERY else 50):
                    sock.recv_multipart()
                    replies += 1
            if i % PROBE_EVERY == 0:
                assert aggregator.ready(), f"the aggregator's serve loop died after {i} messages"
                welcome = honest.request("hello", timeout_seconds=30)
                assert welcome.kind == "welcome", welcome
                probes += 1
    finally:
        honest.close()
        sock.close(linger=0)
        ctx.term()
    return {"replies": replies, "probes": probes}


async def test_a_hundred_thousand_hostile_messages_break_nothing(stack, caplog):
    running, aggregator, pki_dir = stack.running, stack.aggregator, stack.pki_dir
    operator = as_(running, pki_dir, "operator")
    assert (await operator.call("POST", "/v1/sessions", manifests("s", roundTimeoutSeconds=2)))[0] == 201
    assert (await operator.call("POST", "/v1/sessions", manifests("a", mode="attention", roundTimeoutSeconds=2)))[
        0
    ] == 201
    while not {"s", "a"} <= aggregator.sessions.keys():
        await asyncio.sleep(0.02)
    caplog.set_level(logging.WARNING, logger="fedattn")
    before = rss_mib()
    member = await asyncio.to_thread(flood, pki_dir, aggregator, attacker="carol", count=MESSAGES, seed=14)
    outsider = await asyncio.to_thread(
        flood, pki_dir, aggregator, attacker=stack.outsider, count=MESSAGES // 10, seed=9
    )
    grown = rss_mib() - before
    assert member["probes"] == MESSAGES // PROBE_EVERY and outsider["probes"] == MESSAGES // 10 // PROBE_EVERY
    assert aggregator.ready()
    assert aggregator.metrics.value("fedattn_aggregator_rejected_total", reason="internal") == 0
    assert grown < RSS_LIMIT_MIB, f"RSS grew by {grown:.0f} MiB"
    store = running.coordinator.store
    await store.writes.flush()
    events = [*await store.list_events("s"), *await store.list_events("a")]
    assert len(events) <= STORE_ROW_LIMIT, f"{len(events)} event rows from one attacker's flood"
    outsider_rows = [e for e in events if e.participant == stack.outsider]
    assert outsider_rows == [], "a non-member's rejections are attributed to a session it is not in"
    flood_lines = [r for r in caplog.records if r.name.startswith("fedattn.aggregator")]
    assert len(flood_lines) <= STORE_ROW_LIMIT, f"{len(flood_lines)} log lines from one attacker's flood"


async def test_rejections_are_counted_but_only_a_members_sample_is_stored(stack):
    running, aggregator, pki_dir = stack.running, stack.aggregator, stack.pki_dir
    assert (await as_(running, pki_dir, "operator").call("POST", "/v1/sessions", manifests("s")))[0] == 201
    while "s" not in aggregator.sessions:
        await asyncio.sleep(0.02)
    garbage = 500

    def refused(reason: str) -> float:
        return aggregator.metrics.value("fedattn_aggregator_rejected_total", reason=reason)

    def recorded(reason: str) -> float:
        return running.metrics.value("fedattn_coordinator_contributions_rejected_total", reason=reason)

    def send(name: str, reason: str) -> None:
        with dealer(pki_dir, aggregator, "s", name) as client:
            for _ in range(garbage):  # each one refused (not a member / no round open)
                client.send("update", round=7, meta={"num_examples": 1})
            while refused(reason) < garbage:  # NB: closing with linger 0 would drop what is still queued
                time.sleep(0.05)

    await asyncio.gather(
        asyncio.to_thread(send, stack.outsider, "not_in_session"), asyncio.to_thread(send, "carol", "stale_round")
    )
    while len(aggregator.events) or recorded("stale_round") < 1:  # NB: what is reported arrives asynchronously
        await asyncio.sleep(0.05)
    store = running.coordinator.store
    await store.writes.flush()
    rows = await store.list_events("s", kind="rejected")
    assert not [e for e in rows if e.participant == stack.outsider], "an outsider's rejections went into s"
    carol = [e for e in rows if e.participant == "carol"]
    assert 0 < len(carol) <= 50, f"{len(carol)} rows for {garbage} rejections of one member"


def test_early_hellos_for_made_up_sessions_do_not_crowd_out_a_real_one(agg):
    carol = agg.client("carol")
    for i in range(20_000):  # more than the old table held, for sessions that will never exist
        carol.send_frames(wire.encode(kind="hello", session=f"nope-{i}", participant="carol", seq=carol.next_seq()))
    assert carol.request("hello").meta["code"] == "unknown_session"  # all of them were handled
    bob = agg.client("bob")
    assert bob.request("hello").meta["code"] == "unknown_session"  # before configure: remembered
    reply = ctl(agg.client(CONTROL_IDENTITY), agg.events, "ctl_configure", meta=LEARNING)
    assert reply["ok"] and "bob" in reply["hello"], reply
    assert len(agg.server._early_hellos) <= 4 + 1  # carol's newest few, and nobody else's crowded out
