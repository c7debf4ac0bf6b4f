"""Checks on what the aggregator reports (untrusted input), keeping only what status and the store can hold.

A number that is not finite (NaN would make status invalid JSON) or does not fit the store's BIGINT
columns becomes None; names that are not session members are dropped; a malformed field reads as
absent. Used on ``ctl_event`` pushes and on close replies alike, so one odd value never fails a write.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any


def finite(value: Any) -> float | None:
    """A finite number from a peer's message, else None (NaN would also make status invalid JSON)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def int64(value: Any) -> int | None:
    """An integer that fits the store's BIGINT columns, else None (a write must not fail over it)."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


def per_member(value: Any, members: Iterable[str]) -> dict[str, float]:
    """``{participant: number}`` from a close reply, kept to session members with finite values."""
    if not isinstance(value, dict):
        return {}
    known = set(members)
    return {p: v for p, x in value.items() if p in known and (v := finite(x)) is not None}


def members_only(value: Any, members: Iterable[str]) -> tuple[str, ...]:
    """The session members a close reply names in a list, once each, in its order.

    NB: only a list counts; a string would otherwise be read letter by letter as names.
    """
    if not isinstance(value, list):
        return ()
    known = set(members)
    return tuple(dict.fromkeys(p for p in value if isinstance(p, str) and p in known))


#: bounds on a close reply's federated evaluation (what the aggregator accepted from participants)
MAX_METRICS = 32
MAX_METRIC_NAME = 64


def evaluation(value: Any, members: Iterable[str]) -> dict[str, Any] | None:
    """A close reply's ``evaluation``: finite loss, a count, at most MAX_METRICS finite metrics under
    short names, members only; None when malformed or absent."""
    if not isinstance(value, dict):
        return None
    loss, examples = finite(value.get("loss")), int64(value.get("num_examples"))
    metrics = value.get("metrics")
    if loss is None or examples is None or examples <= 0 or not isinstance(metrics, dict):
        return None
    kept = {k: v for k, x in metrics.items()
            if isinstance(k, str) and 0 < len(k) <= MAX_METRIC_NAME and (v := finite(x)) is not None}
    return {
        "round": int64(value.get("round")),
        "loss": loss,
        "num_examples": examples,
        "metrics": dict(sorted(kept.items())[:MAX_METRICS]),
        "participants": list(members_only(value.get("participants"), members)),
        "missing": list(members_only(value.get("missing"), members)),
    }
