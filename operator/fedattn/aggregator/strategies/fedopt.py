"""Server optimizers on the FedAvg pseudo-gradient: FedAvgM, FedAdam, FedYogi, FedAdagrad.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2: with the pseudo-gradient
``delta = mean(local models) - global``, ``m = beta1 m + (1 - beta1) delta``, a rule-specific second
moment ``v`` (Adam: EMA of delta^2; Yogi: sign-controlled additive; Adagrad: running sum), and
``global += eta * m / (sqrt(v) + tau)``. As in the paper ``v`` starts at ``tau^2`` (``v_{-1} >= tau^2``)
and no bias correction is applied. FedAvgM (Hsu et al. 2019) is heavy-ball momentum on ``delta``.
Defaults follow Flower's (``eta``, ``beta_1``, ``beta_2``, ``tau`` there; camelCase in the CRD; the
tables are ``fedattn.api.strategy_params.RULE_PARAMS``).

The moment updates are plain in-place functions over numpy arrays. The classes stream the round's
mean exactly like FedAvg (they are FedAvg plus a step in ``finish``) and keep O(P) float64 state
(``m``, ``v``) across rounds, which ``state_dict`` exports for checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedattn.aggregator.strategies.fedavg import FedAvg
from fedattn.api.strategy_params import RULE_PARAMS, StrategyError, Table, parse_params


def momentum_update(m: np.ndarray, delta: np.ndarray, *, momentum: float) -> None:
    """Heavy-ball buffer in place: ``m = momentum * m + delta`` (FedAvgM, Flower's convention)."""
    m *= momentum
    m += delta


def first_moment_update(m: np.ndarray, delta: np.ndarray, *, beta1: float) -> None:
    """``m = beta1 m + (1 - beta1) delta`` in place."""
    m *= beta1
    m += (1.0 - beta1) * delta


def adam_second_moment(v: np.ndarray, delta: np.ndarray, *, beta2: float) -> None:
    """``v = beta2 v + (1 - beta2) delta^2`` in place."""
    v *= beta2
    v += (1.0 - beta2) * np.square(delta)


def yogi_second_moment(v: np.ndarray, delta: np.ndarray, *, beta2: float) -> None:
    """``v = v - (1 - beta2) delta^2 sign(v - delta^2)`` in place (Zaheer et al.'s Yogi)."""
    sq = np.square(delta)
    v -= (1.0 - beta2) * sq * np.sign(v - sq)


def adagrad_second_moment(v: np.ndarray, delta: np.ndarray, *, beta2: float) -> None:
    """``v = v + delta^2`` in place (``beta2`` unused: Adagrad never forgets)."""
    del beta2
    v += np.square(delta)


def adaptive_step(m: np.ndarray, v: np.ndarray, *, eta: float, tau: float) -> np.ndarray:
    """The server step ``eta * m / (sqrt(v) + tau)``."""
    return eta * m / (np.sqrt(v) + tau)


class _ServerOptimizer(FedAvg):
    """FedAvg's streaming mean, then a server step on ``delta`` with O(P) state kept across rounds."""

    STATE_KEYS: tuple[str, ...] = ("m",)

    def __init__(self, *, size: int, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(size=size, params=params)
        for attr, value in parse_params(self.PARAMS, params, strategy=self.name).items():
            setattr(self, attr, value)
        self._global = np.zeros(size)
        self._state = {key: self._initial(key) for key in self.STATE_KEYS}

    def _initial(self, key: str) -> np.ndarray:
        return np.zeros(self.size)

    def begin_round(self, *, round: int, global_params: np.ndarray, n_expected: int | None = None) -> None:
        super().begin_round(round=round, global_params=global_params, n_expected=n_expected)
        if global_params.shape != (self.size,):
            raise StrategyError(f"global model has shape {global_params.shape}, strategy expects ({self.size},)")
        np.copyto(self._global, global_params)

    def finish(self) -> np.ndarray:
        if self.folded == 0:
            raise StrategyError("no update was folded this round")
        delta = self._acc / self.weight_total - self._global
        return (self._global + self._step(delta)).astype(np.float32)

    def _step(self, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Optimizer moments (float64 copies) for a checkpoint."""
        return {key: value.copy() for key, value in self._state.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`'s output; rejects missing keys, wrong shapes and non-finite values."""
        if set(state) != set(self.STATE_KEYS):
            raise StrategyError(f"{self.name} state needs keys {sorted(self.STATE_KEYS)}, got {sorted(state)}")
        for key in self.STATE_KEYS:
            value = np.asarray(state[key])
            if value.shape != (self.size,) or not np.all(np.isfinite(value)):
                raise StrategyError(f"{self.name} state {key!r} must be finite with shape ({self.size},)")
        self._state = {key: np.array(state[key], dtype=np.float64) for key in self.STATE_KEYS}


class FedAvgM(_ServerOptimizer):
    """FedAvg with server momentum: ``m = momentum m + delta``, ``global += lr * m``."""

    name = "fedavgm"
    PARAMS: Table = RULE_PARAMS["fedavgm"]
    server_learning_rate: float
    server_momentum: float

    def _step(self, delta: np.ndarray) -> np.ndarray:
        momentum_update(self._state["m"], delta, momentum=self.server_momentum)
        return self.server_learning_rate * self._state["m"]


class FedAdam(_ServerOptimizer):
    """Adam on the pseudo-gradient (Reddi et al. FedAdam)."""

    name = "fedadam"
    PARAMS: Table = RULE_PARAMS["fedadam"]
    STATE_KEYS = ("m", "v")
    second_moment = staticmethod(adam_second_moment)
    server_learning_rate: float
    beta1: float
    beta2: float = 0.0
    tau: float

    def _initial(self, key: str) -> np.ndarray:
        return np.full(self.size, self.tau**2) if key == "v" else np.zeros(self.size)

    def _step(self, delta: np.ndarray) -> np.ndarray:
        m, v = self._state["m"], self._state["v"]
        first_moment_update(m, delta, beta1=self.beta1)
        self.second_moment(v, delta, beta2=self.beta2)
        return adaptive_step(m, v, eta=self.server_learning_rate, tau=self.tau)


class FedYogi(FedAdam):
    """Yogi on the pseudo-gradient: ``v`` grows or shrinks additively, so it cannot blow up like Adam's."""

    name = "fedyogi"
    PARAMS: Table = RULE_PARAMS["fedyogi"]
    second_moment = staticmethod(yogi_second_moment)


class FedAdagrad(FedAdam):
    """Adagrad on the pseudo-gradient: ``v`` is the running sum of ``delta^2``."""

    name = "fedadagrad"
    PARAMS: Table = RULE_PARAMS["fedadagrad"]
    second_moment = staticmethod(adagrad_second_moment)
    beta1 = 0.0  # NB: as Flower's FedAdagrad: no first-moment averaging, the step uses delta itself
