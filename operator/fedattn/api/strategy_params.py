"""Strategy parameters as one table per rule: what is valid, checked once, and exported as a schema.

Names are the CRD's (camelCase, docs/resources.md); each maps to a Python attribute of the rule.
:data:`RULE_PARAMS` is the one place a rule's parameters are declared: the rule's class in
``fedattn.aggregator.strategies`` takes its ``PARAMS`` from here, and the CRD schema
(:mod:`fedattn.api.schema`) builds its strategy enum, key check and bound checks from here, so the
manifest's validation and the aggregator's cannot drift apart. It is pure data in ``api/`` because
``api`` sits below the aggregator and may not import it (docs/strategies.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class StrategyError(ValueError):
    """Invalid strategy name, parameter or call; the text says which and why."""


@dataclass(frozen=True)
class Param:
    """One parameter: attribute name, type, default and bounds (``None`` = unbounded)."""

    attr: str
    kind: type
    default: float
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    doc: str = ""

    def check(self, name: str, value: Any) -> int | float:
        """The value converted to ``kind``; raises :class:`StrategyError` naming the param otherwise."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise StrategyError(f"strategy param {name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise StrategyError(f"strategy param {name} must be finite, got {value!r}")
        if self.kind is int and not float(value).is_integer():
            raise StrategyError(f"strategy param {name} must be an integer, got {value!r}")
        low = self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum)
        high = self.maximum is not None and (value >= self.maximum if self.exclusive_maximum else value > self.maximum)
        if low or high:
            raise StrategyError(f"strategy param {name}={value} must be in {self.interval()}")
        return self.kind(value)

    def interval(self) -> str:
        low = "(-inf" if self.minimum is None else ("(" if self.exclusive_minimum else "[") + f"{self.minimum:g}"
        high = "inf)" if self.maximum is None else f"{self.maximum:g}" + (")" if self.exclusive_maximum else "]")
        return f"{low}, {high}"


Table = Mapping[str, Param]


def parse_params(table: Table, params: Mapping[str, Any] | None, *, strategy: str) -> dict[str, int | float]:
    """``{attr: value}`` for every param of ``table`` (defaults filled in); unknown keys are an error."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(table))
    if unknown:
        raise StrategyError(f"strategy {strategy} does not take params {unknown}; it takes {sorted(table) or 'none'}")
    return {p.attr: p.check(key, params[key]) if key in params else p.default for key, p in table.items()}


def schema_of(table: Table) -> dict[str, Any]:
    """The OpenAPI v3 fragment for ``spec.strategy.params`` of one rule."""
    properties: dict[str, Any] = {}
    for key, p in table.items():
        prop: dict[str, Any] = {
            "type": "integer" if p.kind is int else "number",
            "default": p.default,
            "description": p.doc,
        }
        if p.minimum is not None:
            prop["minimum"] = p.minimum
            prop["exclusiveMinimum"] = p.exclusive_minimum
        if p.maximum is not None:
            prop["maximum"] = p.maximum
            prop["exclusiveMaximum"] = p.exclusive_maximum
        properties[key] = prop
    return {"type": "object", "additionalProperties": False, "properties": properties}


def _lr(default: float) -> Param:
    return Param("server_learning_rate", float, default, 0.0, exclusive_minimum=True, doc="server step (eta)")


def _beta(attr: str, default: float, doc: str) -> Param:
    return Param(attr, float, default, 0.0, 1.0, exclusive_maximum=True, doc=doc)


def _tau(default: float) -> Param:
    return Param("tau", float, default, 0.0, exclusive_minimum=True, doc="adaptivity, added to sqrt(v)")


_BETA1 = _beta("beta1", 0.9, "first-moment decay (beta_1)")
_BETA2 = _beta("beta2", 0.99, "second-moment decay (beta_2)")
_BYZANTINE = Param("byzantine", int, 0, 0, doc="f, the number of malicious updates tolerated")

#: rule name (``spec.strategy.name``) -> its parameter table (``spec.strategy.params``); defaults
#: for the server optimizers follow Flower's, see fedattn.aggregator.strategies.fedopt
RULE_PARAMS: dict[str, Table] = {
    "fedavg": {},
    "fedprox": {"proximalMu": Param("proximal_mu", float, 0.01, 0.0, doc="client proximal weight mu")},
    "fedavgm": {
        "serverLearningRate": _lr(1.0),
        "serverMomentum": _beta("server_momentum", 0.0, "heavy-ball momentum"),
    },
    "fedadam": {"serverLearningRate": _lr(0.1), "beta1": _BETA1, "beta2": _BETA2, "tau": _tau(1e-9)},
    "fedyogi": {"serverLearningRate": _lr(0.01), "beta1": _BETA1, "beta2": _BETA2, "tau": _tau(1e-3)},
    "fedadagrad": {"serverLearningRate": _lr(0.1), "tau": _tau(1e-9)},
    "krum": {"byzantine": _BYZANTINE},
    "multikrum": {
        "byzantine": _BYZANTINE,
        "selected": Param("selected", int, 2, 1, doc="m, the number of best-scored updates averaged"),
    },
    "trimmedmean": {
        "trimFraction": Param(
            "trim_fraction", float, 0.2, 0.0, 0.5, exclusive_maximum=True, doc="share cut at each end (beta)"
        )
    },
    "median": {},
}
