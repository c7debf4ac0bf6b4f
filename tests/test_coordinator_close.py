"""Pure helpers that turn the aggregator's close reply into round status (untrusted input)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from fedattn.coordinator.checks import per_member
from fedattn.coordinator.summary import RoundSummary, latest_epsilon, stop_reason


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


MEMBERS = ["alice", "bob", "carol"]


def test_a_well_formed_close_reply_is_carried_over_field_by_field():
    reply = {
        "ok": True,
        "contributions": 3,
        "accuracy": 0.75,
        "weight_total": 3.0,
        "aggregation_seconds": 0.012,
        "epsilon": 1.5,
        "update_bytes": 4096,
        "model_checksum": 2**63 - 1,
        "scores": {"alice": 0.25, "bob": 1},
        "reliability": {"carol": 0.5},
        "evict": ["bob"],
        "stop": "PrivacyBudgetExhausted: round 3 would spend epsilon 9.01 > targetEpsilon 8",
        "evaluation": {"round": 2, "loss": 0.5, "num_examples": 90, "metrics": {"accuracy": 0.9, "auc": math.nan},
                       "participants": ["alice", "mallory"], "missing": ["bob"]},
    }
    evaluation = {"round": 2, "loss": 0.5, "num_examples": 90, "metrics": {"accuracy": 0.9},
                  "participants": ["alice"], "missing": ["bob"]}
    summary = RoundSummary.from_reply(reply, round=2, members=MEMBERS)
    judgement = {"scores": {"alice": 0.25, "bob": 1.0}, "reliability": {"carol": 0.5}, "evict": ["bob"]}
    assert summary.judgement() == judgement
    assert summary.status() == {
        "round": 2,
        "state": "Closed",
        "contributions": 3,
        "accuracy": 0.75,
        "weight_total": 3.0,
        "aggregation_seconds": 0.012,
        "epsilon": 1.5,
        "update_bytes": 4096,
        "evaluation": evaluation,
        **judgement,
    }
    assert summary.evict == ("bob",) and summary.model_checksum == 2**63 - 1
    assert summary.stop == reply["stop"]
    assert summary.evaluation == evaluation
    json.dumps(summary.status(), allow_nan=False)  # NB: status is served as JSON


def test_a_malformed_close_reply_reads_as_absent_fields_and_members_only():
    reply = {
        "contributions": True,
        "accuracy": math.nan,
        "weight_total": "3",
        "aggregation_seconds": math.inf,
        "epsilon": -math.inf,
        "update_bytes": 2**63,
        "model_checksum": 1.5,
        "scores": [0.5],
        "reliability": {"mallory": 1.0, "alice": math.nan},
        "evict": ["mallory", 7, "carol", "carol", None, "alice"],
        "stop": "",
    }
    summary = RoundSummary.from_reply(reply, round=1, members=MEMBERS)
    assert summary == RoundSummary(
        round=1,
        contributions=0,
        accuracy=None,
        weight_total=None,
        aggregation_seconds=None,
        epsilon=None,
        update_bytes=None,
        model_checksum=None,
        scores={},
        reliability={},
        evict=("carol", "alice"),
        stop=None,
    )
    json.dumps(summary.status(), allow_nan=False)
    assert summary.judgement() == {"scores": {}, "reliability": {}, "evict": ["carol", "alice"]}


def test_an_eviction_list_must_be_a_list_of_member_names():
    # NB: a bare string would otherwise be read letter by letter ("ab" evicting members "a" and "b").
    assert RoundSummary.from_reply({"evict": "ab"}, round=1, members=["a", "b"]).evict == ()
    assert RoundSummary.from_reply({"evict": {"a": 1}}, round=1, members=["a"]).evict == ()
    assert RoundSummary.from_reply({"stop": 3}, round=1, members=["a"]).stop is None
    empty = RoundSummary.from_reply({}, round=4, members=[])
    assert empty.status()["contributions"] == 0
    assert not any(empty.judgement().values())  # nothing to record as a scores event


def test_a_round_summary_is_frozen():
    summary = RoundSummary.from_reply({"scores": {"a": 1.0}}, round=1, members=["a"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.round = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        summary.scores["a"] = 0.0  # type: ignore[index]
