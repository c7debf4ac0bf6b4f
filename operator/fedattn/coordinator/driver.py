"""The round driver: carries out each session's commands in order, at the aggregator and in the store.

One task per session reads its command queue (:meth:`Sessions.dispatch` fills it) and runs each
command through :data:`RoundDriver.handlers`, one method per command type: configure the session,
record its start, open and close rounds, finish, mark a participant failed, revoke one. Requests to
the aggregator go through the control link with the session's retry policy and circuit breaker; a
request that finally fails fails the session (``AggregatorUnavailable``) unless the command was an
ending or a revocation, which have nothing left to fail.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pybreaker
import tenacity

from fedattn.coordinator import rounds
from fedattn.coordinator.control import BudgetExhausted, ControlError, ControlLink, MissingUpdates, SessionUnknown
from fedattn.coordinator.metrics import Metrics
from fedattn.coordinator.session import Session, Sessions
from fedattn.coordinator.summary import RoundSummary, stop_reason
from fedattn.store import Event, Store

log = logging.getLogger(__name__)


class CircuitOpen(ControlError):
    """The session's circuit breaker to the aggregator is open: fail fast instead of waiting."""


@dataclass(frozen=True)
class Configure:
    """Driver-only command: (re)configure the session at the aggregator."""


@dataclass(frozen=True)
class Revoke:
    """Driver-only command: take an evicted participant's key off the aggregator's allowlist."""

    participant: str


#: refusals a retry cannot change: an open breaker, a spent budget, updates the aggregator lost
NOT_RETRIED = (CircuitOpen, BudgetExhausted, MissingUpdates, SessionUnknown)

#: commands whose failure at the aggregator leaves the session as it is (already ending, or a revocation)
FAILURE_KEEPS_SESSION = (rounds.Finish, rounds.Fail, Revoke)

#: evicts a participant the aggregator scored out: (session, participant, round) -> done
Evict = Callable[[Session, str, int], Awaitable[None]]


