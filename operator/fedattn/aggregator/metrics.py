"""Prometheus metrics of one aggregator, in their own registry so several can share a process (tests)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "fedattn_aggregator"


class Metrics:
    """The aggregator's counters and histograms; names carry their units."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.bytes_received = Counter(
            f"{PREFIX}_bytes_received", "Bytes received on the ROUTER (all frames)", registry=r
        )
        self.bytes_sent = Counter(f"{PREFIX}_bytes_sent", "Bytes sent on the ROUTER (all frames)", registry=r)
        self.contributions_accepted = Counter(
            f"{PREFIX}_contributions_accepted", "Updates and KV blocks accepted", ["kind"], registry=r
        )
        self.rejected = Counter(
            f"{PREFIX}_rejected", "Messages rejected, by error code", ["reason"], registry=r
        )
        self.aggregation_seconds = Histogram(
            f"{PREFIX}_aggregation_seconds",
            "Time spent folding and finishing one learning round",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.sync_latency_seconds = Histogram(
            f"{PREFIX}_sync_latency_seconds",
            "KV sync barrier latency: first arrival to release",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120),
            registry=r,
        )
        self.rounds_closed = Counter(f"{PREFIX}_rounds_closed", "Learning rounds closed", registry=r)
        self.dp_epsilon = Gauge(
            f"{PREFIX}_dp_epsilon",
            "Differential privacy: epsilon spent so far (RDP accountant, at the session's delta)",
            ["session"],
            registry=r,
        )
        self.dp_epsilon_target = Gauge(
            f"{PREFIX}_dp_epsilon_target",
            "Differential privacy: the session's targetEpsilon (the budget dp_epsilon may not exceed)",
            ["session"],
            registry=r,
        )
        self.accuracy = Gauge(
            f"{PREFIX}_accuracy_ratio",
            "Learning: accuracy of the global model after the last closed round (held-out test split)",
            ["session"],
            registry=r,
        )
        self.reliability = Gauge(
            f"{PREFIX}_participant_reliability_ratio",
            "Moving average of a participant's round scores (cosine of its delta to the last global step)",
            ["session", "participant"],
            registry=r,
        )
        self.secagg_unmask_seconds = Histogram(
            f"{PREFIX}_secagg_unmask_seconds",
            "Secure aggregation: from asking survivors for their shares to the unmasked sum",
            buckets=(0.0001, 0.001, 0.01, 0.1, 1, 10),
            registry=r,
        )
        self.checkpoint_seconds = Histogram(
            f"{PREFIX}_checkpoint_seconds",
            "Time to write one learning checkpoint (temp file, fsync, rename)",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.update_bytes = Counter(
            f"{PREFIX}_update_bytes",
            "Payload bytes of accepted learning updates, by codec (dense, int8, topk, topk+int8)",
            ["codec"],
            registry=r,
        )
        self.events_dropped = Counter(
            f"{PREFIX}_events_dropped",
            "ctl_events dropped because the queue for the coordinator was full",
            registry=r,
        )
        self.events_queued = Gauge(
            f"{PREFIX}_events_queued", "ctl_events waiting for the coordinator", registry=r
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (``..._total`` for counters); 0 when it was never touched."""
        got = self.registry.get_sample_value(name, labels or None)
        return 0.0 if got is None else got
