"""Retry/backoff/breaker policy from spec.resilience, exercised on real failing calls."""

from dataclasses import replace

import pybreaker
import pytest

from fedattn.api.spec import SessionSpec
from fedattn.resilience import PermanentFailure, Policy, call


def _flaky(failures: int):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= failures:
            raise ConnectionError(f"attempt {calls['n']} failed")
        return calls["n"]

    return fn, calls


def test_policy_from_spec_defaults_and_overrides():
    assert Policy.default() == Policy(30.0, 3, 1.0, 5, 60.0)
    spec = {"mode": "learning", "resilience": {"timeoutSeconds": 5, "retries": 1, "circuitBreaker": {"failures": 2}}}
    p = Policy.from_spec(SessionSpec.from_manifest(spec).resilience)
    assert (p.timeout_seconds, p.retries, p.breaker_failures, p.breaker_open_seconds) == (5.0, 1, 2, 60.0)


def test_transient_failures_are_retried_until_success():
    policy = replace(Policy.default(), retries=3, backoff_seconds=0.001)
    fn, _ = _flaky(2)
    assert call(fn, policy=policy, breaker=policy.breaker("t"), what="flaky") == 3


def test_retries_are_bounded():
    policy = replace(Policy.default(), retries=2, backoff_seconds=0.001, breaker_failures=100)
    fn, calls = _flaky(10)
    with pytest.raises(ConnectionError, match="attempt 3"):
        call(fn, policy=policy, breaker=policy.breaker("t"), what="flaky")
    assert calls["n"] == 3


def test_permanent_failures_are_not_retried_and_do_not_trip_the_breaker():
    policy = replace(Policy.default(), retries=5, backoff_seconds=0.001, breaker_failures=1)
    breaker = policy.breaker("t")
    calls = {"n": 0}

    def refuse():
        calls["n"] += 1
        raise PermanentFailure("403 forbidden")

    with pytest.raises(PermanentFailure):
        call(refuse, policy=policy, breaker=breaker, what="refused")
    assert calls["n"] == 1 and breaker.current_state == "closed"


def test_breaker_opens_after_consecutive_failures_and_fails_fast():
    policy = replace(Policy.default(), retries=0, backoff_seconds=0.001, breaker_failures=2, breaker_open_seconds=60)
    breaker = policy.breaker("t")
    fn, calls = _flaky(100)
    for _ in range(2):
        with pytest.raises((ConnectionError, pybreaker.CircuitBreakerError)):
            call(fn, policy=policy, breaker=breaker, what="down")
    before = calls["n"]
    with pytest.raises(pybreaker.CircuitBreakerError):
        call(fn, policy=policy, breaker=breaker, what="down")
    assert calls["n"] == before and breaker.current_state == "open"
