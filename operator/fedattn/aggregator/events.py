"""``ctl_event`` pushes to the coordinator, kept in a bounded in-memory queue until they can be sent.

The ROUTER sends with ``ROUTER_MANDATORY``, so a message to a coordinator that is not connected fails
loudly (EHOSTUNREACH) instead of vanishing; the event then stays queued and is retried on the next
tick or as soon as the coordinator speaks again (its DEALER may come back with a new routing id, which
the server learns from its next control request). Each event carries a monotonically increasing
``event_id`` so the coordinator can drop a duplicate. When the queue is full the oldest event is
dropped and counted (``fedattn_aggregator_events_dropped_total``).

What this does not cover: events are held in memory only, so an aggregator restart loses those
still queued, and an event handed to ZMQ just before the coordinator's connection broke can be
lost with that connection. Checkpoints (issue #4) will make the aggregator's state durable.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from typing import Any


class EventQueue:
    """FIFO of pending events; ``flush`` sends from the head until a send fails."""

    def __init__(self, *, limit: int = 10_000, on_drop: Callable[[], None] = lambda: None) -> None:
        self._queue: deque[dict[str, Any]] = deque()
        self._ids = itertools.count(1)
        self.limit = limit
        self._on_drop = on_drop

    def push(self, event: dict[str, Any]) -> None:
        if len(self._queue) >= self.limit:
            self._queue.popleft()
            self._on_drop()
        self._queue.append({**event, "event_id": next(self._ids)})

    def flush(self, send: Callable[[dict[str, Any]], bool]) -> int:
        """Send queued events in order; stops at the first one ``send`` could not deliver. Returns
        how many were sent."""
        sent = 0
        while self._queue:
            if not send(self._queue[0]):
                break
            self._queue.popleft()
            sent += 1
        return sent

    def __len__(self) -> int:
        return len(self._queue)
