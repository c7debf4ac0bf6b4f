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
from fedattn.aggregator.kv import Barrier, KVPart
from fedattn.aggregator.sessions import Session
from fedattn.api.spec import SessionSpec
from fedattn.attention.exchange import union_kv
from fedattn.attention.spec import participant_order

MAX_PROMPT_TOKENS = 1 << 20


@dataclass
class Release:
    """A completed (or timed-out) barrier: the global KV and who gets which prefix of it."""

    layer: int
    global_kv: KVPart
    receivers: dict[str, int]  # participant -> its largest own position
    missing: list[str]
    latency_seconds: float
    bytes_in: int


class AttentionSession(Session):
    """KV sync barriers, one per sync layer, over the session's participants."""

    def __init__(
        self, *, name: str, spec: SessionSpec, weights: dict[str, float], max_payload_bytes: int
    ):
        super().__init__(
            name=name, mode="attention", spec=spec, weights=weights, max_payload_bytes=max_payload_bytes
        )
        self.barriers: dict[int, Barrier] = {}
        self.released: set[int] = set()
        self.syncs = 0
        self.prompt_tokens: dict[str, int] = {}  # announced in hello, to place rows at global positions
        self.first_announce: float | None = None
        self.layout: dict[str, int] | None = None  # participant -> tokens before its slice, once fixed
        self.left: set[str] = set()  # said bye or were revoked: nothing waits for them

    @property
    def active(self) -> frozenset[str]:
        """Who the KV barriers wait for: the participants in the fixed layout (all, until it is fixed),
        except those who left."""
        members = frozenset(self.layout) if self.layout is not None else frozenset(self.weights)
        return members - self.left

    def leave(self, participant: str) -> tuple[dict[str, int] | None, list[Release]]:
        """``participant`` is gone: out of the pending layout and of every open barrier. Returns the
        layout if its leaving completed it, and the barriers it completed (everyone else was there)."""
        self.left.add(participant)
        self.prompt_tokens.pop(participant, None)
        layout = self._fix_layout() if self._everyone_announced() else None
        released = []
        for barrier in list(self.barriers.values()):
            barrier.parts.pop(participant, None)
            barrier.expected = barrier.expected - {participant}
            if not barrier.parts:
                del self.barriers[barrier.layer]
            elif barrier.complete:
                released.append(self._release(barrier))
        return layout, released

    def _everyone_announced(self) -> bool:
        return self.layout is None and bool(self.prompt_tokens) and self.active <= self.prompt_tokens.keys()

    def announce(self, participant: str, tokens: Any) -> dict[str, int] | None:
        """Record a participant's prompt length; returns the layout once every participant announced.

        The layout (prompt order: as configured, the publisher last) gives each participant the number
        of private tokens before its own, hence its global positions; lengths are what K/V row counts
        reveal anyway, nothing more.
        """
        if not isinstance(tokens, int) or isinstance(tokens, bool) or not 0 < tokens <= MAX_PROMPT_TOKENS:
            raise wire.WireError(
                "bad_layout", f"hello needs meta.tokens in 1..{MAX_PROMPT_TOKENS}, got {tokens!r}"
            )
        if self.layout is not None:
            if participant in self.layout:
                self.left.discard(participant)
                return self.layout  # a reconnect: tell it again
            raise wire.WireError("stale_round", "the prompt layout was fixed without this participant")
        self.left.discard(participant)
        self.prompt_tokens[participant] = tokens
        if self.first_announce is None:
            self.first_announce = time.monotonic()
        return self._fix_layout() if self._everyone_announced() else None

    def expire_layout(self, now: float) -> tuple[dict[str, int] | None, list[str]]:
        """At the timeout: the layout of who announced (quorum), or the names left waiting (no quorum)."""
        if (
            self.layout is not None
            or self.first_announce is None
            or now - self.first_announce < self.timeout_seconds
        ):
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

    def accept(self, *, participant: str, layer: int, arrays: list[np.ndarray]) -> Release | None:
        """Add a participant's block to its layer's barrier; returns the release when it completes."""
        if layer < 0:
            raise wire.WireError("bad_layer", "kv messages need a layer >= 0")
        if layer in self.released:
            raise wire.WireError("stale_round", f"layer {layer} was already synced")
        if len(arrays) != 3 or arrays[0].dtype != np.float32 or arrays[1].dtype != np.float32:
            raise wire.WireError("shape_mismatch", "kv needs [K float32, V float32, positions int64]")
        if arrays[2].dtype != np.int64:
            raise wire.WireError("bad_dtype", f"positions must be int64, got {arrays[2].dtype}")
        barrier = self.barriers.get(layer)
        if barrier is None:
            barrier = self.barriers[layer] = Barrier(layer=layer, expected=self.active)
        if participant in barrier.parts:
            raise wire.WireError("duplicate", f"{participant} already sent KV for layer {layer}")
        try:
            barrier.add(participant, (arrays[0], arrays[1], arrays[2]))
        except ValueError as exc:
            raise wire.WireError("bad_kv", str(exc)) from None
        return self._release(barrier) if barrier.complete else None

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
        names = sorted(barrier.parts)
        parts = [barrier.parts[n] for n in names]
        return Release(
            layer=barrier.layer,
            global_kv=union_kv(parts),
            receivers={n: int(p[2].max()) if p[2].size else -1 for n, p in zip(names, parts, strict=True)},
            missing=barrier.missing(),
            latency_seconds=time.monotonic() - barrier.first_arrival,
            bytes_in=sum(a.nbytes for p in parts for a in p),
        )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "syncs": self.syncs, "pending_layers": sorted(self.barriers)}
