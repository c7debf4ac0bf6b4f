"""Federated evaluation of a round's new global model: participants evaluate it on their own data.

After a round closes (on ``spec.evaluation.everyRounds`` rounds, and always the last), the aggregator
sends the new global model in an ``evaluate`` message to the round's contributors and defers the
``ctl_close_round`` reply until each answered with an ``evaluation`` (or ``timeoutSeconds`` passed);
the reply's ``evaluation`` is the example-weighted mean of their loss and metrics, Flower's
``aggregate_evaluate``. What a participant claims is checked like an update's meta: finite numbers,
a bounded count and at most a few short-named metrics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedattn import wire

MAX_METRICS = 32
MAX_METRIC_NAME = 64
MAX_EXAMPLES = 2**40


@dataclass(frozen=True)
class Report:
    loss: float
    num_examples: int
    metrics: dict[str, float]


def _finite(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise wire.WireError("bad_meta", f"{what} must be a finite number, got {value!r}")
    return float(value)


def parse_report(meta: Mapping[str, Any]) -> Report:
    """An ``evaluation`` message's meta; WireError ``bad_meta`` naming the field that is off."""
    examples = meta.get("num_examples")
    if isinstance(examples, bool) or not isinstance(examples, int) or not 0 < examples <= MAX_EXAMPLES:
        raise wire.WireError("bad_meta", f"num_examples must be an integer in 1..{MAX_EXAMPLES}, got {examples!r}")
    metrics = meta.get("metrics") or {}
    if not isinstance(metrics, Mapping) or len(metrics) > MAX_METRICS:
        raise wire.WireError("bad_meta", f"metrics must be a map of at most {MAX_METRICS} numbers")
    for key in metrics:
        if not isinstance(key, str) or not 0 < len(key) <= MAX_METRIC_NAME:
            raise wire.WireError("bad_meta", f"metric names must be 1..{MAX_METRIC_NAME} characters, got {key!r}")
    return Report(
        loss=_finite(meta.get("loss"), "loss"),
        num_examples=examples,
        metrics={k: _finite(v, f"metrics.{k}") for k, v in metrics.items()},
    )


@dataclass
class RoundEvaluation:
    """One round's evaluation while it is collected: who was asked, who answered, until when."""

    round: int
    asked: frozenset[str]
    deadline: float  # time.monotonic() after which the reply goes out with what arrived
    reports: dict[str, Report] = field(default_factory=dict)
    finished: bool = False

    def add(self, participant: str, round: int, meta: Mapping[str, Any]) -> None:
        if self.finished or round != self.round:
            raise wire.WireError("stale_round", f"no evaluation of round {round} is being collected")
        if participant not in self.asked:
            raise wire.WireError("not_in_round", f"{participant} was not asked to evaluate round {round}")
        if participant in self.reports:
            raise wire.WireError("duplicate", f"{participant} already evaluated round {round}")
        self.reports[participant] = parse_report(meta)

    @property
    def complete(self) -> bool:
        return self.asked <= self.reports.keys()

    def summary(self) -> dict[str, Any] | None:
        """Example-weighted loss and metrics (each over those who reported it), or None if nobody did."""
        if not self.reports:
            return None
        total = sum(r.num_examples for r in self.reports.values())
        metrics: dict[str, float] = {}
        for key in sorted({k for r in self.reports.values() for k in r.metrics}):
            having = [r for r in self.reports.values() if key in r.metrics]
            metrics[key] = sum(r.metrics[key] * r.num_examples for r in having) / sum(r.num_examples for r in having)
        return {
            "round": self.round,
            "loss": sum(r.loss * r.num_examples for r in self.reports.values()) / total,
            "num_examples": total,
            "metrics": metrics,
            "participants": sorted(self.reports),
            "missing": sorted(self.asked - self.reports.keys()),
        }
