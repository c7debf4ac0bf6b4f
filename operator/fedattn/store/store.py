"""The store the coordinator talks to: sessions, participants, rounds, contributions, audit events.

Writes return a future that resolves once committed (see :mod:`fedattn.store.writer`); reads go
straight to the database and raise :class:`StoreUnavailable` when it cannot answer. Every write is
idempotent, so retrying one whose acknowledgement was lost does not duplicate anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

from fedattn.store.backend import Backend, Params
from fedattn.store.migrations import load_migrations
from fedattn.store.rows import Contribution, Event, ParticipantRow, RoundRow, SessionRow
from fedattn.store.writer import StoreUnavailable, WriteQueue

log = logging.getLogger(__name__)

Pending = asyncio.Future[None]


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, separators=(",", ":"))


def _unjson(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text)


def backend_for(dsn: str) -> Backend:
    """``postgresql://...`` (or ``postgres://``) or ``sqlite:///relative.db`` / ``sqlite:////abs.db``."""
    if dsn.startswith(("postgresql://", "postgres://")):
        from fedattn.store.postgres import PostgresBackend

        return PostgresBackend(dsn)
    if dsn.startswith("sqlite:///") and len(dsn) > len("sqlite:///"):
        from fedattn.store.sqlite import SqliteBackend

        return SqliteBackend(Path(dsn.removeprefix("sqlite:///")))
    raise ValueError(f"unsupported store DSN {dsn.split('@')[-1]!r}: use postgresql://... or sqlite:///PATH")


