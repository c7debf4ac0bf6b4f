"""The aggregator's close reply, checked, as one frozen :class:`RoundSummary`; pure, no I/O.

The reply is untrusted input and goes through :mod:`fedattn.coordinator.checks` field by field, so
nothing in it can fail the round's bookkeeping. Also the helpers status derives from the round log.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from fedattn.coordinator.checks import evaluation, finite, int64, members_only, per_member

#: close-reply fields about participants, stored as one ``scores`` event per round (JSON in ``message``)
JUDGEMENT = {"scores": dict, "reliability": dict, "evict": list}


def stop_reason(text: str) -> tuple[str, str]:
    """``"Reason: detail"`` from the aggregator as (reason, detail); a bare text is its own detail."""
    reason, sep, detail = text.partition(":")
    if sep and reason and reason.isidentifier():
        return reason, detail.strip()
    return "Stopped", text


def latest_epsilon(round_log: dict[int, dict[str, Any]]) -> float | None:
    """DP epsilon spent so far: the last round's that reported one (None without DP)."""
    spent = [round_log[r]["epsilon"] for r in sorted(round_log) if round_log[r].get("epsilon") is not None]
    return spent[-1] if spent else None


def latest_evaluation(round_log: dict[int, dict[str, Any]]) -> dict[str, Any] | None:
    """The federated evaluation of the newest evaluated round (None without ``spec.evaluation``):
    what the operator's status shows as the model's current quality."""
    done = [round_log[r]["evaluation"] for r in sorted(round_log) if round_log[r].get("evaluation")]
    return done[-1] if done else None


@dataclass(frozen=True)
class RoundSummary:
    """One closed round as the aggregator reported it, after the checks in :meth:`from_reply`."""

    round: int
    contributions: int
    accuracy: float | None
    weight_total: float | None
    aggregation_seconds: float | None
    epsilon: float | None
    update_bytes: int | None
    model_checksum: int | None
    #: contribution score and reliability per member (strategies that score, e.g. Krum)
    scores: Mapping[str, float]
    reliability: Mapping[str, float]
    #: members the aggregator scored out (``spec.eviction``)
    evict: tuple[str, ...]
    #: why no further round may run (e.g. ``PrivacyBudgetExhausted: ...``), None to go on
    stop: str | None
    #: federated evaluation of the round's new model (``spec.evaluation``): loss, metrics, who reported
    evaluation: Mapping[str, Any] | None = None

    @classmethod
    def from_reply(cls, reply: Mapping[str, Any], *, round: int, members: Iterable[str]) -> RoundSummary:
        """The summary of ``round`` from a ``ctl_close_round`` reply; ``members`` are the session's."""
        members = frozenset(members)
        stop = reply.get("stop")
        return cls(
            round=round,
            contributions=int64(reply.get("contributions")) or 0,
            accuracy=finite(reply.get("accuracy")),
            weight_total=finite(reply.get("weight_total")),
            aggregation_seconds=finite(reply.get("aggregation_seconds")),
            epsilon=finite(reply.get("epsilon")),
            update_bytes=int64(reply.get("update_bytes")),
            model_checksum=int64(reply.get("model_checksum")),
            scores=MappingProxyType(per_member(reply.get("scores"), members)),
            reliability=MappingProxyType(per_member(reply.get("reliability"), members)),
            evict=members_only(reply.get("evict"), members),
            stop=stop if isinstance(stop, str) and stop else None,
            evaluation=evaluation(reply.get("evaluation"), members),
        )

    def judgement(self) -> dict[str, Any]:
        """What the round said about participants (the ``scores`` event; empty values when it said nothing)."""
        return {"scores": dict(self.scores), "reliability": dict(self.reliability), "evict": list(self.evict)}

    def status(self) -> dict[str, Any]:
        """The round's entry in session status (``rounds[]``, docs/protocol.md), JSON-ready."""
        return {
            "round": self.round,
            "state": "Closed",
            "contributions": self.contributions,
            "accuracy": self.accuracy,
            "weight_total": self.weight_total,
            "aggregation_seconds": self.aggregation_seconds,
            "epsilon": self.epsilon,
            "update_bytes": self.update_bytes,
            "evaluation": None if self.evaluation is None else dict(self.evaluation),
            **self.judgement(),
        }
