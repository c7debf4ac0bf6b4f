"""The contract between the aggregator and an aggregation rule: everything the server calls, in one class.

The life cycle follows Flower's ``Strategy``: :meth:`Strategy.begin_round` is our ``configure_fit``
(the round's global model goes out; reset per-round state), :meth:`Strategy.fold` (one call per
accepted update, as it arrives) plus :meth:`Strategy.finish` are our ``aggregate_fit`` split in
two, so a rule can stream instead of holding all N updates. :meth:`Strategy.client_config` is the
config half of ``configure_fit`` (what participants need with the model), :meth:`Strategy.state_dict`
/ :meth:`Strategy.load_state_dict` carry state kept across rounds through a checkpoint.

A rule subclasses :class:`Strategy`, implements the three abstract methods and overrides the others
only when its default is wrong for it; the server never probes for optional methods. Adding a rule:
docs/strategies.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from fedattn.api.strategy_params import StrategyError, Table


class Strategy(ABC):
    """One aggregation rule; one instance per session, reused across rounds.

    Class attributes: ``name`` is the CRD's ``spec.strategy.name``; ``PARAMS`` its parameter table
    (``fedattn.api.strategy_params.RULE_PARAMS[name]``); ``mean_based`` says the result depends on
    the updates only through their weighted mean, so central DP (noise the mean) and secure
    aggregation (reveal only the sum) can serve it; ``folds_in_batches`` says :meth:`fold_many` is
    cheaper than folding one by one, so the server holds the updates of one socket burst (at most
    ``FOLD_GROUP``) and folds them together.

    Factories have one shape: ``Rule(size=P, params=spec.strategy.params)``.
    """

    name: ClassVar[str] = ""
    PARAMS: ClassVar[Table] = {}
    mean_based: ClassVar[bool] = False
    folds_in_batches: ClassVar[bool] = False

    @abstractmethod
    def begin_round(self, *, round: int, global_params: np.ndarray, n_expected: int | None = None) -> None:
        """Reset per-round state; ``global_params`` is the model sent to participants this round.

        ``n_expected`` is the number of participants the round opened with (the most updates it can
        receive), so a rule that keeps every update can size its buffer once; ``None`` when unknown.
        """

    @abstractmethod
    def fold(self, update: np.ndarray, weight: float) -> None:
        """Take one participant's update (float32, shape (P,)) with its aggregation weight > 0."""

    def fold_many(self, updates: Sequence[np.ndarray], weights: Sequence[float]) -> None:
        """Fold updates that arrived together; same result as :meth:`fold` for each, in order."""
        for update, weight in zip(updates, weights, strict=True):
            self.fold(update, weight)

    @abstractmethod
    def finish(self) -> np.ndarray:
        """The new global model (float32, shape (P,)); only called after at least one fold."""

    def client_config(self) -> dict[str, Any]:
        """Strategy parameters participants need with the model (e.g. FedProx's ``proximal_mu``)."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """State kept across rounds, for a checkpoint (a stateless rule has none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`'s output; a stateless rule accepts only an empty state."""
        if state:
            raise StrategyError(f"{self.name or type(self).__name__} keeps no state, got {sorted(state)}")
