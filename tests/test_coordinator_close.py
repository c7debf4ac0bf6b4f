"""Pure helpers that turn the aggregator's close reply into round status (untrusted input)."""

from __future__ import annotations

import math

from fedattn.coordinator.service import latest_epsilon, per_member, stop_reason


def test_per_member_keeps_finite_numbers_of_session_members_only():
    reply = {"a": 0.5, "b": math.nan, "c": True, "mallory": 0.9, "d": -1, "e": "0.3", "f": math.inf}
    assert per_member(reply, ["a", "b", "c", "d", "e", "f"]) == {"a": 0.5, "d": -1.0}
    assert per_member(["a"], ["a"]) == {} and per_member(None, ["a"]) == {}


def test_stop_reason_splits_the_reason_from_its_detail():
    text = "PrivacyBudgetExhausted: round 3 would spend epsilon 9.01 > targetEpsilon 8"
    assert stop_reason(text) == ("PrivacyBudgetExhausted", "round 3 would spend epsilon 9.01 > targetEpsilon 8")
    assert stop_reason("no more rounds") == ("Stopped", "no more rounds")
    assert stop_reason("two words: detail") == ("Stopped", "two words: detail")  # not an identifier


def test_latest_epsilon_is_the_last_round_that_reported_one():
    assert latest_epsilon({}) is None
    assert latest_epsilon({1: {"epsilon": None}}) is None
    assert latest_epsilon({2: {"epsilon": 7.08}, 1: {"epsilon": 4.73}, 3: {"epsilon": None}}) == 7.08
