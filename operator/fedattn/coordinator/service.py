"""The coordinator's sessions: feeds the state machines, carries out their commands, records it all.

Each session has a :class:`~fedattn.coordinator.rounds.SessionMachine` (pure) and one driver task
that executes its commands in order through the control link (configure, open/close rounds,
finish) with the session's retry policy. State changes a caller is told about (create, join, leave,
evict) are committed to the store before the answer; heartbeats and aggregator events are queued
to the store (ordered, retried, never dropped silently, see :mod:`fedattn.store.writer`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pybreaker
import tenacity

from fedattn.coordinator import rounds
from fedattn.coordinator.control import BudgetExhausted, ControlError, ControlLink
from fedattn.coordinator.manifest import SessionDefinition, settings_for
from fedattn.coordinator.metrics import Metrics
from fedattn.resilience import Policy
from fedattn.store import Contribution, Event, Store, StoreUnavailable

log = logging.getLogger(__name__)

#: participant name used for attention-mode sync rows (a sync belongs to the whole session)
SYNC_PARTICIPANT = "*"
PHASES = (rounds.PENDING, rounds.RUNNING, rounds.SUCCEEDED, rounds.FAILED)
HEARTBEAT_WRITE_SECONDS = 5.0
#: close-reply fields about participants, stored as one ``scores`` event per round (JSON in ``message``)
JUDGEMENT = {"scores": dict, "reliability": dict, "evict": list}


class CircuitOpen(ControlError):
    """The session's circuit breaker to the aggregator is open: fail fast instead of waiting."""


class ApiError(Exception):
    """An answer other than success: HTTP ``status``, machine ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Configure:
    """Driver-only command: (re)configure the session at the aggregator."""


@dataclass(frozen=True)
class Revoke:
    participant: str


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


def finite(value: Any) -> float | None:
    """A finite number from a peer's message, else None (NaN would also make status invalid JSON)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def int64(value: Any) -> int | None:
    """An integer that fits the store's BIGINT columns, else None (a write must not fail over it)."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None


def per_member(value: Any, members: Iterable[str]) -> dict[str, float]:
    """``{participant: number}`` from a close reply, kept to session members with finite values."""
    if not isinstance(value, dict):
        return {}
    known = set(members)
    return {p: v for p, x in value.items() if p in known and (v := finite(x)) is not None}


def latest_epsilon(round_log: dict[int, dict[str, Any]]) -> float | None:
    """DP epsilon spent so far: the last round's that reported one (None without DP)."""
    spent = [round_log[r]["epsilon"] for r in sorted(round_log) if round_log[r].get("epsilon") is not None]
    return spent[-1] if spent else None


