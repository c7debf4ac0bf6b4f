"""Datasets for the built-in trainer: scikit-learn's digits, a seeded held-out split, non-IID partitions.

Every process derives the same split and partition from the session spec alone (dataset, test
fraction, Dirichlet alpha, seed), so a participant's slice never crosses the wire and the aggregator
can evaluate on the same held-out set the participants never trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


@dataclass(frozen=True)
class Split:
    """Features scaled to [0, 1] (float32) and integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dataset:
    train: Split
    test: Split
    classes: int
    features: int


@lru_cache(maxsize=4)
def load(name: str, *, test_fraction: float, seed: int) -> Dataset:
    """The named dataset with a stratified, seeded train/test split."""
    if name != "digits":
        raise ValueError(f"unknown dataset {name!r}; the built-in trainer knows: digits")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"testFraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset(Split(x_tr, y_tr), Split(x_te, y_te), classes=10, features=x.shape[1])


def dirichlet_partition(labels: np.ndarray, *, parts: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Split sample indices into ``parts`` non-IID shards: per class, shares drawn from Dir(alpha).

    Smaller alpha gives more skewed label distributions. Every shard gets at least one sample (a
    participant with no data could not contribute), by redrawing with the next seed if needed.
    """
    if parts < 1:
        raise ValueError("parts must be >= 1")
    if alpha <= 0:
        raise ValueError(f"dirichletAlpha must be > 0, got {alpha}")
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        shards: list[list[int]] = [[] for _ in range(parts)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            cuts = (np.cumsum(rng.dirichlet(np.full(parts, alpha))) * len(idx)).astype(int)[:-1]
            for shard, chunk in zip(shards, np.split(idx, cuts), strict=True):
                shard.extend(chunk.tolist())
        if all(shards):
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ValueError(f"could not give each of {parts} participants a sample with alpha={alpha}")


def participant_split(dataset: Dataset, *, index: int, parts: int, alpha: float, seed: int) -> Split:
    """The private training shard of participant ``index`` of ``parts``."""
    if not 0 <= index < parts:
        raise ValueError(f"participant index {index} out of range for {parts} participants")
    shard = dirichlet_partition(dataset.train.y, parts=parts, alpha=alpha, seed=seed)[index]
    return Split(dataset.train.x[shard], dataset.train.y[shard])
