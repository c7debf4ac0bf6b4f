"""Test clients for tests/test_e2e_byom.py: the sklearn example client, some of them misfits.

A participant named ``bad-shape``, ``bad-dtype``, ``bad-nan`` or ``bad-names`` sends a ``fit`` result
that does not fit the session's model in that one way; the others are the honest example client.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples" / "byom"))

from sklearn_client import SGDClient
from sklearn_client import make_client as honest_client


def _misfit(kind: str, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    coef = params["coef"]
    if kind == "bad-shape":
        return {"coef": coef[:, :-1], "intercept": params["intercept"]}
    if kind == "bad-dtype":
        return {"coef": coef.astype(np.float32), "intercept": params["intercept"]}
    if kind == "bad-nan":
        return {"coef": np.where(np.arange(coef.size).reshape(coef.shape) == 3, np.nan, coef),
                "intercept": params["intercept"]}
    return {"weights": coef, "intercept": params["intercept"]}  # bad-names


class Misfit(SGDClient):
    def __init__(self, honest: SGDClient, kind: str) -> None:
        self.__dict__.update(honest.__dict__)
        self.kind = kind

    def fit(self, parameters, config):
        params, examples, metrics = super().fit(parameters, config)
        return _misfit(self.kind, params), examples, metrics


def make_client(context):
    client = honest_client(context)
    return Misfit(client, context.participant) if context.participant.startswith("bad-") else client