def stop_reason(text: str) -> tuple[str, str]:
    """``"Reason: detail"`` from the aggregator as (reason, detail); a bare text is its own detail."""
    reason, sep, detail = text.partition(":")
    if sep and reason and reason.isidentifier():
        return reason, detail.strip()
    return "Stopped", text


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Coordinator:
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
        self.link: ControlLink | None = None
        self.clock = clock
        self.ack_timeout_seconds = ack_timeout_seconds
        self.sessions: dict[str, Session] = {}
        self._seen_order: deque[str] = deque(maxlen=10_000)
        self._seen_keys: set[str] = set()

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
            self._dispatch(session, session.machine.tick(now=now))

    def on_status(self, status: dict[str, Any]) -> None:
        """Each ``ctl_status`` reply: configure again the sessions a restarted aggregator forgot."""
        known = status.get("sessions") or {}
        for session in self.sessions.values():
            # NB: a session whose first configure is still on its way is not "forgotten".
            if session.machine.finished or session.name in known or not session.configured.is_set():
                continue
            session.configured.clear()
            log.warning(
                "the aggregator does not know this session (restarted?); configuring it again",
                extra={"session": session.name},
            )
            session.commands.put_nowait(Configure())

    # -- helpers ----------------------------------------------------------------------------------

    def _get(self, name: str) -> Session:
        session = self.sessions.get(name)
        if session is None:
            raise ApiError(404, "not_found", f"no session named {name!r}")
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

    def _update_gauges(self) -> None:
        counts = dict.fromkeys(PHASES, 0)
        for s in self.sessions.values():
            counts[s.machine.phase] = counts.get(s.machine.phase, 0) + 1
        for phase, n in counts.items():
            self.metrics.sessions.labels(phase=phase).set(n)

    def _dispatch(self, session: Session, commands: list[Any]) -> None:
        for command in commands:
            session.commands.put_nowait(command)
        if commands:
            self._update_gauges()

    # -- API --------------------------------------------------------------------------------------

    async def create_session(self, definition: SessionDefinition) -> bool:
        """Create (True) or find the identical session (False); 409 when the name holds another."""
        existing = self.sessions.get(definition.name)
        if existing is not None:
            if existing.definition.fingerprint != definition.fingerprint:
                raise ApiError(409, "conflict", f"session {definition.name!r} exists with a different spec")
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
        self._adopt(session)
        log.info("session created", extra={"session": definition.name})
        await self._durable(*writes)
        return True

    def _adopt(self, session: Session) -> None:
        """Start driving a session: configure it at the aggregator, then carry out its commands."""
        self.sessions[session.name] = session
        session.breaker = session.policy.breaker(f"aggregator:{session.name}")
        session.commands.put_nowait(Configure())
        session.driver = asyncio.create_task(self._drive(session), name=f"session-{session.name}")
        self._update_gauges()

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
                    session.activity[c.participant].contributions += 1
                    session.activity[c.participant].last_latency_ms = c.latency_ms
            if machine.finished:
                self.sessions[row.name] = session
            else:
                self._adopt(session)
            log.info("session restored (%s)", row.phase, extra={"session": row.name})
        self._update_gauges()
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
        self._dispatch(session, machine.join(participant, now=now))
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
        return {"phase": member.phase, "round": self._round_number(session), "session_phase": machine.phase}

    async def leave(self, name: str, participant: str, result: dict[str, Any] | None) -> dict[str, Any]:
        session = self._get(name)
        self._member(session, participant)
        now = self.clock()
        self._dispatch(session, session.machine.leave(participant, now=now))
        if result is not None:
            session.activity[participant].result = result
        phase = session.machine.members[participant].phase
        write = self.store.update_participant(name, participant, phase=phase, result=result)
        event = self.store.record_event(Event(name, "leave", participant=participant, data=result, at=now))
        log.info("participant left", extra={"session": name, "participant": participant})
        await self._durable(write, event)
        return {}

    async def evict(self, name: str, participant: str, reason: str) -> dict[str, Any]:
        session = self._get(name)
        self._member(session, participant)
        now = self.clock()
        self._dispatch(session, session.machine.evict(participant, now=now))
        session.commands.put_nowait(Revoke(participant))
        write = self.store.update_participant(name, participant, phase=rounds.P_EVICTED)
        event = self.store.record_event(Event(name, "evict", participant=participant, reason=reason, at=now))
        log.warning("participant evicted: %s", reason, extra={"session": name, "participant": participant})
        await self._durable(write, event)
        return {}

    def round_info(self, name: str) -> dict[str, Any]:
        session = self._get(name)
        current = session.machine.round
        state = "none"
        if current is not None:
            state = "closing" if current.closing else "open"
        elif session.machine.rounds_closed:
            state = "closed"
        return {"round": self._round_number(session), "state": state, "deadline": _iso(session.machine.deadline())}

    @staticmethod
    def _round_number(session: Session) -> int:
        current = session.machine.round
        return current.number if current is not None else session.machine.rounds_closed

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
            "round": self._round_number(session),
            "rounds_total": machine.settings.rounds,
            "started_at": _iso(session.started_at),
            "completed_at": _iso(session.completed_at),
            "participants": {
                "joined": sum(m.phase != rounds.P_PENDING for m in members.values()),
                "ready": len(live),
                "total": len(members),
            },
            "participant_status": participant_status,
            "rounds": [session.round_log[r] for r in sorted(session.round_log)],
            "epsilon": latest_epsilon(session.round_log),
            "syncs": session.syncs,
            "avg_sync_latency_ms": session.sync_latency_ms_total / session.syncs if session.syncs else None,
            "contributions_recorded": recorded,
            "results": {p: a.result for p, a in session.activity.items() if a.result is not None},
            "store": self.store.health(),
        }

    async def list_status(self) -> list[dict[str, Any]]:
        return [await self.status(name) for name in self.sessions]

    # -- aggregator events ------------------------------------------------------------------------

    def on_event(self, meta: dict[str, Any]) -> None:
        """One ``ctl_event`` from the aggregator (see docs/protocol.md, control link)."""
        name, kind = str(meta.get("session", "")), str(meta.get("event", ""))
        if self._seen_before(meta):
            return
        session = self.sessions.get(name)
        if session is None:
            log.warning("ctl_event %s for unknown session", kind, extra={"session": name})
            return
        now = self.clock()
        participant = meta.get("participant")
        round_ = int(meta.get("round") or 0)
        ids = {"session": name, "participant": participant, "round": round_}
        if kind == "contribution" and participant in session.activity:
            self._on_contribution(session, meta, participant, round_, now)
        elif kind == "sync":
            self._on_sync(session, meta, round_, now)
        elif kind == "hello" and participant in session.activity:
            self._dispatch(session, session.machine.hello(participant, now=now))
            self.store.record_event(Event(name, "hello", participant=participant, round=round_, at=now))
        else:
            if kind == "rejected":
                self.metrics.contributions_rejected.labels(reason=str(meta.get("reason", "unknown"))).inc()
                log.info("aggregator rejected a message: %s", meta.get("message"), extra=ids)
            data = {k: v for k, v in meta.items() if k not in ("session", "event", "participant", "round")}
            self.store.record_event(
                Event(
                    name,
                    kind or "unknown",
                    participant=participant if isinstance(participant, str) else None,
                    round=round_,
                    reason=str(meta.get("reason", "")),
                    message=str(meta.get("message", "")),
                    data=data,
                    at=now,
                )
            )

    def _seen_before(self, meta: dict[str, Any]) -> bool:
        """True for a re-sent event. NB: keyed on the whole event, not ``event_id`` alone, because a
        restarted aggregator numbers its events from 1 again."""
        key = json.dumps(meta, sort_keys=True, default=str)
        if key in self._seen_keys:
            return True
        if len(self._seen_order) == self._seen_order.maxlen:
            self._seen_keys.discard(self._seen_order[0])
        self._seen_order.append(key)
        self._seen_keys.add(key)
        return False

    def _on_contribution(self, session: Session, meta: dict[str, Any], participant: str, round_: int, now: float):
        before = session.machine.members[participant].phase
        verdict, commands = session.machine.contribution(participant, round_, now=now)
        after = session.machine.members[participant].phase
        if after != before:
            self.store.update_participant(session.name, participant, phase=after)
        if verdict != rounds.Verdict.ACCEPTED:
            # NB: the aggregator accepted it (it is in the aggregate), so it is recorded regardless.
            log.warning(
                "contribution the round logic did not expect (%s)",
                verdict,
                extra={"session": session.name, "participant": participant, "round": round_},
            )
        self._dispatch(session, commands)
        activity = session.activity[participant]
        activity.contributions += 1
        activity.last_latency_ms = finite(meta.get("latency_ms"))
        self.metrics.contributions_recorded.inc()
        self.store.record_contribution(
            Contribution(
                session.name,
                participant,
                round_,
                bytes=int64(meta.get("bytes")) or 0,
                latency_ms=finite(meta.get("latency_ms")),
                weight=finite(meta.get("weight")),
                checksum=int64(meta.get("checksum")),
                recorded_at=now,
            )
        )

    def _on_sync(self, session: Session, meta: dict[str, Any], round_: int, now: float) -> None:
        layer = int(meta.get("layer", -1))
        latency = finite(meta.get("latency_ms")) or 0.0
        session.syncs += 1
        session.sync_latency_ms_total += latency
        self.metrics.sync_latency_seconds.observe(latency / 1000)
        self.metrics.contributions_recorded.inc()
        self.store.record_contribution(
            Contribution(
                session.name,
                SYNC_PARTICIPANT,
                round_,
                layer_start=layer,
                layer_end=layer,
                bytes=int64(meta.get("bytes")) or 0,
                latency_ms=latency,
                recorded_at=now,
            )
        )

    # -- the driver: carries out a session's commands in order --------------------------------------

    async def _control(self, session: Session, kind: str, *, round: int = 0, meta: dict[str, Any] | None = None):
        """One control request with the session's timeout, retries, backoff and circuit breaker.

        Raises ControlError when it finally fails; an open breaker fails at once (CircuitOpen), so a
        dead aggregator costs one timeout per ``openSeconds``, not one per retry.
        """
        if self.link is None:
            raise ControlError("no control link to the aggregator")
        link, policy, breaker = self.link, session.policy, session.breaker
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.retries + 1),
            wait=tenacity.wait_exponential(multiplier=policy.backoff_seconds, max=60),
            retry=tenacity.retry_if_exception(
                lambda e: isinstance(e, ControlError) and not isinstance(e, CircuitOpen | BudgetExhausted)
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                try:
                    with breaker.calling():
                        return await link.request(
                            kind, session=session.name, round=round, meta=meta, timeout_seconds=policy.timeout_seconds
                        )
                except pybreaker.CircuitBreakerError as exc:
                    raise CircuitOpen(f"{kind}: circuit breaker to the aggregator is open ({exc})") from None
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _drive(self, session: Session) -> None:
        while True:
            command = await session.commands.get()
            ids = {"session": session.name, "round": getattr(command, "round", None)}
            try:
                await self._execute(session, command)
            except ControlError as exc:
                log.error("aggregator did not carry out %s: %s", command, exc, extra=ids)
                if not isinstance(command, rounds.Finish | rounds.Fail | Revoke):
                    self._dispatch(session, session.machine.fail("AggregatorUnavailable", str(exc)))
            except Exception:
                log.exception("executing %s failed", command, extra=ids)
                self._dispatch(session, session.machine.fail("InternalError", f"executing {command} failed"))

    async def _evict_low_score(self, session: Session, participant: str, round_: int) -> None:
        """Evict a participant the aggregator scored out (spec.eviction); the session goes on if the
        store is slow (the machine has evicted it already, the write stays queued)."""
        try:
            await self.evict(session.name, participant, "LowContributionScore")
        except ApiError as exc:
            ids = {"session": session.name, "participant": participant, "round": round_}
            log.warning("eviction not stored yet: %s", exc.message, extra=ids)

    def _stop(self, session: Session, text: str) -> None:
        """The aggregator says no further round may run (e.g. the DP budget is spent): end cleanly."""
        reason, detail = stop_reason(text)
        log.info("session stops: %s", text, extra={"session": session.name})
        self._dispatch(session, session.machine.stop(reason, detail))

    async def _execute(self, session: Session, command: Any) -> None:
        name, now, spec = session.name, self.clock(), session.definition.spec
        machine = session.machine
        match command:
            case Configure():
                meta = {"mode": session.definition.mode, "spec": spec, "participants": session.definition.weights}
                reply = await self._control(session, "ctl_configure", meta=meta)
                session.configured.set()
                # NB: after a coordinator restart this is how we learn who is connected already.
                for participant in reply.get("hello") or []:
                    if participant in machine.members and not machine.members[participant].ready:
                        self._dispatch(session, machine.hello(participant, now=self.clock()))
            case rounds.Start():
                session.started_at = now
                self.store.update_session(name, phase=rounds.RUNNING, message="", round=0, started_at=now)
                log.info("session running", extra={"session": name})
            case rounds.OpenRound(round=r, participants=members):
                session.round_log[r] = {"round": r, "state": "Open", "participants": len(members), "contributions": 0}
                self.store.open_round(name, r, participants=len(members), opened_at=now)
                self.store.update_session(name, phase=machine.phase, message="", round=r)
                try:
                    await self._control(session, "ctl_open_round", round=r, meta={"participants": list(members)})
                except BudgetExhausted as exc:
                    session.round_log[r]["state"] = "Refused"
                    self.store.close_round(name, r, state="Refused", closed_at=self.clock(), contributions=0)
                    self._stop(session, str(exc))
                    return
                log.info("round opened with %d participants", len(members), extra={"session": name, "round": r})
            case rounds.CloseRound(round=r):
                reply = await self._control(session, "ctl_close_round", round=r)
                summary = {
                    "round": r,
                    "state": "Closed",
                    "contributions": int64(reply.get("contributions")) or 0,
                    "accuracy": finite(reply.get("accuracy")),
                    "weight_total": finite(reply.get("weight_total")),
                    "aggregation_seconds": finite(reply.get("aggregation_seconds")),
                    "epsilon": finite(reply.get("epsilon")),
                    "update_bytes": int64(reply.get("update_bytes")),
                    "scores": per_member(reply.get("scores"), machine.members),
                    "reliability": per_member(reply.get("reliability"), machine.members),
                }
                evict = [p for p in reply.get("evict") or [] if isinstance(p, str) and p in machine.members]
                session.round_log[r] = {**session.round_log.get(r, {}), **summary, "evict": evict}
                self.store.close_round(
                    name,
                    r,
                    state="Closed",
                    closed_at=self.clock(),
                    contributions=summary["contributions"],
                    weight_total=summary["weight_total"],
                    aggregation_seconds=summary["aggregation_seconds"],
                    accuracy=summary["accuracy"],
                    model_checksum=int64(reply.get("model_checksum")),
                    epsilon=summary["epsilon"],
                    update_bytes=summary["update_bytes"],
                )
                judged = {k: session.round_log[r][k] for k in JUDGEMENT}
                if any(judged.values()):
                    self.store.record_event(Event(name, "scores", round=r, message=json.dumps(judged), at=now))
                self.metrics.rounds.inc()
                log.info("round closed: %s", summary, extra={"session": name, "round": r})
                for participant in evict:
                    if machine.members[participant].phase != rounds.P_EVICTED:
                        await self._evict_low_score(session, participant, r)
                stop = reply.get("stop")
                # NB: after the last round the session completed; a spent budget is no news then.
                if isinstance(stop, str) and stop and r < machine.settings.rounds:
                    self._stop(session, stop)
                else:
                    self._dispatch(session, machine.round_closed(r, now=self.clock()))
            case rounds.Finish(reason=reason) | rounds.Fail(reason=reason):
                session.completed_at = now
                self.store.update_session(
                    name,
                    phase=machine.phase,
                    message=machine.message,
                    round=self._round_number(session),
                    completed_at=now,
                )
                log.info("session %s: %s", machine.phase, machine.message, extra={"session": name})
                await self._control(session, "ctl_finish", meta={"reason": reason})
            case rounds.MarkFailed(participant=p, reason=reason):
                self.store.update_participant(name, p, phase=rounds.P_FAILED)
                self.store.record_event(Event(name, "failed", participant=p, reason="HeartbeatTimeout", message=reason))
                log.warning("participant failed: %s", reason, extra={"session": name, "participant": p})
            case Revoke(participant=p):
                await self._control(session, "ctl_revoke", meta={"participant": p})
