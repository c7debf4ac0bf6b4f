"""An attention session's state: the prompt layout and one KV sync barrier per sync layer.

Socket-free (see :mod:`fedattn.aggregator.sessions`); the conversation that drives it is
:mod:`fedattn.aggregator.attention_protocol`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedattn import wire
from fedattn.aggregator.kv import Barrier, KVPart, WireBlock
from fedattn.aggregator.sessions import Session
from fedattn.api.spec import SessionSpec
from fedattn.attention.exchange import read_block
from fedattn.attention.kvcodec import block_nbytes
from fedattn.attention.spec import participant_order, plan

MAX_PROMPT_TOKENS = 1 << 20
#: caps on what a participant may announce about the (public) model: beyond any Llama we run
MAX_LAYERS, MAX_KV_HEADS, MAX_HEAD_DIM = 1024, 256, 1024
#: barriers one participant may have open: prefill waits for each sync, so an honest one has 1
MAX_PENDING_LAYERS = 2
#: what a message may carry before the layout fixes the KV payload bound (a hello has no arrays)
PRE_LAYOUT_PAYLOAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class Announcement:
    """What a participant's ``hello`` says: its private token count, and what everyone shares (the
    public prefix length and the model's KV shape), which must agree across the session."""

    tokens: int
    prefix: int
    n_layers: int
    n_kv_heads: int
    head_dim: int

    @property
    def shared(self) -> tuple[int, int, int, int]:
        return (self.prefix, self.n_layers, self.n_kv_heads, self.head_dim)

    @classmethod
    def parse(cls, meta: Mapping[str, Any]) -> Announcement:
        model = meta.get("model")
        if not isinstance(model, Mapping):
            raise wire.WireError("bad_layout", "hello needs meta.model {n_layers, n_kv_heads, head_dim}")
        return cls(
            tokens=_count(meta.get("tokens"), "meta.tokens", low=1, high=MAX_PROMPT_TOKENS),
            prefix=_count(meta.get("prefix"), "meta.prefix", low=0, high=MAX_PROMPT_TOKENS),
            n_layers=_count(model.get("n_layers"), "meta.model.n_layers", low=1, high=MAX_LAYERS),
            n_kv_heads=_count(model.get("n_kv_heads"), "meta.model.n_kv_heads", low=1, high=MAX_KV_HEADS),
            head_dim=_count(model.get("head_dim"), "meta.model.head_dim", low=1, high=MAX_HEAD_DIM),
        )


