"""Pure status computation: what the operator observed in, ``.status`` (phase, conditions) out.

Conditions are keyed by type and keep their ``lastTransitionTime`` while their status does not
change, so ``kubectl wait --for=condition=Complete`` and dashboards see real transitions only.
Terminal phases are sticky: once Succeeded or Failed (e.g. DeadlineExceeded), a later coordinator
answer cannot move a session back to Running.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fedattn.api.schema import (
    PARTICIPANT_CONDITIONS,
    PARTICIPANT_PHASES,
    SESSION_CONDITIONS,
    SESSION_PHASES,
    ParticipantPhase,
    SessionPhase,
)
from fedattn.api.spec import SessionSpec
from fedattn.operator.objects import Session

TERMINAL = (SessionPhase.SUCCEEDED, SessionPhase.FAILED)
CONNECTED = (ParticipantPhase.JOINED, ParticipantPhase.CONTRIBUTING, ParticipantPhase.DONE)


def timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(value: Any) -> str | None:
    """Coordinator times may be epoch seconds or RFC 3339 strings; status always holds RFC 3339."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return timestamp(dt.datetime.fromtimestamp(value, dt.UTC))
    return str(value)


def set_condition(
    conditions: list[dict[str, Any]],
    *,
    type: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int,
) -> list[dict[str, Any]]:
    """A new conditions list with ``type`` set; its transition time moves only when status flips."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value and "lastTransitionTime" in old else None
    entry = {
        "type": type,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or timestamp(now),
        "observedGeneration": generation,
    }
    order = {t: i for i, t in enumerate([*SESSION_CONDITIONS, *PARTICIPANT_CONDITIONS])}
    rest = [c for c in conditions if c.get("type") != type]
    return sorted([*rest, entry], key=lambda c: order.get(c["type"], len(order)))


def condition(status: dict[str, Any], type: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions", []) if c.get("type") == type), None)


def age_seconds(timestamp: str | None, now: dt.datetime) -> float | None:
    """Seconds since an RFC 3339 timestamp (None if there is none)."""
    if not timestamp:
        return None
    return (now - dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))).total_seconds()


def deadline_failure(session: Session, *, now: dt.datetime) -> tuple[str, str] | None:
    """``(reason, message)`` once a session has outlived ``activeDeadlineSeconds`` (counted from creation,
    like a Job's, so a suspended or never-started session still ends)."""
    deadline = session["spec"].active_deadline_seconds
    age = age_seconds(session["metadata"].get("creationTimestamp"), now)
    if deadline is None or age is None or age <= deadline:
        return None
    return "DeadlineExceeded", f"session ran longer than activeDeadlineSeconds={deadline}"


@dataclass(frozen=True)
class Observation:
    """What one progress pass saw. ``coordinator`` is the coordinator's status, None if unreachable."""

    coordinator: dict[str, Any] | None = None
    error: str = ""
    certificates_ready: bool = False
    suspended: bool = False
    participants_total: int = 0
    failure: tuple[str, str] | None = None  # (reason, message) decided by the operator, e.g. DeadlineExceeded


def _phase(previous: str | None, seen: Observation) -> str:
    if previous in TERMINAL:
        return previous
    if seen.failure:
        return SessionPhase.FAILED
    if seen.suspended:
        return SessionPhase.SUSPENDED
    if seen.coordinator is None:
        return previous if previous in SESSION_PHASES and previous != SessionPhase.SUSPENDED else SessionPhase.PENDING
    phase = seen.coordinator.get("phase")
    return phase if phase in SESSION_PHASES else SessionPhase.PENDING


def session_status(
    *, previous: dict[str, Any], spec: SessionSpec, generation: int, seen: Observation, now: dt.datetime
) -> dict[str, Any]:
    """The FedSession ``.status`` after one observation (``previous`` is the current status)."""
    phase = _phase(previous.get("phase"), seen)
    coord = seen.coordinator or {}
    counts = {**{"joined": 0, "ready": 0, "total": 0}, **(previous.get("participants") or {})}
    counts.update({k: int(v) for k, v in (coord.get("participants") or {}).items() if k in counts})
    counts["total"] = max(counts["total"], seen.participants_total)
    out: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "round": int(coord.get("round", previous.get("round", 0)) or 0),
        "participants": counts,
        "syncs": int(coord.get("syncs", previous.get("syncs", 0)) or 0),
        "avgSyncLatencyMs": float(coord.get("avg_sync_latency_ms", previous.get("avgSyncLatencyMs", 0.0)) or 0.0),
        "message": str(coord.get("message") or (seen.failure[1] if seen.failure else previous.get("message", ""))),
    }
    started = _iso(coord.get("started_at")) or previous.get("startedAt")
    if not started and phase == SessionPhase.RUNNING:
        started = timestamp(now)
    if started:
        out["startedAt"] = started
    completed = previous.get("completedAt") or (_iso(coord.get("completed_at")) if phase in TERMINAL else None)
    if phase in TERMINAL:
        out["completedAt"] = completed or timestamp(now)
    if coord.get("store"):
        out["result"] = str(coord["store"])
    elif previous.get("result"):
        out["result"] = previous["result"]

    def put(conds: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str) -> list[dict]:
        return set_condition(
            conds, type=type_, status=status, reason=reason, message=message, now=now, generation=generation
        )

    conds = list(previous.get("conditions", []))
    conds = put(
        conds,
        "CertificatesReady",
        seen.certificates_ready,
        "Issued" if seen.certificates_ready else "Pending",
        "session certificates and keys are in place" if seen.certificates_ready else "issuing certificates",
    )
    reachable = seen.coordinator is not None
    conds = put(
        conds,
        "Ready",
        reachable and phase not in (SessionPhase.FAILED, SessionPhase.SUSPENDED),
        "CoordinatorReachable" if reachable else ("Suspended" if seen.suspended else "CoordinatorUnreachable"),
        "coordinator answers" if reachable else (seen.error or "coordinator not reached yet"),
    )
    minimum = spec.min_participants
    conds = put(
        conds,
        "QuorumReached",
        counts["joined"] >= minimum,
        "QuorumReached" if counts["joined"] >= minimum else "WaitingForParticipants",
        f"{counts['joined']}/{minimum} participants joined",
    )
    conds = put(
        conds,
        "Progressing",
        phase == SessionPhase.RUNNING,
        "RoundInProgress" if phase == SessionPhase.RUNNING else phase,
        f"round {out['round']}",
    )
    lost = sorted(
        p
        for p, st in (coord.get("participant_status") or {}).items()
        if (st or {}).get("phase") in (ParticipantPhase.FAILED, ParticipantPhase.EVICTED)
    )
    unreachable = not reachable and phase == SessionPhase.RUNNING
    degraded = bool(lost) or unreachable
    reason = "ParticipantsFailed" if lost else ("CoordinatorUnreachable" if unreachable else "AsExpected")
    conds = put(
        conds,
        "Degraded",
        degraded,
        reason,
        f"failed or evicted: {', '.join(lost)}" if lost else (seen.error if unreachable else ""),
    )
    conds = put(
        conds,
        "Complete",
        phase == SessionPhase.SUCCEEDED,
        "Succeeded" if phase == SessionPhase.SUCCEEDED else "NotFinished",
        out["message"] if phase == SessionPhase.SUCCEEDED else "",
    )
    failed_reason = "NotFailed"
    if phase == SessionPhase.FAILED:
        old_failed = condition(previous, "Failed")
        if seen.failure:
            failed_reason = seen.failure[0]
        elif old_failed and old_failed.get("status") == "True":
            failed_reason = old_failed["reason"]
        else:
            failed_reason = "SessionFailed"
    failed = phase == SessionPhase.FAILED
    conds = put(conds, "Failed", failed, failed_reason, out["message"] if failed else "")
    out["conditions"] = conds
    return out


