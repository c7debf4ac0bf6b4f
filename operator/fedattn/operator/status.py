"""Pure status computation: what the operator observed in, ``.status`` (phase, conditions) out.

Conditions are keyed by type and keep their ``lastTransitionTime`` while their status does not
change, so ``kubectl wait --for=condition=Complete`` and dashboards see real transitions only.
Terminal phases are sticky: once Succeeded or Failed (e.g. DeadlineExceeded), a later coordinator
answer cannot move a session back to Running.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from fedattn.api import progress as api_progress
from fedattn.api.schema import (
    OUTPUT_TEXT_KEY,
    PARTICIPANT_CONDITIONS,
    PARTICIPANT_PHASES,
    SESSION_CONDITIONS,
    SESSION_PHASES,
    ParticipantPhase,
    SessionPhase,
)
from fedattn.api.spec import SessionSpec
from fedattn.operator import names
from fedattn.operator.builders import CHECKPOINT_DIR
from fedattn.operator.objects import Session

TERMINAL = (SessionPhase.SUCCEEDED, SessionPhase.FAILED)
ACTIVE = (SessionPhase.PENDING, SessionPhase.RUNNING)
#: conditions that restate the phase: a phase event already says what their flip would
PHASE_CONDITIONS = ("Ready", "Reconciling", "Stalled", "Complete", "Failed")
#: conditions whose turning True is bad news (a Warning event); every other flip is Normal
PROBLEM_CONDITIONS = ("Degraded", "Stalled", "Failed")
CONNECTED = (ParticipantPhase.JOINED, ParticipantPhase.CONTRIBUTING, ParticipantPhase.DONE)


def timestamp(now: dt.datetime) -> str:
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]],
    *,
    type: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> list[dict[str, Any]]:
    """A new conditions list with ``type`` set; its transition time moves only when status flips.
    ``generation``: the spec generation the condition describes (left out while none was acted on)."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.get("type") == type), None)
    since = old["lastTransitionTime"] if old and old.get("status") == value and "lastTransitionTime" in old else None
    entry = {
        "type": type,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or timestamp(now),
    }
    if generation is not None:
        entry["observedGeneration"] = generation
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
    #: (reason, message) of a spec edit the operator refused (an immutable field changed on an API server
    #: without CEL): the session runs on with the spec it has, and says why the edit is not acted on
    refused: tuple[str, str] | None = None
    #: where the session's results are (:func:`outputs`); empty while there is nothing to point at
    outputs: dict[str, Any] = field(default_factory=dict)


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


def outputs(
    *, session: str, spec: SessionSpec, coordinator: dict[str, Any] | None, finished: bool = False
) -> dict[str, Any]:
    """Where a session's results are, for ``status.outputs``. Learning: with ``spec.output.claimName``
    the final model (once finished) and the metrics file in that claim; otherwise, with checkpoints on,
    the checkpoint file in the aggregator's pod. Attention: the publisher's text Secret once it is done.

    NB: the text never passes the coordinator or the operator; the publisher's own pod writes it to a
    Secret its FedParticipant owns, so only who may read that Secret reads the answer.
    """
    out: dict[str, Any] = {}
    output = spec.output
    if spec.mode == "learning" and output is not None and output.claim_name:
        directory = output.sub_path or session  # NB: as fedattn.aggregator.output lays the claim out
        out["metrics"] = {"claimName": output.claim_name, "path": f"{directory}/metrics.json"}
        if finished:
            out["model"] = {"claimName": output.claim_name, "path": f"{directory}/final.safetensors"}
    elif spec.mode == "learning" and spec.checkpoint.every_rounds > 0:
        out["model"] = {"deployment": names.aggregator(session), "path": f"{CHECKPOINT_DIR}/{session}.ckpt.npz"}
    publisher = spec.publisher
    entry = ((coordinator or {}).get("participant_status") or {}).get(publisher or "") or {}
    if spec.mode == "attention" and publisher and entry.get("phase") == ParticipantPhase.DONE:
        out["text"] = {"secretName": names.participant_output(publisher), "key": OUTPUT_TEXT_KEY}
    return out


