"""An attention session's state: the prompt layout and one KV sync barrier per sync layer.

Socket-free (see :mod:`fedattn.aggregator.sessions`); the conversation that drives it is
:mod:`fedattn.aggregator.attention_protocol`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedattn import wire
from fedattn.aggregator.kv import Barrier, WireBlock
from fedattn.aggregator.sessions import Session
from fedattn.api.spec import SessionSpec
from fedattn.attention.exchange import read_block
from fedattn.attention.spec import participant_order

MAX_PROMPT_TOKENS = 1 << 20


@dataclass
class Release:
    """A completed (or timed-out) barrier: the blocks each participant attends to, as they came."""

    layer: int
    blocks: dict[str, list[WireBlock]]  # participant -> blocks of those before it, in prompt order
    missing: list[str]
    latency_seconds: float
    bytes_in: int


class AttentionSession(Session):
    """KV sync barriers, one per sync layer, over the session's participants."""

    def __init__(self, *, name: str, spec: SessionSpec, weights: dict[str, float], max_payload_bytes: int):
        super().__init__(name=name, mode="attention", spec=spec, weights=weights, max_payload_bytes=max_payload_bytes)
        self.barriers: dict[int, Barrier] = {}
        self.released: set[int] = set()
        self.syncs = 0
        self.prompt_tokens: dict[str, int] = {}  # announced in hello, to place rows at global positions
        self.first_announce: float | None = None
        self.layout: dict[str, int] | None = None  # participant -> tokens before its slice, once fixed

    @property
    def active(self) -> frozenset[str]:
        """Who the KV barriers wait for: the participants in the fixed layout (all, until it is fixed)."""
        return frozenset(self.layout) if self.layout is not None else frozenset(self.weights)

    def announce(self, participant: str, tokens: Any) -> dict[str, int] | None:
        """Record a participant's prompt length; returns the layout once every participant announced.

        The layout (prompt order: as configured, the publisher last) gives each participant the number
        of private tokens before its own, hence its global positions; lengths are what K/V row counts
        reveal anyway, nothing more.
        """
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 < tokens <= MAX_PROMPT_TOKENS:
            raise wire.WireError("bad_layout", f"hello needs meta.tokens in 1..{MAX_PROMPT_TOKENS}, got {tokens!r}")
        if self.layout is not None:
            if participant in self.layout:
                return self.layout  # a reconnect: tell it again
            raise wire.WireError("stale_round", "the prompt layout was fixed without this participant")
        self.prompt_tokens[participant] = tokens
        if self.first_announce is None:
            self.first_announce = time.monotonic()
        return self._fix_layout() if self.weights.keys() <= self.prompt_tokens.keys() else None

    def expire_layout(self, now: float) -> tuple[dict[str, int] | None, list[str]]:
        """At the timeout: the layout of who announced (quorum), or the names left waiting (no quorum)."""
        if self.layout is not None or self.first_announce is None or now - self.first_announce < self.timeout_seconds:
            return None, []
        if len(self.prompt_tokens) >= self.min_participants:
            return self._fix_layout(), []
        waiting = sorted(self.prompt_tokens)
        self.prompt_tokens.clear()
        self.first_announce = None
        return None, waiting

    def _fix_layout(self) -> dict[str, int]:
        present = [n for n in self.weights if n in self.prompt_tokens]
        publisher = self.spec.publisher
        order = participant_order(present, publisher) if publisher in present else present
        before, self.layout = 0, {}
        for name in order:
            self.layout[name] = before
            before += self.prompt_tokens[name]
        return self.layout

    @property
    def order(self) -> list[str]:
        """Prompt order: as configured, the publisher last (the fixed layout is a subset in this order)."""
        names = list(self.weights)
        publisher = self.spec.publisher
        return participant_order(names, publisher) if publisher in names else names

    def listens(self, participant: str) -> bool:
        """Whether a participant attends to others' rows at a sync layer (``holderSync``)."""
        return participant == self.spec.publisher or self.spec.holder_sync == "all"

    def accept(self, *, participant: str, layer: int, arrays: list[np.ndarray], meta: dict) -> Release | None:
        """Add a participant's block to its layer's barrier; returns the release when it completes.

        The block must be in the session's ``kvCodec``; its rows must follow the prompt order (after
        every earlier participant's, before every later one's), so that who may attend to what is
        decided by that order alone.
        """
        if layer < 0:
            raise wire.WireError("bad_layer", "kv messages need a layer >= 0")
        if layer in self.released:
            raise wire.WireError("stale_round", f"layer {layer} was already synced")
        try:
            part = read_block(arrays, meta, self.spec.kv_codec)
        except ValueError as exc:
            code = "non_finite" if "NaN or Inf" in str(exc) else "shape_mismatch"
            raise wire.WireError(code, f"kv ({self.spec.kv_codec}): {exc}") from None
        barrier = self.barriers.get(layer)
        if barrier is None:
            barrier = self.barriers[layer] = Barrier(layer=layer, expected=self.active)
        if participant in barrier.parts:
            raise wire.WireError("duplicate", f"{participant} already sent KV for layer {layer}")
        try:
            self._check_order(barrier, participant, part[2])
            barrier.add(participant, part, wire_form=(list(arrays), dict(meta)))
        except ValueError as exc:
            raise wire.WireError("bad_kv", str(exc)) from None
        return self._release(barrier) if barrier.complete else None

    def _check_order(self, barrier: Barrier, participant: str, positions: np.ndarray) -> None:
        if not positions.size:
            return
        order = self.order
        mine = order.index(participant)
        for name, (_, _, theirs) in barrier.parts.items():
            if not theirs.size:
                continue
            earlier = order.index(name) < mine
            if (earlier and theirs.max() >= positions.min()) or (not earlier and theirs.min() <= positions.max()):
                raise ValueError(
                    f"positions {int(positions.min())}..{int(positions.max())} are not in prompt order with"
                    f" {name}'s {int(theirs.min())}..{int(theirs.max())}"
                )

    def expire(self, now: float) -> tuple[list[Release], list[Barrier]]:
        """Barriers past the timeout: released with who is present (quorum) or failed (no quorum)."""
        released, failed = [], []
        for barrier in [b for b in self.barriers.values() if now - b.first_arrival >= self.timeout_seconds]:
            if len(barrier.parts) >= self.min_participants:
                released.append(self._release(barrier))
            else:
                del self.barriers[barrier.layer]
                failed.append(barrier)
        return released, failed

    def _release(self, barrier: Barrier) -> Release:
        del self.barriers[barrier.layer]
        self.released.add(barrier.layer)
        self.syncs += 1
        present = [n for n in self.order if n in barrier.parts]
        blocks = {
            name: [barrier.wire_forms[s] for s in present[:i] if barrier.parts[s][2].size] if self.listens(name) else []
            for i, name in enumerate(present)
        }
        return Release(
            layer=barrier.layer,
            blocks=blocks,
            missing=barrier.missing(),
            latency_seconds=time.monotonic() - barrier.first_arrival,
            bytes_in=sum(a.nbytes for arrays, _ in barrier.wire_forms.values() for a in arrays),
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "syncs": self.syncs, "pending_layers": sorted(self.barriers)}
