"""The pure session state machine on a fake clock (time is an argument, nothing sleeps)."""

from __future__ import annotations

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from fedattn.coordinator.rounds import (
    FAILED,
    P_FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    CloseRound,
    Fail,
    Finish,
    MarkFailed,
    OpenRound,
    SessionMachine,
    Settings,
    Start,
    Verdict,
)


def learning(**overrides) -> SessionMachine:
    settings = {
        "mode": "learning",
        "participants": ("a", "b", "c"),
        "min_participants": 2,
        "rounds": 2,
        "round_timeout": 100.0,
        "wait_after_min": 10.0,
        "heartbeat_timeout": 1000.0,
        "start_timeout": 1000.0,
        "active_deadline": None,
        **overrides,
    }
    return SessionMachine(Settings(**settings), now=0.0)


def ready(m: SessionMachine, *names: str, now: float = 0.0) -> list:
    """Join all, then say hello (so all are live when the quorum opens round 1)."""
    out = []
    for n in names:
        out += m.join(n, now=now)
    for n in names:
        out += m.hello(n, now=now)
    return out


def test_pending_until_quorum_has_joined_and_said_hello():
    m = learning()
    assert m.join("a", now=0) == [] and m.hello("a", now=0) == []
    assert m.join("b", now=1) == []  # joined, but no hello yet: not ready
    assert m.join("c", now=1) == []
    assert m.phase == PENDING
    # NB: c has not said hello but is live, so it is in the round (it gets the model on hello).
    assert m.hello("b", now=2) == [Start(), OpenRound(round=1, participants=("a", "b", "c"))]
    assert m.phase == RUNNING
    assert m.deadline() == 102.0


def test_round_closes_when_every_member_contributed_then_the_session_finishes():
    m = learning()
    ready(m, "a", "b", "c")
    assert m.round.members == {"a", "b", "c"}
    assert m.contribution("a", 1, now=1) == (Verdict.ACCEPTED, [])
    assert m.contribution("b", 1, now=2) == (Verdict.ACCEPTED, [])
    assert m.contribution("c", 1, now=3) == (Verdict.ACCEPTED, [CloseRound(round=1)])
    assert m.round_closed(1, now=4) == [OpenRound(round=2, participants=("a", "b", "c"))]
    for n in ("a", "b", "c"):
        verdict, commands = m.contribution(n, 2, now=5)
        assert verdict == Verdict.ACCEPTED
    assert commands == [CloseRound(round=2)]
    assert m.round_closed(2, now=6) == [Finish(reason="completed")]
    assert m.phase == SUCCEEDED
    assert m.tick(now=1e9) == []


def test_stop_after_a_closing_round_succeeds_with_the_reason_and_counts_the_round():
    m = learning(rounds=5)
    ready(m, "a", "b", "c")
    for n in ("a", "b", "c"):
        _, commands = m.contribution(n, 1, now=1)
    assert commands == [CloseRound(round=1)]
    assert m.stop("PrivacyBudgetExhausted", "round 2 would spend epsilon 9.0 > 8") == [
        Finish(reason="PrivacyBudgetExhausted")
    ]
    assert (m.phase, m.rounds_closed, m.round) == (SUCCEEDED, 1, None)
    assert m.message == "PrivacyBudgetExhausted: round 2 would spend epsilon 9.0 > 8"
    assert m.round_closed(1, now=2) == [] and m.tick(now=1e9) == []  # nothing opens after the stop
    assert m.stop("PrivacyBudgetExhausted", "again") == [] and m.message.endswith("> 8")


def test_stop_while_a_round_is_open_drops_that_round():
    m = learning(rounds=5)
    ready(m, "a", "b", "c")  # round 1 open (its opening refused by the aggregator)
    assert m.stop("PrivacyBudgetExhausted", "round 1 would spend too much") == [
        Finish(reason="PrivacyBudgetExhausted")
    ]
    assert (m.phase, m.rounds_closed, m.round) == (SUCCEEDED, 0, None)
    assert m.contribution("a", 1, now=1) == (Verdict.LATE, [])


def test_wait_after_min_closes_with_the_quorum():
    m = learning()
    ready(m, "a", "b", "c")
    m.contribution("a", 1, now=1)
    m.contribution("b", 1, now=5)  # quorum reached at t=5
    assert m.tick(now=14.9) == []
    assert m.tick(now=15.0) == [CloseRound(round=1)]
    assert m.tick(now=16.0) == []  # asked once, not again while closing


def test_timeout_closes_with_quorum():
    m = learning(wait_after_min=1000.0)
    ready(m, "a", "b", "c")
    m.contribution("a", 1, now=1)
    m.contribution("b", 1, now=2)
    assert m.tick(now=99.9) == []
    assert m.tick(now=100.0) == [CloseRound(round=1)]


