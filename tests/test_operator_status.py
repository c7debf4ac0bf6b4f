"""Status and condition computation (pure): phases, sticky terminal states, transition times, events."""

from __future__ import annotations

import datetime as dt

from fedattn.api import progress as api_progress
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
        "mode": "learning",
        "rounds_total": 20,
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
        "Ready": "False",  # kstatus: Ready once the session has done what its spec asked
        "Reconciling": "True",
        "Stalled": "False",
        "CertificatesReady": "True",
        "QuorumReached": "True",
        "Degraded": "False",
        "Complete": "False",
        "Failed": "False",
    }
    assert (_cond(st, "Ready")["reason"], _cond(st, "Reconciling")["message"]) == ("RoundInProgress", "round 3/20")


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
    assert lost["progress"] == running["progress"]
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
    assert _cond(done, "Complete")["status"] == "True" and _cond(done, "Reconciling")["status"] == "False"
    assert (_cond(done, "Ready")["status"], _cond(done, "Ready")["reason"]) == ("True", "Succeeded")
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
    assert ("Normal", "QuorumReached", "QuorumReached=True: 2/2 participants joined") in events
    assert all(kind == "Normal" for kind, _, _ in events)
    assert status.transitions(after, after) == []
    failed = status.session_status(
        previous=after, spec=SPEC, generation=1, now=T0, seen=Observation(failure=("DeadlineExceeded", "late"))
    )
    assert ("Warning", "Failed", "phase Running -> Failed: DeadlineExceeded: late") in status.transitions(after, failed)


def test_deadline_counts_from_creation() -> None:
    spec = SessionSpec.from_manifest({"mode": "learning", "activeDeadlineSeconds": 60})
    session = {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}, "spec": spec}
    assert status.deadline_failure(session, now=T0 + dt.timedelta(seconds=60)) is None
    assert status.deadline_failure(session, now=T0 + dt.timedelta(seconds=61))[0] == "DeadlineExceeded"
    assert status.deadline_failure({"metadata": {}, "spec": SPEC}, now=T0) is None


# --- progress and outputs (issue 12 §1) -----------------------------------------------------------------


def _learning_coordinator(**extra) -> dict:
    """What CoordinatorService.status answers for a learning session after three of 20 rounds (DP on)."""
    rounds = [
        {"round": 1, "state": "Closed", "accuracy": 0.61, "epsilon": 0.9, "closed_at": 1767225600.0},
        {"round": 2, "state": "Closed", "accuracy": 0.74, "epsilon": 1.3, "closed_at": 1767225660.0},
        {"round": 3, "state": "Closed", "accuracy": None, "epsilon": 1.6, "closed_at": 1767225720.0},
        {"round": 4, "state": "Open", "participants": 3, "contributions": 1},
    ]
    return _coordinator(round=4, rounds=rounds, epsilon=1.6, **extra)


def test_progress_comes_from_the_coordinators_round_log() -> None:
    seen = Observation(coordinator=_learning_coordinator(), certificates_ready=True)
    st = status.session_status(previous={}, spec=SPEC, generation=1, seen=seen, now=T0)
    # the last round that was evaluated, the last closed round's time, the latest epsilon
    assert st["progress"] == {
        "round": 4,
        "roundsTotal": 20,
        "rounds": "4/20",
        "accuracy": 0.74,
        "lastRoundAt": "2026-01-01T00:02:00Z",
        "epsilonSpent": 1.6,
    }


def test_progress_reports_the_participants_loss_and_attention_syncs() -> None:
    results = {"a": {"loss": 0.5, "rounds": 20}, "b": {"loss": 0.25}, "c": {"reason": "evicted"}}
    done = api_progress.progress(_learning_coordinator(results=results))
    assert done["loss"] == (0.5 + 0.25) / 2
    assert api_progress.progress(_coordinator(epsilon=2.4000000000000004))["epsilonSpent"] == 2.4  # for kubectl get
    attention = api_progress.progress({"mode": "attention", "round": 0, "syncs": 12, "rounds_total": 10})
    assert attention == {"round": 0, "syncs": 12, "rounds": "12 syncs"}  # no rounds to count in attention
    assert "accuracy" not in api_progress.progress(_coordinator(rounds=[{"state": "Closed", "accuracy": float("nan")}]))


def test_outputs_point_at_the_model_checkpoint_and_the_publishers_text_secret() -> None:
    learning = SessionSpec.from_manifest({"mode": "learning", "checkpoint": {"everyRounds": 5}})
    assert status.outputs(session="digits", spec=learning, coordinator=None) == {
        "model": {"deployment": "digits-aggregator", "path": "/var/lib/fedattn/checkpoints/digits.ckpt.npz"}
    }
    off = SessionSpec.from_manifest({"mode": "learning", "checkpoint": {"everyRounds": 0}})
    assert status.outputs(session="digits", spec=off, coordinator=None) == {}  # no checkpoints: no model file
    attention = SessionSpec.from_manifest({"mode": "attention", "publisher": "asker"})
    working = {"participant_status": {"asker": {"phase": "Contributing"}}}
    assert status.outputs(session="qa", spec=attention, coordinator=working) == {}
    done = {"participant_status": {"asker": {"phase": "Done"}}}
    assert status.outputs(session="qa", spec=attention, coordinator=done) == {
        "text": {"secretName": "asker-output", "key": "text"}
    }
    # spec.output: the final model (once finished) and the metrics in the claim, as the aggregator lays it out
    claimed = SessionSpec.from_manifest({"mode": "learning", "output": {"claimName": "models", "subPath": "runs/d"}})
    assert status.outputs(session="digits", spec=claimed, coordinator=None) == {
        "metrics": {"claimName": "models", "path": "runs/d/metrics.json"}
    }
    assert status.outputs(session="digits", spec=claimed, coordinator=None, finished=True)["model"] == {
        "claimName": "models",
        "path": "runs/d/final.safetensors",
    }
    # once found, an output stays in status when the coordinator is no longer read
    seen = Observation(
        coordinator=_coordinator("Succeeded"), outputs={"text": {"secretName": "asker-output", "key": "text"}}
    )
    first = status.session_status(previous={}, spec=SPEC, generation=1, seen=seen, now=T0)
    later = status.session_status(previous=first, spec=SPEC, generation=1, seen=Observation(), now=T0)
    assert later["outputs"] == first["outputs"]


