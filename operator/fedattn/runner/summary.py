"""The machine-readable summary of a finished local run (``fedattn run --json``)."""

from __future__ import annotations

from typing import Any


def learning_summary(status: dict[str, Any], *, centralized: float | None, store: str) -> dict[str, Any]:
    rounds = [r for r in status.get("rounds", []) if r.get("state") == "Closed"]
    accuracy = [r.get("accuracy") for r in rounds]
    return {
        "session": status.get("name"),
        "mode": "learning",
        "phase": status.get("phase"),
        "message": status.get("message"),
        "rounds": len(rounds),
        "accuracy": accuracy,
        "final_accuracy": accuracy[-1] if accuracy else None,
        "centralized_accuracy": centralized,
        "participants": {
            name: {"phase": p.get("phase"), "contributions": p.get("contributions", 0)}
            for name, p in sorted(status.get("participant_status", {}).items())
        },
        "contributions_recorded": status.get("contributions_recorded"),
        "store": store,
    }


def progress_line(status: dict[str, Any]) -> str:
    """One human line per status change: phase, round, participants, latest accuracy."""
    parts = status.get("participants", {})
    line = (
        f"{status.get('name')}: {status.get('phase')} round {status.get('round', 0)}/{status.get('rounds_total', '?')}"
        f" participants {parts.get('ready', 0)}/{parts.get('total', 0)}"
    )
    closed = [r for r in status.get("rounds", []) if r.get("accuracy") is not None]
    if closed:
        line += f" accuracy {closed[-1]['accuracy']:.4f}"
    if status.get("syncs"):
        line += f" syncs {status['syncs']} avg {status.get('avg_sync_latency_ms', 0):.1f} ms"
    return line
