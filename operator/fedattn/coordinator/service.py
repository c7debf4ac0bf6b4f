"""The participant and operator API of the coordinator: create, restore, join, heartbeat, leave, evict, status.

Each session has a :class:`~fedattn.coordinator.rounds.SessionMachine` (pure); the API feeds it what
participants and the operator say and hands its commands to the session's driver task
(:mod:`fedattn.coordinator.driver`), which carries them out through the control link; what the
aggregator pushes arrives through :mod:`fedattn.coordinator.events`. State changes a caller is told
about (create, join, leave, evict) are committed to the store before the answer; heartbeats and
aggregator events are queued to the store (ordered, retried, never dropped silently, see
:mod:`fedattn.store.writer`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from fedattn.coordinator import rounds
from fedattn.coordinator.client import NO_SESSION
from fedattn.coordinator.driver import Configure, Revoke, RoundDriver
from fedattn.coordinator.events import AggregatorEvents
from fedattn.coordinator.manifest import SessionDefinition, settings_for
from fedattn.coordinator.metrics import Metrics
from fedattn.coordinator.session import SYNC_PARTICIPANT, Activity, Session, Sessions
from fedattn.coordinator.summary import JUDGEMENT, latest_epsilon, latest_evaluation
from fedattn.resilience import Policy
from fedattn.store import Event, Store, StoreUnavailable

log = logging.getLogger(__name__)

HEARTBEAT_WRITE_SECONDS = 5.0


class ApiError(Exception):
    """An answer other than success: HTTP ``status``, machine ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _with_iso_times(entry: dict[str, Any]) -> dict[str, Any]:
    """A round log entry as status shows it: ``closed_at`` (epoch seconds in the log) in ISO 8601."""
    return {**entry, "closed_at": _iso(entry["closed_at"])} if entry.get("closed_at") is not None else entry


