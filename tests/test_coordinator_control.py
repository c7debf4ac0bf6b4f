"""How the control link pairs replies with requests (no aggregator listens: replies are injected)."""

from __future__ import annotations

import asyncio

import pytest

from fedattn import pki, wire
from fedattn.coordinator.control import BudgetExhausted, ControlError, ControlLink, ControlTimeout


def reply(session: str, round: int, **meta) -> wire.Message:
    return wire.Message(kind="ctl_reply", session=session, participant="coordinator-client", round=round, meta=meta)


@pytest.fixture
async def link():
    server, client = pki.curve_keypair(), pki.curve_keypair()
    link = ControlLink(
        endpoint="tcp://127.0.0.1:9",  # nothing listens there
        server_public=server.public,
        public=client.public,
        secret=client.secret,
        on_event=lambda meta: None,
        ping_seconds=3600,
    )
    await link.start()  # NB: connected, so sends queue instead of blocking; one ping is pending
    yield link
    await link.close()


async def test_a_late_reply_goes_to_its_timed_out_request_not_the_next_one(link):
    with pytest.raises(ControlTimeout, match="ctl_close_round for s: no reply"):
        await link.request("ctl_close_round", session="s", round=1, timeout_seconds=0.01)
    retry = asyncio.create_task(link.request("ctl_close_round", session="s", round=1, timeout_seconds=30))
    await asyncio.sleep(0)
    link._deliver(reply("s", 1, ok=True, attempt="first"))  # the first attempt's late answer
    await asyncio.sleep(0)
    assert not retry.done()
    link._deliver(reply("s", 1, ok=True, attempt="retry"))
    assert (await retry)["attempt"] == "retry"


async def test_a_reply_that_overtakes_fails_the_requests_whose_replies_were_lost(link):
    lost = asyncio.create_task(link.request("ctl_status", session="-", timeout_seconds=30))
    wanted = asyncio.create_task(link.request("ctl_open_round", session="s", round=2, timeout_seconds=30))
    await asyncio.sleep(0)
    link._deliver(reply("other", 0, ok=True))  # matches nothing: dropped, nobody fails
    assert not lost.done() and not wanted.done()
    link._deliver(reply("s", 2, ok=True))
    assert (await wanted) == {"ok": True}
    with pytest.raises(ControlError, match="reply lost"):
        await lost


async def test_refusals_raise_with_the_aggregators_reason(link):
    refused = asyncio.create_task(link.request("ctl_open_round", session="s", round=3, timeout_seconds=30))
    await asyncio.sleep(0)
    link._deliver(reply("s", 3, ok=False, error="round 2 is still open"))
    with pytest.raises(ControlError, match="ctl_open_round for s failed: round 2 is still open"):
        await refused


async def test_a_spent_privacy_budget_is_its_own_refusal_with_the_reason_verbatim(link):
    refused = asyncio.create_task(link.request("ctl_open_round", session="s", round=4, timeout_seconds=30))
    await asyncio.sleep(0)
    reason = "PrivacyBudgetExhausted: round 4 would spend epsilon 10.73 > targetEpsilon 9.5"
    link._deliver(reply("s", 4, ok=False, error=reason))
    with pytest.raises(BudgetExhausted) as caught:
        await refused
    assert str(caught.value) == reason and isinstance(caught.value, ControlError)
