"""A background heartbeat to the coordinator; its answers tell the participant when the session ended."""

from __future__ import annotations

import logging
import threading
from typing import Any

from fedattn.api.schema import SessionPhase
from fedattn.coordinator.client import CoordinatorClient

log = logging.getLogger(__name__)


class Heartbeat:
    """Sends a heartbeat every ``interval`` seconds until stopped; keeps the last answer.

    Failures are logged and retried on the next beat (the client already retries with backoff and
    trips its breaker); a participant keeps working through a coordinator blip.
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
            try:
                self.last = self._client.heartbeat(self._session, self._participant)
            except Exception as exc:  # NB: any failure must not kill the beat; it is logged and retried
                log.warning("heartbeat failed: %s", exc, extra={"session": self._session,
                                                                "participant": self._participant})

    @property
    def session_over(self) -> bool:
        return self.last.get("session_phase") in (SessionPhase.SUCCEEDED, SessionPhase.FAILED)
