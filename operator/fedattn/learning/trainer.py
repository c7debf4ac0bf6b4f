"""Local training for the built-in models: mini-batch SGD, with FedProx's proximal term when asked."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedattn.api.spec import TrainingSpec
from fedattn.learning.data import Split
from fedattn.learning.models import Architecture, loss_and_grad


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float = 0.0  # NB: not a spec field; 0 is plain SGD

    @classmethod
    def from_spec(cls, training: TrainingSpec) -> TrainConfig:
        """Local training settings from ``spec.training``; FedProx's mu comes with each model instead
        (the server's strategy owns it, see ``Strategy.client_config``)."""
        return cls(epochs=training.local_epochs, batch_size=training.batch_size, learning_rate=training.learning_rate)


def train(
    arch: Architecture, start: np.ndarray, data: Split, config: TrainConfig, *, seed: int
) -> tuple[np.ndarray, float]:
    """Train from ``start`` on ``data``; returns the new parameters and the mean training loss.

    With ``proximal_mu`` > 0 the gradient gains ``mu * (w - start)`` (FedProx), which keeps a client
    on skewed data from drifting far from the global model.
    """
    rng = np.random.default_rng(seed)
    params = start.astype(np.float32, copy=True)
    losses = []
    for _ in range(config.epochs):
        order = rng.permutation(len(data))
        for begin in range(0, len(order), config.batch_size):
            batch = order[begin : begin + config.batch_size]
            loss, grad = loss_and_grad(arch, params, data.x[batch], data.y[batch])
            if config.proximal_mu:
                grad += config.proximal_mu * (params - start)
            params -= config.learning_rate * grad
            losses.append(loss)
    return params, float(np.mean(losses)) if losses else 0.0