class Store:
    def __init__(self, backend: Backend, **queue_options: Any) -> None:
        self.backend = backend
        self.writes = WriteQueue(backend, **queue_options)

    async def start(self) -> list[int]:
        """Connect, migrate, start the writer; returns the migration versions applied now."""
        await self.backend.open()
        try:
            applied = await self.backend.migrate(load_migrations())
        except BaseException:
            await self.backend.close()
            raise
        if applied:
            log.info("store %s migrated to versions %s", self.backend.name, applied)
        self.writes.start()
        return applied

    async def close(self, *, timeout: float = 10.0) -> None:
        await self.writes.close(timeout=timeout)
        await self.backend.close()

    async def _fetch(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        try:
            return await self.backend.fetch(sql, params)
        except Exception as exc:
            if self.backend.is_transient(exc):
                raise StoreUnavailable(f"store {self.backend.name} unreachable: {exc}") from exc
            raise

    async def ping(self) -> None:
        """Raises :class:`StoreUnavailable` unless the database answers a query."""
        await self._fetch("SELECT 1")

    def health(self) -> dict[str, Any]:
        return {
            "backend": self.backend.name,
            "buffered_writes": self.writes.pending,
            "write_failures": self.writes.failures,
            "retrying_since": self.writes.retrying_since,
        }

    # -- writes ---------------------------------------------------------------------------------

    def create_session(self, *, name: str, mode: str, spec: dict[str, Any], phase: str, created_at: float) -> Pending:
        return self.writes.submit(
            f"session {name}",
            (
                "INSERT INTO sessions (name, mode, spec, phase, created_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (name) DO NOTHING",
                (name, mode, _json(spec), phase, created_at),
            ),
        )

    def update_session(
        self,
        name: str,
        *,
        phase: str,
        message: str,
        round: int,
        started_at: float | None = None,
        completed_at: float | None = None,
    ) -> Pending:
        """Set the phase; ``started_at``/``completed_at`` are kept once set."""
        return self.writes.submit(
            f"session {name} phase {phase}",
            (
                "UPDATE sessions SET phase = %s, message = %s, round = %s, "
                "started_at = COALESCE(started_at, %s), completed_at = COALESCE(completed_at, %s) "
                "WHERE name = %s",
                (phase, message, round, started_at, completed_at, name),
            ),
        )

    def upsert_participant(self, session: str, name: str, *, weight: float, phase: str, position: int = 0) -> Pending:
        return self.writes.submit(
            f"participant {session}/{name}",
            (
                "INSERT INTO participants (session, name, weight, phase, position) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (session, name) DO UPDATE SET weight = excluded.weight, position = excluded.position",
                (session, name, weight, phase, position),
            ),
        )

    def update_participant(
        self,
        session: str,
        name: str,
        *,
        phase: str,
        joined_at: float | None = None,
        last_heartbeat: float | None = None,
        result: dict[str, Any] | None = None,
    ) -> Pending:
        """Set the phase; the other fields only change when given (None keeps the stored value)."""
        return self.writes.submit(
            f"participant {session}/{name} phase {phase}",
            (
                "UPDATE participants SET phase = %s, joined_at = COALESCE(%s, joined_at), "
                "last_heartbeat = COALESCE(%s, last_heartbeat), result = COALESCE(%s, result) "
                "WHERE session = %s AND name = %s",
                (phase, joined_at, last_heartbeat, _json(result), session, name),
            ),
        )

    def open_round(self, session: str, round: int, *, participants: int, opened_at: float) -> Pending:
        return self.writes.submit(
            f"round {session}/{round} open",
            (
                "INSERT INTO rounds (session, round, state, participants, opened_at) "
                "VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (session, round) DO NOTHING",
                (session, round, "Open", participants, opened_at),
            ),
        )

    def close_round(
        self,
        session: str,
        round: int,
        *,
        state: str,
        closed_at: float,
        contributions: int,
        weight_total: float | None = None,
        aggregation_seconds: float | None = None,
        accuracy: float | None = None,
        model_checksum: int | None = None,
        epsilon: float | None = None,
        update_bytes: int | None = None,
        evaluation: dict[str, Any] | None = None,
    ) -> Pending:
        return self.writes.submit(
            f"round {session}/{round} {state}",
            (
                "UPDATE rounds SET state = %s, closed_at = %s, contributions = %s, weight_total = %s, "
                "aggregation_seconds = %s, accuracy = %s, model_checksum = %s, epsilon = %s, update_bytes = %s, "
                "evaluation = %s WHERE session = %s AND round = %s",
                (
                    state,
                    closed_at,
                    contributions,
                    weight_total,
                    aggregation_seconds,
                    accuracy,
                    model_checksum,
                    epsilon,
                    update_bytes,
                    None if evaluation is None else json.dumps(evaluation),
                    session,
                    round,
                ),
            ),
        )

    def record_contribution(self, c: Contribution) -> Pending:
        """Idempotent on (session, participant, round, layer_start): a retried write is a no-op."""
        return self.writes.submit(
            f"contribution {c.session}/{c.participant} round {c.round} layer {c.layer_start}",
            (
                "INSERT INTO contributions (session, participant, round, layer_start, layer_end, bytes, "
                "latency_ms, weight, checksum, recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (session, participant, round, layer_start) DO NOTHING",
                (
                    c.session,
                    c.participant,
                    c.round,
                    c.layer_start,
                    c.layer_end,
                    c.bytes,
                    c.latency_ms,
                    c.weight,
                    c.checksum,
                    c.recorded_at,
                ),
            ),
        )

    def record_event(self, e: Event) -> Pending:
        return self.writes.submit(
            f"event {e.kind} {e.session}/{e.participant or '-'}",
            (
                "INSERT INTO events (id, session, participant, round, kind, reason, message, data, at) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (e.id, e.session, e.participant, e.round, e.kind, e.reason, e.message, _json(e.data), e.at),
            ),
        )

    # -- reads ----------------------------------------------------------------------------------

    _SESSION_COLUMNS = "name, mode, spec, phase, message, round, created_at, started_at, completed_at"

    @staticmethod
    def _session(row: tuple[Any, ...]) -> SessionRow:
        name, mode, spec, *rest = row
        return SessionRow(name, mode, json.loads(spec), *rest)

    async def get_session(self, name: str) -> SessionRow | None:
        rows = await self._fetch(f"SELECT {self._SESSION_COLUMNS} FROM sessions WHERE name = %s", (name,))
        return self._session(rows[0]) if rows else None

    async def list_sessions(self) -> list[SessionRow]:
        rows = await self._fetch(f"SELECT {self._SESSION_COLUMNS} FROM sessions ORDER BY created_at, name")
        return [self._session(r) for r in rows]

    async def list_participants(self, session: str) -> list[ParticipantRow]:
        rows = await self._fetch(
            "SELECT session, name, weight, phase, joined_at, last_heartbeat, result, position FROM participants "
            "WHERE session = %s ORDER BY position, name",
            (session,),
        )
        return [ParticipantRow(*r[:6], _unjson(r[6]), r[7]) for r in rows]

    async def list_rounds(self, session: str) -> list[RoundRow]:
        rows = await self._fetch(
            "SELECT session, round, state, participants, opened_at, closed_at, contributions, weight_total, "
            "aggregation_seconds, accuracy, model_checksum, epsilon, update_bytes, evaluation FROM rounds "
            "WHERE session = %s ORDER BY round",
            (session,),
        )
        return [RoundRow(*r[:-1], _unjson(r[-1])) for r in rows]

    async def list_contributions(self, session: str) -> list[Contribution]:
        rows = await self._fetch(
            "SELECT session, participant, round, layer_start, layer_end, bytes, latency_ms, weight, "
            "checksum, recorded_at FROM contributions WHERE session = %s "
            "ORDER BY round, layer_start, participant",
            (session,),
        )
        return [Contribution(*r) for r in rows]

    async def list_events(self, session: str, *, kind: str | None = None) -> list[Event]:
        where, params = (
            ("session = %s", (session,))
            if kind is None
            else (
                "session = %s AND kind = %s",
                (session, kind),
            )
        )
        rows = await self._fetch(
            "SELECT session, kind, participant, round, reason, message, data, at, id FROM events "
            f"WHERE {where} ORDER BY at, id",
            params,
        )
        return [Event(*r[:6], _unjson(r[6]), r[7], r[8]) for r in rows]

    async def contributions_recorded(self, session: str | None = None) -> int:
        """How many contributions are durably stored, for one session or overall."""
        if session is None:
            rows = await self._fetch("SELECT COUNT(*) FROM contributions")
        else:
            rows = await self._fetch("SELECT COUNT(*) FROM contributions WHERE session = %s", (session,))
        return int(rows[0][0])


async def open_store(dsn: str, **queue_options: Any) -> Store:
    """Connect to the store a DSN names, migrate it and start its writer."""
    store = Store(backend_for(dsn), **queue_options)
    await store.start()
    return store