class RoundDriver:
    def __init__(
        self, *, sessions: Sessions, store: Store, metrics: Metrics, clock: Callable[[], float], evict: Evict
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.evict = evict
        #: set once the control link exists (it needs the event intake's callbacks first)
        self.link: ControlLink | None = None
        self.handlers: dict[type, Callable[[Session, Any], Awaitable[None]]] = {
            Configure: self._configure,
            rounds.Start: self._start,
            rounds.OpenRound: self._open_round,
            rounds.CloseRound: self._close_round,
            rounds.Finish: self._finish,
            rounds.Fail: self._finish,
            rounds.MarkFailed: self._mark_failed,
            Revoke: self._revoke,
        }

    async def run(self, session: Session) -> None:
        """The session's driver task: its commands one at a time, until cancelled."""
        while True:
            command = await session.commands.get()
            ids = {"session": session.name, "round": getattr(command, "round", None)}
            try:
                await self.handlers[type(command)](session, command)
            except ControlError as exc:
                log.error("aggregator did not carry out %s: %s", command, exc, extra=ids)
                if not isinstance(command, FAILURE_KEEPS_SESSION):
                    self.sessions.dispatch(session, session.machine.fail("AggregatorUnavailable", str(exc)))
            except Exception:
                log.exception("executing %s failed", command, extra=ids)
                self.sessions.dispatch(session, session.machine.fail("InternalError", f"executing {command} failed"))

    async def _control(self, session: Session, kind: str, *, round: int = 0, meta: dict[str, Any] | None = None):
        """:meth:`_request`, configuring the session first if the aggregator no longer knows it.

        NB: a restarted aggregator forgets sessions it has no checkpoint of; the re-configure that
        :mod:`fedattn.coordinator.events` queues would wait behind this very command, which would fail.
        """
        try:
            return await self._request(session, kind, round=round, meta=meta)
        except SessionUnknown:
            if kind == "ctl_configure":
                raise
            log.warning("the aggregator does not know the session; configuring it before %s", kind,
                        extra={"session": session.name, "round": round})
            await self._configure(session, Configure())
            return await self._request(session, kind, round=round, meta=meta)

    async def _request(self, session: Session, kind: str, *, round: int = 0, meta: dict[str, Any] | None = None):
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
                lambda e: isinstance(e, ControlError) and not isinstance(e, NOT_RETRIED)
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

    def _stop(self, session: Session, text: str) -> None:
        """The aggregator says no further round may run (e.g. the DP budget is spent): end cleanly."""
        reason, detail = stop_reason(text)
        log.info("session stops: %s", text, extra={"session": session.name})
        self.sessions.dispatch(session, session.machine.stop(reason, detail))

    # -- one method per command -------------------------------------------------------------------

    async def _configure(self, session: Session, _: Configure) -> None:
        definition, machine = session.definition, session.machine
        meta = {"mode": definition.mode, "spec": definition.spec, "participants": definition.weights}
        reply = await self._control(session, "ctl_configure", meta=meta)
        session.configured.set()
        # NB: after a coordinator restart this is how we learn who is connected already.
        for participant in reply.get("hello") or []:
            if participant in machine.members and not machine.members[participant].ready:
                self.sessions.dispatch(session, machine.hello(participant, now=self.clock()))

    async def _start(self, session: Session, _: rounds.Start) -> None:
        now = self.clock()
        session.started_at = now
        self.store.update_session(session.name, phase=rounds.RUNNING, message="", round=0, started_at=now)
        log.info("session running", extra={"session": session.name})

    async def _open_round(self, session: Session, command: rounds.OpenRound) -> None:
        name, r, members = session.name, command.round, command.participants
        session.round_log[r] = {"round": r, "state": "Open", "participants": len(members), "contributions": 0}
        self.store.open_round(name, r, participants=len(members), opened_at=self.clock())
        self.store.update_session(name, phase=session.machine.phase, message="", round=r)
        try:
            await self._control(session, "ctl_open_round", round=r, meta={"participants": list(members)})
        except BudgetExhausted as exc:
            session.round_log[r]["state"] = "Refused"
            self.store.close_round(name, r, state="Refused", closed_at=self.clock(), contributions=0)
            self._stop(session, str(exc))
            return
        log.info("round opened with %d participants", len(members), extra={"session": name, "round": r})

    async def _close_round(self, session: Session, command: rounds.CloseRound) -> None:
        name, r, machine = session.name, command.round, session.machine
        now = self.clock()
        current = machine.round
        counted = sorted(current.contributed) if current is not None and current.number == r else []
        try:
            reply = await self._control(session, "ctl_close_round", round=r, meta={"contributed": counted})
        except MissingUpdates as exc:
            # NB: the aggregator restarted after acknowledging these: the round stays open until they are
            # sent again (participants do on their next hello), or it times out with what it has.
            ids = {"session": name, "round": r}
            log.warning("round reopened for updates lost in an aggregator restart: %s", exc.participants, extra=ids)
            self.sessions.dispatch(session, machine.updates_lost(r, exc.participants, now=self.clock()))
            return
        summary = RoundSummary.from_reply(reply, round=r, members=machine.members)
        session.round_log[r] = {**session.round_log.get(r, {}), **summary.status()}
        self.store.close_round(
            name,
            r,
            state="Closed",
            closed_at=self.clock(),
            contributions=summary.contributions,
            weight_total=summary.weight_total,
            aggregation_seconds=summary.aggregation_seconds,
            accuracy=summary.accuracy,
            model_checksum=summary.model_checksum,
            epsilon=summary.epsilon,
            update_bytes=summary.update_bytes,
            evaluation=None if summary.evaluation is None else dict(summary.evaluation),
        )
        judged = summary.judgement()
        if any(judged.values()):
            self.store.record_event(Event(name, "scores", round=r, message=json.dumps(judged), at=now))
        self.metrics.rounds.inc()
        log.info("round closed: %s", summary.status(), extra={"session": name, "round": r})
        for participant in summary.evict:
            if machine.members[participant].phase != rounds.P_EVICTED:
                await self.evict(session, participant, r)
        # NB: after the last round the session completed; a spent budget is no news then.
        if summary.stop is not None and r < machine.settings.rounds:
            self._stop(session, summary.stop)
        else:
            self.sessions.dispatch(session, machine.round_closed(r, now=self.clock()))

    async def _finish(self, session: Session, command: rounds.Finish | rounds.Fail) -> None:
        name, machine, now = session.name, session.machine, self.clock()
        session.completed_at = now
        self.store.update_session(
            name, phase=machine.phase, message=machine.message, round=session.round_number, completed_at=now
        )
        log.info("session %s: %s", machine.phase, machine.message, extra={"session": name})
        await self._control(session, "ctl_finish", meta={"reason": command.reason})

    async def _mark_failed(self, session: Session, command: rounds.MarkFailed) -> None:
        name, p = session.name, command.participant
        self.store.update_participant(name, p, phase=rounds.P_FAILED)
        self.store.record_event(Event(name, "failed", participant=p, reason="HeartbeatTimeout", message=command.reason))
        log.warning("participant failed: %s", command.reason, extra={"session": name, "participant": p})

    async def _revoke(self, session: Session, command: Revoke) -> None:
        await self._control(session, "ctl_revoke", meta={"participant": command.participant})
