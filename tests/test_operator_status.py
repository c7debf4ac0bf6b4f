"""Status and condition computation (pure): phases, sticky terminal states, transition times, events."""

from __future__ import annotations

import datetime as dt

from fedattn.api.spec import SessionSpec
from fedattn.operator import status
from fedattn.operator.status import Observation

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
SPEC = SessionSpec.from_manifest({"mode": "learning", "minParticipants": 2})


def _cond(st: dict, type_: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == type_)


def _coordinator(phase: str = "Running", joined: int = 2, **extra) -> dict:
    return {
        "phase": phase,
        "round": 3,
        "participants": {"joined": joined, "ready": joined, "total": 3},
        "syncs": 7,
        "avg_sync_latency_ms": 4.5,
        "started_at": "2026-01-01T00:00:00Z",
        **extra,
    }


def test_set_condition_keeps_transition_time_until_the_status_flips() -> None:
    conds = status.set_condition([], type="Ready", status=False, reason="A", message="", now=T0, generation=1)
    later = T0 + dt.timedelta(minutes=5)
    same = status.set_condition(conds, type="Ready", status=False, reason="B", message="m", now=later, generation=2)
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z" and same[0]["reason"] == "B"
    assert same[0]["observedGeneration"] == 2
    flipped = status.set_condition(same, type="Ready", status=True, reason="C", message="", now=later, generation=2)
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:05:00Z" and flipped[0]["status"] == "True"
    both = status.set_condition(
        flipped, type="CertificatesReady", status=True, reason="I", message="", now=T0, generation=2
    )
    assert [c["type"] for c in both] == ["Ready", "CertificatesReady"]  # keyed by type, one entry each


def test_running_session_status_from_the_coordinator() -> None:
    seen = Observation(coordinator=_coordinator(), certificates_ready=True, participants_total=3)
    st = status.session_status(previous={}, spec=SPEC, generation=4, seen=seen, now=T0)
    assert st["phase"] == "Running" and st["observedGeneration"] == 4
    assert (st["round"], st["syncs"], st["avgSyncLatencyMs"]) == (3, 7, 4.5)
    assert st["participants"] == {"joined": 2, "ready": 2, "total": 3}
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "Ready": "True",
        "CertificatesReady": "True",
        "QuorumReached": "True",
        "Progressing": "True",
        "Degraded": "False",
        "Complete": "False",
        "Failed": "False",
    }


def test_quorum_counts_against_min_participants() -> None:
    seen = Observation(coordinator=_coordinator(joined=1), certificates_ready=True)
    spec = SessionSpec.from_manifest({"mode": "learning", "minParticipants": 3})
    st = status.session_status(previous={}, spec=spec, generation=1, seen=seen, now=T0)
    q = _cond(st, "QuorumReached")
    assert (q["status"], q["reason"], q["message"]) == ("False", "WaitingForParticipants", "1/3 participants joined")


def test_unreachable_coordinator_keeps_the_phase_and_degrades_a_running_session() -> None:
    running = status.session_status(
        previous={},
        spec=SPEC,
        generation=1,
        seen=Observation(coordinator=_coordinator(), certificates_ready=True),
        now=T0,
    )
    lost = status.session_status(
        previous=running,
        spec=SPEC,
        generation=1,
        seen=Observation(error="ConnectionError: refused", certificates_ready=True),
        now=T0,
    )
    assert lost["phase"] == "Running" and lost["round"] == 3  # last known values survive
    assert _cond(lost, "Ready")["reason"] == "CoordinatorUnreachable"
    degraded = _cond(lost, "Degraded")
    assert (degraded["status"], degraded["message"]) == ("True", "ConnectionError: refused")


def test_terminal_phases_are_sticky_and_failures_keep_their_reason() -> None:
    seen = Observation(coordinator=_coordinator(), failure=("DeadlineExceeded", "too long"), certificates_ready=True)
    failed = status.session_status(previous={}, spec=SPEC, generation=1, seen=seen, now=T0)
    assert failed["phase"] == "Failed" and failed["completedAt"] == "2026-01-01T00:00:00Z"
    assert (_cond(failed, "Failed")["reason"], failed["message"]) == ("DeadlineExceeded", "too long")
    again = status.session_status(
        previous=failed,
        spec=SPEC,
        generation=1,
        seen=Observation(coordinator=_coordinator("Succeeded")),
        now=T0 + dt.timedelta(1),
    )
    assert again["phase"] == "Failed" and _cond(again, "Failed")["reason"] == "DeadlineExceeded"
    assert again["completedAt"] == failed["completedAt"]


def test_succeeded_and_suspended() -> None:
    done = status.session_status(
        previous={},
        spec=SPEC,
        generation=1,
        now=T0,
        seen=Observation(coordinator=_coordinator("Succeeded", completed_at=1767225660.0, message="20 rounds")),
    )
    assert done["phase"] == "Succeeded" and done["completedAt"] == "2026-01-01T00:01:00Z"
    assert _cond(done, "Complete")["status"] == "True" and _cond(done, "Progressing")["status"] == "False"
    paused = status.session_status(previous={}, spec=SPEC, generation=2, now=T0, seen=Observation(suspended=True))
    assert paused["phase"] == "Suspended" and _cond(paused, "Ready")["reason"] == "Suspended"


def test_failed_or_evicted_participants_degrade_the_session() -> None:
    coord = _coordinator(participant_status={"a": {"phase": "Evicted"}, "b": {"phase": "Contributing"}})
    st = status.session_status(previous={}, spec=SPEC, generation=1, now=T0, seen=Observation(coordinator=coord))
    assert _cond(st, "Degraded")["status"] == "True" and _cond(st, "Degraded")["message"] == "failed or evicted: a"


def test_participant_status() -> None:
    fresh = status.participant_status(previous={}, entry=None, credentialed=True, generation=1, now=T0)
    assert fresh["phase"] == "Credentialed" and _cond(fresh, "Connected")["status"] == "False"
    live = status.participant_status(
        previous=fresh,
        now=T0,
        generation=1,
        credentialed=True,
        entry={"phase": "Contributing", "last_heartbeat": 1767225600.0, "contributions": 4, "last_latency_ms": 9},
    )
    assert (live["phase"], live["lastHeartbeat"], live["contributions"], live["lastLatencyMs"]) == (
        "Contributing",
        "2026-01-01T00:00:00Z",
        4,
        9.0,
    )
    assert _cond(live, "Connected")["status"] == "True"
    evicted = status.participant_status(
        previous=live, entry={"phase": "Evicted"}, credentialed=True, generation=1, now=T0
    )
    assert _cond(evicted, "CertificateIssued")["reason"] == "Revoked"
    back = status.participant_status(
        previous=evicted, entry={"phase": "Joined"}, credentialed=True, generation=1, now=T0
    )
    assert back["phase"] == "Evicted"  # eviction is final: credentials stay revoked


def test_transitions_become_events() -> None:
    before = status.session_status(previous={}, spec=SPEC, generation=1, now=T0, seen=Observation())
    after = status.session_status(
        previous=before,
        spec=SPEC,
        generation=1,
        now=T0,
        seen=Observation(coordinator=_coordinator(), certificates_ready=True),
    )
    events = status.transitions(before, after)
    assert ("Normal", "Running", "phase Pending -> Running") in events
    assert any(e[0] == "Normal" and e[1] == "CoordinatorReachable" for e in events)
    assert status.transitions(after, after) == []
    failed = status.session_status(
        previous=after, spec=SPEC, generation=1, now=T0, seen=Observation(failure=("DeadlineExceeded", "late"))
    )
    assert ("Warning", "Failed", "phase Running -> Failed") in status.transitions(after, failed)


def test_deadline_counts_from_creation() -> None:
    spec = SessionSpec.from_manifest({"mode": "learning", "activeDeadlineSeconds": 60})
    session = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}
    assert status.deadline_failure(session, now=T0 + dt.timedelta(seconds=60)) is None
    assert status.deadline_failure(session, now=T0 + dt.timedelta(seconds=61))[0] == "DeadlineExceeded"
    no_deadline = {"metadata": {}, "spec": SessionSpec.from_manifest({"mode": "learning"})}
    assert status.deadline_failure(no_deadline, now=T0) is None