def _why(phase: str, seen: Observation, previous: dict[str, Any], progress: dict[str, Any]) -> tuple[str, str]:
    """(reason, message) of the phase: the ``Ready`` reason ``kubectl get fs -o wide`` shows."""
    if phase == SessionPhase.FAILED:
        old = condition(previous, "Failed")
        if seen.failure:
            return seen.failure
        if old and old.get("status") == "True":
            return old["reason"], old.get("message", "")
        return "SessionFailed", ""
    if phase == SessionPhase.SUCCEEDED:
        return "Succeeded", ""
    if phase == SessionPhase.SUSPENDED:
        return "Suspended", f"suspended at round {progress.get('round', 0)}"
    if phase == SessionPhase.RUNNING:
        return "RoundInProgress", f"round {progress.get('rounds') or progress.get('round', 0)}"
    if not seen.certificates_ready:
        return "IssuingCertificates", "issuing the session certificates"
    return "WaitingForParticipants", seen.error or "waiting for the coordinator and the quorum"


def session_status(
    *, previous: dict[str, Any], spec: SessionSpec, generation: int | None, seen: Observation, now: dt.datetime
) -> dict[str, Any]:
    """The FedSession ``.status`` after one observation (``previous`` is the current status).

    ``generation`` is the spec generation the operator last acted on (reconcile writes it; None before
    it has): it becomes ``observedGeneration`` and the conditions' generation, so an edit not yet acted
    on shows as such to Argo CD, Flux and ``kubectl wait``, however often the coordinator is read.

    Conditions follow kstatus: ``Reconciling`` while Pending or Running, ``Stalled`` on Failed (or a
    refused edit), ``Ready`` once Succeeded. Terminal phases keep them: once over, nothing the poller
    sees (it no longer reads the coordinator) flips them back.
    """
    phase = _phase(previous.get("phase"), seen)
    coord = seen.coordinator or {}
    counts = {**{"joined": 0, "ready": 0, "total": 0}, **(previous.get("participants") or {})}
    counts.update({k: int(v) for k, v in (coord.get("participants") or {}).items() if k in counts})
    counts["total"] = max(counts["total"], seen.participants_total)
    progress = api_progress.progress(coord) if coord else dict(previous.get("progress") or {})
    out: dict[str, Any] = {
        "phase": phase,
        "round": int(coord.get("round", previous.get("round", 0)) or 0),
        "participants": counts,
        "syncs": int(coord.get("syncs", previous.get("syncs", 0)) or 0),
        "avgSyncLatencyMs": float(coord.get("avg_sync_latency_ms", previous.get("avgSyncLatencyMs", 0.0)) or 0.0),
        "message": str(coord.get("message") or (seen.failure[1] if seen.failure else previous.get("message", ""))),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    if progress:
        out["progress"] = progress
    found = {**(previous.get("outputs") or {}), **seen.outputs}
    if found:
        out["outputs"] = found
    started = api_progress.rfc3339(coord.get("started_at")) or previous.get("startedAt")
    if not started and phase == SessionPhase.RUNNING:
        started = timestamp(now)
    if started:
        out["startedAt"] = started
    completed = previous.get("completedAt") or (
        api_progress.rfc3339(coord.get("completed_at")) if phase in TERMINAL else None
    )
    if phase in TERMINAL:
        out["completedAt"] = completed or timestamp(now)

    def put(conds: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str) -> list[dict]:
        return set_condition(
            conds, type=type_, status=status, reason=reason, message=message, now=now, generation=generation
        )

    reason, why = _why(phase, seen, previous, progress)
    why = why or out["message"]
    conds = [c for c in previous.get("conditions", []) if c.get("type") in SESSION_CONDITIONS]
    conds = put(
        conds,
        "CertificatesReady",
        seen.certificates_ready or phase in TERMINAL,
        "Issued" if seen.certificates_ready or phase in TERMINAL else "Pending",
        "session certificates and keys are in place" if seen.certificates_ready else "issuing certificates",
    )
    conds = put(conds, "Ready", phase == SessionPhase.SUCCEEDED, reason, why)
    conds = put(
        conds, "Reconciling", phase in ACTIVE, reason if phase in ACTIVE else phase, why if phase in ACTIVE else ""
    )
    failed = phase == SessionPhase.FAILED
    stalled = seen.refused if not failed and seen.refused else None
    conds = put(
        conds,
        "Stalled",
        failed or stalled is not None,
        stalled[0] if stalled else (reason if failed else "AsExpected"),
        stalled[1] if stalled else (why if failed else ""),
    )
    minimum = spec.min_participants
    conds = put(
        conds,
        "QuorumReached",
        counts["joined"] >= minimum,
        "QuorumReached" if counts["joined"] >= minimum else "WaitingForParticipants",
        f"{counts['joined']}/{minimum} participants joined",
    )
    lost = sorted(
        p
        for p, st in (coord.get("participant_status") or {}).items()
        if (st or {}).get("phase") in (ParticipantPhase.FAILED, ParticipantPhase.EVICTED)
    )
    unreachable = seen.coordinator is None and phase == SessionPhase.RUNNING
    degraded = bool(lost) or unreachable
    cause = "ParticipantsFailed" if lost else ("CoordinatorUnreachable" if unreachable else "AsExpected")
    conds = put(
        conds,
        "Degraded",
        degraded,
        cause,
        f"failed or evicted: {', '.join(lost)}" if lost else (seen.error if unreachable else ""),
    )
    done = phase == SessionPhase.SUCCEEDED
    conds = put(conds, "Complete", done, "Succeeded" if done else "NotFinished", out["message"] if done else "")
    conds = put(conds, "Failed", failed, reason if failed else "NotFailed", out["message"] if failed else "")
    out["conditions"] = conds
    return out


def participant_status(
    *,
    previous: dict[str, Any],
    entry: dict[str, Any] | None,
    credentialed: bool,
    generation: int | None,
    now: dt.datetime,
) -> dict[str, Any]:
    """A FedParticipant's ``.status`` from the coordinator's ``participant_status[name]`` entry.
    ``generation``: the one the operator acted on, as for :func:`session_status`."""
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
        "contributions": int(entry.get("contributions", previous.get("contributions", 0)) or 0),
    }
    if generation is not None:
        out["observedGeneration"] = generation
    heartbeat = api_progress.rfc3339(entry.get("last_heartbeat")) or previous.get("lastHeartbeat")
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


