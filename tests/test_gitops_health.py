"""The GitOps health checks in docs/gitops/ read every phase right: the Argo CD Lua script run by a real Lua
5.1 (gopher-lua, Argo CD's interpreter, implements 5.1) with only the libraries Argo CD opens, and the Flux
CEL expressions run by cel-python in the order kustomize-controller evaluates them.

Fixtures are statuses the operator's own ``fedattn.operator.status`` functions write today, plus the kstatus
shape being introduced (conditions Ready/Reconciling/Stalled, ``status.progress``), so both keep working.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import celpy
import lupa.lua51
import pytest
import yaml

from fedattn.api.schema import PARTICIPANT_PHASES, SESSION_PHASES
from fedattn.api.spec import SessionSpec
from fedattn.operator import status

GITOPS = Path(__file__).resolve().parents[1] / "docs" / "gitops"
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

#: phase -> (Argo CD health, Flux/kstatus status)
SESSION_HEALTH = {
    "Pending": ("Progressing", "InProgress"),
    "Running": ("Progressing", "InProgress"),
    "Succeeded": ("Healthy", "Current"),
    "Failed": ("Degraded", "Failed"),
    "Suspended": ("Suspended", "Current"),
}
PARTICIPANT_HEALTH = {
    "Pending": ("Progressing", "InProgress"),
    "Credentialed": ("Progressing", "InProgress"),
    "Joined": ("Progressing", "InProgress"),
    "Contributing": ("Progressing", "InProgress"),
    "Done": ("Healthy", "Current"),
    "Failed": ("Degraded", "Failed"),
    "Evicted": ("Degraded", "Failed"),
}


# --- fixtures: what the operator writes ---------------------------------------------------------------


def _object(kind: str, st: dict[str, Any] | None, *, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "default", "generation": generation},
        "spec": {},
    }
    if st is not None:
        obj["status"] = st
    return obj


def _observation(phase: str) -> status.Observation:
    coordinator = {"phase": phase, "round": 3, "participants": {"joined": 2, "ready": 2}, "message": f"{phase} at 3"}
    if phase == "Pending":
        return status.Observation(certificates_ready=True)
    if phase == "Suspended":
        return status.Observation(suspended=True)
    if phase == "Failed":
        return status.Observation(coordinator=coordinator, failure=("QuorumLost", "2 of 4 participants left"))
    return status.Observation(coordinator=coordinator, certificates_ready=True)


def operator_session(phase: str) -> dict[str, Any]:
    """A FedSession with the status today's ``session_status`` writes for ``phase``."""
    spec = SessionSpec.from_manifest({"mode": "learning", "minParticipants": 2})
    st = status.session_status(previous={}, spec=spec, generation=1, seen=_observation(phase), now=NOW)
    assert st["phase"] == phase
    return _object("FedSession", st)


def operator_participant(phase: str) -> dict[str, Any]:
    entry = None if phase in ("Pending", "Credentialed") else {"phase": phase, "contributions": 4}
    st = status.participant_status(previous={}, entry=entry, credentialed=phase != "Pending", generation=1, now=NOW)
    assert st["phase"] == phase
    return _object("FedParticipant", st)


