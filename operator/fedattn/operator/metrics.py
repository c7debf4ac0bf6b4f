"""Operator metrics: reconcile duration and errors by resource and handler, sessions by phase."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import kopf
from prometheus_client import Counter, Gauge, Histogram

RECONCILE_SECONDS = Histogram(
    "fedattn_operator_reconcile_duration_seconds",
    "Time one handler invocation took, seconds.",
    ["resource", "handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RECONCILE_ERRORS = Counter(
    "fedattn_operator_reconcile_errors_total",
    "Handler invocations that raised, by kind (temporary: retried, permanent: given up, unexpected).",
    ["resource", "handler", "kind"],
)
SESSIONS = Gauge("fedattn_operator_sessions", "FedSessions this operator sees, by phase.", ["phase"])
DEGRADED = Gauge(
    "fedattn_operator_session_degraded",
    "1 while a FedSession's Degraded condition is True (participants failed or evicted, coordinator unreachable).",
    ["namespace", "session"],
)
CERTIFICATES_RENEWED = Counter(
    "fedattn_operator_certificates_renewed_total", "Certificates reissued before expiry.", ["identity"]
)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def measured(resource: str, handler: str) -> Callable[[F], F]:
    """Time a kopf handler and count its failures (kopf passes every kwarg, so the wrapper is transparent)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def inner(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            except kopf.TemporaryError:
                RECONCILE_ERRORS.labels(resource, handler, "temporary").inc()
                raise
            except kopf.PermanentError:
                RECONCILE_ERRORS.labels(resource, handler, "permanent").inc()
                raise
            except Exception:
                RECONCILE_ERRORS.labels(resource, handler, "unexpected").inc()
                raise
            finally:
                RECONCILE_SECONDS.labels(resource, handler).observe(time.perf_counter() - start)

        return inner  # type: ignore[return-value]

    return wrap


class PhaseCounter:
    """Keeps ``fedattn_operator_sessions{phase}`` equal to the phases last written per session, and
    ``fedattn_operator_session_degraded`` to their Degraded condition (``phase`` None: the session is gone)."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}

    def set(
        self, namespace: str, name: str, phase: str | None, *, conditions: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        key = (namespace, name)
        old = self._phases.pop(key, None)
        if old is not None:
            SESSIONS.labels(old).dec()
        if phase is None:
            with contextlib.suppress(KeyError):  # NB: a session never observed has no series to remove
                DEGRADED.remove(namespace, name)
            return
        self._phases[key] = phase
        SESSIONS.labels(phase).inc()
        degraded = any(c.get("type") == "Degraded" and c.get("status") == "True" for c in conditions)
        DEGRADED.labels(namespace, name).set(1 if degraded else 0)
