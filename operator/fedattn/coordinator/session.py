"""What the coordinator holds per session, and the one way a session's commands reach its driver.

The participant API (:mod:`fedattn.coordinator.service`), the aggregator's events
(:mod:`fedattn.coordinator.events`) and the round driver (:mod:`fedattn.coordinator.driver`) share
these: each feeds a session's machine and hands the commands it returns to :meth:`Sessions.dispatch`,
which queues them for the session's driver task in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pybreaker

from fedattn.coordinator import rounds
from fedattn.coordinator.manifest import SessionDefinition
from fedattn.coordinator.metrics import Metrics
from fedattn.resilience import Policy

#: participant name used for attention-mode sync rows (a sync belongs to the whole session)
SYNC_PARTICIPANT = "*"
PHASES = (rounds.PENDING, rounds.RUNNING, rounds.SUCCEEDED, rounds.FAILED)


@dataclass
class Activity:
    """Per participant: what status shows beyond the machine's phase."""

    last_heartbeat: float | None = None
    contributions: int = 0
    last_latency_ms: float | None = None
    result: dict[str, Any] | None = None
    heartbeat_written: float | None = None


@dataclass
class Session:
    definition: SessionDefinition
    machine: rounds.SessionMachine
    policy: Policy
    created_at: float
    started_at: float | None = None
    completed_at: float | None = None
    activity: dict[str, Activity] = field(default_factory=dict)
    round_log: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: (participant, round) of every contribution in the store: an update a restarted aggregator got
    #: again is the same contribution, never a second row
    recorded: set[tuple[str, int]] = field(default_factory=set)
    syncs: int = 0
    sync_latency_ms_total: float = 0.0
    commands: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    driver: asyncio.Task[None] | None = None
    breaker: pybreaker.CircuitBreaker | None = None
    #: set once the aggregator knows the session, so a participant that joined can say hello at once
    configured: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def round_number(self) -> int:
        """The open round, else the last closed one (0 before the first)."""
        current = self.machine.round
        return current.number if current is not None else self.machine.rounds_closed


class Sessions(Mapping[str, Session]):
    """Every session of this coordinator by name, and the gauge of how many are in each phase."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._by_name: dict[str, Session] = {}

    def __getitem__(self, name: str) -> Session:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def add(self, session: Session) -> None:
        self._by_name[session.name] = session
        self.update_gauges()

    def dispatch(self, session: Session, commands: list[Any]) -> None:
        """Queue a machine's commands for the session's driver; a command may have changed its phase."""
        for command in commands:
            session.commands.put_nowait(command)
        if commands:
            self.update_gauges()

    def update_gauges(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for s in self._by_name.values():
            counts[s.machine.phase] = counts.get(s.machine.phase, 0) + 1
        for phase, n in counts.items():
            self.metrics.sessions.labels(phase=phase).set(n)
