"""What a learning session's spec determines for every process alike: data, model, start, evaluation.

The aggregator gets its initial model and its held-out evaluator from here (its ``Hooks``), the
participants their architecture and shard, the runner its centralized baseline: one derivation, so
they cannot disagree about the layout of the parameter vector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedattn.learning import data, models


def dataset(spec: Mapping[str, Any]) -> data.Dataset:
    training = spec.get("training") or {}
    return data.load(
        training.get("dataset", "digits"),
        test_fraction=float(training.get("testFraction", 0.25)),
        seed=int(training.get("seed", 0)),
    )


def architecture(spec: Mapping[str, Any]) -> models.Architecture:
    ds = dataset(spec)
    return models.architecture(spec.get("model") or {}, features=ds.features, classes=ds.classes)


def seed(spec: Mapping[str, Any]) -> int:
    return int((spec.get("training") or {}).get("seed", 0))


def builtin(spec: Mapping[str, Any]) -> bool:
    """Whether the session trains a built-in model (else ``model.name: client``: the participants' own)."""
    return (spec.get("model") or {}).get("name") != "client"


def initial_params(session: str, spec: Mapping[str, Any]) -> np.ndarray | None:
    """The round-1 global model: seeded, so a restarted aggregator starts from the same point (None
    for the participants' own model)."""
    return models.init_params(architecture(spec), seed=seed(spec)) if builtin(spec) else None


def evaluator(session: str, spec: Mapping[str, Any]) -> Callable[[np.ndarray], float] | None:
    """Held-out accuracy of a global model on the session's test split (never trained on), unless the
    session turned server-side evaluation off (``training.evaluate: false``) or trains the
    participants' own model (evaluated by them: ``spec.evaluation``)."""
    if not builtin(spec) or not (spec.get("training") or {}).get("evaluate", True):
        return None
    ds, arch = dataset(spec), architecture(spec)
    return lambda params: models.accuracy(arch, params, ds.test.x, ds.test.y)