def test_timeout_without_quorum_fails_with_quorum_lost():
    m = learning()
    ready(m, "a", "b", "c")
    m.contribution("a", 1, now=1)
    assert m.tick(now=99) == []
    [fail] = m.tick(now=100)
    assert isinstance(fail, Fail) and fail.reason == "QuorumLost"
    assert m.phase == FAILED and "round 1 timed out with 1 updates" in m.message


def test_heartbeat_expiry_marks_failed_and_leaves_the_participant_out_of_later_rounds():
    m = learning(heartbeat_timeout=30.0)
    ready(m, "a", "b", "c")
    for t in (20, 40):
        m.heartbeat("a", now=t)
        m.heartbeat("b", now=t)
    commands = m.tick(now=31)
    assert commands == [MarkFailed(participant="c", reason="no heartbeat for more than 30 s")]
    assert m.members["c"].phase == P_FAILED
    m.contribution("a", 1, now=41)
    # NB: c no longer counts, so a and b are "every live member": the round closes at once.
    assert m.contribution("b", 1, now=42) == (Verdict.ACCEPTED, [CloseRound(round=1)])
    assert m.round_closed(1, now=43) == [OpenRound(round=2, participants=("a", "b"))]


def test_heartbeat_expiry_below_quorum_fails_the_round_at_once():
    m = learning(heartbeat_timeout=30.0)
    ready(m, "a", "b")
    m.heartbeat("a", now=25)
    commands = m.tick(now=31)
    assert commands[0] == MarkFailed(participant="b", reason="no heartbeat for more than 30 s")
    assert isinstance(commands[1], Fail) and commands[1].reason == "QuorumLost"


def test_a_failed_participant_can_join_again_for_the_next_round():
    m = learning(rounds=3, heartbeat_timeout=30.0)
    ready(m, "a", "b", "c")
    m.heartbeat("a", now=29)
    m.heartbeat("b", now=29)
    m.tick(now=31)
    m.contribution("a", 1, now=32)
    m.contribution("b", 1, now=32)
    ready(m, "c", now=33)
    assert m.round_closed(1, now=34) == [OpenRound(round=2, participants=("a", "b", "c"))]


def test_late_duplicate_and_foreign_contributions_are_rejected_with_a_reason():
    m = learning()
    ready(m, "a", "b")
    assert m.contribution("a", 2, now=1)[0] == Verdict.LATE
    assert m.contribution("a", 1, now=1)[0] == Verdict.ACCEPTED
    assert m.contribution("a", 1, now=2)[0] == Verdict.DUPLICATE
    assert m.contribution("zed", 1, now=2)[0] == Verdict.UNKNOWN
    ready(m, "c", now=3)  # joined after round 1 opened: not a member of it
    assert m.contribution("c", 1, now=3)[0] == Verdict.NOT_IN_ROUND
    verdict, commands = m.contribution("b", 1, now=4)
    assert verdict == Verdict.ACCEPTED and commands == [CloseRound(round=1)]
    m.round_closed(1, now=5)
    assert m.contribution("b", 1, now=6)[0] == Verdict.LATE  # round 1 is closed


def test_no_quorum_after_a_round_fails_after_the_round_timeout():
    m = learning(rounds=3)
    ready(m, "a", "b")
    m.contribution("a", 1, now=1)
    m.contribution("b", 1, now=1)
    m.leave("b", now=2)  # b leaves between rounds
    assert m.round_closed(1, now=3) == []
    assert m.phase == RUNNING and m.round is None
    assert m.tick(now=102.9) == []
    assert m.tick(now=103)[0].reason == "QuorumLost"


def test_active_deadline_fails_the_session():
    m = learning(active_deadline=50.0)
    ready(m, "a")
    assert m.tick(now=49.9) == []
    assert m.tick(now=50) == [Fail(reason="DeadlineExceeded", message="session exceeded activeDeadlineSeconds=50")]


def attention() -> SessionMachine:
    return SessionMachine(
        Settings(
            mode="attention",
            participants=("a", "b", "c"),
            min_participants=2,
            rounds=0,
            round_timeout=100.0,
            wait_after_min=10.0,
            heartbeat_timeout=30.0,
            start_timeout=1000.0,
        ),
        now=0.0,
    )


def test_attention_runs_on_quorum_and_succeeds_when_everyone_who_joined_is_done():
    m = attention()
    assert m.join("a", now=0) == []
    assert m.join("b", now=1) == [Start()]
    assert m.join("c", now=2) == []
    assert m.leave("a", now=3) == [] and m.leave("b", now=4) == []
    assert m.leave("c", now=5) == [Finish(reason="completed")]
    assert m.phase == SUCCEEDED


