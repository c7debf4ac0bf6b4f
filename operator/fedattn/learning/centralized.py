"""The centralized baseline: the same model, trainer and epochs on the union of all training data.

Federated accuracy is reported against this, so the comparison isolates the cost of federation
(non-IID shards, averaging) from the choice of model and optimiser.
"""

from __future__ import annotations

from typing import Any

from fedattn.learning import data, models
from fedattn.learning.trainer import TrainConfig, train


def session_dataset(spec: dict[str, Any]) -> data.Dataset:
    training = spec.get("training") or {}
    return data.load(
        training.get("dataset", "digits"),
        test_fraction=float(training.get("testFraction", 0.25)),
        seed=int(training.get("seed", 0)),
    )


def session_architecture(spec: dict[str, Any]) -> models.Architecture:
    ds = session_dataset(spec)
    return models.architecture(spec.get("model") or {}, features=ds.features, classes=ds.classes)


def centralized_accuracy(spec: dict[str, Any]) -> float:
    """Held-out accuracy of the session's model trained centrally for rounds x localEpochs epochs."""
    ds = session_dataset(spec)
    arch = session_architecture(spec)
    config = TrainConfig.from_spec(spec.get("training") or {})
    epochs = config.epochs * int(spec.get("rounds", 1))
    seed = int((spec.get("training") or {}).get("seed", 0))
    start = models.init_params(arch, seed=seed)
    params, _ = train(
        arch, start, ds.train, TrainConfig(epochs, config.batch_size, config.learning_rate), seed=seed
    )
    return models.accuracy(arch, params, ds.test.x, ds.test.y)
