"""What a session mode's protocol needs from the server, and what the server needs from it.

The server (:mod:`fedattn.aggregator.server`) owns the socket, authenticates and decodes; each mode
has one :class:`Conversation` (:mod:`fedattn.aggregator.learning_protocol`,
:mod:`fedattn.aggregator.attention_protocol`) that says what that mode's participant messages and
timed work do, talking back only through the :class:`Link`. Adding a mode is one more conversation,
not another ``isinstance`` branch in the server.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from fedattn import wire
from fedattn.aggregator.metrics import Metrics
from fedattn.aggregator.sessions import Session
from fedattn.api.spec import SessionSpec

#: a control handler's answer meaning "the reply is sent later" (a secure round still being unmasked);
#: the server keeps the request and runs it again on :meth:`Link.answer_deferred`
DEFERRED: dict[str, Any] = {"deferred": True}


class Refusal(ValueError):
    """A control request refused for a reason the coordinator acts on; ``detail`` goes into the reply."""

    detail: dict[str, Any] = {}


class UnknownSession(Refusal):
    """The session is not configured here (this aggregator restarted without a checkpoint of it)."""

    detail = {"code": "unknown_session"}


class MissingUpdates(Refusal):
    """``ctl_close_round`` names updates the round does not hold: they were acknowledged by a process that
    died (this aggregator restarted) and must be sent again before the round may close."""

    def __init__(self, round: int, participants: list[str]) -> None:
        super().__init__(
            f"MissingUpdates: round {round} lacks the acknowledged updates of {', '.join(participants)}"
            " (lost in an aggregator restart; they are sent again on hello)"
        )
        self.participants = participants
        self.detail = {"code": "missing_updates", "missing": participants}


#: ``handler(route, session, message, checksums)``: one participant message kind of one mode
Handler = Callable[[bytes, Any, wire.Message, list[int]], None]


class Link(Protocol):
    """The server's side, as a conversation sees it: send, reply, reject, report; all on the server thread."""

    metrics: Metrics

    def next_seq(self) -> int:
        """The next sequence number of a message the aggregator sends."""

    def send(self, route: bytes, frames: list[Any]) -> bool:
        """Send encoded frames to a routing id; False when the peer is gone or its queue is full."""

    def reply(self, route: bytes, *, kind: str, session: str, participant: str, **fields: Any) -> bool:
        """Encode and send one message (the server numbers it)."""

    def reject(
        self, route: bytes, error: wire.WireError, *, session: str, participant: str, round: int = 0
    ) -> None:
        """An ``error`` reply and a count, always; a log line and a ``rejected`` event for a sample of
        each sender's rejections (:class:`fedattn.ratelimit.Sampler`)."""

    def event(self, session: str, event: str, **fields: Any) -> None:
        """Queue an event for the coordinator."""

    def answer_deferred(self, session: str) -> None:
        """Run the control request deferred for ``session`` again and reply to it (none pending: no-op)."""


class Conversation(ABC):
    """One session mode's protocol: its participant message handlers, its control work, its timers."""

    mode: ClassVar[str]

    def __init__(self, link: Link) -> None:
        self.link = link

    @property
    @abstractmethod
    def handlers(self) -> Mapping[str, Handler]:
        """Participant message kind -> handler, for the kinds this mode takes besides ``bye``."""

    @abstractmethod
    def configure(self, *, msg: wire.Message, spec: SessionSpec, weights: dict[str, float]) -> Session:
        """A new session of this mode from ``ctl_configure`` (``spec`` parsed there once); raises
        ValueError naming what is wrong."""

    def final_arrays(self, state: Any) -> list[Any]:
        """The arrays ``done`` carries to every participant when the session finishes (none by default)."""
        del state
        return []

    def after_burst(self, state: Any) -> None:
        """Work due after each burst of received messages (none by default)."""
        del state

    def tick(self, state: Any, now: float) -> None:
        """Timed work between messages, ``now`` from ``time.monotonic()`` (none by default)."""
        del state, now

    def leave(self, state: Any, participant: str) -> None:
        """``participant`` left (``bye``) or was revoked; its route is already gone. Nothing waits for
        it from now on (nothing to do by default)."""
        del state, participant
