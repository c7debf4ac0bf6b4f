"""Assembling the global K/V at a sync layer, and an in-memory exchange for tests and benchmarks.

``union_kv`` is the aggregator's rule too: rows are placed at their global positions (a union
along the token axis, never an average).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

KV = tuple[np.ndarray, np.ndarray, np.ndarray]  # k, v (n_kv_heads, T, head_dim) float32; positions (T,) int64
Exchange = Callable[[int, np.ndarray, np.ndarray, np.ndarray], KV]


def union_kv(parts: Sequence[KV]) -> KV:
    """Concatenate participants' rows and sort them by global position; positions must be distinct."""
    if not parts:
        raise ValueError("union of no participants")
    shape = parts[0][0].shape
    for k, v, positions in parts:
        if k.ndim != 3 or k.shape[0] != shape[0] or k.shape[2] != shape[2] or v.shape != k.shape:
            raise ValueError(
                f"K/V shapes {k.shape}/{v.shape} do not match (n_kv_heads, T, head_dim) = {shape}"
            )
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


def rows_up_to(kv: KV, max_position: int) -> KV:
    """The rows a participant may receive: none beyond its own last position (protocol rule)."""
    k, v, positions = kv
    keep = positions <= max_position
    return k[:, keep], v[:, keep], positions[keep]


class MemoryExchange:
    """All participants in one process: each sync is a barrier, then every one takes the union."""

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
                parts = [self._parts[(layer, i)] for i in range(self._n)]
            return rows_up_to(union_kv(parts), int(positions.max()) if positions.size else -1)

        return exchange

    def abort(self) -> None:
        """Release every waiting participant (they get BrokenBarrierError) after one has failed."""
        self._barrier.abort()
