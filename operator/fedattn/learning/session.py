"""What a learning session's spec determines for every process alike: data, model, start, evaluation.

The aggregator gets its initial model and its held-out evaluator from here (its ``Hooks``), the
participants their architecture and shard, the runner its centralized baseline: one derivation, so
they cannot disagree about the layout of the parameter vector.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedattn.api.spec import SessionSpec
from fedattn.learning import data, models


def dataset(spec: SessionSpec) -> data.Dataset:
    training = spec.training
    return data.load(training.dataset, test_fraction=training.test_fraction, seed=training.seed)


def architecture(spec: SessionSpec) -> models.Architecture:
    ds = dataset(spec)
    return models.architecture(spec.model, features=ds.features, classes=ds.classes)


def seed(spec: SessionSpec) -> int:
    return spec.training.seed


def builtin(spec: SessionSpec) -> bool:
    """Whether the session trains a built-in model (else ``model.name: client``: the participants' own)."""
    return spec.model is None or spec.model.name != "client"


def initial_params(session: str, spec: SessionSpec) -> np.ndarray | None:
    """The round-1 global model: seeded, so a restarted aggregator starts from the same point (None
    for the participants' own model)."""
    return models.init_params(architecture(spec), seed=seed(spec)) if builtin(spec) else None


def evaluator(session: str, spec: SessionSpec) -> Callable[[np.ndarray], float] | None:
    """Held-out accuracy of a global model on the session's test split (never trained on), unless the
    session turned server-side evaluation off (``training.evaluate: false``) or trains the
    participants' own model (evaluated by them: ``spec.evaluation``)."""
    if not builtin(spec) or not spec.training.evaluate:
        return None
    ds, arch = dataset(spec), architecture(spec)
    return lambda params: models.accuracy(arch, params, ds.test.x, ds.test.y)
