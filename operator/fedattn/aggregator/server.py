"""The aggregator's ZMQ ROUTER: authenticates peers, validates every message, drives the sessions.

One thread owns the socket (ZMQ sockets are not thread-safe) and runs :meth:`Aggregator.serve`:
poll, handle each message in arrival order, and between messages do the timed work (allowlist
rescan, KV barrier timeouts, resending queued events). Every rejection is an ``error`` reply with
``{code, message}``, a ``rejected`` event and a count in ``fedattn_aggregator_rejected_total``;
nothing one peer sends can stop the loop.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from fedattn import pki, wire
from fedattn.aggregator import checkpoint
from fedattn.aggregator.allowlist import Allowlist, NamingAuthenticator, start_authenticator
from fedattn.aggregator.events import EventQueue
from fedattn.aggregator.metrics import Metrics
from fedattn.aggregator.probes import serve_probes
from fedattn.aggregator.sessions import AttentionSession, Evaluate, LearningSession, Release, Session
from fedattn.attention.exchange import rows_up_to

log = logging.getLogger("fedattn.aggregator")

#: Identity (Curve key name) of the coordinator's control link; only it may send ``ctl_*``.
CONTROL_IDENTITY = pki.CONTROL_CLIENT
#: a control handler's answer meaning "the reply is sent later" (a secure round still being unmasked)
DEFERRED: dict[str, Any] = {"deferred": True}
DEFAULT_MAX_MESSAGE_BYTES = 512 * 1024 * 1024
IO_THREADS = 2
MAX_EARLY_HELLOS = 10_000


@dataclass
class Hooks:
    """In-process extension points (the local runner or learning module supplies them).

    ``initial_params(session, spec)`` gives the initial model when ``ctl_configure`` carries none;
    ``evaluator(session, spec)`` gives a held-out ``evaluate(params) -> accuracy`` for close replies.
    """

    initial_params: Callable[[str, Mapping[str, Any]], np.ndarray | None] | None = None
    evaluator: Callable[[str, Mapping[str, Any]], Evaluate | None] | None = None


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
    ) -> None:
        self.bind = bind
        self.checkpoint_dir = checkpoint_dir
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
        # (session, participant) -> route of an authenticated hello that came before ctl_configure
        self._early_hellos: dict[tuple[str, str], bytes] = {}
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
        self._restore_checkpointed_sessions()
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
                    self._fold_pending()
                now = time.monotonic()
                if now >= next_rescan:
                    self.allowlist.rescan()
                    next_rescan = now + self._rescan_seconds
                self._expire_barriers(now)
                self._flush_events()
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

    # --- sending ----------------------------------------------------------------------------------

    def _send(self, route: bytes, frames: list[Any]) -> bool:
        """Send one message to a routing id; False when the peer is gone or its queue is full."""
        try:
            self.socket.send_multipart([route, *frames], flags=zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                raise
            return False
        self.metrics.bytes_sent.inc(sum(memoryview(f).nbytes for f in frames))
        return True

    def _reply(self, route: bytes, *, kind: str, session: str, participant: str, **fields: Any) -> bool:
        frames = wire.encode(
            kind=kind, session=session, participant=participant, seq=next(self._seq), **fields
        )
        return self._send(route, frames)

    def _reject(
        self, route: bytes, error: wire.WireError, *, session: str, participant: str, round: int = 0
    ) -> None:
        self.metrics.rejected.labels(reason=error.code).inc()
        log.warning(
            "rejected: %s",
            error.detail,
            extra={"session": session, "participant": participant, "round": round, "reason": error.code},
        )
        self._send(
            route,
            wire.error_reply(
                session=session, participant=participant, error=error, round=round, seq=next(self._seq)
            ),
        )
        if participant != CONTROL_IDENTITY:
            self._event(
                session or "-",
                "rejected",
                participant=participant,
                round=round,
                reason=error.code,
                message=error.detail,
            )

    def _event(self, session: str, event: str, **fields: Any) -> None:
        self.events.push({"session": session, "event": event, **fields})
        self.metrics.events_queued.set(len(self.events))

    def _flush_events(self) -> None:
        if self._control_route is None or not len(self.events):
            return
        route = self._control_route

        def send(event: dict[str, Any]) -> bool:
            return self._reply(
                route, kind="ctl_event", session=event["session"], participant=CONTROL_IDENTITY, meta=event
            )

        self.events.flush(send)
        self.metrics.events_queued.set(len(self.events))

    # --- receiving --------------------------------------------------------------------------------

    def _on_frames_safely(self, frames: list[zmq.Frame]) -> None:
        try:
            self._on_frames(frames)
        except Exception:  # NB: a bug triggered by one message must not take the data plane down
            log.exception("internal error while handling a message")
            self.metrics.rejected.labels(reason="internal").inc()

    def _fold_pending(self) -> None:
        for state in self.sessions.values():
            if isinstance(state, LearningSession):
                try:
                    state.fold_pending()
                except wire.WireError as exc:
                    log.error(
                        "folding accepted updates failed: %s", exc.detail, extra={"session": state.name}
                    )

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
            self._reject(route, exc, session="-", participant=user or "-")
            return
        session, participant, kind = header["session"], header["participant"], header["kind"]
        ctx = {"session": session, "participant": participant, "round": header["round"]}
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
                self._on_control(route, msg)
                return
            if kind not in wire.PARTICIPANT_KINDS:
                raise wire.WireError(
                    "unexpected_kind", f"participants may send {sorted(wire.PARTICIPANT_KINDS)}, not {kind}"
                )
            state = self.sessions.get(session)
            if state is None:
                if kind == "hello" and len(self._early_hellos) < MAX_EARLY_HELLOS:
                    # NB: the sender is authenticated; remember it so the session, once configured,
                    # can send it the model without waiting for another hello (configure race).
                    self._early_hellos[(session, participant)] = route
                raise wire.WireError("unknown_session", f"session {session!r} is not configured here")
            if participant not in state.weights:
                raise wire.WireError("not_in_session", f"{participant} is not a participant of {session}")
            msg = wire.decode(body, max_bytes=state.max_payload_bytes)
            state.check_seq(participant, msg.seq)
            self._on_participant(route, state, msg, checksums=[a["xxh3"] for a in header["arrays"]])
        except wire.WireError as exc:
            self._reject(route, exc, **ctx)

    def _on_participant(
        self, route: bytes, state: Session, msg: wire.Message, *, checksums: list[int]
    ) -> None:
        name = msg.participant
        if msg.kind == "hello" and isinstance(state, AttentionSession):
            state.routes[name] = route
            self._event(state.name, "hello", participant=name, round=0)
            layout = state.announce(name, msg.meta.get("tokens"))
            if layout is not None:
                self._welcome_layout(state, layout)
        elif msg.kind == "hello":
            state.routes[name] = route
            current = state.round if isinstance(state, LearningSession) else 0
            self._reply(
                route,
                kind="welcome",
                session=state.name,
                participant=name,
                round=current,
                meta={"mode": state.mode},
            )
            self._event(state.name, "hello", participant=name, round=current)
            log.info("hello", extra={"session": state.name, "participant": name})
            if (
                isinstance(state, LearningSession)
                and state.open
                and name in state.members
                and name not in state.contributed
            ):
                self._send_model(state, name)  # NB: joined after the round opened: it still gets the model
        elif msg.kind == "bye":
            state.routes.pop(name, None)
            self._reply(
                route,
                kind="ack",
                session=state.name,
                participant=name,
                round=msg.round,
                meta={"seq": msg.seq},
            )
        elif msg.kind == "update":
            if not isinstance(state, LearningSession):
                raise wire.WireError("unexpected_kind", "update is for learning sessions")
            self._on_update(route, state, msg, checksum=checksums[0] if checksums else 0)
        elif msg.kind.startswith("secagg_"):
            if not isinstance(state, LearningSession) or state.secure is None or msg.round != state.round:
                raise wire.WireError("stale_round", f"no secure aggregation round {msg.round} is open")
            state.routes[name] = route
            self._on_secagg(state, msg)
        elif msg.kind == "kv":
            if not isinstance(state, AttentionSession):
                raise wire.WireError("unexpected_kind", "kv is for attention sessions")
            release = state.accept(participant=name, layer=msg.layer, arrays=msg.arrays)
            state.routes[name] = route
            self.metrics.contributions_accepted.labels(kind="kv").inc()
            if release is not None:
                self._release(state, release)

    def _on_update(self, route: bytes, state: LearningSession, msg: wire.Message, *, checksum: int) -> None:
        weight = state.accept(participant=msg.participant, round=msg.round, arrays=msg.arrays, meta=msg.meta)
        state.routes[msg.participant] = route  # NB: a reconnected DEALER has a new routing id
        self.metrics.contributions_accepted.labels(kind="update").inc()
        compressed = msg.meta.get("compression")
        codec = str(compressed.get("codec", "dense")) if isinstance(compressed, Mapping) else "dense"
        self.metrics.update_bytes.labels(codec=codec).inc(msg.nbytes)
        state.update_bytes += msg.nbytes
        self._reply(
            route,
            kind="ack",
            session=state.name,
            participant=msg.participant,
            round=msg.round,
            meta={"seq": msg.seq},
        )
        if state.unmask_due:
            state.unmask_due = False
            self._start_unmask(state)
        latency_ms = (time.monotonic() - state.opened_at) * 1000
        self._event(
            state.name,
            "contribution",
            participant=msg.participant,
            round=msg.round,
            bytes=msg.nbytes,
            weight=weight,
            checksum=checksum,  # NB: the header's XXH3 digest, already verified against the payload
            latency_ms=latency_ms,
        )
        log.info(
            "update folded (%d bytes)",
            msg.nbytes,
            extra={
                "session": state.name,
                "participant": msg.participant,
                "round": msg.round,
            },
        )

    # --- secure aggregation (fedattn.aggregator.secure) ------------------------------------------

    def _on_secagg(self, state: LearningSession, msg: wire.Message) -> None:
        secure, name = state.secure, msg.participant
        assert secure is not None
        if msg.kind == "secagg_keys":
            keys = secure.add_key(name, msg.meta.get("public_key"))
            if keys is not None:
                for member in sorted(keys):
                    self._to_member(state, member, "secagg_keys", {"keys": keys})
        elif msg.kind == "secagg_shares":
            for peer, bundle in secure.route_shares(name, msg.meta.get("sealed")).items():
                self._to_member(state, peer, "secagg_shares", {"from": {name: bundle}})
        elif secure.add_reveal(name, msg.meta.get("shares")):
            if secure.unmask_started is not None:
                self.metrics.secagg_unmask_seconds.observe(time.perf_counter() - secure.unmask_started)
            log.info("secure sum unmasked", extra={"session": state.name, "round": state.round})
            pending = self._pending_close.pop(state.name, None)
            if pending is not None:
                self._on_control(*pending)

    def _to_member(self, state: LearningSession, name: str, kind: str, meta: dict[str, Any]) -> None:
        route = state.routes.get(name)
        if route is not None:
            self._reply(route, kind=kind, session=state.name, participant=name, round=state.round, meta=meta)

    def _start_unmask(self, state: LearningSession) -> None:
        """Fix who survived and ask each survivor for its shares (raises ValueError below the threshold)."""
        assert state.secure is not None
        survivors, dropped = state.secure.start_unmask()
        if state.secure.unmask_started is None:
            state.secure.unmask_started = time.perf_counter()
        for name in survivors:
            self._to_member(state, name, "secagg_unmask", {"survivors": survivors, "dropped": dropped})
        log.info("unmasking with %d survivors, %d dropped", len(survivors), len(dropped),
                 extra={"session": state.name, "round": state.round})

    # --- attention --------------------------------------------------------------------------------

    def _release(self, state: AttentionSession, release: Release) -> None:
        names = sorted(release.receivers)
        sent = 0
        for name, max_position in release.receivers.items():
            k, v, positions = rows_up_to(release.global_kv, max_position)
            frames = wire.encode(
                kind="kv_global",
                session=state.name,
                participant=name,
                layer=release.layer,
                seq=next(self._seq),
                meta={"participants": names},
                arrays=[k, v, positions],
            )
            if self._send(state.routes[name], frames):
                sent += sum(memoryview(f).nbytes for f in frames[1:])
        self.metrics.sync_latency_seconds.observe(release.latency_seconds)
        latency_ms = release.latency_seconds * 1000
        self._event(
            state.name, "sync", layer=release.layer, bytes=release.bytes_in + sent, latency_ms=latency_ms
        )
        if release.missing:
            self._event(state.name, "sync_missed", layer=release.layer, participants=release.missing)
        log.info(
            "kv sync released after %.1f ms",
            latency_ms,
            extra={"session": state.name, "layer": release.layer},
        )

    def _welcome_layout(self, state: AttentionSession, layout: dict[str, int]) -> None:
        """Tell every participant in the fixed prompt layout how many private tokens precede its own."""
        order = list(layout)
        for name, before in layout.items():
            self._reply(
                state.routes[name],
                kind="welcome",
                session=state.name,
                participant=name,
                meta={"mode": state.mode, "tokens_before": before, "participants": order},
            )
        left_out = sorted(set(state.weights) - set(layout))
        if left_out:
            self._event(state.name, "sync_missed", layer=-1, participants=left_out)
        log.info("prompt layout fixed for %s", order, extra={"session": state.name})

    def _expire_barriers(self, now: float) -> None:
        for state in self.sessions.values():
            if not isinstance(state, AttentionSession):
                continue
            layout, waiting = state.expire_layout(now)
            if layout is not None:
                self._welcome_layout(state, layout)
            for name in waiting:
                error = wire.WireError(
                    "sync_timeout",
                    f"too few participants announced their prompt within {state.timeout_seconds:.0f}s",
                )
                self._reject(state.routes[name], error, session=state.name, participant=name)
            if not state.barriers:
                continue
            released, failed = state.expire(now)
            for release in released:
                self._release(state, release)
            for barrier in failed:
                error = wire.WireError(
                    "sync_timeout",
                    f"layer {barrier.layer}: {len(barrier.parts)} of the {state.min_participants} needed"
                    " arrived in time",
                )
                for name in barrier.parts:
                    self._reject(state.routes[name], error, session=state.name, participant=name)

    # --- control link -----------------------------------------------------------------------------

    def _on_control(self, route: bytes, msg: wire.Message) -> None:
        handler = getattr(self, f"_{msg.kind}")
        try:
            meta = handler(msg) or {}
            if meta is DEFERRED:
                self._pending_close[msg.session] = (route, msg)
                return
            reply = {"ok": True, **meta}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("control request failed: %s", exc, extra={"session": msg.session, "round": msg.round})
            reply = {"ok": False, "error": str(exc)}
        self._reply(
            route,
            kind="ctl_reply",
            session=msg.session,
            participant=CONTROL_IDENTITY,
            round=msg.round,
            meta=reply,
        )

    def _ctl_configure(self, msg: wire.Message) -> dict[str, Any]:
        meta = msg.meta
        mode, spec = meta.get("mode"), meta.get("spec") or {}
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
            return self._describe(existing)
        if mode == "learning":
            initial = self._initial_params(msg)
            evaluate = self.hooks.evaluator(msg.session, spec) if self.hooks.evaluator else None
            state: Session = LearningSession(
                name=msg.session, spec=spec, weights=weights, initial=initial, evaluate=evaluate
            )
            self._resume(state)
            fresh = (state.round, state.open) == (0, False)
            if self.checkpoint_dir is not None and state.checkpoint_every and fresh:
                self._checkpoint(state)  # NB: from now on a restarted aggregator knows the session by itself
        elif mode == "attention":
            limit = int(meta.get("max_payload_bytes", self.max_message_bytes))
            state = AttentionSession(name=msg.session, spec=spec, weights=weights, max_payload_bytes=limit)
        else:
            raise ValueError(f"mode must be 'learning' or 'attention', got {mode!r}")
        self.sessions[msg.session] = state
        for name in weights:
            route = self._early_hellos.pop((msg.session, name), None)
            if route is not None:
                state.routes[name] = route
                self._event(msg.session, "hello", participant=name, round=0)
        log.info("session configured", extra={"session": msg.session})
        return self._describe(state)

    def _restore_checkpointed_sessions(self) -> None:
        """Bring back every unfinished learning session that has a checkpoint, before serving anyone.

        So a coordinator whose requests (e.g. the ``ctl_close_round`` of a round the old process had
        open) reach the restarted aggregator finds the session there, at its checkpointed round.
        """
        if self.checkpoint_dir is None or not self.checkpoint_dir.is_dir():
            return
        for path in sorted(self.checkpoint_dir.glob("*.ckpt.npz")):
            name = path.name.removesuffix(".ckpt.npz")
            try:
                saved = checkpoint.load(self.checkpoint_dir, name)
                if saved is None or saved[1].get("finished"):
                    continue
                arrays, meta = saved
                spec, weights = meta["spec"], {str(n): float(w) for n, w in meta["weights"].items()}
                evaluate = self.hooks.evaluator(name, spec) if self.hooks.evaluator else None
                state = LearningSession(
                    name=name, spec=spec, weights=weights, initial=arrays["global"], evaluate=evaluate
                )
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                log.error("checkpoint %s not restored: %s", path.name, exc, extra={"session": name})
                continue
            self._resume(state)
            self.sessions[name] = state

    def _checkpoint(self, state: LearningSession, *, finished: bool = False) -> None:
        arrays, meta = state.snapshot()
        start = time.perf_counter()
        checkpoint.save(self.checkpoint_dir, state.name, arrays=arrays, meta={**meta, "finished": finished})
        self.metrics.checkpoint_seconds.observe(time.perf_counter() - start)

    def _resume(self, state: LearningSession) -> None:
        """Continue from the session's checkpoint, and reopen the round that was open, if any.

        A checkpoint that does not fit the session (another strategy or model size under the same
        name) is logged and ignored: the session starts from its initial model.
        """
        if self.checkpoint_dir is None:
            return
        ids = {"session": state.name}
        try:
            saved = checkpoint.load(self.checkpoint_dir, state.name)
            if saved is not None and saved[1].get("finished"):
                log.info("the checkpoint is of a finished session: starting afresh", extra=ids)
                return
            if saved is not None:
                state.restore(*saved)
                log.info("resumed from the checkpoint of round %d", state.round, extra=ids)
            reopen = checkpoint.load_open_round(self.checkpoint_dir, state.name)
            if reopen is not None and reopen[0] > state.round:
                state.open_round(*reopen)
                state.reopened = True
                log.info("reopened round %d after a restart", reopen[0], extra=ids)
        except ValueError as exc:  # CheckpointError, StrategyError, PrivacyError
            log.error("checkpoint not used: %s", exc, extra=ids)

    def _initial_params(self, msg: wire.Message) -> np.ndarray:
        if msg.arrays:
            return msg.arrays[0]
        if self.hooks.initial_params is not None:
            got = self.hooks.initial_params(msg.session, msg.meta.get("spec") or {})
            if got is not None:
                return got
        size = msg.meta.get("params")
        if not isinstance(size, int) or size <= 0:
            raise ValueError("learning sessions need an initial model array or meta.params (P > 0)")
        return np.zeros(size, dtype=np.float32)

    def _session(self, msg: wire.Message, kind: type[Session]) -> Any:
        state = self.sessions.get(msg.session)
        if not isinstance(state, kind):
            raise ValueError(f"no {kind.__name__} named {msg.session!r}")
        return state

    def _send_model(self, state: LearningSession, name: str) -> bool:
        meta = {"rounds": int(state.spec.get("rounds", 0)), **state.strategy.client_config()}
        if state.secure is not None:
            meta.update(state.secure.client_config(), members=sorted(state.members))
        frames = wire.encode(
            kind="model",
            session=state.name,
            participant=name,
            round=state.round,
            seq=next(self._seq),
            meta=meta,
            arrays=[state.global_params],
        )
        return self._send(state.routes[name], frames)

    def _ctl_open_round(self, msg: wire.Message) -> dict[str, Any]:
        state: LearningSession = self._session(msg, LearningSession)
        names = [str(n) for n in msg.meta.get("participants") or []]
        state.open_round(msg.round, names)
        if self.checkpoint_dir is not None and state.checkpoint_every:
            checkpoint.save_open_round(self.checkpoint_dir, state.name, round=msg.round, participants=names)
        sent = [n for n in names if n in state.routes and self._send_model(state, n)]
        log.info("round opened", extra={"session": state.name, "round": msg.round})
        return {"sent": sent, "waiting_for_hello": [n for n in names if n not in sent]}

    def _ctl_close_round(self, msg: wire.Message) -> dict[str, Any]:
        state: LearningSession = self._session(msg, LearningSession)
        secure = state.secure
        if state.open and msg.round == state.round and secure and secure.mean is None and state.contributed:
            self._start_unmask(state)  # NB: the ones whose input did not arrive count as dropped
            return DEFERRED  # answered when enough survivors revealed their shares
        result = state.close_round(msg.round)
        self.metrics.aggregation_seconds.observe(result.aggregation_seconds)
        self.metrics.rounds_closed.inc()
        if result.epsilon is not None:
            self.metrics.dp_epsilon.labels(session=state.name).set(result.epsilon)
        for name, score in (result.reliability or {}).items():
            self.metrics.reliability.labels(session=state.name, participant=name).set(score)
        every = state.checkpoint_every
        if self.checkpoint_dir is not None and every:
            if msg.round % every == 0:
                self._checkpoint(state)
            checkpoint.clear_open_round(self.checkpoint_dir, state.name)
        meta = result.meta()
        log.info("round closed: %s", meta, extra={"session": state.name, "round": msg.round})
        return meta

    def _ctl_finish(self, msg: wire.Message) -> dict[str, Any]:
        state = self.sessions.get(msg.session)
        if state is None:
            raise ValueError(f"no session named {msg.session!r}")
        reason = str(msg.meta.get("reason", "finished"))
        arrays = [state.global_params] if isinstance(state, LearningSession) else []
        if (
            isinstance(state, LearningSession)
            and self.checkpoint_dir is not None
            and state.checkpoint_every
            and not state.open
        ):
            self._checkpoint(state, finished=True)  # the final model; a restart does not bring it back
            checkpoint.clear_open_round(self.checkpoint_dir, state.name)
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
            if self._send(route, frames):
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
            state.routes.pop(name, None)

    def _ctl_status(self, msg: wire.Message) -> dict[str, Any]:
        return {"sessions": {name: self._describe(s) for name, s in self.sessions.items()}}

    def _describe(self, state: Session) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mode": state.mode,
            "participants": sorted(state.weights),
            "hello": sorted(state.routes),
        }
        if isinstance(state, LearningSession):
            out.update(
                params=state.size, round=state.round, open=state.open, contributions=len(state.contributed)
            )
        elif isinstance(state, AttentionSession):
            out.update(syncs=state.syncs, pending_layers=sorted(state.barriers))
        return out
