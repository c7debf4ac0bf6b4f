"""Contribution and reliability scores, and the eviction rule of ``spec.eviction {minScore, afterRounds}``.

A participant's contribution in a round is the cosine similarity of its delta (local model - global)
to a reference direction: the round's aggregate delta when the rule keeps every update (robust
rules), or the previous round's global step when it streams (FedAvg and the server optimizers
keep O(P) memory, so they score each update as it is folded). A rejected update scores -1, a late
or missing one 0. A participant whose round score is below ``minScore`` for ``afterRounds``
consecutive rounds is evicted; its reliability (an exponential moving average of the round scores)
is what status and metrics report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors; 0 when either is zero (no direction, no credit)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.clip(float(a @ b) / (na * nb), -1.0, 1.0))


@dataclass(frozen=True)
class Reliability:
    """Running record of one participant across rounds."""

    score: float = 1.0
    rounds: int = 0
    accepted: int = 0
    rejected: int = 0
    late: int = 0
    low_streak: int = 0


def update_reliability(
    record: Reliability,
    *,
    similarity: float | None = None,
    rejected: bool = False,
    min_score: float = 0.0,
    decay: float = 0.8,
) -> Reliability:
    """The record after one round: ``similarity`` of an accepted update, ``rejected``, or neither (late).

    ``low_streak`` counts consecutive rounds scoring below ``min_score``.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    if rejected and similarity is not None:
        raise ValueError("a rejected update has no similarity")
    if similarity is not None and not math.isfinite(similarity):
        raise ValueError(f"similarity must be finite, got {similarity}")
    if rejected:
        value, counts = -1.0, {"rejected": record.rejected + 1}
    elif similarity is None:
        value, counts = 0.0, {"late": record.late + 1}
    else:
        value, counts = float(np.clip(similarity, -1.0, 1.0)), {"accepted": record.accepted + 1}
    return replace(
        record,
        score=decay * record.score + (1 - decay) * value,
        rounds=record.rounds + 1,
        low_streak=record.low_streak + 1 if value < min_score else 0,
        **counts,
    )


def should_evict(record: Reliability, *, after_rounds: int) -> bool:
    """True once the participant has scored low ``after_rounds`` rounds in a row."""
    return record.low_streak >= after_rounds