def _cond(type_: str, value: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True" if value else "False", "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-02T03:04:05Z", "observedGeneration": 1}  # fmt: skip


def kstatus_session(phase: str) -> dict[str, Any]:
    """The kstatus shape: Ready/Reconciling/Stalled (Stalled=True on Failed) and ``status.progress``."""
    ready = phase == "Succeeded"
    reconciling = phase in ("Pending", "Running")
    stalled = phase == "Failed"
    st = {
        "phase": phase,
        "observedGeneration": 1,
        "progress": {"round": 7, "roundsTotal": 20, "accuracy": 0.91},
        "conditions": [
            _cond("Ready", ready, "Succeeded" if ready else phase),
            _cond("Reconciling", reconciling, "RoundInProgress" if reconciling else phase),
            _cond("Stalled", stalled, "QuorumLost" if stalled else "AsExpected",
                  "2 of 4 participants left" if stalled else ""),
        ],
    }  # fmt: skip
    return _object("FedSession", st)


# --- the two evaluators ---------------------------------------------------------------------------------


def _argocd_script(kind: str) -> str:
    cm = yaml.safe_load((GITOPS / "argocd-cm-health.yaml").read_text())
    return cm["data"][f"resource.customizations.health.fedattn.io_{kind}"]


#: What Argo CD's VM opens (util/lua: package, base, table, and a safe os with time/date): nothing else.
SANDBOX = """
local script, obj = ...
local env = {
  ipairs = ipairs, pairs = pairs, next = next, select = select, type = type, tostring = tostring,
  tonumber = tonumber, error = error, pcall = pcall, assert = assert, unpack = unpack,
  rawget = rawget, rawset = rawset, rawequal = rawequal, setmetatable = setmetatable,
  getmetatable = getmetatable, table = table, os = {time = os.time, date = os.date}, obj = obj,
}
local chunk = assert(loadstring(script, "health.lua"))
setfenv(chunk, env)
return chunk()
"""


def argocd_health(obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) of the Argo CD health script for ``obj``, as Argo CD runs it."""
    lua = lupa.lua51.LuaRuntime()
    # NB: without Argo CD's string library, "s":method() must fail here too, not only in Argo CD
    lua.execute("debug.setmetatable('', nil)")
    run = lua.eval(f"function(...) {SANDBOX} end")
    hs = run(_argocd_script(obj["kind"]), lua.table_from(obj, recursive=True))
    assert hs["status"] in ("Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown")
    return hs["status"], hs["message"]


def _flux_exprs(kind: str) -> dict[str, str]:
    ks = yaml.safe_load((GITOPS / "flux-kustomization.yaml").read_text())
    (entry,) = [e for e in ks["spec"]["healthCheckExprs"] if e["kind"] == kind]
    assert entry["apiVersion"] == "fedattn.io/v1alpha1"
    return entry


def flux_health(obj: dict[str, Any]) -> str:
    """kstatus status as kustomize-controller computes it (fluxcd/pkg runtime/cel StatusEvaluator): a
    differing observedGeneration is InProgress; then inProgress, failed, current; none true is InProgress.
    An evaluation error makes Flux retry until its timeout: "Error" here, so a test sees it."""
    st = obj.get("status") or {}
    if "observedGeneration" in st and st["observedGeneration"] != obj["metadata"]["generation"]:
        return "InProgress"
    env = celpy.Environment()
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    exprs = _flux_exprs(obj["kind"])
    for field, result in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
        try:
            value = env.program(env.compile(exprs[field])).evaluate(activation)
        except celpy.CELEvalError:
            return "Error"
        if isinstance(value, celpy.CELEvalError):
            return "Error"
        if bool(value):
            return result
    return "InProgress"


# --- tests ----------------------------------------------------------------------------------------------


def test_every_phase_has_an_expected_health() -> None:
    """A phase added to the schema fails here until the health checks (and this table) know it."""
    assert list(SESSION_HEALTH) == SESSION_PHASES
    assert list(PARTICIPANT_HEALTH) == PARTICIPANT_PHASES


@pytest.mark.parametrize("shape", [operator_session, kstatus_session], ids=["today", "kstatus"])
@pytest.mark.parametrize("phase", SESSION_PHASES)
def test_session_health(shape, phase: str) -> None:
    obj = shape(phase)
    argo, flux = SESSION_HEALTH[phase]
    got, message = argocd_health(obj)
    assert got == argo, message
    assert message
    assert flux_health(obj) == flux


@pytest.mark.parametrize("phase", PARTICIPANT_PHASES)
def test_participant_health(phase: str) -> None:
    obj = operator_participant(phase)
    argo, flux = PARTICIPANT_HEALTH[phase]
    assert argocd_health(obj)[0] == argo
    assert flux_health(obj) == flux


def test_messages_say_why() -> None:
    # today: the Failed condition carries the operator's reason and the coordinator's last message
    assert argocd_health(operator_session("Failed")) == ("Degraded", "QuorumLost: Failed at 3")
    assert argocd_health(kstatus_session("Failed")) == ("Degraded", "QuorumLost: 2 of 4 participants left")
    assert argocd_health(kstatus_session("Running")) == ("Progressing", "round 7/20")
    assert argocd_health(operator_session("Running")) == ("Progressing", "round 3")
    assert argocd_health(kstatus_session("Suspended")) == ("Suspended", "suspended at round 7/20")


@pytest.mark.parametrize("kind", ["FedSession", "FedParticipant"])
def test_an_unobserved_edit_is_progressing_whatever_the_phase(kind: str) -> None:
    done = operator_session("Succeeded") if kind == "FedSession" else operator_participant("Done")
    edited = {**done, "metadata": {**done["metadata"], "generation": 2}}
    assert argocd_health(edited) == ("Progressing", "generation 2 not yet observed (observed 1)")
    assert flux_health(edited) == "InProgress"


@pytest.mark.parametrize("kind", ["FedSession", "FedParticipant"])
def test_a_new_object_without_status_is_progressing(kind: str) -> None:
    assert argocd_health(_object(kind, None)) == ("Progressing", "waiting for the fedattn operator")
    # NB: cel-python reads has() of an absent `status` as false; cel-go may instead fail the evaluation, which
    # kustomize-controller retries until the operator has written a status: "not yet" either way.
    assert flux_health(_object(kind, None)) == "InProgress"
    assert flux_health(_object(kind, {"observedGeneration": 1})) == "InProgress"


def test_stalled_alone_is_degraded() -> None:
    """A future phase the scripts do not know still reads kstatus' Stalled as a failure."""
    obj = kstatus_session("Running")
    obj["status"]["phase"] = "Draining"
    obj["status"]["conditions"][2] = _cond("Stalled", True, "StoreLost", "the store is gone")
    assert argocd_health(obj) == ("Degraded", "StoreLost: the store is gone")
    assert flux_health(obj) == "Failed"


def test_the_sandbox_is_argocds() -> None:
    """The harness must reject what Argo CD rejects, or a passing test would mean little."""
    lua = lupa.lua51.LuaRuntime()
    lua.execute("debug.setmetatable('', nil)")
    run = lua.eval(f"function(...) {SANDBOX} end")
    for forbidden in ("return string.format('%d', 1)", "return ('x'):upper()", "return io.open('/etc/hosts')"):
        with pytest.raises(lupa.lua51.LuaError):
            run(forbidden, lua.table_from({}))
