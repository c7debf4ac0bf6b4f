"""Join a session that may not be there yet: wait for it, bounded, with backoff.

A participant's pod routinely starts before its coordinator listens, or before the operator has
registered the session (a coordinator can take a minute to come up): that is waiting, not failure.
Crashing instead burns the Job's pod restarts (``backoffLimit``), which are for the pod's own faults.
Anything else the coordinator says no to (not a participant, evicted, finished) ends the wait at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pybreaker

from fedattn.coordinator.client import NO_SESSION, CoordinatorClient, CoordinatorError

log = logging.getLogger(__name__)

#: first and longest pause between tries, seconds (the client's own retries come on top)
FIRST_PAUSE_SECONDS = 1.0
MAX_PAUSE_SECONDS = 30.0


class SessionNotReady(Exception):
    """The session was not there to join within the wait; the message says what was last seen."""


def join_when_ready(
    client: CoordinatorClient,
    *,
    session: str,
    participant: str,
    wait_seconds: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """The coordinator's join answer, once the coordinator is up and has ``session``.

    Waits through connection errors, an open circuit breaker and 404 ``no_session``, pausing 1, 2,
    4 ... 30 s; raises :class:`SessionNotReady` after ``wait_seconds``, any other refusal at once.
    """
    deadline = clock() + wait_seconds
    pause = FIRST_PAUSE_SECONDS
    ctx = {"session": session, "participant": participant}
    while True:
        try:
            return client.join(session, participant)
        except CoordinatorError as exc:
            if exc.code != NO_SESSION:
                raise
            why: Exception = exc
        except (OSError, pybreaker.CircuitBreakerError) as exc:  # NB: URLError and ConnectionError are OSErrors
            why = exc
        left = deadline - clock()
        if left <= 0:
            raise SessionNotReady(f"session {session!r} was not there to join within {wait_seconds:g} s: {why}")
        log.info("waiting for the session (%s); trying again in %.0f s", why, min(pause, left), extra=ctx)
        sleep(min(pause, left))
        pause = min(pause * 2, MAX_PAUSE_SECONDS)
