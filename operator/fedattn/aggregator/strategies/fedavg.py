"""FedAvg and FedProx, the streaming mean every mean-based rule builds on.

FedAvg streams: updates are folded into a float64 accumulator as they arrive, so memory is O(P)
whatever the number of participants (Flower's ``aggregate`` keeps all N updates and allocates a
weighted copy of each). The fold works in cache-sized chunks: each float32 chunk is widened into a
float64 scratch that stays in cache and added with BLAS ``daxpy``; updates that arrive together (one
burst of the server's socket, at most :data:`FOLD_GROUP`) are folded in one pass over the
accumulator, so its read-modify-write is shared. Measured per CPU second on the 2-core EPYC dev box
(P = 1e7, N = 16, fold only): numpy multiply+add 5.1 GB/s, daxpy 6.4, daxpy in groups of 4 8.2,
groups of 8 8.7, against ~10-12 for a plain copy of the same bytes; a float32 Kahan accumulator was
slower (3.6) and less exact. benchmarks/aggregate.py measures the whole round against Flower.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from scipy.linalg import blas
from threadpoolctl import ThreadpoolController

from fedattn.aggregator.strategies.base import Strategy
from fedattn.api.strategy_params import RULE_PARAMS, Table, parse_params

#: Elements per fold chunk: 128 Ki float64 = 1 MiB of scratch, about one core's L2. Measured (as
#: above, numpy kernel): 8 Ki -> 2.7, 32 Ki -> 3.3, 128 Ki -> 5.1, 1 Mi -> 5.2, whole vector -> 2.9
#: GB/s; smaller chunks pay per-call overhead, larger ones spill the scratch out of L2.
FOLD_CHUNK = 1 << 17
#: Most updates folded in one pass; bounds how many received updates are held before folding.
#: Measured (P = 1e7, N = 16, GB/s per CPU s): 1 -> 6.4, 4 -> 8.2, 8 -> 8.7.
FOLD_GROUP = 8


@functools.cache
def _blas_controller() -> ThreadpoolController:
    return ThreadpoolController()


@contextmanager
def _one_blas_thread() -> Iterator[None]:
    # NB: OpenBLAS threads an axpy over > 10k elements; on a busy 2-core box its thread hand-off made
    # the fold 5-20x slower. Pinned to one thread for the fold only (the server thread's own work).
    with _blas_controller().limit(limits=1, user_api="blas"):
        yield


def fold_weighted(
    acc: np.ndarray,
    updates: Sequence[np.ndarray],
    weights: Sequence[float],
    *,
    scratch: np.ndarray,
    overwrite: bool = False,
) -> None:
    """``acc += sum_i weights[i] * updates[i]`` in place, chunk by chunk, without full-size temporaries.

    ``acc`` is float64 and contiguous; each update may be any float dtype (float32 on the wire) of the
    same length; ``scratch`` is a float64 buffer of at least one chunk, reused across calls. With
    ``overwrite`` the old content of ``acc`` is ignored (``acc = sum ...``), which spares a round
    the full pass that zeroing the accumulator would cost.
    """
    if acc.ndim != 1 or not acc.flags.c_contiguous or acc.dtype != np.float64:
        raise ValueError("the accumulator must be a contiguous float64 vector")
    for update in updates:
        if update.shape != acc.shape:
            raise ValueError(f"update shape {update.shape} does not match accumulator {acc.shape}")
    pairs = [(u, float(w)) for u, w in zip(updates, weights, strict=True)]
    if not pairs:
        return
    chunk = scratch.shape[0]
    with _one_blas_thread():
        for start in range(0, acc.shape[0], chunk):
            stop = min(start + chunk, acc.shape[0])
            tmp, dst = scratch[: stop - start], acc[start:stop]
            rest = pairs
            if overwrite:
                first, w0 = pairs[0]
                np.copyto(dst, first[start:stop])
                blas.dscal(w0, dst)  # in place, like daxpy below
                rest = pairs[1:]
            for update, w in rest:  # NB: dst stays in cache across the group: one DRAM pass for all
                np.copyto(tmp, update[start:stop])
                blas.daxpy(tmp, dst, a=w)  # in place: dst is a contiguous float64 view


class FedAvg(Strategy):
    """Weighted federated averaging, ``sum(w_i x_i) / sum(w_i)``, streamed in O(P) memory."""

    name = "fedavg"
    PARAMS: Table = RULE_PARAMS["fedavg"]
    mean_based = True
    folds_in_batches = True

    def __init__(self, *, size: int, params: Mapping[str, Any] | None = None) -> None:
        self.size = size
        self._acc = np.empty(size, dtype=np.float64)
        self._acc.fill(0.0)  # NB: fault every page in now (at configure), not inside round 1's fold
        self._scratch = np.empty(min(FOLD_CHUNK, max(size, 1)), dtype=np.float64)
        self.weight_total = 0.0
        self.folded = 0

    def begin_round(self, *, round: int, global_params: np.ndarray, n_expected: int | None = None) -> None:
        # NB: no zeroing pass: the round's first fold overwrites the accumulator (``folded == 0``).
        self.weight_total = 0.0
        self.folded = 0

    def fold(self, update: np.ndarray, weight: float) -> None:
        self.fold_many([update], [weight])

    def fold_many(self, updates: Sequence[np.ndarray], weights: Sequence[float]) -> None:
        """Fold several updates in one pass over the accumulator; all are checked before any is folded."""
        for update in updates:
            if update.shape != (self.size,):
                raise ValueError(f"update shape {update.shape} does not match the model ({self.size},)")
        for weight in weights:
            if isinstance(weight, bool) or not weight > 0 or not np.isfinite(weight):
                raise ValueError(f"aggregation weight must be a finite number > 0, got {weight!r}")
        for start in range(0, len(updates), FOLD_GROUP):
            fold_weighted(
                self._acc,
                updates[start : start + FOLD_GROUP],
                weights[start : start + FOLD_GROUP],
                scratch=self._scratch,
                overwrite=self.folded == 0 and start == 0,
            )
        self.weight_total += float(sum(weights))
        self.folded += len(updates)

    def finish(self) -> np.ndarray:
        if self.folded == 0:
            raise ValueError("no update was folded this round")
        # NB: a fresh array each round: the last global model may still be in flight (zero-copy sends).
        out = np.empty(self.size, dtype=np.float32)
        inv = 1.0 / self.weight_total
        chunk = self._scratch.shape[0]
        for start in range(0, self.size, chunk):  # in cache-sized steps, like the fold: 3x faster here
            stop = min(start + chunk, self.size)
            tmp = self._scratch[: stop - start]
            np.multiply(self._acc[start:stop], inv, out=tmp)
            np.copyto(out[start:stop], tmp, casting="same_kind")
        return out


class FedProx(FedAvg):
    """FedAvg on the server; participants add ``mu/2 ||w - w_global||^2`` to their local loss."""

    name = "fedprox"
    PARAMS: Table = RULE_PARAMS["fedprox"]

    def __init__(self, *, size: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(size=size, params=params)
        self.proximal_mu = float(parse_params(self.PARAMS, params, strategy=self.name)["proximal_mu"])

    def client_config(self) -> dict[str, Any]:
        return {"proximal_mu": self.proximal_mu}
