"""``spec.strategy {name, params}`` -> a rule, plus the cross-field checks of a learning spec.

:data:`STRATEGIES` lists every rule by its ``name``; each class has the factory shape
``Rule(size=P, params=spec.strategy.params)`` of :class:`fedattn.aggregator.strategies.base.Strategy`
and takes its parameter table from ``fedattn.api.strategy_params.RULE_PARAMS``. Adding a rule:
docs/strategies.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedattn.aggregator.strategies.base import Strategy
from fedattn.aggregator.strategies.fedavg import FedAvg, FedProx
from fedattn.aggregator.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedattn.aggregator.strategies.private import DifferentiallyPrivate
from fedattn.aggregator.strategies.robust import Krum, Median, MultiKrum, TrimmedMean
from fedattn.api.spec import SessionSpec
from fedattn.api.strategy_params import StrategyError, Table, parse_params, schema_of
from fedattn.learning.privacy import DPSettings
from fedattn.learning.secagg import resolve_threshold

#: name -> rule class, the factory ``Rule(size=P, params=CRD params)``
STRATEGIES: dict[str, type[Strategy]] = {
    rule.name: rule
    for rule in (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad, Krum, MultiKrum, TrimmedMean, Median)
}

#: name -> parameter table (CRD names), as each rule declares it
PARAMS: dict[str, Table] = {name: rule.PARAMS for name, rule in STRATEGIES.items()}

#: rules whose result depends on the updates only through their mean: noising the mean privatises
#: them and a secure sum suffices; robust rules (Krum, median, trimmed mean) are not means
MEAN_BASED = frozenset(name for name, rule in STRATEGIES.items() if rule.mean_based)


def _check_params(name: str, params: Mapping[str, Any] | None) -> None:
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r}; choose one of {sorted(STRATEGIES)}")
    parse_params(PARAMS[name], params, strategy=name)


def build_strategy(name: str, params: Mapping[str, Any] | None = None, *, size: int) -> Strategy:
    """A fresh rule for ``spec.strategy``; unknown names and unknown or out-of-range params raise."""
    _check_params(name, params)
    if size < 1:
        raise StrategyError(f"model size must be >= 1, got {size}")
    return STRATEGIES[name](size=size, params=params)


def check_quorum(name: str, params: Mapping[str, Any] | None, *, min_participants: int) -> None:
    """Raise unless rounds of ``min_participants`` updates suit the rule (Krum needs n >= 2f + 3)."""
    if name not in ("krum", "multikrum"):
        return
    values = parse_params(PARAMS[name], params, strategy=name)
    f = int(values["byzantine"])
    if min_participants < 2 * f + 3:
        raise StrategyError(f"{name} with byzantine={f} needs minParticipants >= {2 * f + 3}, got {min_participants}")
    if values.get("selected", 1) > min_participants:
        raise StrategyError(
            f"{name} selects {values['selected']} updates but a round may close with only "
            f"minParticipants={min_participants}"
        )


def params_schema(name: str) -> dict[str, Any]:
    """The OpenAPI v3 fragment for ``spec.strategy.params`` of one rule (for the CRD generator)."""
    return schema_of(PARAMS[name])


def check_learning_spec(spec: SessionSpec) -> None:
    """Cross-field rules of a learning ``FedSession.spec``.

    Raises a ``ValueError`` naming the conflict: :class:`StrategyError`, or the owning module's error
    for its own block (``SecAggError`` for ``secureAggregation``).
    """
    name, params = spec.strategy.name, spec.strategy.params
    _check_params(name, params)
    check_quorum(name, params, min_participants=spec.min_participants)
    secure_aggregation = spec.secure_aggregation
    secure = secure_aggregation is not None and secure_aggregation.enabled
    if secure:
        resolve_threshold({"threshold": secure_aggregation.threshold}, min_participants=spec.min_participants)
    if spec.dp is not None and name not in MEAN_BASED:
        raise StrategyError(f"privacy.dp needs a mean-based strategy ({sorted(MEAN_BASED)}), not {name}")
    if secure and (spec.dp is not None or spec.update_limits.clip_norm is not None):
        # NB: masked updates cannot be clipped here, and participants do not clip their own: a DP
        # epsilon computed for per-participant sensitivity clipNorm would not hold (issue 14 item 11)
        raise StrategyError("secureAggregation hides each update, so privacy.dp / updateLimits.clipNorm cannot clip it")
    if secure and name not in MEAN_BASED:
        raise StrategyError(f"secureAggregation reveals only the sum, which {name} cannot aggregate")
    compression = spec.compression
    quantized = compression is not None and bool(compression.quantize_bits)
    sparse = compression is not None and 0 < compression.top_k < 1
    if secure and (quantized or sparse):
        raise StrategyError("secureAggregation masks every value uniformly, so updates cannot also be compressed")


def build_session_strategy(spec: SessionSpec, *, size: int, rng: np.random.Generator) -> Strategy:
    """The rule a learning session runs: ``spec.strategy``, wrapped in central DP when ``privacy.dp`` is set."""
    check_learning_spec(spec)
    strategy = build_strategy(spec.strategy.name, spec.strategy.params, size=size)
    if spec.dp is None:
        return strategy
    return DifferentiallyPrivate.from_settings(DPSettings.from_spec(spec.dp), strategy, size=size, rng=rng)