def participant_edit(
    previous: dict[str, Any], *, refused: tuple[str, str] | None, generation: int, now: dt.datetime
) -> dict[str, Any]:
    """The status fields a FedParticipant spec edit sets: the generation acted on, and ``Stalled`` while
    the edit changes an immutable field (the participant goes on with the spec it was accepted with)."""
    conds = set_condition(
        list(previous.get("conditions", [])),
        type="Stalled",
        status=refused is not None,
        reason=refused[0] if refused else "AsExpected",
        message=refused[1] if refused else "",
        now=now,
        generation=generation,
    )
    return {"observedGeneration": generation, "conditions": conds}


def transitions(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Kubernetes events (type, reason, message) for what changed between two statuses.

    Polarity: Warning only for bad news (phase Failed or Evicted, Degraded/Stalled/Failed turning True);
    a session that succeeds posts Normal events only. Conditions that restate the phase post no event of
    their own (the phase event says it once).
    """
    events = []
    if old.get("phase") != new.get("phase"):
        phase = new.get("phase", "")
        bad = phase in (SessionPhase.FAILED, ParticipantPhase.EVICTED)
        message = f"phase {old.get('phase') or '-'} -> {phase}"
        failed = condition(new, "Failed")
        if bad and failed and failed.get("status") == "True":
            message += f": {failed['reason']}" + (f": {failed['message']}" if failed.get("message") else "")
        events.append(("Warning" if bad else "Normal", phase, message))
    for cond in new.get("conditions", []):
        before = condition(old, cond["type"])
        if before is None or before.get("status") == cond["status"]:
            continue
        refused = cond["type"] == "Stalled" and new.get("phase") != SessionPhase.FAILED
        if cond["type"] in PHASE_CONDITIONS and not refused:
            continue
        bad = cond["type"] in PROBLEM_CONDITIONS and cond["status"] == "True"
        events.append(
            ("Warning" if bad else "Normal", cond["reason"], f"{cond['type']}={cond['status']}: {cond['message']}")
        )
    return events
