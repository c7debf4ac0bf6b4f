"""What the aggregator tells the coordinator unasked: ``ctl_event`` pushes and ``ctl_status`` replies.

Events (docs/protocol.md, control link) go through :data:`AggregatorEvents.handlers`, one method per
kind the coordinator acts on (a contribution, a KV sync, a hello, a rejection); every other kind,
and an event naming someone who is not a session member, is recorded as it came, except rejections:
those are counted, and stored only for members and only as a sample (:class:`fedattn.ratelimit.Sampler`).
A re-sent event counts once.
Numbers in events are untrusted and pass :mod:`fedattn.coordinator.checks` before they are stored.
Status replies tell which sessions the aggregator knows; one it forgot (it restarted) is configured
again.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from fedattn.coordinator import rounds
from fedattn.coordinator.checks import finite, int64
from fedattn.coordinator.driver import Configure
from fedattn.coordinator.metrics import Metrics
from fedattn.coordinator.session import SYNC_PARTICIPANT, Session, Sessions
from fedattn.ratelimit import Sampler
from fedattn.store import Contribution, Event, Store

log = logging.getLogger(__name__)

#: how many recent events are remembered to recognise a re-sent one
SEEN_EVENTS = 10_000
#: rejections of one member stored at once, then one per REJECTION_EVERY_SECONDS (the rest: metric only)
REJECTIONS_BURST = 20
REJECTION_EVERY_SECONDS = 6.0
#: event kinds whose handler needs ``participant`` to be a session member
FROM_MEMBERS = frozenset({"contribution", "hello"})


class Handler(Protocol):
    def __call__(self, session: Session, meta: dict[str, Any], *, participant: Any, round_: int, now: float) -> None:
        ...


class AggregatorEvents:
    def __init__(self, *, sessions: Sessions, store: Store, metrics: Metrics, clock: Callable[[], float]) -> None:
        self.sessions = sessions
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self._seen_order: deque[str] = deque(maxlen=SEEN_EVENTS)
        self._seen_keys: set[str] = set()
        self._rejections = Sampler(burst=REJECTIONS_BURST, every_seconds=REJECTION_EVERY_SECONDS)
        self.handlers: dict[str, Handler] = {
            "contribution": self._contribution,
            "sync": self._sync,
            "hello": self._hello,
            "rejected": self._rejected,
        }

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

    def on_event(self, meta: dict[str, Any]) -> None:
        """One ``ctl_event`` from the aggregator (see docs/protocol.md, control link)."""
        name, kind = str(meta.get("session", "")), str(meta.get("event", ""))
        if self._seen_before(meta):
            return
        session = self.sessions.get(name)
        if session is None:
            log.warning("ctl_event %s for unknown session", kind, extra={"session": name})
            return
        participant = meta.get("participant")
        handler = self.handlers.get(kind, self._record)
        if kind in FROM_MEMBERS and participant not in session.activity:
            handler = self._record
        handler(session, meta, participant=participant, round_=int(meta.get("round") or 0), now=self.clock())

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

    # -- one method per event kind ----------------------------------------------------------------

    def _contribution(self, session: Session, meta: dict[str, Any], *, participant: str, round_: int, now: float):
        machine = session.machine
        before = machine.members[participant].phase
        verdict, commands = machine.contribution(participant, round_, now=now)
        if (participant, round_) in session.recorded:
            # NB: sent again after an aggregator restart lost it: it counts for the round, but it is
            # the contribution already in the store.
            log.info("update sent again", extra={"session": session.name, "participant": participant, "round": round_})
            self.sessions.dispatch(session, commands)
            return
        session.recorded.add((participant, round_))
        after = machine.members[participant].phase
        if after != before:
            self.store.update_participant(session.name, participant, phase=after)
        if verdict != rounds.Verdict.ACCEPTED:
            # NB: the aggregator accepted it (it is in the aggregate), so it is recorded regardless.
            log.warning(
                "contribution the round logic did not expect (%s)",
                verdict,
                extra={"session": session.name, "participant": participant, "round": round_},
            )
        self.sessions.dispatch(session, commands)
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

    def _sync(self, session: Session, meta: dict[str, Any], *, participant: Any, round_: int, now: float) -> None:
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

    def _hello(self, session: Session, meta: dict[str, Any], *, participant: str, round_: int, now: float) -> None:
        was_ready = session.machine.members[participant].ready
        self.sessions.dispatch(session, session.machine.hello(participant, now=now))
        if not was_ready:  # NB: a member repeating hello while connected is no news for the store
            self.store.record_event(Event(session.name, "hello", participant=participant, round=round_, at=now))

    def _rejected(self, session: Session, meta: dict[str, Any], *, participant: Any, round_: int, now: float) -> None:
        """Counted always; recorded only for members, and only a sample (a flood of garbage from one
        sender must not fill the store, nor the write queue real rows wait in)."""
        self.metrics.contributions_rejected.labels(reason=str(meta.get("reason", "unknown"))).inc()
        if participant not in session.activity:
            return  # NB: an outsider's garbage is not this session's history (the metric has it)
        allowed, suppressed = self._rejections.allow((session.name, participant), now=now)
        if not allowed:
            return
        ids = {"session": session.name, "participant": participant, "round": round_}
        log.info("aggregator rejected a message: %s", meta.get("message"), extra=ids)
        sampled = {**meta, "suppressed_before": suppressed} if suppressed else meta
        self._record(session, sampled, participant=participant, round_=round_, now=now)

    def _record(self, session: Session, meta: dict[str, Any], *, participant: Any, round_: int, now: float) -> None:
        """Any other event: stored as it came (its kind, reason, message and remaining fields)."""
        data = {k: v for k, v in meta.items() if k not in ("session", "event", "participant", "round")}
        self.store.record_event(
            Event(
                session.name,
                str(meta.get("event", "")) or "unknown",
                participant=participant if isinstance(participant, str) else None,
                round=round_,
                reason=str(meta.get("reason", "")),
                message=str(meta.get("message", "")),
                data=data,
                at=now,
            )
        )
