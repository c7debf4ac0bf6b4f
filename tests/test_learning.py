"""The built-in trainer's pieces: partitions, gradients (against finite differences), training."""

from dataclasses import replace

import numpy as np
import pytest

from fedattn.api.spec import ModelSpec, SessionSpec
from fedattn.learning import data, models
from fedattn.learning.centralized import centralized_accuracy
from fedattn.learning.trainer import TrainConfig, train


def _model(name: str, hidden_units: int | None = None) -> ModelSpec | None:
    """``spec.model`` as the typed reader gives it (the schema's hiddenUnits unless given)."""
    model = {"name": name} if hidden_units is None else {"name": name, "hiddenUnits": hidden_units}
    return SessionSpec.from_manifest({"mode": "learning", "model": model}).model


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", test_fraction=0.25, seed=3)


def test_split_is_stratified_and_disjoint(digits):
    assert len(digits.train) + len(digits.test) == 1797
    train_counts = np.bincount(digits.train.y, minlength=10) / len(digits.train)
    test_counts = np.bincount(digits.test.y, minlength=10) / len(digits.test)
    assert np.abs(train_counts - test_counts).max() < 0.02
    assert digits.train.x.dtype == np.float32 and digits.train.x.max() <= 1.0


@pytest.mark.parametrize("alpha", [0.1, 0.5, 100.0])
def test_dirichlet_partition_covers_every_sample_once(digits, alpha):
    shards = data.dirichlet_partition(digits.train.y, parts=5, alpha=alpha, seed=11)
    joined = np.concatenate(shards)
    assert len(joined) == len(digits.train) and len(np.unique(joined)) == len(joined)
    assert all(len(s) > 0 for s in shards)


def test_small_alpha_is_more_skewed_than_large(digits):
    def skew(alpha):
        shards = data.dirichlet_partition(digits.train.y, parts=5, alpha=alpha, seed=11)
        return np.mean([np.bincount(digits.train.y[s], minlength=10).max() / len(s) for s in shards])

    assert skew(0.1) > skew(100.0) + 0.2


def test_partition_is_deterministic_per_seed(digits):
    a = data.dirichlet_partition(digits.train.y, parts=4, alpha=0.5, seed=1)
    b = data.dirichlet_partition(digits.train.y, parts=4, alpha=0.5, seed=1)
    c = data.dirichlet_partition(digits.train.y, parts=4, alpha=0.5, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_bad_dataset_arguments_are_explained():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("mnist", test_fraction=0.2, seed=0)
    with pytest.raises(ValueError, match="testFraction"):
        data.load("digits", test_fraction=1.5, seed=0)
    with pytest.raises(ValueError, match="dirichletAlpha"):
        data.dirichlet_partition(np.zeros(10, dtype=int), parts=2, alpha=0.0, seed=0)


@pytest.mark.parametrize("name", ["softmax", "mlp"])
def test_gradient_matches_finite_differences(digits, name):
    arch = models.architecture(_model(name, hidden_units=8), features=64, classes=10)
    params = models.init_params(arch, seed=0).astype(np.float64)
    x, y = digits.train.x[:16].astype(np.float64), digits.train.y[:16]
    _, grad = models.loss_and_grad(arch, params, x, y)
    rng = np.random.default_rng(0)
    for i in rng.choice(arch.size, size=12, replace=False):
        step = np.zeros_like(params)
        step[i] = 1e-6
        numeric = (models.loss_and_grad(arch, params + step, x, y)[0]
                   - models.loss_and_grad(arch, params - step, x, y)[0]) / 2e-6
        assert grad[i] == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_views_reject_wrong_size():
    arch = models.architecture(_model("softmax"), features=64, classes=10)
    with pytest.raises(ValueError, match="needs 650 parameters"):
        arch.views(np.zeros(10, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown model"):
        models.architecture(_model("resnet"), features=64, classes=10)


def test_training_reduces_loss_and_fedprox_stays_closer_to_start(digits):
    arch = models.architecture(_model("mlp", hidden_units=16), features=64, classes=10)
    start = models.init_params(arch, seed=0)
    before, _ = models.loss_and_grad(arch, start, digits.train.x, digits.train.y)
    config = TrainConfig(epochs=2, batch_size=32, learning_rate=0.1)
    plain, _ = train(arch, start, digits.train, config, seed=0)
    prox, _ = train(arch, start, digits.train, replace(config, proximal_mu=1.0), seed=0)
    after, _ = models.loss_and_grad(arch, plain, digits.train.x, digits.train.y)
    assert after < before / 2
    assert np.linalg.norm(prox - start) < np.linalg.norm(plain - start)


def test_centralized_baseline_learns_digits():
    spec = {"mode": "learning", "rounds": 5, "model": {"name": "mlp", "hiddenUnits": 32},
            "training": {"dataset": "digits", "testFraction": 0.25, "seed": 1, "localEpochs": 2}}
    assert centralized_accuracy(SessionSpec.from_manifest(spec)) > 0.9