class Coordinator:
    """The sessions and the API over them; owns the round driver and the aggregator-event intake.

    ``driver.link`` is set once the control link exists, whose callbacks are ``events.on_event`` and
    ``events.on_status`` (:func:`fedattn.coordinator.server.serve` wires them).
    """

    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        aggregator: dict[str, str],
        clock: Callable[[], float] = time.time,
        ack_timeout_seconds: float = 10.0,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.aggregator = aggregator  # {endpoint, public_key} handed to participants on join
        self.clock = clock
        self.ack_timeout_seconds = ack_timeout_seconds
        self.sessions = Sessions(metrics)
        #: sessions whose create is not durable yet: name -> (fingerprint, its writes, the session)
        self._creating: dict[str, tuple[str, asyncio.Future[Any], Session]] = {}
        self.driver = RoundDriver(
            sessions=self.sessions, store=store, metrics=metrics, clock=clock, evict=self._evict_scored_out
        )
        self.events = AggregatorEvents(sessions=self.sessions, store=store, metrics=metrics, clock=clock)

    # -- life cycle -------------------------------------------------------------------------------

    async def close(self) -> None:
        tasks = [s.driver for s in self.sessions.values() if s.driver]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def tick(self) -> None:
        """Run every session's machine clock (timeouts, heartbeats, deadlines)."""
        now = self.clock()
        for session in self.sessions.values():
            self.sessions.dispatch(session, session.machine.tick(now=now))

    # -- helpers ----------------------------------------------------------------------------------

    def _get(self, name: str) -> Session:
        session = self.sessions.get(name)
        if session is None:
            raise ApiError(404, NO_SESSION, f"no session named {name!r}")
        return session

    @staticmethod
    def _member(session: Session, participant: str) -> None:
        if participant not in session.definition.weights:
            raise ApiError(404, "not_found", f"{participant!r} is not a participant of session {session.name!r}")

    async def _durable(self, *writes: asyncio.Future[None]) -> None:
        """Wait until the writes are committed; 503 (retry later) if the store cannot take them now."""
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.gather(*writes)), self.ack_timeout_seconds)
        except (TimeoutError, StoreUnavailable) as exc:
            raise ApiError(503, "store_unavailable", f"not stored yet, retry: {exc or 'store is slow'}") from None

    # -- API --------------------------------------------------------------------------------------

    async def create_session(self, definition: SessionDefinition) -> bool:
        """Create (True) or find the identical session (False); 409 when the name holds another."""
        existing = self.sessions.get(definition.name)
        if existing is not None:
            if existing.definition.fingerprint != definition.fingerprint:
                raise ApiError(409, "conflict", f"session {definition.name!r} exists with a different spec")
            return False
        pending = self._creating.get(definition.name)
        if pending is not None:  # NB: a retry (after a 503) or a concurrent twin: the same writes, awaited
            fingerprint, writes, session = pending
            if fingerprint != definition.fingerprint:
                raise ApiError(409, "conflict", f"session {definition.name!r} exists with a different spec")
            await self._durable(writes)
            self._commit_create(session)
            return False
        now = self.clock()
        session = Session(
            definition=definition,
            machine=rounds.SessionMachine(settings_for(definition), now=now),
            policy=Policy.from_spec(definition.typed.resilience),
            created_at=now,
            activity={name: Activity() for name in definition.weights},
        )
        writes = [
            self.store.create_session(
                name=definition.name, mode=definition.mode, spec=definition.spec, phase=rounds.PENDING, created_at=now
            )
        ]
        writes += [
            self.store.upsert_participant(definition.name, name, weight=weight, phase=rounds.P_PENDING, position=i)
            for i, (name, weight) in enumerate(definition.weights.items())
        ]
        # NB: commit, then act: the session is driven (configured at the aggregator, joinable) only
        # once its rows are durable; a 503 leaves nothing in memory that the store does not have.
        committed = asyncio.ensure_future(asyncio.gather(*writes))
        self._creating[definition.name] = (definition.fingerprint, committed, session)
        # NB: writes the client gave up on (503) still commit in the background; then it is driven
        committed.add_done_callback(lambda done: done.cancelled() or done.exception() or self._commit_create(session))
        await self._durable(committed)
        self._commit_create(session)
        return True

    def _commit_create(self, session: Session) -> None:
        if self._creating.pop(session.name, None) is not None:
            self._adopt(session)
            log.info("session created", extra={"session": session.name})

    def _adopt(self, session: Session) -> None:
        """Start driving a session: configure it at the aggregator, then carry out its commands."""
        session.breaker = session.policy.breaker(f"aggregator:{session.name}")
        session.commands.put_nowait(Configure())
        session.driver = asyncio.create_task(self.driver.run(session), name=f"session-{session.name}")
        self.sessions.add(session)

    async def restore(self) -> int:
        """Rebuild the sessions a previous coordinator process left in the store; returns how many.

        Finished sessions come back read-only (status); unfinished ones resume: the round that was
        open stays open with the contributions already recorded, participants get a fresh heartbeat
        grace period, and the aggregator is re-configured (its reply says who has said hello).
        """
        now = self.clock()
        for row in await self.store.list_sessions():
            members = await self.store.list_participants(row.name)
            round_rows = await self.store.list_rounds(row.name)
            contributions = await self.store.list_contributions(row.name)
            definition = SessionDefinition(
                name=row.name, mode=row.mode, spec=row.spec, weights={m.name: m.weight for m in members}
            )
            open_rows = [r for r in round_rows if r.state == "Open"]
            open_round = None
            if open_rows:
                number = open_rows[-1].round
                contributed = {c.participant for c in contributions if c.round == number}
                open_round = (number, open_rows[-1].opened_at, contributed)
            machine = rounds.SessionMachine.resume(
                settings_for(definition),
                created_at=row.created_at,
                phase=row.phase,
                message=row.message,
                member_phases={m.name: m.phase for m in members},
                rounds_closed=max((r.round for r in round_rows if r.state == "Closed"), default=0),
                open_round=open_round,
                now=now,
            )
            session = Session(
                definition=definition,
                machine=machine,
                policy=Policy.from_spec(definition.typed.resilience),
                created_at=row.created_at,
                started_at=row.started_at,
                completed_at=row.completed_at,
                activity={m.name: Activity(last_heartbeat=m.last_heartbeat, result=m.result) for m in members},
                round_log={
                    r.round: {
                        "round": r.round,
                        "state": r.state,
                        "participants": r.participants,
                        "contributions": r.contributions,
                        "accuracy": r.accuracy,
                        "weight_total": r.weight_total,
                        "aggregation_seconds": r.aggregation_seconds,
                        "epsilon": r.epsilon,
                        "update_bytes": r.update_bytes,
                        "closed_at": r.closed_at,
                        "evaluation": r.evaluation,
                    }
                    for r in round_rows
                },
            )
            await self._restore_judgements(session)
            for c in contributions:
                if c.participant == SYNC_PARTICIPANT:
                    session.syncs += 1
                    session.sync_latency_ms_total += c.latency_ms or 0.0
                elif c.participant in session.activity:
                    session.recorded.add((c.participant, c.round))
                    session.activity[c.participant].contributions += 1
                    session.activity[c.participant].last_latency_ms = c.latency_ms
            if machine.finished:
                self.sessions.add(session)
            else:
                self._adopt(session)
            log.info("session restored (%s)", row.phase, extra={"session": row.name})
        return len(self.sessions)

    async def _restore_judgements(self, session: Session) -> None:
        """Scores, reliability and evictions of closed rounds, from their ``scores`` events."""
        for entry in session.round_log.values():
            if entry["state"] == "Closed":
                entry.update({k: kind() for k, kind in JUDGEMENT.items()})
        for event in await self.store.list_events(session.name, kind="scores"):
            entry = session.round_log.get(event.round or 0)
            try:
                judged = json.loads(event.message)
            except ValueError:
                judged = None
            if entry is None or not isinstance(judged, dict):
                log.warning("unreadable scores event", extra={"session": session.name, "round": event.round})
                continue
            entry.update({k: judged[k] for k, kind in JUDGEMENT.items() if isinstance(judged.get(k), kind)})

    async def join(self, name: str, participant: str) -> dict[str, Any]:
        session = self._get(name)
        self._member(session, participant)
        machine = session.machine
        if machine.members[participant].phase == rounds.P_EVICTED:
            raise ApiError(403, "evicted", f"{participant} was evicted from session {name!r}")
        if machine.finished:
            raise ApiError(409, "finished", f"session {name!r} is {machine.phase}: {machine.message}")
        try:
            await asyncio.wait_for(session.configured.wait(), self.ack_timeout_seconds)
        except TimeoutError:
            raise ApiError(
                503, "aggregator_unavailable", f"session {name!r} is not configured at the aggregator yet, retry"
            ) from None
        now = self.clock()
        self.sessions.dispatch(session, machine.join(participant, now=now))
        session.activity[participant].last_heartbeat = now
        phase = machine.members[participant].phase
        write = self.store.update_participant(name, participant, phase=phase, joined_at=now, last_heartbeat=now)
        event = self.store.record_event(Event(name, "join", participant=participant, at=now))
        log.info("participant joined", extra={"session": name, "participant": participant})
        await self._durable(write, event)
        names = list(session.definition.weights)
        return {
            "session": name,
            "spec": session.definition.spec,
            "aggregator": self.aggregator,
            "index": names.index(participant),
            "participants": names,
        }

    async def heartbeat(self, name: str, participant: str) -> dict[str, Any]:
        session = self._get(name)
        self._member(session, participant)
        machine = session.machine
        member = machine.members[participant]
        if member.phase == rounds.P_EVICTED:
            raise ApiError(403, "evicted", f"{participant} was evicted from session {name!r}")
        now = self.clock()
        if member.phase in rounds.LIVE:
            machine.heartbeat(participant, now=now)
            activity = session.activity[participant]
            activity.last_heartbeat = now
            # NB: not awaited (a heartbeat needs no durability and must not fail while the store is down),
            # and written at most every HEARTBEAT_WRITE_SECONDS, so chatty participants cost the store little.
            if activity.heartbeat_written is None or now - activity.heartbeat_written >= HEARTBEAT_WRITE_SECONDS:
                activity.heartbeat_written = now
                self.store.update_participant(name, participant, phase=member.phase, last_heartbeat=now)
        return {"phase": member.phase, "round": session.round_number, "session_phase": machine.phase}

    async def leave(self, name: str, participant: str, result: dict[str, Any] | None) -> dict[str, Any]:
        session = self._get(name)
        self._member(session, participant)
        now = self.clock()
        phase = session.machine.phase_after_leave(participant)  # NB: commit, then act
        write = self.store.update_participant(name, participant, phase=phase, result=result)
        event = self.store.record_event(Event(name, "leave", participant=participant, data=result, at=now))
        await self._durable(write, event)
        self.sessions.dispatch(session, session.machine.leave(participant, now=now))
        if result is not None:
            session.activity[participant].result = result
        log.info("participant left", extra={"session": name, "participant": participant})
        return {}

    async def evict(self, name: str, participant: str, reason: str) -> dict[str, Any]:
        session = self._get(name)
        self._member(session, participant)
        now = self.clock()
        write = self.store.update_participant(name, participant, phase=rounds.P_EVICTED)
        event = self.store.record_event(Event(name, "evict", participant=participant, reason=reason, at=now))
        await self._durable(write, event)  # NB: commit, then act: revoke only what the store remembers
        self.sessions.dispatch(session, session.machine.evict(participant, now=now))
        session.commands.put_nowait(Revoke(participant))
        log.warning("participant evicted: %s", reason, extra={"session": name, "participant": participant})
        return {}

    async def _evict_scored_out(self, session: Session, participant: str, round_: int) -> None:
        """Evict a participant the aggregator scored out (spec.eviction); the session goes on if the
        store is slow (the machine has evicted it already, the write stays queued)."""
        try:
            await self.evict(session.name, participant, "LowContributionScore")
        except ApiError as exc:
            ids = {"session": session.name, "participant": participant, "round": round_}
            log.warning("eviction not stored yet: %s", exc.message, extra=ids)

    def round_info(self, name: str) -> dict[str, Any]:
        session = self._get(name)
        current = session.machine.round
        state = "none"
        if current is not None:
            state = "closing" if current.closing else "open"
        elif session.machine.rounds_closed:
            state = "closed"
        return {"round": session.round_number, "state": state, "deadline": _iso(session.machine.deadline())}

    async def status(self, name: str) -> dict[str, Any]:
        session = self._get(name)
        machine = session.machine
        try:
            recorded: int | None = await self.store.contributions_recorded(name)
        except StoreUnavailable:
            recorded = None
        members = machine.members
        participant_status = {
            p: {
                "phase": members[p].phase,
                "last_heartbeat": _iso(a.last_heartbeat),
                "contributions": a.contributions,
                "last_latency_ms": a.last_latency_ms,
            }
            for p, a in session.activity.items()
        }
        live = machine.ready() if session.definition.mode == "learning" else machine.live()
        return {
            "name": name,
            "mode": session.definition.mode,
            "phase": machine.phase,
            "message": machine.message,
            "round": session.round_number,
            "rounds_total": machine.settings.rounds,
            "started_at": _iso(session.started_at),
            "completed_at": _iso(session.completed_at),
            "participants": {
                "joined": sum(m.phase != rounds.P_PENDING for m in members.values()),
                "ready": len(live),
                "total": len(members),
            },
            "participant_status": participant_status,
            "rounds": [_with_iso_times(session.round_log[r]) for r in sorted(session.round_log)],
            "epsilon": latest_epsilon(session.round_log),
            "evaluation": latest_evaluation(session.round_log),
            "syncs": session.syncs,
            "avg_sync_latency_ms": session.sync_latency_ms_total / session.syncs if session.syncs else None,
            "contributions_recorded": recorded,
            "results": {p: a.result for p, a in session.activity.items() if a.result is not None},
            "store": self.store.health(),
        }

    async def list_status(self) -> list[dict[str, Any]]:
        return [await self.status(name) for name in self.sessions]
