"""Aggregation strategies: how the updates of one round become the next global model.

A strategy sees one round at a time: ``begin_round`` hands it the current global model,
``fold`` is called once per accepted update as it arrives, ``finish`` returns the new global model.
The server never looks inside, so robust rules (Krum, median, trimmed mean: one preallocated
``(N, P)`` buffer filled by ``fold``) and server optimisers (FedAdam, FedYogi, FedAvgM: moments kept
across rounds on the instance) plug in through ``fedattn.aggregator.strategies.build_strategy``
without touching the server.

FedAvg streams: each update is folded into a float64 accumulator the moment it arrives, so memory is
O(P) whatever the number of participants (Flower's ``aggregate`` keeps all N updates and allocates a
weighted copy of each). The fold works in cache-sized chunks: the float32 update is widened into a
small float64 scratch that stays in cache, scaled in place and added, so the only full-size traffic is
one read of the update and one read-modify-write of the accumulator. A BLAS ``daxpy`` on the same
chunks is ~20 % faster only with OpenBLAS pinned to one thread (its threaded axpy is 5-20x slower on
a busy 2-core box), which would mean changing process-wide BLAS state: not worth it; see
benchmarks/aggregate.py for both and for a float32 Kahan accumulator (no faster, less exact).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

#: Elements per fold chunk: 128 Ki float64 = 1 MiB of scratch, about one core's L2. Measured on the
#: 2-core EPYC dev box (benchmarks/aggregate.py): 8 Ki -> 2.7, 32 Ki -> 3.3, 128 Ki -> 5.1, 1 Mi -> 5.2,
#: whole vector -> 2.9 GB/s of float32 update folded per CPU second; smaller chunks pay per-call overhead.
FOLD_CHUNK = 1 << 17


class Strategy(Protocol):
    """Life cycle of one aggregation rule; one instance per session, reused across rounds."""

    def begin_round(self, *, round: int, global_params: np.ndarray) -> None:
        """Reset per-round state; ``global_params`` is the model sent to participants this round."""

    def fold(self, update: np.ndarray, weight: float) -> None:
        """Take one participant's update (float32, shape (P,)) with its aggregation weight > 0."""

    def finish(self) -> np.ndarray:
        """The new global model (float32, shape (P,)); only called after at least one fold."""

    def client_config(self) -> dict[str, Any]:
        """Strategy parameters participants need with the model (e.g. FedProx's ``proximal_mu``)."""


def fold_weighted(acc: np.ndarray, update: np.ndarray, weight: float, *, scratch: np.ndarray) -> None:
    """``acc += weight * update`` in place, chunk by chunk, without a full-size temporary.

    ``acc`` is float64; ``update`` may be any float dtype (float32 on the wire) of the same length;
    ``scratch`` is a float64 buffer of at least one chunk, reused across calls.
    """
    if acc.shape != update.shape or acc.ndim != 1:
        raise ValueError(f"update shape {update.shape} does not match accumulator {acc.shape}")
    chunk = scratch.shape[0]
    w = float(weight)
    for start in range(0, acc.shape[0], chunk):
        stop = min(start + chunk, acc.shape[0])
        tmp = scratch[: stop - start]
        np.copyto(tmp, update[start:stop])  # NB: widening copy into L2-resident scratch
        np.multiply(tmp, w, out=tmp)
        dst = acc[start:stop]
        np.add(dst, tmp, out=dst)


class FedAvg:
    """Weighted federated averaging, ``sum(w_i x_i) / sum(w_i)``, streamed in O(P) memory."""

    def __init__(self, *, size: int, params: Mapping[str, Any] | None = None) -> None:
        self.size = size
        self._acc = np.zeros(size, dtype=np.float64)
        self._scratch = np.empty(min(FOLD_CHUNK, max(size, 1)), dtype=np.float64)
        self.weight_total = 0.0
        self.folded = 0

    def begin_round(self, *, round: int, global_params: np.ndarray) -> None:
        self._acc.fill(0.0)
        self.weight_total = 0.0
        self.folded = 0

    def fold(self, update: np.ndarray, weight: float) -> None:
        if not weight > 0 or not np.isfinite(weight):
            raise ValueError(f"aggregation weight must be a finite number > 0, got {weight!r}")
        fold_weighted(self._acc, update, weight, scratch=self._scratch)
        self.weight_total += float(weight)
        self.folded += 1

    def finish(self) -> np.ndarray:
        if self.folded == 0:
            raise ValueError("no update was folded this round")
        out = np.empty(self.size, dtype=np.float32)
        np.multiply(self._acc, 1.0 / self.weight_total, out=out, casting="same_kind")
        return out

    def client_config(self) -> dict[str, Any]:
        return {}


class FedProx(FedAvg):
    """FedAvg on the server; participants add ``mu/2 ||w - w_global||^2`` to their local loss."""

    def __init__(self, *, size: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(size=size, params=params)
        mu = float((params or {}).get("proximalMu", 0.01))
        if not mu >= 0:
            raise ValueError(f"proximalMu must be >= 0, got {mu}")
        self.proximal_mu = mu

    def client_config(self) -> dict[str, Any]:
        return {"proximal_mu": self.proximal_mu}
