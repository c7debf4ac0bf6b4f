"""The attention conversation: prompt layout at hello, KV blocks per sync layer, barrier releases.

Participants announce their prompt length, the shared prefix length and the model's KV shape in
``hello``; once everyone did (or the timeout passes with a quorum) each gets a ``welcome`` with the
tokens before its own. Per sync layer each sends its ``kv`` block in the session's ``kvCodec`` (the
publisher, last in prompt order, sends no rows: nobody attends to them). A block is taken only for
a sync layer of the schedule (publisher's or holders'), in the model's shape, with its start and
count inside the sender's own slice, with at most a few layers pending per sender. When the barrier
completes (or times out with a quorum) each participant that listens at sync layers receives the
blocks of the participants before it in the layout, forwarded as they came (``kv_global``; a holder
with ``holderSync: none`` gets an empty one). docs/protocol.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fedattn import wire
from fedattn.aggregator.attention_session import AttentionSession, Release
from fedattn.aggregator.conversation import Conversation, Handler, Link
from fedattn.api.spec import SessionSpec

log = logging.getLogger("fedattn.aggregator")


class AttentionProtocol(Conversation):
    """KV sync barriers; one instance per aggregator, serving every attention session."""

    mode = "attention"

    def __init__(self, link: Link, *, max_message_bytes: int) -> None:
        super().__init__(link)
        self.max_message_bytes = max_message_bytes
        self._handlers: dict[str, Handler] = {"hello": self._hello, "kv": self._kv}

    @property
    def handlers(self) -> Mapping[str, Handler]:
        return self._handlers

    def configure(
        self, *, msg: wire.Message, spec: SessionSpec, weights: dict[str, float]
    ) -> AttentionSession:
        limit = int(msg.meta.get("max_payload_bytes", self.max_message_bytes))
        return AttentionSession(name=msg.session, spec=spec, weights=weights, max_payload_bytes=limit)

    def _hello(self, route: bytes, state: AttentionSession, msg: wire.Message, checksums: list[int]) -> None:
        name = msg.participant
        state.routes[name] = route
        self.link.event(state.name, "hello", participant=name, round=0)
        layout = state.announce(name, msg.meta)
        if layout is not None:
            self._welcome_layout(state, layout)

    def _kv(self, route: bytes, state: AttentionSession, msg: wire.Message, checksums: list[int]) -> None:
        release = state.accept(participant=msg.participant, layer=msg.layer, arrays=msg.arrays, meta=msg.meta)
        state.routes[msg.participant] = route
        self.link.metrics.contributions_accepted.labels(kind="kv").inc()
        if release is not None:
            self._release(state, release)

    def _release(self, state: AttentionSession, release: Release) -> None:
        names = sorted(release.blocks)
        sent = 0
        for name, blocks in release.blocks.items():
            frames = wire.encode(
                kind="kv_global",
                session=state.name,
                participant=name,
                layer=release.layer,
                seq=self.link.next_seq(),
                meta={"participants": names, "blocks": [meta for _, meta in blocks]},
                arrays=[a for arrays, _ in blocks for a in arrays],
            )
            route = state.routes.get(name)
            if route is not None and self.link.send(route, frames):  # NB: no route: it left meanwhile
                sent += sum(memoryview(f).nbytes for f in frames[1:])
        self.link.metrics.sync_latency_seconds.observe(release.latency_seconds)
        latency_ms = release.latency_seconds * 1000
        self.link.event(
            state.name, "sync", layer=release.layer, bytes=release.bytes_in + sent, latency_ms=latency_ms
        )
        if release.missing:
            self.link.event(state.name, "sync_missed", layer=release.layer, participants=release.missing)
        log.info(
            "kv sync released after %.1f ms",
            latency_ms,
            extra={"session": state.name, "layer": release.layer},
        )

    def _welcome_layout(self, state: AttentionSession, layout: dict[str, int]) -> None:
        """Tell every participant in the fixed prompt layout how many private tokens precede its own."""
        order = list(layout)
        for name, before in layout.items():
            if name not in state.routes:
                continue  # NB: it left (or was revoked) after announcing; a new hello gets the layout
            self.link.reply(
                state.routes[name],
                kind="welcome",
                session=state.name,
                participant=name,
                meta={"mode": state.mode, "tokens_before": before, "participants": order},
            )
        for name, why in state.refused.items():
            self._tell(state, name, wire.WireError("bad_layout", why))
        left_out = sorted(set(state.weights) - set(layout))
        if left_out:
            self.link.event(state.name, "sync_missed", layer=-1, participants=left_out)
        log.info("prompt layout fixed for %s", order, extra={"session": state.name})

    def tick(self, state: AttentionSession, now: float) -> None:
        """Layout and barrier timeouts: release with a quorum, otherwise tell the ones left waiting."""
        layout, waiting = state.expire_layout(now)
        if layout is not None:
            self._welcome_layout(state, layout)
        for name in waiting:
            error = wire.WireError(
                "sync_timeout",
                f"too few participants announced their prompt within {state.timeout_seconds:.0f}s",
            )
            self._tell(state, name, error)
        if not state.barriers:
            return
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
                self._tell(state, name, error)

    def _tell(self, state: AttentionSession, name: str, error: wire.WireError) -> None:
        """Reject on behalf of a timer: to the participant's route, if it still has one."""
        route = state.routes.get(name)
        if route is not None:
            self.link.reject(route, error, session=state.name, participant=name)

    def leave(self, state: AttentionSession, participant: str) -> None:
        layout, released = state.leave(participant)
        if layout is not None:
            self._welcome_layout(state, layout)
        for release in released:
            self._release(state, release)
