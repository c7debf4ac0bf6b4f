"""Strategy parameters as one table per rule: what is valid, checked once, and exported as a schema.

Names are the CRD's (camelCase, docs/resources.md); each maps to a Python attribute of the rule.
The same table yields the OpenAPI fragment the CRD can embed (:func:`schema_of`), so the manifest's
validation and the aggregator's cannot drift apart.
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
