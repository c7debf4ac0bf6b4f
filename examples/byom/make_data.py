"""Write scikit-learn's breast_cancer as CSV files per site: what each hospital would hold.

    python examples/byom/make_data.py            # writes examples/byom/volumes/{site,noniid}-{a,b,c}/

Each site directory gets ``train.csv`` and ``test.csv`` (30 feature columns, then ``label``). ``site-*``
are IID (a stratified shuffle in three), ``noniid-*`` skew the labels across sites (Dirichlet
alpha 0.5 per class). In ``fedattn run`` a ``persistentVolumeClaim: {claimName: site-a}`` volume is
``volumes/site-a`` next to the manifest; in a cluster it is the PVC of that name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

SITES = ("a", "b", "c")
HERE = Path(__file__).resolve().parent


def _write(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=header, comments="", fmt="%.6g")


def _iid(y: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.sort(part) for part in np.array_split(rng.permutation(len(y)), len(SITES))]


def _noniid(y: np.ndarray, rng: np.random.Generator, alpha: float = 0.5) -> list[np.ndarray]:
    parts: list[list[int]] = [[] for _ in SITES]
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        cuts = (np.cumsum(rng.dirichlet(np.full(len(SITES), alpha))) * len(idx)).astype(int)[:-1]
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p)) for p in parts]


def main(root: Path = HERE / "volumes", seed: int = 0) -> None:
    data = load_breast_cancer()
    x, y = data.data, data.target
    rng = np.random.default_rng(seed)
    for prefix, split in (("site", _iid), ("noniid", _noniid)):
        for site, rows in zip(SITES, split(y, rng), strict=True):
            stratify = y[rows] if min(np.bincount(y[rows], minlength=2)) >= 2 else None
            x_tr, x_te, y_tr, y_te = train_test_split(x[rows], y[rows], test_size=0.25, random_state=seed,
                                                      stratify=stratify)
            _write(root / f"{prefix}-{site}" / "train.csv", x_tr, y_tr)
            _write(root / f"{prefix}-{site}" / "test.csv", x_te, y_te)


if __name__ == "__main__":
    main()
