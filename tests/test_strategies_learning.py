"""The rules on real federated training: digits, non-IID shards, the built-in trainer, with and without attackers.

Single process, no sockets: what is under test is what each rule makes of real updates, round after
round (server optimizer state, robust selection, DP noise, compression with error feedback).
"""

from __future__ import annotations

import numpy as np
import pytest

from fedattn.aggregator.strategies import build_strategy
from fedattn.aggregator.strategies.private import DifferentiallyPrivate
from fedattn.api.spec import ModelSpec
from fedattn.learning import data, models, trainer
from fedattn.learning.compression import CompressionSpec, ErrorFeedback, decode, encode
from fedattn.learning.privacy import DPSettings

PARTS = 8
ROUNDS = 12
EPOCHS = 3
ALPHA = 5.0


@pytest.fixture(scope="module")
def setup():
    ds = data.load("digits", test_fraction=0.25, seed=0)
    softmax = ModelSpec(name="softmax", source=None, hidden_units=1, initial=None)  # NB: softmax has no hidden layer
    arch = models.architecture(softmax, features=ds.features, classes=ds.classes)
    shards = [data.participant_split(ds, index=i, parts=PARTS, alpha=ALPHA, seed=0) for i in range(PARTS)]
    return ds, arch, shards


def _simulate(setup, strategy, *, attackers=0, send=None, rounds=ROUNDS):
    """Accuracy on the held-out split after ``rounds``; attackers send ``global - 20 * honest delta``."""
    ds, arch, shards = setup
    config = trainer.TrainConfig(epochs=EPOCHS, batch_size=32, learning_rate=0.3)
    g = models.init_params(arch, seed=0)
    for r in range(1, rounds + 1):
        strategy.begin_round(round=r, global_params=g)
        for i, shard in enumerate(shards):
            local, _ = trainer.train(arch, g, shard, config, seed=r * 100 + i)
            if i < attackers:
                local = g - 20.0 * (local - g)
            if send is not None:
                local = send(i, g, local)
            strategy.fold(local.astype(np.float32), float(len(shard)))
        g = strategy.finish()
    return models.accuracy(arch, g, ds.test.x, ds.test.y)


@pytest.fixture(scope="module")
def fedavg_accuracy(setup):
    return _simulate(setup, build_strategy("fedavg", size=setup[1].size))


@pytest.fixture(scope="module")
def poisoned_fedavg_accuracy(setup):
    return _simulate(setup, build_strategy("fedavg", size=setup[1].size), attackers=2)


def test_fedavg_learns_digits(fedavg_accuracy):
    assert fedavg_accuracy > 0.85


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fedavgm", {"serverMomentum": 0.5}),
        ("fedadam", {"serverLearningRate": 0.03}),
        ("fedyogi", {"serverLearningRate": 0.03}),
        ("fedadagrad", {}),
    ],
)
def test_server_optimizers_learn_as_well_as_fedavg(setup, fedavg_accuracy, name, params):
    assert _simulate(setup, build_strategy(name, params, size=setup[1].size)) > fedavg_accuracy - 0.05


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("krum", {"byzantine": 2}),
        ("multikrum", {"byzantine": 2, "selected": 4}),
        ("median", {}),
        ("trimmedmean", {"trimFraction": 0.25}),
    ],
)
def test_robust_rules_withstand_two_attackers_that_break_fedavg(setup, poisoned_fedavg_accuracy, name, params):
    assert poisoned_fedavg_accuracy < 0.5
    assert _simulate(setup, build_strategy(name, params, size=setup[1].size), attackers=2) > 0.85


def test_dp_fedavg_still_learns_with_noise(setup, fedavg_accuracy):
    dp = DPSettings.from_manifest({"noiseMultiplier": 0.5, "clipNorm": 1.0, "targetEpsilon": 1000.0})
    size = setup[1].size
    inner = build_strategy("fedavg", size=size)
    strategy = DifferentiallyPrivate.from_settings(dp, inner, size=size, rng=np.random.default_rng(0))
    accuracy = _simulate(setup, strategy)
    assert accuracy > 0.85
    budget = dp.budget()
    for _ in range(ROUNDS):
        budget.record_round()
    assert 0 < budget.epsilon_spent < 1000.0


def test_topk_int8_with_error_feedback_keeps_fedavg_accuracy_and_beats_dropping(setup, fedavg_accuracy):
    size = setup[1].size
    spec = CompressionSpec(quantize_bits=8, top_k=0.1, chunk=64)
    feedback = [ErrorFeedback(size=size, spec=spec) for _ in range(PARTS)]

    def with_feedback(i, g, local):
        arrays, meta = feedback[i].compress(local - g)
        return g + decode(arrays, meta, size=size)

    def without_feedback(i, g, local):
        arrays, meta = encode(local - g, spec=spec)
        return g + decode(arrays, meta, size=size)

    kept = _simulate(setup, build_strategy("fedavg", size=size), send=with_feedback)
    dropped = _simulate(setup, build_strategy("fedavg", size=size), send=without_feedback)
    assert kept > fedavg_accuracy - 0.02
    assert kept > dropped
