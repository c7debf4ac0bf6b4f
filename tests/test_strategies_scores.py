"""Contribution scores and the eviction rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedattn.aggregator.strategies.scores import (
    Reliability,
    cosine,
    should_evict,
    update_reliability,
)


def test_cosine_hand_computed_values():
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.array([1.0, 2.0]), np.array([-2.0, -4.0])) == pytest.approx(-1.0)
    assert cosine(np.array([1.0, 0.0]), np.array([0.0, 3.0])) == 0.0
    assert cosine(np.zeros(2), np.array([1.0, 1.0])) == 0.0


def test_reliability_is_an_ema_with_penalties():
    r = Reliability()
    r = update_reliability(r, similarity=0.5, decay=0.5)  # 0.5*1 + 0.5*0.5
    assert r.score == pytest.approx(0.75) and (r.rounds, r.accepted) == (1, 1)
    r = update_reliability(r, rejected=True, decay=0.5)  # 0.5*0.75 - 0.5
    assert r.score == pytest.approx(-0.125) and r.rejected == 1
    r = update_reliability(r, decay=0.5)  # late: 0.5 * -0.125
    assert r.score == pytest.approx(-0.0625) and r.late == 1 and r.rounds == 3
    with pytest.raises(ValueError, match="rejected update has no similarity"):
        update_reliability(r, similarity=0.1, rejected=True)
    with pytest.raises(ValueError, match="finite"):
        update_reliability(r, similarity=float("nan"))


def test_eviction_needs_after_rounds_consecutive_low_rounds():
    r = Reliability()
    history = [-0.5, -0.5, 0.6, -0.2, None, -0.9]  # None = late (scores 0)
    streaks, evicted = [], []
    for sim in history:
        r = update_reliability(r, similarity=sim, min_score=0.1)
        streaks.append(r.low_streak)
        evicted.append(should_evict(r, after_rounds=3))
    assert streaks == [1, 2, 0, 1, 2, 3]  # a good round resets the streak
    assert evicted == [False] * 5 + [True]
    r = update_reliability(Reliability(), rejected=True, min_score=-1.0)
    assert r.low_streak == 0  # -1 is not below -1
