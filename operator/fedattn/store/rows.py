"""Plain records the store writes and reads; times are UNIX epoch seconds."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Contribution:
    """One accepted model update (learning) or KV sync (attention: ``layer_start == layer_end``).

    The natural key (session, participant, round, layer_start) makes recording it idempotent.
    """

    session: str
    participant: str
    round: int
    layer_start: int = 0
    layer_end: int = 0
    bytes: int = 0
    latency_ms: float | None = None
    weight: float | None = None
    checksum: int | None = None
    recorded_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Event:
    """An audit row; ``id`` is chosen by the writer so a retried insert cannot duplicate it."""

    session: str
    kind: str
    participant: str | None = None
    round: int | None = None
    reason: str = ""
    message: str = ""
    data: dict[str, Any] | None = None
    at: float = field(default_factory=time.time)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class SessionRow:
    name: str
    mode: str
    spec: dict[str, Any]
    phase: str
    message: str
    round: int
    created_at: float
    started_at: float | None
    completed_at: float | None


@dataclass(frozen=True)
class ParticipantRow:
    session: str
    name: str
    weight: float
    phase: str
    joined_at: float | None
    last_heartbeat: float | None
    result: dict[str, Any] | None
    position: int = 0


@dataclass(frozen=True)
class RoundRow:
    session: str
    round: int
    state: str
    participants: int
    opened_at: float
    closed_at: float | None
    contributions: int
    weight_total: float | None
    aggregation_seconds: float | None
    accuracy: float | None
    model_checksum: int | None
    epsilon: float | None = None
    update_bytes: int | None = None
    evaluation: dict[str, Any] | None = None  # federated evaluation (JSON in the store)
