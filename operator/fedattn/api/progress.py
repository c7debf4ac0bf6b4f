"""``status.progress`` of a FedSession from the coordinator's ``GET /v1/sessions/S`` answer (pure).

One function, two readers: the operator writes its result to ``.status.progress`` and the local
runner puts the same dict in ``fedattn run --json``, so a session reports the same numbers whether it
ran in a cluster or on a laptop. Keys are the CRD's camelCase (:func:`fedattn.api.schema.session_progress`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any


def rfc3339(value: Any) -> str | None:
    """Coordinator times may be epoch seconds or RFC 3339 strings; status always holds RFC 3339."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(value, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


#: decimals kept: printer columns show the stored number as is (an epsilon of 2.4000000000000004 helps
#: nobody); the exact values stay in the coordinator's round log and the store
DECIMALS = 4


def _number(value: Any) -> float | None:
    # NB: the API server rejects NaN/Inf in JSON; a missing number is better than a refused status write
    return round(float(value), DECIMALS) if isinstance(value, int | float) and math.isfinite(value) else None


def progress(coordinator: Mapping[str, Any]) -> dict[str, Any]:
    """How far the session is: ``round``/``roundsTotal`` and a ``rounds`` text for ``kubectl get``, the
    last closed round's ``accuracy`` and time (``lastRoundAt``), DP ``epsilonSpent``, the participants'
    mean final training ``loss`` (they report it as they leave), and ``syncs`` in attention mode; numbers
    to :data:`DECIMALS` decimals.

    Keys whose value is unknown are left out (a learning session without DP has no ``epsilonSpent``).
    """
    mode = coordinator.get("mode")
    round_ = int(coordinator.get("round") or 0)
    out: dict[str, Any] = {"round": round_}
    if mode == "attention":
        syncs = int(coordinator.get("syncs") or 0)
        out |= {"syncs": syncs, "rounds": f"{syncs} syncs"}
    else:
        total = coordinator.get("rounds_total")
        if isinstance(total, int):
            out |= {"roundsTotal": total, "rounds": f"{round_}/{total}"}
    closed = [r for r in coordinator.get("rounds") or [] if r.get("state") == "Closed"]
    scored = [r for r in closed if _number(r.get("accuracy")) is not None]
    if scored:
        out["accuracy"] = _number(scored[-1]["accuracy"])
    if closed and rfc3339(closed[-1].get("closed_at")):
        out["lastRoundAt"] = rfc3339(closed[-1]["closed_at"])
    epsilon = _number(coordinator.get("epsilon"))
    if epsilon is not None:
        out["epsilonSpent"] = epsilon
    losses = [_number((r or {}).get("loss")) for r in (coordinator.get("results") or {}).values()]
    losses = [v for v in losses if v is not None]
    if losses:
        out["loss"] = round(sum(losses) / len(losses), DECIMALS)
    return out
