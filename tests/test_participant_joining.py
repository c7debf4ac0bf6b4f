"""A participant started before its coordinator or its session waits for them (bounded), with a real
in-process coordinator (real TLS, real aggregator) coming up late on the port it dials."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from fedattn import pki
from fedattn.coordinator.client import CoordinatorClient, CoordinatorError
from fedattn.coordinator.server import serve
from fedattn.participant.joining import SessionNotReady, join_when_ready
from fedattn.resilience import Policy
from fedattn.runner.processes import free_port
from test_coordinator_api import aggregator, as_, config, manifests, pki_dir  # noqa: F401 (fixtures)

FAST = Policy(timeout_seconds=5, retries=0, backoff_seconds=0.05, breaker_failures=100, breaker_open_seconds=1)


def _client(root: Path, port: int, name: str = "alice") -> CoordinatorClient:
    return CoordinatorClient(base_url=f"https://127.0.0.1:{port}", identity=pki.Paths(root, name), policy=FAST)


async def test_waits_through_connection_refused_and_no_session_then_joins(pki_dir, aggregator) -> None:  # noqa: F811
    port = free_port()
    seen: list[str] = []
    outcome: dict = {}

    def pause(seconds: float) -> None:
        seen.append("pause")
        threading.Event().wait(min(seconds, 0.05))  # NB: the test's own pace; the bound is the wait below

    def participant() -> None:
        try:
            outcome["joined"] = join_when_ready(
                _client(pki_dir, port), session="s", participant="alice", wait_seconds=3600, sleep=pause
            )
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=participant)
    thread.start()
    while not seen:  # the coordinator is not listening yet: connection refused, and the participant waits
        await asyncio.sleep(0.02)
    running = await serve(replace(config(pki_dir, aggregator, "sqlite:///:memory:"), api_port=port))
    try:
        waited = len(seen)
        while len(seen) < waited + 2:  # now it answers 404 no_session, and the participant still waits
            await asyncio.sleep(0.02)
        assert thread.is_alive() and not outcome
        status, _ = await as_(running, pki_dir, "operator").call("POST", "/v1/sessions", manifests())
        assert status == 201
        await asyncio.to_thread(thread.join, 60)
        assert "error" not in outcome, outcome.get("error")
        assert outcome["joined"]["session"] == "s" and outcome["joined"]["participants"][0] == "alice"
    finally:
        await running.stop()


async def test_a_refusal_other_than_no_session_ends_the_wait_at_once(pki_dir, aggregator) -> None:  # noqa: F811
    running = await serve(config(pki_dir, aggregator, "sqlite:///:memory:"))
    try:
        assert (await as_(running, pki_dir, "operator").call("POST", "/v1/sessions", manifests()))[0] == 201
        operator = _client(pki_dir, running.api_port, "operator")
        with pytest.raises(CoordinatorError) as refused:  # the operator is not a participant of "s"
            await asyncio.to_thread(
                join_when_ready, operator, session="s", participant="zed", wait_seconds=3600,
                sleep=lambda s: pytest.fail("must not wait"),
            )
        assert (refused.value.status, refused.value.code) == (404, "not_found")
    finally:
        await running.stop()


def test_the_wait_is_bounded_and_says_what_it_last_saw(pki_dir) -> None:  # noqa: F811
    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    with pytest.raises(SessionNotReady, match=r"'s' was not there to join within 100 s: .*refused"):
        join_when_ready(
            _client(pki_dir, free_port()), session="s", participant="alice", wait_seconds=100,
            clock=lambda: now[0], sleep=sleep,
        )
    assert pauses == [1, 2, 4, 8, 16, 30, 30, 9]  # backoff doubling to 30 s, the last cut to the bound
