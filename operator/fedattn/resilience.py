"""Timeouts, bounded retries with exponential backoff, and a circuit breaker for every remote call.

The policy comes from a session's ``spec.resilience`` (its defaults are the schema's: 30 s timeout,
3 retries, backoff 1/2/4 s, breaker opens after 5 consecutive failures for 60 s). Retrying is tenacity's job and the
breaker is pybreaker's; this module only maps the spec onto them so every caller behaves alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pybreaker
import tenacity

from fedattn.api.spec import ResilienceSpec, SessionSpec

T = TypeVar("T")
log = logging.getLogger(__name__)


class PermanentFailure(Exception):
    """A remote said no in a way retrying cannot change (4xx, validation error): never retried."""


@dataclass(frozen=True)
class Policy:
    timeout_seconds: float
    retries: int
    backoff_seconds: float
    breaker_failures: int
    breaker_open_seconds: float

    @classmethod
    def from_spec(cls, resilience: ResilienceSpec) -> Policy:
        """The policy of a session's typed ``spec.resilience``."""
        return cls(
            timeout_seconds=float(resilience.timeout_seconds),
            retries=resilience.retries,
            backoff_seconds=resilience.backoff_seconds,
            breaker_failures=resilience.circuit_breaker.failures,
            breaker_open_seconds=float(resilience.circuit_breaker.open_seconds),
        )

    @classmethod
    def default(cls) -> Policy:
        """The schema's defaults, for a caller that has no session yet (e.g. before it joins one).
        NB: ``resilience`` defaults do not depend on the mode; "learning" only makes the spec whole."""
        return cls.from_spec(SessionSpec.from_manifest({"mode": "learning"}).resilience)

    def breaker(self, name: str) -> pybreaker.CircuitBreaker:
        """A breaker for one remote; permanent failures do not count against it."""
        return pybreaker.CircuitBreaker(
            fail_max=self.breaker_failures,
            reset_timeout=self.breaker_open_seconds,
            exclude=[PermanentFailure],
            name=name,
        )

    def retrying(self, *, what: str) -> tenacity.Retrying:
        """Up to ``retries`` more attempts, waiting backoff * 2**n; permanent failures and an open
        breaker are not retried (waiting out the breaker is the breaker's job, not ours)."""
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_exponential(multiplier=self.backoff_seconds, min=self.backoff_seconds, max=60),
            retry=tenacity.retry_if_not_exception_type((PermanentFailure, pybreaker.CircuitBreakerError)),
            before_sleep=lambda state: log.warning(
                "retrying %s after %s (attempt %d)", what, state.outcome.exception(), state.attempt_number
            ),
            reraise=True,
        )


def call(fn: Callable[[], T], *, policy: Policy, breaker: pybreaker.CircuitBreaker, what: str) -> T:
    """Run ``fn`` through the breaker with the policy's retries; raises the last error."""
    for attempt in policy.retrying(what=what):
        with attempt:
            return breaker.call(fn)
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover
