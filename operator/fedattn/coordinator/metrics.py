"""Prometheus metrics of one coordinator, in their own registry so several can share a process (tests).

The store's metrics go into the same registry, so one ``/metrics`` shows both.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "fedattn_coordinator"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.sessions = Gauge(
            f"{PREFIX}_sessions", "Sessions known to this coordinator, by phase", ["phase"], registry=r
        )
        self.rounds = Counter(f"{PREFIX}_rounds", "Learning rounds closed", registry=r)
        self.contributions_recorded = Counter(
            f"{PREFIX}_contributions_recorded", "Contributions and KV syncs recorded in the store", registry=r
        )
        self.contributions_rejected = Counter(
            f"{PREFIX}_contributions_rejected",
            "Submissions the aggregator rejected (late, duplicate, malformed...), by reason",
            ["reason"],
            registry=r,
        )
        self.http_requests = Counter(
            f"{PREFIX}_http_requests", "HTTPS API requests, by route and status code", ["path", "code"], registry=r
        )
        self.http_request_seconds = Histogram(
            f"{PREFIX}_http_request_seconds", "HTTPS API request handling time", ["path"], registry=r
        )
        self.sync_latency_seconds = Histogram(
            f"{PREFIX}_sync_latency_seconds",
            "KV sync latency reported by the aggregator (attention mode)",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=r,
        )
        self.control_link_up = Gauge(
            f"{PREFIX}_control_link_up", "1 while the aggregator answers on the control link", registry=r
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (``..._total`` for counters); 0 when it was never touched."""
        got = self.registry.get_sample_value(name, labels or None)
        return 0.0 if got is None else got
