"""The centralized baseline: the same model, trainer and epochs on the union of all training data.

Federated accuracy is reported against this, so the comparison isolates the cost of federation
(non-IID shards, averaging) from the choice of model and optimiser.
"""

from __future__ import annotations

from dataclasses import replace

from fedattn.api.spec import SessionSpec
from fedattn.learning import models, session
from fedattn.learning.trainer import TrainConfig, train


def centralized_accuracy(spec: SessionSpec) -> float:
    """Held-out accuracy of the session's model trained centrally for rounds x localEpochs epochs."""
    ds, arch = session.dataset(spec), session.architecture(spec)
    config = TrainConfig.from_spec(spec.training)
    params, _ = train(
        arch,
        session.initial_params("centralized", spec),
        ds.train,
        replace(config, epochs=config.epochs * spec.rounds),
        seed=session.seed(spec),
    )
    return models.accuracy(arch, params, ds.test.x, ds.test.y)
