"""Reading one site's CSV files (what every example client here shares; copy it with your client).

Features are standardized with the site's own training statistics: a site never sees another's data,
not even its mean. The centralized baselines standardize the union the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Site:
    x_train: np.ndarray  # float32, standardized
    y_train: np.ndarray  # int64
    x_test: np.ndarray
    y_test: np.ndarray


def read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return table[:, :-1], table[:, -1].astype(np.int64)


def load(*directories: Path) -> Site:
    """One site's data (or, given several directories, their union: the centralized baseline's)."""
    train = [read_csv(d / "train.csv") for d in directories]
    test = [read_csv(d / "test.csv") for d in directories]
    x_tr, y_tr = np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])
    x_te, y_te = np.concatenate([x for x, _ in test]), np.concatenate([y for _, y in test])
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0) + 1e-8
    scale = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    return Site(scale(x_tr), y_tr, scale(x_te), y_te)
