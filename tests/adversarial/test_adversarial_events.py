"""Aggregator events survive a coordinator that received them but died before recording them (item 9).

Events wait at the aggregator until the coordinator acknowledges them (``ack_events`` on its
periodic ``ctl_status``) and are sent again without an acknowledgement; the coordinator drops the
duplicates it did record.
"""

from __future__ import annotations

import asyncio

from test_aggregator_server import CONTROL_IDENTITY, configure_learning, ctl, join, wait_event
from test_coordinator_api import as_, dealer, manifests


def test_an_event_the_coordinator_never_acknowledged_is_sent_again(agg):
    agg.server.events.resend_seconds = 0.5
    coord = configure_learning(agg, size=8)
    join(agg, "alice")
    first = wait_event(coord, agg.events, "hello", participant="alice")  # received, then the process dies
    coord.close()
    agg.clients.remove(coord)
    back = agg.client(CONTROL_IDENTITY)  # the restarted coordinator
    events: list[dict] = []
    assert ctl(back, events, "ctl_status")["ok"]
    again = wait_event(back, events, "hello", participant="alice")
    assert (again["event_id"], again["epoch"]) == (first["event_id"], first["epoch"])
    ack = {"epoch": first["epoch"], "event_id": max(e["event_id"] for e in [*events, again])}
    assert ctl(back, events, "ctl_status", meta={"ack_events": ack})["ok"]
    assert agg.server.events.unacked == 0


async def test_the_coordinator_acknowledges_what_it_received(stack):
    running, aggregator = stack.running, stack.aggregator
    assert (await as_(running, stack.pki_dir, "operator").call("POST", "/v1/sessions", manifests("s")))[0] == 201
    while "s" not in aggregator.sessions:
        await asyncio.sleep(0.02)
    with dealer(stack.pki_dir, aggregator, "s", "alice") as alice:
        assert alice.request("hello").kind == "welcome"
    while aggregator.events.unacked or len(aggregator.events):  # NB: acknowledged on the next ping
        await asyncio.sleep(0.05)
    hellos = await running.coordinator.store.list_events("s", kind="hello")
    assert [e.participant for e in hellos] == ["alice"]