def participant_status(
    *,
    previous: dict[str, Any],
    entry: dict[str, Any] | None,
    credentialed: bool,
    generation: int,
    now: dt.datetime,
) -> dict[str, Any]:
    """A FedParticipant's ``.status`` from the coordinator's ``participant_status[name]`` entry."""
    if previous.get("phase") == ParticipantPhase.EVICTED:
        phase = ParticipantPhase.EVICTED
    elif entry is not None:
        seen = entry.get("phase")
        phase = seen if seen in PARTICIPANT_PHASES else ParticipantPhase.JOINED
    else:
        phase = previous.get("phase") if previous.get("phase") in PARTICIPANT_PHASES else None
        phase = phase or (ParticipantPhase.CREDENTIALED if credentialed else ParticipantPhase.PENDING)
    entry = entry or {}
    out: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": generation,
        "contributions": int(entry.get("contributions", previous.get("contributions", 0)) or 0),
    }
    heartbeat = _iso(entry.get("last_heartbeat")) or previous.get("lastHeartbeat")
    if heartbeat:
        out["lastHeartbeat"] = heartbeat
    latency = entry.get("last_latency_ms", previous.get("lastLatencyMs"))
    if latency is not None:
        out["lastLatencyMs"] = float(latency)
    conds = list(previous.get("conditions", []))
    conds = set_condition(
        conds,
        type="CertificateIssued",
        status=credentialed and phase != ParticipantPhase.EVICTED,
        reason="Issued" if credentialed and phase != ParticipantPhase.EVICTED
        else ("Revoked" if phase == ParticipantPhase.EVICTED else "Pending"),
        message="client certificate and Curve key in the credentials Secret" if credentialed else "",
        now=now,
        generation=generation,
    )
    conds = set_condition(
        conds,
        type="Connected",
        status=phase in CONNECTED,
        reason=phase,
        message=f"coordinator reports {phase}" if entry else "",
        now=now,
        generation=generation,
    )
    out["conditions"] = conds
    return out


def transitions(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Kubernetes events (type, reason, message) for what changed between two statuses."""
    events = []
    if old.get("phase") != new.get("phase"):
        kind = "Warning" if new.get("phase") in (SessionPhase.FAILED, ParticipantPhase.EVICTED) else "Normal"
        events.append((kind, new.get("phase", ""), f"phase {old.get('phase') or '-'} -> {new.get('phase')}"))
    for cond in new.get("conditions", []):
        before = condition(old, cond["type"])
        if before is not None and before.get("status") != cond["status"]:
            kind = "Warning" if (cond["type"] in ("Degraded", "Failed")) == (cond["status"] == "True") else "Normal"
            events.append((kind, cond["reason"], f"{cond['type']}={cond['status']}: {cond['message']}"))
    return events
