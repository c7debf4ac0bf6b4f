"""``ctl_event`` pushes to the coordinator, kept until the coordinator acknowledges them.

The ROUTER sends with ``ROUTER_MANDATORY``, so a message to a coordinator that is not connected fails
loudly (EHOSTUNREACH) instead of vanishing; the event then stays queued and is retried on the next
tick or as soon as the coordinator speaks again (its DEALER may come back with a new routing id, which
the server learns from its next control request). An event handed to ZMQ is not forgotten either:
it waits, sent but unacknowledged, until the coordinator acknowledges it (``ack_events`` in the meta
of its next control request, usually its periodic ``ctl_status``), and is sent again after
``resend_seconds`` without one -- a coordinator that crashed between receiving and recording it gets
it again. Each event carries ``event_id`` (increasing) and ``epoch`` (random per aggregator
process, so a restarted aggregator's ids are not taken for old ones); the coordinator drops a
re-sent duplicate. When more than ``limit`` events are held the oldest is dropped and counted
(``fedattn_aggregator_events_dropped_total``).

What this does not cover: events are held in memory only, so an aggregator restart loses those
still held.
"""

from __future__ import annotations

import itertools
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Any


class EventQueue:
    """FIFO of events to send; sent ones wait for their acknowledgement, and are re-sent without one."""

    def __init__(
        self, *, limit: int = 10_000, resend_seconds: float = 10.0, on_drop: Callable[[], None] = lambda: None
    ) -> None:
        self._queue: deque[dict[str, Any]] = deque()
        self._unacked: OrderedDict[int, tuple[dict[str, Any], float]] = OrderedDict()  # id -> (event, sent at)
        self._ids = itertools.count(1)
        self.epoch = secrets.randbits(62)
        self.limit = limit
        self.resend_seconds = resend_seconds
        self._on_drop = on_drop

    def push(self, event: dict[str, Any]) -> None:
        if len(self) >= self.limit:
            if self._unacked:
                self._unacked.popitem(last=False)
            else:
                self._queue.popleft()
            self._on_drop()
        self._queue.append({**event, "event_id": next(self._ids), "epoch": self.epoch})

    def flush(self, send: Callable[[dict[str, Any]], bool], *, now: float) -> int:
        """Queue again what waited ``resend_seconds`` for its acknowledgement, then send in order;
        stops at the first event ``send`` could not deliver. Returns how many were sent."""
        due = [i for i, (_, at) in self._unacked.items() if now - at >= self.resend_seconds]
        for event_id in reversed(due):  # NB: oldest ends up first, ahead of newer events
            self._queue.appendleft(self._unacked.pop(event_id)[0])
        sent = 0
        while self._queue:
            if not send(self._queue[0]):
                break
            event = self._queue.popleft()
            self._unacked[event["event_id"]] = (event, now)
            sent += 1
        return sent

    def ack(self, ack: Any) -> None:
        """``{epoch, event_id}``: the coordinator holds every event of ``epoch`` up to ``event_id``."""
        if not isinstance(ack, Mapping) or ack.get("epoch") != self.epoch:
            return  # NB: another aggregator process's acknowledgement (or none): nothing of ours
        upto = ack.get("event_id")
        if not isinstance(upto, int) or isinstance(upto, bool):
            return
        for event_id in [i for i in self._unacked if i <= upto]:
            del self._unacked[event_id]

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def __len__(self) -> int:
        return len(self._queue) + len(self._unacked)
