"""Assembling the global K/V at a sync layer, and an in-memory exchange for tests and benchmarks.

``union_kv`` is the aggregator's rule too: rows are placed at their global positions (a union
along the token axis, never an average).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedattn.attention.kvcodec import KEY_AXIS, VALUE_AXIS, KVCodec, block_dims, encode, frames, from_frames

KV = tuple[np.ndarray, np.ndarray, np.ndarray]  # k, v (n_kv_heads, T, head_dim) float32; positions (T,) int64
Exchange = Callable[[int, np.ndarray, np.ndarray, np.ndarray], KV]


def union_kv(parts: Sequence[KV]) -> KV:
    """Concatenate participants' rows and sort them by global position; positions must be distinct.

    Blocks without rows (a publisher has nothing anyone attends to) are left out.
    """
    if not parts:
        raise ValueError("union of no participants")
    parts = [p for p in parts if p[2].shape[0]] or parts[:1]
    shape = parts[0][0].shape
    for k, v, positions in parts:
        if k.ndim != 3 or k.shape[0] != shape[0] or k.shape[2] != shape[2] or v.shape != k.shape:
            raise ValueError(f"K/V shapes {k.shape}/{v.shape} do not match (n_kv_heads, T, head_dim) = {shape}")
        if positions.shape != (k.shape[1],):
            raise ValueError(f"positions shape {positions.shape} does not match {k.shape[1]} K/V rows")
    positions = np.concatenate([p for _, _, p in parts]).astype(np.int64)
    order = np.argsort(positions, kind="stable")
    positions = positions[order]
    if positions.size > 1 and (np.diff(positions) == 0).any():
        dup = positions[1:][np.diff(positions) == 0]
        raise ValueError(f"duplicate global positions across participants: {dup[:8].tolist()}")
    k = np.concatenate([k for k, _, _ in parts], axis=1)[:, order]
    v = np.concatenate([v for _, v, _ in parts], axis=1)[:, order]
    return k, v, positions


def before(parts: Sequence[KV]) -> KV:
    """What a participant receives: the union of the participants' before it in prompt order (none
    of them after it: attention is causal), empty for the first one."""
    if not parts:
        empty = np.zeros((0, 0, 0), np.float32)
        return empty, empty, np.zeros(0, np.int64)
    return union_kv(parts)


class MemoryExchange:
    """All participants in one process (endpoints in prompt order): each sync is a barrier, then every
    one takes the union of the blocks before its own, as the aggregator forwards them."""

    def __init__(self, n_participants: int):
        self._n = n_participants
        self._barrier = threading.Barrier(n_participants)
        self._lock = threading.Lock()
        self._parts: dict[tuple[int, int], KV] = {}

    def endpoint(self, participant: int) -> Exchange:
        def exchange(layer: int, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> KV:
            with self._lock:
                if (layer, participant) in self._parts:
                    raise ValueError(f"participant {participant} sent layer {layer} twice")
                self._parts[(layer, participant)] = (k, v, positions)
            self._barrier.wait()
            with self._lock:
                parts = [self._parts[(layer, i)] for i in range(participant)]
            return before(parts)

        return exchange

    def abort(self) -> None:
        """Release every waiting participant (they get BrokenBarrierError) after one has failed."""
        self._barrier.abort()


# --- K/V blocks on the wire -------------------------------------------------------------------------
#
# A block is one participant's rows at one layer: the codec's frames (kvcodec.frames) and its
# positions, which travel as meta {"start", "count"} when contiguous (every dense block) and as a
# trailing int64 array otherwise (kvKeepRatio < 1). A ``kv`` message is one block; a ``kv_global``
# reply is the blocks a participant attends to, back to back, described by meta["blocks"].


def block_message(k: np.ndarray, v: np.ndarray, positions: np.ndarray, codec: KVCodec | str):
    """(arrays, meta) of one block; ``k``/``v`` are float32 rows already as receivers will see them."""
    positions = np.asarray(positions, dtype=np.int64)
    count = int(positions.shape[0])
    if count == 0:
        return [], {"start": 0, "count": 0}  # NB: no rows, no frames (and no scales to send)
    arrays = frames(encode(k, codec, axis=KEY_AXIS), encode(v, codec, axis=VALUE_AXIS))
    if (np.diff(positions) == 1).all():
        return arrays, {"start": int(positions[0]), "count": count}
    return [*arrays, positions], {"count": count}


def read_block(arrays: Sequence[np.ndarray], meta: Mapping, codec: KVCodec | str) -> KV:
    """The decoded (k, v, positions) of a block.

    Raises ValueError naming what is wrong: counts, positions or frames that do not fit the codec.
    """
    count, start = meta.get("count"), meta.get("start")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise ValueError(f"a K/V block needs meta count >= 0, got {count!r}")
    arrays = list(arrays)
    if count == 0:
        if arrays:
            raise ValueError(f"a K/V block without rows carries no arrays, got {len(arrays)}")
        empty = np.zeros((0, 0, 0), np.float32)
        return empty, empty, np.zeros(0, np.int64)
    if start is None:
        if not arrays or arrays[-1].dtype != np.int64 or arrays[-1].shape != (count,):
            raise ValueError(f"a K/V block without a start needs its {count} positions as a trailing int64 array")
        positions, arrays = np.asarray(arrays[-1]), arrays[:-1]
    elif isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        positions = np.arange(start, start + count, dtype=np.int64)
    else:
        raise ValueError(f"a K/V block's start must be an integer >= 0, got {start!r}")
    n_kv_heads, head_dim = block_dims(arrays, codec)
    k, v = from_frames(arrays, codec, n_rows=count, n_kv_heads=n_kv_heads, head_dim=head_dim)
    return k, v, positions


def read_reply(arrays: Sequence[np.ndarray], blocks: Sequence[Mapping], codec: KVCodec | str) -> KV:
    """The union of the blocks of a ``kv_global`` reply (empty rows when there are none)."""
    per_block = len(
        frames(
            encode(np.zeros((1, 0, 1), np.float32), codec, axis=KEY_AXIS),
            encode(np.zeros((1, 0, 1), np.float32), codec, axis=VALUE_AXIS),
        )
    )
    parts, at = [], 0
    for meta in blocks:
        size = per_block + (0 if "start" in meta else 1)
        parts.append(read_block(arrays[at : at + size], meta, codec))
        at += size
    if at != len(arrays):
        raise ValueError(f"a kv_global reply has {len(arrays)} arrays, its blocks describe {at}")
    return before(parts)