def test_attention_fails_when_too_few_are_left():
    m = attention()
    m.join("a", now=0)
    m.join("b", now=0)
    m.heartbeat("a", now=20)
    commands = m.tick(now=31)
    assert commands[0] == MarkFailed(participant="b", reason="no heartbeat for more than 30 s")
    assert isinstance(commands[1], Fail) and commands[1].reason == "QuorumLost"


def test_a_session_whose_participants_all_crashed_before_round_one_fails_never_started():
    m = learning(start_timeout=600.0, heartbeat_timeout=30.0)
    m.join("a", now=0)
    m.hello("a", now=0)
    m.join("b", now=5)  # b joined but crashed before its hello; c never came
    failed = m.tick(now=100)
    assert [type(c) for c in failed] == [MarkFailed, MarkFailed] and m.phase == PENDING
    assert m.tick(now=599.9) == []
    assert m.tick(now=600) == [
        Fail(reason="NeverStarted", message="only 0 of minParticipants=2 participants were ready within"
             " startTimeoutSeconds=600")
    ]
    assert m.phase == FAILED


def test_an_attention_session_nobody_joins_fails_never_started_and_a_started_one_does_not():
    idle, started = attention(), attention()
    started.join("a", now=0)
    started.join("b", now=0)
    started.heartbeat("a", now=1500)
    started.heartbeat("b", now=1500)
    assert started.tick(now=1500) == [] and started.phase == RUNNING
    assert [c.reason for c in idle.tick(now=1000)] == ["NeverStarted"]


@pytest.mark.parametrize("mode", ["learning", "attention"])
def test_driver_failure_fails_once(mode):
    m = learning() if mode == "learning" else attention()
    assert m.fail("AggregatorUnavailable", "no reply") == [Fail("AggregatorUnavailable", "no reply")]
    assert m.fail("AggregatorUnavailable", "again") == []
    assert m.phase == FAILED


# -- invariants over random event sequences ---------------------------------------------------------


NAMES = ("a", "b", "c", "d")
EVENTS = st.lists(
    st.tuples(
        # NB: repeated kinds are sampled more often, so sessions get past round 1 often enough
        st.sampled_from(
            ["join", "hello", *["heartbeat"] * 2, *["contribution"] * 4, *["closed"] * 2, "tick", "leave", "evict"]
        ),
        st.sampled_from(NAMES),
        st.sampled_from([0, 0, 0, 0, 1, 2, 3]),  # contribution round; 0 = the current one
        st.floats(min_value=0.0, max_value=8.0),  # time step
    ),
    min_size=20,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(events=EVENTS, quorum=st.integers(min_value=1, max_value=4), total_rounds=st.integers(min_value=1, max_value=3))
def test_commands_stay_consistent_under_any_event_order(events, quorum, total_rounds):
    m = SessionMachine(
        Settings(
            mode="learning",
            participants=NAMES,
            min_participants=quorum,
            rounds=total_rounds,
            round_timeout=150.0,
            wait_after_min=5.0,
            heartbeat_timeout=100.0,
            start_timeout=10_000.0,
        ),
        now=0.0,
    )
    now, opened, closing, ended = 0.0, [], None, 0
    setup = [("join", n, 0, 0.0) for n in NAMES[:quorum]] + [("hello", n, 0, 0.0) for n in NAMES[:quorum]]
    for kind, name, number, step in setup + events:
        if number == 0:
            number = m.round.number if m.round is not None else m.rounds_closed + 1
        now += step
        if kind == "contribution":
            _, commands = m.contribution(name, number, now=now)
        elif kind == "closed":  # the driver reports only the close it was asked for
            commands = m.round_closed(closing, now=now) if closing is not None else []
            closing = None
        elif kind == "heartbeat":
            m.heartbeat(name, now=now)
            commands = []
        elif kind == "tick":
            commands = m.tick(now=now)
        else:
            commands = getattr(m, kind)(name, now=now)
        for command in commands:
            assert ended == 0, f"{command} after the session ended"
            if isinstance(command, OpenRound):
                assert closing is None and command.round == len(opened) + 1
                assert len(command.participants) >= quorum and set(command.participants) <= set(NAMES)
                opened.append(command.round)
            elif isinstance(command, CloseRound):
                assert opened and command.round == opened[-1] and closing is None
                closing = command.round
            elif isinstance(command, Finish):
                assert len(opened) == total_rounds
                ended += 1
            elif isinstance(command, Fail):
                ended += 1
        assert m.phase in (PENDING, RUNNING, SUCCEEDED, FAILED)
        assert (m.phase in (SUCCEEDED, FAILED)) == (ended == 1)
    event(f"phase {m.phase}, rounds opened {len(opened)}")
