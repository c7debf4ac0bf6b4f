"""Aggregation rules beyond FedAvg/FedProx: server optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad)
and robust rules (Krum, Multi-Krum, trimmed mean, median), with their parameter tables.

Build one with :func:`build_strategy` (``name``, CRD ``params``, ``size=P``) and drive it through
the aggregator's life cycle (:class:`fedattn.aggregator.strategy.Strategy`).
"""

from fedattn.aggregator.strategies.params import StrategyError
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

__all__ = [
    "MEAN_BASED",
    "PARAMS",
    "STRATEGIES",
    "StrategyError",
    "build_session_strategy",
    "build_strategy",
    "check_learning_spec",
    "check_quorum",
    "params_schema",
]
