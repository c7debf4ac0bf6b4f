"""The aggregator's ZMQ ROUTER: authenticates peers, validates every message, drives the sessions.

One thread owns the socket (ZMQ sockets are not thread-safe) and runs :meth:`Aggregator.serve`:
poll, handle each message in arrival order, and between messages do the timed work (allowlist
rescan, KV barrier timeouts, resending queued events), every step under the same guard. Every
rejection is an ``error`` reply with ``{code, message}`` and a count in
``fedattn_aggregator_rejected_total``; a sample per sender becomes a log line and, for members of
the session, a ``rejected`` event. Nothing one peer sends can stop the loop or flood logs and store.

This module is the transport: socket, authentication, decoding, replies, events and the control
link's dispatch table. What a message means is its session mode's conversation
(:mod:`fedattn.aggregator.learning_protocol`, :mod:`fedattn.aggregator.attention_protocol`), chosen
by the session's ``mode``; they talk back through :class:`fedattn.aggregator.conversation.Link`.

Size limits, in two layers: the socket's ``maxmsgsize`` (``max_message_bytes``, per frame) makes
libzmq drop a larger frame *and disconnect its sender* before we ever see it -- no reply is possible
then, the peer sees its connection reset and must reconnect; below that, a message whose declared
payload exceeds its session's limit (one model for learning) gets an ``oversized`` error reply.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from fedattn import pki, wire
from fedattn.aggregator.allowlist import Allowlist, NamingAuthenticator, start_authenticator
from fedattn.aggregator.attention_protocol import AttentionProtocol
from fedattn.aggregator.conversation import DEFERRED, Conversation, Refusal, UnknownSession
from fedattn.aggregator.early_hellos import EarlyHellos
from fedattn.aggregator.events import EventQueue
from fedattn.aggregator.learning_protocol import Hooks, LearningProtocol
from fedattn.aggregator.learning_session import LearningSession
from fedattn.aggregator.metrics import Metrics
from fedattn.aggregator.probes import serve_probes
from fedattn.aggregator.sessions import Session
from fedattn.api.spec import SessionSpec
from fedattn.ratelimit import Sampler

log = logging.getLogger("fedattn.aggregator")

#: Identity (Curve key name) of the coordinator's control link; only it may send ``ctl_*``.
CONTROL_IDENTITY = pki.CONTROL_CLIENT
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
IO_THREADS = 2
#: rejections of one sender in one session logged and reported at once, then one per period
REJECTIONS_BURST = 20
REJECTION_EVERY_SECONDS = 6.0

__all__ = ["CONTROL_IDENTITY", "DEFAULT_MAX_MESSAGE_BYTES", "Aggregator", "Hooks"]

#: ``handler(message) -> reply meta`` on the control link
ControlHandler = Callable[[wire.Message], "dict[str, Any] | None"]


class Aggregator:
    """A ROUTER bound to ``bind`` with CurveZMQ server keys and a ZAP allowlist."""

    def __init__(
        self,
        *,
        bind: str,
        server_public: bytes,
        server_secret: bytes,
        allow_dir: Path | None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        metrics_host: str | None = None,
        metrics_port: int | None = None,
        hooks: Hooks | None = None,
        tick_seconds: float = 0.1,
        rescan_seconds: float = 1.0,
        checkpoint_dir: Path | None = None,
        output_dir: Path | None = None,
        model_dir: Path | None = None,
    ) -> None:
        self.bind = bind
        self.max_message_bytes = max_message_bytes
        self.hooks = hooks or Hooks()
        self.metrics = Metrics()
        self.allowlist = Allowlist(allow_dir)
        self.sessions: dict[str, Session] = {}
        self.events = EventQueue(on_drop=self.metrics.events_dropped.inc)
        self._tick_seconds = tick_seconds
        self._rescan_seconds = rescan_seconds
        self._seq = itertools.count(1)
        self._control_route: bytes | None = None
        self._early_hellos = EarlyHellos()  # authenticated hellos that came before ctl_configure
        # NB: a flood of garbage is counted in full but logged and reported as a sample per sender
        self._rejections = Sampler(burst=REJECTIONS_BURST, every_seconds=REJECTION_EVERY_SECONDS)
        self._pending_close: dict[str, tuple[bytes, wire.Message]] = {}  # session -> deferred ctl_close_round
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # NB: CurveZMQ encrypts in the I/O threads; one thread caps a round at ~0.3 GB/s here, two at ~0.5.
        self._ctx = zmq.Context(io_threads=IO_THREADS)
        self._auth: NamingAuthenticator = start_authenticator(self._ctx, self.allowlist)
        sock = self._ctx.socket(zmq.ROUTER)
        sock.curve_server = True
        sock.curve_publickey = server_public.strip()
        sock.curve_secretkey = server_secret.strip()
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # NB: unroutable sends raise instead of vanishing
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)  # notice dead peers (and their routes) within seconds
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
        sock.bind(bind)
        self.socket = sock
        self.endpoint: str = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.learning = LearningProtocol(
            self, hooks=self.hooks, checkpoint_dir=checkpoint_dir, output_dir=output_dir, model_dir=model_dir
        )
        self.attention = AttentionProtocol(self, max_message_bytes=max_message_bytes)
        #: session mode -> its conversation
        self.conversations: dict[str, Conversation] = {c.mode: c for c in (self.learning, self.attention)}
        #: control request kind -> handler (wire.CONTROL_KINDS, all of them)
        self._control: dict[str, ControlHandler] = {
            "ctl_configure": self._ctl_configure,
            "ctl_open_round": lambda msg: self.learning.ctl_open_round(self._learning_session(msg), msg),
            "ctl_close_round": lambda msg: self.learning.ctl_close_round(self._learning_session(msg), msg),
            "ctl_finish": self._ctl_finish,
            "ctl_allow": self._ctl_allow,
            "ctl_revoke": self._ctl_revoke,
            "ctl_status": self._ctl_status,
        }
        self.sessions.update(self.learning.restore_checkpointed())
        self.probes = None
        if metrics_port is not None:
            self.probes = serve_probes(
                host=metrics_host or "127.0.0.1",
                port=metrics_port,
                registry=self.metrics.registry,
                ready=self.ready,
            )
        log.info("aggregator listening on %s", self.endpoint)

    # --- life cycle -------------------------------------------------------------------------------

    def ready(self) -> bool:
        return not self._stop.is_set() and self._thread is not None and self._thread.is_alive()

    @property
    def metrics_port(self) -> int | None:
        return self.probes.server_address[1] if self.probes else None

    def start(self) -> threading.Thread:
        """Serve in a background thread (tests, local runner); :meth:`close` stops it."""
        self._thread = threading.Thread(target=self.serve, name="aggregator", daemon=True)
        self._thread.start()
        return self._thread

    def serve(self) -> None:
        """The socket loop; returns after :meth:`close` (or ``stop()``) is called."""
        if self._thread is None:
            self._thread = threading.current_thread()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        next_rescan = time.monotonic() + self._rescan_seconds
        try:
            while not self._stop.is_set():
                if poller.poll(int(self._tick_seconds * 1000)):
                    for _ in range(64):  # NB: bounded burst, so timed work still runs under load
                        try:
                            frames = self.socket.recv_multipart(flags=zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._on_frames_safely(frames)
                    for state in list(self.sessions.values()):
                        self._safely("after a burst", self.conversations[state.mode].after_burst, state)
                now = time.monotonic()
                if now >= next_rescan:
                    self._safely("rescanning the allowlist", self.allowlist.rescan)
                    next_rescan = now + self._rescan_seconds
                for state in list(self.sessions.values()):
                    self._safely("timed work", self.conversations[state.mode].tick, state, now)
                self._safely("sending events", self._flush_events)
        finally:
            self.socket.close(linger=0)

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Stop the loop, the authenticator and the probe server; safe to call twice."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._thread is None:
            self.socket.close(linger=0)
        self._auth.stop()
        if self.probes is not None:
            self.probes.shutdown()
            self.probes.server_close()
            self.probes = None
        self._ctx.term()

    # --- sending (the conversation.Link the protocols talk through) -------------------------------

    def next_seq(self) -> int:
        return next(self._seq)

    def send(self, route: bytes, frames: list[Any]) -> bool:
        """Send one message to a routing id; False when the peer is gone or its queue is full."""
        try:
            self.socket.send_multipart([route, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            return False
        self.metrics.bytes_sent.inc(sum(memoryview(f).nbytes for f in frames))
        return True

    def reply(self, route: bytes, *, kind: str, session: str, participant: str, **fields: Any) -> bool:
        frames = wire.encode(
            kind=kind, session=session, participant=participant, seq=next(self._seq), **fields
        )
        return self.send(route, frames)

    def reject(
        self,
        route: bytes,
        error: wire.WireError,
        *,
        session: str,
        participant: str,
        round: int = 0,
        member: bool = True,
    ) -> None:
        """An ``error`` reply, always; a count, always; a log line and a ``rejected`` event for a sample
        of each sender's rejections, the event only when the sender is a ``member`` of ``session``
        (an outsider's garbage is not that session's history)."""
        self.metrics.rejected.labels(reason=error.code).inc()
        self.send(
            route,
            wire.error_reply(
                session=session, participant=participant, error=error, round=round, seq=next(self._seq)
            ),
        )
        attributed = session if member else "-"
        allowed, suppressed = self._rejections.allow((attributed, participant), now=time.monotonic())
        if not allowed:
            return
        more = f" ({suppressed} more from this sender suppressed)" if suppressed else ""
        log.warning(
            "rejected: %s%s",
            error.detail,
            more,
            extra={"session": attributed, "participant": participant, "round": round, "reason": error.code},
        )
        if member and participant != CONTROL_IDENTITY:
            self.event(
                session,
                "rejected",
                participant=participant,
                round=round,
                reason=error.code,
                message=error.detail,
                **({"suppressed_before": suppressed} if suppressed else {}),
            )

    def event(self, session: str, event: str, **fields: Any) -> None:
        self.events.push({"session": session, "event": event, **fields})
        self.metrics.events_queued.set(len(self.events))

    def answer_deferred(self, session: str) -> None:
        pending = self._pending_close.pop(session, None)
        if pending is not None:
            self._on_control(*pending)

    def _flush_events(self) -> None:
        if self._control_route is None or not len(self.events):
            return
        route = self._control_route

        def send(event: dict[str, Any]) -> bool:
            return self.reply(
                route, kind="ctl_event", session=event["session"], participant=CONTROL_IDENTITY, meta=event
            )

        self.events.flush(send, now=time.monotonic())
        self.metrics.events_queued.set(len(self.events))

    # --- receiving --------------------------------------------------------------------------------

    def _on_frames_safely(self, frames: list[zmq.Frame]) -> None:
        self._safely("handling a message", self._on_frames, frames)

    def _safely(self, what: str, work: Callable[..., None], *args: Any) -> None:
        """Run one step of the loop; a bug one peer triggers (a message, a timer it armed) is logged and
        counted, never allowed to take the data plane down for everyone."""
        try:
            work(*args)
        except Exception:
            log.exception("internal error while %s", what)
            self.metrics.rejected.labels(reason="internal").inc()

    def _on_frames(self, frames: list[zmq.Frame]) -> None:
        self.metrics.bytes_received.inc(sum(len(f) for f in frames))
        route = frames[0].bytes
        body = frames[1:]
        if not body:
            return
        user = body[0].get("User-Id") or ""
        try:
            header = wire.decode_header(body[0])
        except wire.WireError as exc:
            self.reject(route, exc, session="-", participant=user or "-", member=False)
            return
        session, participant, kind = header["session"], header["participant"], header["kind"]
        # NB: rejections name the authenticated sender, never a participant the header merely claims
        ctx = {"session": session, "participant": user or "-", "round": header["round"], "member": False}
        try:
            if not user or not self.allowlist.is_allowed(user):
                raise wire.WireError("unauthenticated", "this connection's Curve key is no longer allowed")
            if participant != user:
                raise wire.WireError(
                    "identity_mismatch", f"header says {participant!r} but the Curve key is {user!r}"
                )
            if user == CONTROL_IDENTITY:
                if kind not in wire.CONTROL_KINDS:
                    raise wire.WireError("unexpected_kind", f"{kind} is not a control request")
                self._control_route = route
                msg = wire.decode(body, max_bytes=self.max_message_bytes)
                self.events.ack(msg.meta.get("ack_events"))  # NB: any request may carry it (pings do)
                self._on_control(route, msg)
                return
            if kind not in wire.PARTICIPANT_KINDS:
                raise wire.WireError(
                    "unexpected_kind", f"participants may send {sorted(wire.PARTICIPANT_KINDS)}, not {kind}"
                )
            state = self.sessions.get(session)
            if state is None:
                if kind == "hello":
                    self._early_hellos.remember(
                        session=session, participant=participant, route=route, now=time.monotonic()
                    )
                raise wire.WireError("unknown_session", f"session {session!r} is not configured here")
            if participant not in state.weights:
                raise wire.WireError("not_in_session", f"{participant} is not a participant of {session}")
            ctx["member"] = True
            msg = wire.decode(body, max_bytes=state.max_payload_bytes)
            state.check_seq(participant, msg.seq)
            self._on_participant(route, state, msg, checksums=[a["xxh3"] for a in header["arrays"]])
        except wire.WireError as exc:
            self.reject(route, exc, **ctx)

    def _on_participant(
        self, route: bytes, state: Session, msg: wire.Message, *, checksums: list[int]
    ) -> None:
        if msg.kind == "bye":
            self._leave(state, msg.participant)
            self.reply(
                route,
                kind="ack",
                session=state.name,
                participant=msg.participant,
                round=msg.round,
                meta={"seq": msg.seq},
            )
            return
        handler = self.conversations[state.mode].handlers.get(msg.kind)
        if handler is None:
            raise self._not_for(state, msg)
        handler(route, state, msg, checksums)

    def _not_for(self, state: Session, msg: wire.Message) -> wire.WireError:
        """The rejection of a participant kind the session's mode does not take."""
        if msg.kind.startswith("secagg_"):  # NB: the answer a learning session without secure rounds gives
            return wire.WireError("stale_round", f"no secure aggregation round {msg.round} is open")
        owner = next((c.mode for c in self.conversations.values() if msg.kind in c.handlers), "other")
        return wire.WireError("unexpected_kind", f"{msg.kind} is for {owner} sessions")

    # --- control link -----------------------------------------------------------------------------

    def _on_control(self, route: bytes, msg: wire.Message) -> None:
        try:
            meta = self._control[msg.kind](msg) or {}
            if meta is DEFERRED:
                self._pending_close[msg.session] = (route, msg)
                return
            reply = {"ok": True, **meta}
        except Refusal as exc:
            log.warning("control request refused: %s", exc, extra={"session": msg.session, "round": msg.round})
            reply = {"ok": False, "error": str(exc), **exc.detail}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("control request failed: %s", exc, extra={"session": msg.session, "round": msg.round})
            reply = {"ok": False, "error": str(exc)}
        self.reply(
            route,
            kind="ctl_reply",
            session=msg.session,
            participant=CONTROL_IDENTITY,
            round=msg.round,
            meta=reply,
        )

    def _ctl_configure(self, msg: wire.Message) -> dict[str, Any]:
        meta = msg.meta
        mode, raw_spec = meta.get("mode"), meta.get("spec") or {}
        members = meta.get("participants")
        if not isinstance(members, dict) or not members:
            raise ValueError("participants must be a non-empty map of name -> weight")
        weights = {str(n): float(w) for n, w in members.items()}
        if not all(0 < w < float("inf") for w in weights.values()):
            raise ValueError("participant weights must be finite numbers > 0")
        existing = self.sessions.get(msg.session)
        if existing is not None:
            if existing.mode != mode or existing.weights != weights:
                raise ValueError(f"session {msg.session} is already configured differently")
            return existing.describe()
        conversation = self.conversations.get(mode) if isinstance(mode, str) else None
        if conversation is None:
            raise ValueError(f"mode must be 'learning' or 'attention', got {mode!r}")
        if not isinstance(raw_spec, Mapping):
            raise ValueError(f"spec must be a map, got {type(raw_spec).__name__}")
        # NB: the one place the aggregator reads a spec: parsed and defaulted here, typed from now on
        spec = SessionSpec.from_manifest({**raw_spec, "mode": mode})
        state = conversation.configure(msg=msg, spec=spec, weights=weights)
        self.sessions[msg.session] = state
        for name in weights:
            route = self._early_hellos.take(session=msg.session, participant=name, now=time.monotonic())
            if route is not None:
                state.routes[name] = route
                self.event(msg.session, "hello", participant=name, round=0)
        log.info("session configured", extra={"session": msg.session})
        return state.describe()

    def _learning_session(self, msg: wire.Message) -> LearningSession:
        state = self.sessions.get(msg.session)
        if not isinstance(state, LearningSession):
            raise UnknownSession(f"no LearningSession named {msg.session!r}")
        return state

    def _ctl_finish(self, msg: wire.Message) -> dict[str, Any]:
        state = self.sessions.get(msg.session)
        if state is None:
            raise UnknownSession(f"no session named {msg.session!r}")
        reason = str(msg.meta.get("reason", "finished"))
        arrays = self.conversations[state.mode].final_arrays(state)
        told = []
        for name, route in state.routes.items():
            frames = wire.encode(
                kind="done",
                session=state.name,
                participant=name,
                round=msg.round,
                seq=next(self._seq),
                meta={"reason": reason},
                arrays=arrays,
            )
            if self.send(route, frames):
                told.append(name)
        return {"told": sorted(told)}

    def _ctl_allow(self, msg: wire.Message) -> None:
        key = msg.meta.get("public_key")
        name = msg.meta.get("participant")
        if not isinstance(name, str) or not isinstance(key, str | bytes):
            raise ValueError("ctl_allow needs participant and public_key (Z85)")
        self.allowlist.allow(name, key.encode() if isinstance(key, str) else key)

    def _ctl_revoke(self, msg: wire.Message) -> None:
        name = msg.meta.get("participant")
        if not isinstance(name, str):
            raise ValueError("ctl_revoke needs participant")
        self.allowlist.revoke(name)
        for state in self.sessions.values():
            if name in state.weights:
                self._leave(state, name)

    def _leave(self, state: Session, name: str) -> None:
        """``name`` is gone from ``state`` (bye, revoked): no route, and nothing waits for it any more."""
        state.routes.pop(name, None)
        self.conversations[state.mode].leave(state, name)

    def _ctl_status(self, msg: wire.Message) -> dict[str, Any]:
        return {"sessions": {name: s.describe() for name, s in self.sessions.items()}}
