"""The operator's per-session metrics follow the status it writes (what the chart's alerts read)."""

from __future__ import annotations

from prometheus_client import REGISTRY

from fedattn.operator.metrics import PhaseCounter


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_degraded_follows_the_condition_and_goes_with_the_session() -> None:
    phases = PhaseCounter()
    degraded = [{"type": "Degraded", "status": "True", "reason": "ParticipantsFailed"}]
    before = _value("fedattn_operator_sessions", phase="Running") or 0.0
    phases.set("ns-m", "s1", "Running", conditions=degraded)
    assert _value("fedattn_operator_session_degraded", namespace="ns-m", session="s1") == 1.0
    assert _value("fedattn_operator_sessions", phase="Running") == before + 1
    phases.set("ns-m", "s1", "Running", conditions=[{**degraded[0], "status": "False"}])
    assert _value("fedattn_operator_session_degraded", namespace="ns-m", session="s1") == 0.0
    phases.set("ns-m", "s1", None)
    assert _value("fedattn_operator_session_degraded", namespace="ns-m", session="s1") is None
    assert _value("fedattn_operator_sessions", phase="Running") == before
    phases.set("ns-m", "never-seen", None)  # removing what was never there is fine
