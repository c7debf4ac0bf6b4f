"""A thin DEALER for talking to the aggregator: Curve client keys, wire messages, timeouts, no copies.

Transport only: it numbers outgoing messages (``seq``) and decodes incoming ones, nothing about
rounds or sessions. Participants' SDK and the coordinator's control link wrap it. Arrays passed to
:meth:`AggregatorClient.send` are sent from their own memory (zero copy); do not modify them until
the call after next, or pass a copy.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from fedattn import wire


class Timeout(TimeoutError):
    """No message arrived in time (the aggregator is down, unreachable, or refused our key)."""


def curve_dealer(context: zmq.Context, *, server_public: bytes, public: bytes, secret: bytes) -> zmq.Socket:
    """A DEALER that authenticates to the aggregator with a Curve key pair (not yet connected).

    ZMQ heartbeats notice a dead peer within seconds; no linger, so closing never blocks on unsent data.
    Works for a plain or an asyncio context (the coordinator's control link uses the latter).
    """
    sock = context.socket(zmq.DEALER)
    sock.curve_serverkey = server_public.strip()
    sock.curve_publickey = public.strip()
    sock.curve_secretkey = secret.strip()
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 2000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 6000)
    return sock


class AggregatorClient:
    """One DEALER connection to an aggregator, authenticated with a Curve key pair."""

    def __init__(
        self,
        *,
        endpoint: str,
        server_public: bytes,
        public: bytes,
        secret: bytes,
        session: str,
        name: str,
        timeout_seconds: float = 30.0,
        max_message_bytes: int | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.session, self.name = session, name
        self.timeout_seconds = timeout_seconds
        self.max_message_bytes = max_message_bytes
        # NB: seq starts at the wall clock in microseconds, so a restarted sender keeps increasing its
        # seq instead of replaying numbers the aggregator already saw (rejected as duplicates).
        self._seq = itertools.count(time.time_ns() // 1000)
        self._own_context = context is None
        self._ctx = context or zmq.Context()
        sock = curve_dealer(self._ctx, server_public=server_public, public=public, secret=secret)
        if max_message_bytes is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        sock.connect(endpoint)
        self.socket = sock

    @classmethod
    def from_files(
        cls, *, server_public: Path, public: Path, secret: Path, **kwargs: Any
    ) -> AggregatorClient:
        """Build from ``*.curve.pub`` / ``*.curve.sec`` files (``fedattn.pki`` layout)."""
        return cls(
            server_public=server_public.read_bytes(),
            public=public.read_bytes(),
            secret=secret.read_bytes(),
            **kwargs,
        )

    def send(
        self,
        kind: str,
        *,
        round: int = 0,
        layer: int = -1,
        meta: dict[str, Any] | None = None,
        arrays: Sequence[np.ndarray] = (),
        seq: int | None = None,
    ) -> int:
        """Send one message (the next ``seq`` unless given); returns the ``seq`` used."""
        seq = self.next_seq() if seq is None else seq
        frames = wire.encode(
            kind=kind,
            session=self.session,
            participant=self.name,
            round=round,
            layer=layer,
            seq=seq,
            meta=meta,
            arrays=arrays,
        )
        self.send_frames(frames)
        return seq

    def next_seq(self) -> int:
        """Take the next sequence number (for callers that build frames themselves)."""
        return next(self._seq)

    def send_frames(self, frames: Sequence[Any]) -> None:
        """Send raw frames as they are (tests use it to send malformed messages)."""
        if not self.socket.poll(int(self.timeout_seconds * 1000), zmq.POLLOUT):
            raise Timeout(f"could not send within {self.timeout_seconds} s")
        self.socket.send_multipart(list(frames), copy=False)

    def recv(self, *, timeout_seconds: float | None = None) -> wire.Message:
        """The next message, validated; arrays are views over the received frames."""
        timeout = self.timeout_seconds if timeout_seconds is None else timeout_seconds
        if not self.socket.poll(int(timeout * 1000), zmq.POLLIN):
            raise Timeout(f"no message within {timeout} s")
        frames = self.socket.recv_multipart(copy=False)
        return wire.decode(frames, max_bytes=self.max_message_bytes)

    def request(self, kind: str, **kwargs: Any) -> wire.Message:
        """Send and wait for the next message (the reply, when nothing else is in flight)."""
        timeout = kwargs.pop("timeout_seconds", None)
        self.send(kind, **kwargs)
        return self.recv(timeout_seconds=timeout)

    def close(self) -> None:
        self.socket.close(linger=0)
        if self._own_context:
            self._ctx.term()

    def __enter__(self) -> AggregatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
