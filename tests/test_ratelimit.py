"""fedattn.ratelimit.Sampler against a hand-counted schedule (the clock is given, not read)."""

from __future__ import annotations

import pytest

from fedattn.ratelimit import Sampler


def test_a_burst_then_one_per_period_and_the_suppressed_are_reported_with_the_next_allowed():
    sampler = Sampler(burst=3, every_seconds=10.0)
    assert [sampler.allow("a", now=0.0) for _ in range(5)] == [(True, 0)] * 3 + [(False, 1), (False, 2)]
    assert sampler.allow("b", now=0.0) == (True, 0)  # keys are independent
    assert sampler.allow("a", now=9.9) == (False, 3)
    assert sampler.allow("a", now=10.0) == (True, 3)  # one token back after one period
    assert sampler.allow("a", now=10.0) == (False, 1)
    assert [sampler.allow("a", now=100.0)[0] for _ in range(4)] == [True, True, True, False]  # refill caps at burst


def test_the_key_table_is_bounded_oldest_first():
    sampler = Sampler(burst=1, every_seconds=60.0, max_keys=2)
    assert sampler.allow("a", now=0)[0] and sampler.allow("b", now=0)[0]
    assert not sampler.allow("a", now=1)[0]
    assert sampler.allow("c", now=1)[0]  # evicts b (a was used last)
    assert sampler.allow("b", now=1)[0]  # b starts afresh; a was evicted by it
    assert sampler.allow("a", now=1)[0]


def test_nonsense_settings_are_refused():
    with pytest.raises(ValueError, match="burst"):
        Sampler(burst=0)
