"""The coordinator's control link to the aggregator: an asyncio ZMQ DEALER with Curve client keys.

NB: :class:`fedattn.aggregator.client.AggregatorClient` is blocking and its ``request`` takes the
next message as the reply; this link also receives ``ctl_event`` pushes at any time and runs in
the coordinator's event loop, so it reads continuously and hands each message to whoever waits for
it. Several requests may be in flight: the aggregator answers control requests one by one in
arrival order, and each ``ctl_reply`` names the request's session and round, so a reply goes to the
oldest waiting request with that session and round; older requests it overtook lost their reply
(an aggregator restart) and fail. A request that timed out keeps its place, so its late reply is
consumed by it and never taken for a newer request's.

A periodic ``ctl_status`` keeps ``up`` current (and tells the aggregator where to push events);
each reply goes to ``on_status``, so the coordinator notices an aggregator that restarted (and
forgot its sessions) even when the restart was quicker than a ping timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from fedattn import pki, wire
from fedattn.aggregator.client import curve_dealer

log = logging.getLogger(__name__)

#: a timed-out request whose reply has not come after this long is assumed lost
ABANDON_SECONDS = 60.0


class ControlError(RuntimeError):
    """The aggregator refused a control request (``ok: false`` or an ``error`` reply)."""


class BudgetExhausted(ControlError):
    """The aggregator refused a round: the DP budget is spent. A planned stop, so never retried."""


class MissingUpdates(ControlError):
    """The aggregator lacks updates we recorded for the round (it restarted): reopen the round for them."""

    def __init__(self, message: str, participants: list[str]) -> None:
        super().__init__(message)
        self.participants = participants


class SessionUnknown(ControlError):
    """The aggregator does not know the session (it restarted without a checkpoint of it)."""


class ControlTimeout(ControlError, TimeoutError):
    """No reply in time: the aggregator is down, unreachable, or does not accept our key."""


class ReceivedEvents:
    """Which aggregator events arrived, as the cumulative acknowledgement the aggregator expects:
    every ``event_id`` of the current ``epoch`` up to ``upto`` (a gap holds it back until the re-sent
    event fills it)."""

    def __init__(self) -> None:
        self.epoch: int | None = None
        self.upto = 0
        self._beyond: set[int] = set()

    def note(self, meta: dict[str, Any]) -> None:
        epoch, event_id = meta.get("epoch"), meta.get("event_id")
        if not isinstance(epoch, int) or not isinstance(event_id, int):
            return
        if epoch != self.epoch:  # NB: a restarted aggregator numbers from 1 again
            self.epoch, self.upto, self._beyond = epoch, 0, set()
        if event_id > self.upto:
            self._beyond.add(event_id)
        while self.upto + 1 in self._beyond:
            self.upto += 1
            self._beyond.discard(self.upto)

    def ack(self) -> dict[str, int] | None:
        return None if self.epoch is None else {"epoch": self.epoch, "event_id": self.upto}


class ControlLink:
    def __init__(
        self,
        *,
        endpoint: str,
        server_public: bytes,
        public: bytes,
        secret: bytes,
        on_event: Callable[[dict[str, Any]], None],
        on_status: Callable[[dict[str, Any]], None] | None = None,
        timeout_seconds: float = 5.0,
        ping_seconds: float = 2.0,
    ) -> None:
        self.endpoint = endpoint
        self.timeout_seconds = timeout_seconds
        self.ping_seconds = ping_seconds
        self.up = False
        self._on_event = on_event
        self._on_status = on_status
        self._ctx = zmq.asyncio.Context()
        self._sock = curve_dealer(self._ctx, server_public=server_public, public=public, secret=secret)
        self._seq = 0
        self._pings = 0
        self._received = ReceivedEvents()
        self._waiting: deque[tuple[str, int, asyncio.Future[wire.Message], float]] = deque()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._sock.connect(self.endpoint)
        self._tasks = [
            asyncio.create_task(self._read(), name="control-read"),
            asyncio.create_task(self._ping(), name="control-ping"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sock.close(linger=0)
        self._ctx.term()

    async def request(
        self,
        kind: str,
        *,
        session: str,
        round: int = 0,
        meta: dict[str, Any] | None = None,
        timeout_seconds: float | None = None,
    ) -> dict[str, Any]:
        """Send one ``ctl_*`` request and return the reply's meta; raises ControlError/ControlTimeout."""
        timeout = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        loop = asyncio.get_running_loop()
        self._forget_abandoned(now=loop.time())
        future: asyncio.Future[wire.Message] = loop.create_future()
        self._waiting.append((session, round, future, loop.time()))
        self._seq += 1
        frames = wire.encode(
            kind=kind, session=session, participant=pki.CONTROL_CLIENT, round=round, seq=self._seq, meta=meta
        )
        try:
            await asyncio.wait_for(self._sock.send_multipart(frames), timeout)
            reply = await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise ControlTimeout(f"{kind} for {session}: no reply from {self.endpoint} in {timeout:g} s") from None
        if reply.kind == "error":
            raise ControlError(f"{kind} rejected: {reply.meta.get('code')}: {reply.meta.get('message')}")
        if not reply.meta.get("ok"):
            error = str(reply.meta.get("error", "no reason given"))
            if error.startswith("PrivacyBudgetExhausted"):
                raise BudgetExhausted(error)
            code = reply.meta.get("code")
            if code == "missing_updates":
                raise MissingUpdates(error, [str(p) for p in reply.meta.get("missing") or []])
            if code == "unknown_session":
                raise SessionUnknown(error)
            raise ControlError(f"{kind} for {session} failed: {error}")
        return reply.meta

    def _forget_abandoned(self, *, now: float) -> None:
        """Drop timed-out requests older than ``ABANDON_SECONDS`` from the head: their replies are lost
        (the aggregator restarted), and keeping them would let them capture newer requests' replies."""
        while self._waiting and self._waiting[0][2].done() and now - self._waiting[0][3] > ABANDON_SECONDS:
            self._waiting.popleft()

    async def _read(self) -> None:
        while True:
            frames = await self._sock.recv_multipart(copy=False)
            try:
                msg = wire.decode(frames)
            except wire.WireError as exc:
                log.warning("dropping a malformed message from the aggregator: %s", exc)
                continue
            if msg.kind == "ctl_event":
                try:
                    self._on_event(msg.meta)
                except Exception:  # one bad event must not stop the link
                    log.exception("handling ctl_event failed", extra={"session": msg.session})
                self._received.note(msg.meta)
                continue
            self._deliver(msg)

    def _deliver(self, reply: wire.Message) -> None:
        """Hand a reply to the oldest request with its session and round; fail the ones it overtook."""
        key = (reply.session, reply.round)
        index = next((i for i, (s, r, _, _) in enumerate(self._waiting) if (s, r) == key), None)
        if index is None:
            log.warning("dropping an unexpected %s from the aggregator", reply.kind, extra={"session": reply.session})
            return
        for _ in range(index):
            _, _, lost, _ = self._waiting.popleft()
            if not lost.done():
                lost.set_exception(ControlError("the aggregator answered a later request first; reply lost"))
        _, _, future, _ = self._waiting.popleft()
        if not future.done():  # NB: done = it timed out already; its late reply ends here
            future.set_result(reply)

    async def _ping(self) -> None:
        while True:
            try:
                # NB: a unique session label pairs each ping with its own reply, and that reply retires
                # every older request whose reply was lost (e.g. the aggregator restarted meanwhile).
                self._pings += 1
                status = await self.request(
                    "ctl_status",
                    session=f"status-{self._pings}",
                    meta={"ack_events": self._received.ack()},
                    timeout_seconds=self.ping_seconds * 2,
                )
                if not self.up:
                    log.info("control link to %s is up", self.endpoint)
                self.up = True
                if self._on_status is not None:
                    self._on_status(status)
            except ControlError as exc:
                if self.up:
                    log.warning("control link to %s is down: %s", self.endpoint, exc)
                self.up = False
            await asyncio.sleep(self.ping_seconds)