def _count(value: Any, what: str, *, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise wire.WireError("bad_layout", f"hello needs {what} in {low}..{high}, got {value!r}")
    return value


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

    def __init__(
        self, *, name: str, spec: SessionSpec, weights: dict[str, float], max_payload_bytes: int
    ):
        super().__init__(
            name=name,
            mode="attention",
            spec=spec,
            weights=weights,
            max_payload_bytes=min(max_payload_bytes, PRE_LAYOUT_PAYLOAD_BYTES),
        )
        self.message_limit = max_payload_bytes  # the socket-wide limit; the layout may only lower it
        self.barriers: dict[int, Barrier] = {}
        self.released: set[int] = set()
        self.syncs = 0
        self.prompt_tokens: dict[str, Announcement] = {}  # hello's announcements, until the layout is fixed
        self.first_announce: float | None = None
        self.layout: dict[str, int] | None = None  # participant -> tokens before its slice, once fixed
        self.slices: dict[str, tuple[int, int]] = {}  # participant -> [first, last] global position
        self.shape: Announcement | None = None  # the shared prefix and model shape of the fixed layout
        self.sync_schedule: frozenset[int] = frozenset()
        self.refused: dict[str, str] = {}  # announced what the layout disagrees with -> why
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

    def announce(self, participant: str, meta: Mapping[str, Any]) -> dict[str, int] | None:
        """Record a participant's announcement; returns the layout once every participant announced.

        The layout (prompt order: as configured, the publisher last) gives each participant the number
        of private tokens before its own, hence its global positions; lengths are what K/V row counts
        reveal anyway, nothing more.
        """
        announced = Announcement.parse(meta)
        if participant in self.refused:
            raise wire.WireError("bad_layout", self.refused[participant])
        if self.layout is not None:
            if participant in self.layout:
                self.left.discard(participant)
                return self.layout  # a reconnect: tell it again
            raise wire.WireError("stale_round", "the prompt layout was fixed without this participant")
        self.left.discard(participant)
        self.prompt_tokens[participant] = announced
        if self.first_announce is None:
            self.first_announce = time.monotonic()
        return self._fix_layout() if self._everyone_announced() else None

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
        """Order, slices, KV shape, sync schedule and payload bound, all from the announcements.

        What everyone shares (prefix length, model shape) is the publisher's announcement (the session
        answers its question), or the most common one without it; who announced something else is left
        out of the layout and told why. From here on, positions, layers and sizes are checked against it.
        """
        present = [n for n in self.weights if n in self.prompt_tokens]
        publisher = self.spec.publisher
        shared = [self.prompt_tokens[n].shared for n in present]
        reference = (
            self.prompt_tokens[publisher].shared if publisher in present else max(shared, key=shared.count)
        )
        for name in present:
            if self.prompt_tokens[name].shared != reference:
                self.refused[name] = (
                    f"{name} announced prefix/model {self.prompt_tokens[name].shared}, the session's"
                    f" layout has {reference} (prefix, n_layers, n_kv_heads, head_dim)"
                )
        present = [n for n in present if n not in self.refused]
        order = participant_order(present, publisher) if publisher in present else present
        shape = self.prompt_tokens[order[0]]
        before, self.layout = 0, {}
        for name in order:
            self.layout[name] = before
            tokens = self.prompt_tokens[name].tokens
            self.slices[name] = (shape.prefix + before, shape.prefix + before + tokens - 1)
            before += tokens
        self.shape = shape
        schedule = plan(self.spec, n_layers=shape.n_layers)
        # NB: a holder sends at every layer the publisher syncs, listening or not: the union of both
        self.sync_schedule = schedule.sync_layers | (schedule.holder_sync_layers or frozenset())
        most = max(self.prompt_tokens[n].tokens for n in order)
        # NB: the longest slice's K and V block in the session's codec (codes and scales), plus int64
        # positions for a block sent without a start
        codes = block_nbytes(self.spec.kv_codec, n_rows=most, n_kv_heads=shape.n_kv_heads, head_dim=shape.head_dim)
        bound = codes + most * 8
        self.max_payload_bytes = min(self.message_limit, bound)
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

        The block must be in the session's ``kvCodec`` and the model's KV shape, for a sync layer of
        the schedule, with its rows inside the sender's own slice of the layout (hence in prompt
        order: after every earlier participant's, before every later one's), so that who may attend
        to what is decided by the layout alone.
        """
        if self.layout is None or self.shape is None:
            raise wire.WireError("stale_round", "the prompt layout is not fixed yet: wait for welcome")
        if participant not in self.slices:
            raise wire.WireError("not_in_round", f"{participant} is not in the prompt layout")
        if layer not in self.sync_schedule:
            raise wire.WireError(
                "bad_layer", f"layer {layer} is not a sync layer of this session {sorted(self.sync_schedule)}"
            )
        if layer in self.released:
            raise wire.WireError("stale_round", f"layer {layer} was already synced")
        try:
            part = read_block(arrays, meta, self.spec.kv_codec)
        except ValueError as exc:
            code = "non_finite" if "NaN or Inf" in str(exc) else "shape_mismatch"
            raise wire.WireError(code, f"kv ({self.spec.kv_codec}): {exc}") from None
        barrier = self.barriers.get(layer)
        if barrier is not None and participant in barrier.parts:
            raise wire.WireError("duplicate", f"{participant} already sent KV for layer {layer}")
        self._check_own(participant, layer, part, barrier)
        if barrier is None:
            barrier = self.barriers[layer] = Barrier(layer=layer, expected=self.active)
        try:
            barrier.add(participant, part, wire_form=(list(arrays), dict(meta)))
        except ValueError as exc:
            raise wire.WireError("bad_kv", str(exc)) from None
        return self._release(barrier) if barrier.complete else None

    def _check_own(self, participant: str, layer: int, part: KVPart, barrier: Barrier | None) -> None:
        """The block fits the model's KV shape, follows the prompt order of the blocks already here and
        lies in the sender's own slice; a few pending layers."""
        assert self.shape is not None
        k, _, positions = part
        first, last = self.slices[participant]
        heads, dim = self.shape.n_kv_heads, self.shape.head_dim
        if positions.size and (k.ndim != 3 or (k.shape[0], k.shape[2]) != (heads, dim)):
            raise wire.WireError(
                "bad_kv", f"K/V must be ({heads} heads, T rows, {dim} dims) for this model, got {k.shape}"
            )
        if barrier is not None:
            self._check_order(barrier, participant, positions)
        if positions.size and (positions.size > last - first + 1 or positions.min() < first or positions.max() > last):
            raise wire.WireError(
                "bad_kv",
                f"a block's {positions.size} rows at {int(positions.min())}..{int(positions.max())} must lie in"
                f" {participant}'s slice {first}..{last} of the prompt layout",
            )
        pending = [b.layer for b in self.barriers.values() if participant in b.parts and b.layer != layer]
        if len(pending) >= MAX_PENDING_LAYERS:
            raise wire.WireError(
                "too_many_pending", f"{participant} already waits on layers {sorted(pending)}; wait for kv_global"
            )

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
                raise wire.WireError(
                    "bad_kv",
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
