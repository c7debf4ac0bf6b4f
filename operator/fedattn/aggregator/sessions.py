"""What every aggregator session has, whatever its mode: spec, members and their weights, routes.

No sockets in the session modules: the server decodes a message, the mode's conversation
(:mod:`fedattn.aggregator.learning_protocol`, :mod:`fedattn.aggregator.attention_protocol`) calls
the session's methods and turns the result (or the :class:`~fedattn.wire.WireError` raised, whose
code names the problem) into replies and events. The session state itself lives in
:mod:`fedattn.aggregator.learning_session` and :mod:`fedattn.aggregator.attention_session`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedattn import wire
from fedattn.api.spec import SessionSpec


@dataclass
class Session:
    """What every session has: its spec, members and their weights, and who said hello from where."""

    name: str
    mode: str
    spec: SessionSpec
    weights: dict[str, float]
    max_payload_bytes: int
    routes: dict[str, bytes] = field(default_factory=dict)  # participant -> ROUTER routing id
    last_seq: dict[str, int] = field(default_factory=dict)

    @property
    def min_participants(self) -> int:
        return self.spec.min_participants

    @property
    def timeout_seconds(self) -> float:
        return float(self.spec.round_timeout_seconds)

    def check_seq(self, participant: str, seq: int) -> None:
        """Sequence numbers must increase per sender; a replayed or repeated message is a duplicate."""
        last = self.last_seq.get(participant)
        if last is not None and seq <= last:
            raise wire.WireError("duplicate", f"seq {seq} already seen from {participant} (last {last})")
        self.last_seq[participant] = seq

    def describe(self) -> dict[str, Any]:
        """The session as ``ctl_status`` and ``ctl_configure`` report it; each mode adds its own fields."""
        return {"mode": self.mode, "participants": sorted(self.weights), "hello": sorted(self.routes)}
