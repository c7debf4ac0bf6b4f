"""The built-in client: the session's MLP/softmax on its digits shard, written against the same SDK.

Its shard is derived from the session spec and the participant's index (the zero-config demo);
the model is one flat vector named ``params``, seeded like the aggregator's initial model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedattn.api.spec import SessionSpec
from fedattn.client import Context
from fedattn.learning import data, models, session
from fedattn.learning.trainer import TrainConfig, train


class DigitsClient:
    """Trains the built-in model on this participant's Dirichlet shard of digits; ``spec`` is the
    participant's typed view of ``context.spec``."""

    def __init__(self, context: Context, *, spec: SessionSpec) -> None:
        self.index = context.index
        self.arch = session.architecture(spec)
        self.seed = session.seed(spec)
        self.config = TrainConfig.from_spec(spec.training)
        self.test = session.dataset(spec).test
        self.shard = data.participant_split(
            session.dataset(spec),
            index=context.index,
            parts=context.parts,
            alpha=spec.training.dirichlet_alpha,
            seed=self.seed,
        )

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        return [models.init_params(self.arch, seed=self.seed)]

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        round_seed = self.seed * 1_000_003 + int(config["server_round"]) * 101 + self.index
        settings = TrainConfig(self.config.epochs, self.config.batch_size, self.config.learning_rate,
                               proximal_mu=float(config.get("proximal_mu", 0.0)))
        params, loss = train(self.arch, parameters[0], self.shard, settings, seed=round_seed)
        return [params], len(self.shard), {"train_loss": loss}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        loss, _ = models.loss_and_grad(self.arch, parameters[0], self.test.x, self.test.y)
        accuracy = models.accuracy(self.arch, parameters[0], self.test.x, self.test.y)
        return loss, len(self.test), {"accuracy": accuracy}
