"""A background heartbeat to the coordinator; its answers tell the participant when the session ended."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

from fedattn.api.schema import ParticipantPhase, SessionPhase
from fedattn.coordinator.client import CoordinatorClient
from fedattn.resilience import Policy

log = logging.getLogger(__name__)


def heartbeat_policy(policy: Policy, *, interval: float) -> Policy:
    """The session's policy for heartbeats: no retries (the next beat is the retry) and a breaker that
    never stays open longer than a beat. NB: one open for the default 60 s after a coordinator restart
    outlasts the heartbeat timeout, and the restarted coordinator would mark every participant Failed."""
    return dataclasses.replace(policy, retries=0, breaker_open_seconds=min(policy.breaker_open_seconds, interval))


class Heartbeat:
    """Sends a heartbeat every ``interval`` seconds until stopped; keeps the last answer.

    Failures are logged and retried on the next beat (the client already retries with backoff and
    trips its breaker); a participant keeps working through a coordinator blip. A coordinator that was
    away longer than the heartbeat timeout (restarted) has marked us Failed: we join again, which is
    how a Failed participant returns to the rounds.
    """

    def __init__(self, client: CoordinatorClient, *, session: str, participant: str, interval: float) -> None:
        self._client, self._session, self._participant = client, session, participant
        self._interval = interval
        self._stop = threading.Event()
        self.last: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1)

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            ids = {"session": self._session, "participant": self._participant}
            try:
                self.last = self._client.heartbeat(self._session, self._participant)
                if self.last.get("phase") == ParticipantPhase.FAILED and not self.session_over:
                    self._client.join(self._session, self._participant)
                    log.warning("marked Failed while the coordinator was away; joined again", extra=ids)
            except Exception as exc:  # NB: any failure must not kill the beat; it is logged and retried
                log.warning("heartbeat failed: %s", exc, extra=ids)

    @property
    def session_over(self) -> bool:
        return self.last.get("session_phase") in (SessionPhase.SUCCEEDED, SessionPhase.FAILED)