# --- health (issue 12 §2) --------------------------------------------------------------------------------


def _history(*observations: Observation, generation: int | None = 1) -> list[dict]:
    """The statuses a session goes through, one progress pass per observation."""
    out, previous = [], {}
    for i, seen in enumerate(observations):
        previous = status.session_status(
            previous=previous, spec=SPEC, generation=generation, seen=seen, now=T0 + dt.timedelta(minutes=i)
        )
        out.append(previous)
    return out


def test_ready_stays_true_after_success_and_success_posts_no_warning() -> None:
    statuses = _history(
        Observation(certificates_ready=True),
        Observation(coordinator=_coordinator(), certificates_ready=True),
        Observation(coordinator=_coordinator("Succeeded", message="20 rounds"), certificates_ready=True),
        # the poller no longer reads the coordinator of a finished session (and its pod may be gone)
        Observation(certificates_ready=True),
        Observation(error="ConnectionError: refused", certificates_ready=True),
    )
    done, *after = statuses[2:]
    for later in after:
        assert later == done  # nothing moves once over: no write, no event
    ready = _cond(done, "Ready")
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == (
        "True",
        "Succeeded",
        "2026-01-01T00:02:00Z",
    )
    assert _cond(done, "Degraded")["status"] == "False"
    events = [e for old, new in zip([{}, *statuses], statuses, strict=False) for e in status.transitions(old, new)]
    assert [e for e in events if e[0] == "Warning"] == []
    assert ("Normal", "Succeeded", "phase Running -> Succeeded") in events


def test_kstatus_conditions_of_every_phase() -> None:
    """Reconciling while Pending/Running, Stalled on Failed, Ready once Succeeded (what Flux and kubectl wait read)."""
    by_phase = {
        "Pending": Observation(certificates_ready=True),
        "Running": Observation(coordinator=_coordinator(), certificates_ready=True),
        "Succeeded": Observation(coordinator=_coordinator("Succeeded"), certificates_ready=True),
        "Failed": Observation(coordinator=_coordinator(), failure=("QuorumLost", "2 of 4 left")),
        "Suspended": Observation(suspended=True, certificates_ready=True),
    }
    expected = {  # (Ready, Reconciling, Stalled)
        "Pending": ("False", "True", "False"),
        "Running": ("False", "True", "False"),
        "Succeeded": ("True", "False", "False"),
        "Failed": ("False", "False", "True"),
        "Suspended": ("False", "False", "False"),
    }
    for phase, seen in by_phase.items():
        st = status.session_status(previous={}, spec=SPEC, generation=1, seen=seen, now=T0)
        assert st["phase"] == phase
        assert tuple(_cond(st, t)["status"] for t in ("Ready", "Reconciling", "Stalled")) == expected[phase], phase
    failed = status.session_status(previous={}, spec=SPEC, generation=1, seen=by_phase["Failed"], now=T0)
    stalled = _cond(failed, "Stalled")
    assert (stalled["reason"], stalled["message"]) == ("QuorumLost", "2 of 4 left")
    assert _cond(failed, "Ready")["reason"] == "QuorumLost"  # the Reason column of kubectl get fs -o wide


def test_a_refused_edit_stalls_a_running_session_with_a_warning() -> None:
    running, refused, reverted = _history(
        Observation(coordinator=_coordinator(), certificates_ready=True),
        Observation(coordinator=_coordinator(), certificates_ready=True, refused=("ImmutableFieldChanged", "spec: no")),
        Observation(coordinator=_coordinator(), certificates_ready=True),
    )
    assert refused["phase"] == "Running" and _cond(refused, "Stalled")["status"] == "True"
    assert status.transitions(running, refused) == [("Warning", "ImmutableFieldChanged", "Stalled=True: spec: no")]
    assert status.transitions(refused, reverted) == [("Normal", "AsExpected", "Stalled=False: ")]


def test_observed_generation_is_the_one_acted_on() -> None:
    (fresh,) = _history(Observation(certificates_ready=True), generation=None)
    assert "observedGeneration" not in fresh  # reconcile has not acted yet: nobody claims a generation
    assert all("observedGeneration" not in c for c in fresh["conditions"])
    (acted,) = _history(Observation(certificates_ready=True), generation=3)
    assert acted["observedGeneration"] == 3 and {c["observedGeneration"] for c in acted["conditions"]} == {3}
