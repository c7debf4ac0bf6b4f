"""Aggregation rules: FedAvg/FedProx, server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad),
robust rules (Krum, Multi-Krum, trimmed mean, median) and the central-DP wrapper of a mean-based rule.

Build one with :func:`build_strategy` (``name``, CRD ``params``, ``size=P``) and drive it through
the aggregator's life cycle (:class:`fedattn.aggregator.strategies.base.Strategy`).
"""

from fedattn.aggregator.strategies.base import Strategy
from fedattn.aggregator.strategies.registry import (
    MEAN_BASED,
    PARAMS,
    STRATEGIES,
    build_session_strategy,
    build_strategy,
    check_learning_spec,
    check_quorum,
    params_schema,
)
from fedattn.api.strategy_params import StrategyError

__all__ = [
    "MEAN_BASED",
    "PARAMS",
    "STRATEGIES",
    "Strategy",
    "StrategyError",
    "build_session_strategy",
    "build_strategy",
    "check_learning_spec",
    "check_quorum",
    "params_schema",
]
