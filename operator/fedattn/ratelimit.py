"""Per-key token buckets: how much of one sender's garbage becomes log lines and store rows.

A hostile or broken participant can make the aggregator refuse thousands of messages a second.
Each refusal is counted in a metric (cheap, bounded); only a sample of them becomes a log line or
an event row, so logs and the store grow with the number of senders, not with their traffic. The
key is usually ``(session, participant)``; the table of keys is bounded too (oldest evicted).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float
    suppressed: int = 0


class Sampler:
    """``burst`` events at once per key, then one per ``every_seconds``; the rest are suppressed.

    :meth:`allow` also returns how many were suppressed since the last allowed one, so the allowed
    event can say "and N more like it" instead of the N being lost without a trace.
    """

    def __init__(self, *, burst: int = 10, every_seconds: float = 6.0, max_keys: int = 10_000) -> None:
        if burst < 1 or every_seconds <= 0 or max_keys < 1:
            raise ValueError("burst and max_keys must be >= 1, every_seconds > 0")
        self.burst, self.every_seconds, self.max_keys = burst, every_seconds, max_keys
        self._buckets: OrderedDict[Hashable, _Bucket] = OrderedDict()

    def allow(self, key: Hashable, *, now: float) -> tuple[bool, int]:
        """Whether one more event of ``key`` passes at ``now``, and how many were suppressed before it."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = _Bucket(tokens=float(self.burst), at=now)
        else:
            self._buckets.move_to_end(key)
            elapsed = max(0.0, now - bucket.at)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed / self.every_seconds)
            bucket.at = now
        if bucket.tokens < 1.0:
            bucket.suppressed += 1
            return False, bucket.suppressed
        bucket.tokens -= 1.0
        suppressed, bucket.suppressed = bucket.suppressed, 0
        return True, suppressed
