"""A scikit-learn linear model (SGDClassifier, logistic loss) as a fedattn client.

    client: {module: "sklearn_client:make_client"}

Each round the site sets the global ``coef_``/``intercept_`` and runs ``partial_fit`` for the
round's local epochs; parameters go out named (``coef``, ``intercept``, float64 as scikit-learn keeps
them; the aggregator averages in float32).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import sites
from sklearn.linear_model import SGDClassifier
from sklearn.metrics import log_loss

CLASSES = np.array([0, 1])


def new_model(*, lr: float, seed: int) -> SGDClassifier:
    model = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=lr, alpha=1e-4, random_state=seed)
    model.coef_, model.intercept_ = np.zeros((1, 30)), np.zeros(1)  # NB: the initial model, before any fit
    model.classes_ = CLASSES
    return model


def epochs(model: SGDClassifier, x: np.ndarray, y: np.ndarray, n: int) -> None:
    x = x.astype(np.float64)  # NB: SGDClassifier keeps coef_ in X's dtype; the model is float64
    for _ in range(n):
        model.partial_fit(x, y, classes=CLASSES)


def scores(model: SGDClassifier, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    x = x.astype(np.float64)
    return float(log_loss(y, model.predict_proba(x), labels=CLASSES)), float(model.score(x, y))


class SGDClient:
    def __init__(self, site: sites.Site, *, lr: float, seed: int) -> None:
        self.site = site
        self.model = new_model(lr=lr, seed=seed)

    def get_parameters(self, config: dict[str, Any]) -> dict[str, np.ndarray]:
        return {"coef": self.model.coef_.copy(), "intercept": self.model.intercept_.copy()}

    def set_parameters(self, parameters: list[np.ndarray]) -> None:
        self.model.coef_, self.model.intercept_ = (np.array(p, dtype=np.float64) for p in parameters)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]):
        self.set_parameters(parameters)
        epochs(self.model, self.site.x_train, self.site.y_train, int(config.get("local_epochs", 1)))
        loss, _ = scores(self.model, self.site.x_train, self.site.y_train)
        return self.get_parameters(config), len(self.site.y_train), {"train_loss": loss}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]):
        self.set_parameters(parameters)
        loss, accuracy = scores(self.model, self.site.x_test, self.site.y_test)
        return loss, len(self.site.y_test), {"accuracy": accuracy}


def make_client(context) -> SGDClient:
    training = context.spec["training"]
    return SGDClient(sites.load(context.volume("site-data")), lr=training["learningRate"],
                     seed=training["seed"] + context.index)


def centralized_baseline(contexts) -> dict[str, float]:
    """The same SGDClassifier on the union of the sites' data, rounds x localEpochs epochs."""
    spec = contexts[0].spec
    training = spec["training"]
    union = sites.load(*(c.volume("site-data") for c in contexts))
    model = new_model(lr=training["learningRate"], seed=training["seed"])
    epochs(model, union.x_train, union.y_train, spec["rounds"] * training["localEpochs"])
    loss, accuracy = scores(model, union.x_test, union.y_test)
    return {"accuracy": accuracy, "loss": loss}
