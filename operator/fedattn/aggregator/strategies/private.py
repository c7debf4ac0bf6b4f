"""Central differential privacy as a strategy: clip each update's delta, noise the sum, then the rule.

The mechanism (clipping, Gaussian noise, adaptive clip norm, the accountant) is
:mod:`fedattn.learning.privacy`; this wrapper only drives a mean-based rule with it, see there for
the references.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedattn.aggregator.strategies.base import Strategy
from fedattn.learning.privacy import (
    AdaptiveClipping,
    DPSettings,
    PrivacyError,
    adapt_clip_norm,
    add_gaussian_noise,
    clip_inplace,
    positive,
    split_noise_multiplier,
)


class DifferentiallyPrivate(Strategy):
    """Wraps a mean-based rule (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) with central DP.

    ``fold`` clips the update's delta from the round's global model and adds it to an O(P) sum with
    weight 1; ``finish`` noises the sum, forms the mean model and hands it to the inner rule as the
    round's only update, so the inner rule's step sees the noised mean. Same life cycle as every
    rule (:class:`fedattn.aggregator.strategies.base.Strategy`); built from ``spec.privacy.dp`` by
    :meth:`from_settings`, never by name, so it has no ``spec.strategy`` name or parameters.
    """

    name = "dp"

    def __init__(
        self,
        inner: Strategy,
        *,
        size: int,
        clip_norm: float,
        noise_multiplier: float,
        rng: np.random.Generator,
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        if not inner.mean_based:
            raise PrivacyError(f"differential privacy cannot wrap {inner.name}; use a mean-based rule")
        self.inner, self.size = inner, size
        self.clip_norm = positive("clipNorm", clip_norm)
        self.noise_multiplier = positive("noiseMultiplier", noise_multiplier)
        self.adaptive = adaptive
        #: multiplier of the noise on the update sum (smaller than the overall one when C adapts)
        self.sum_noise_multiplier = (
            self.noise_multiplier
            if adaptive is None
            else split_noise_multiplier(self.noise_multiplier, count_noise_std=adaptive.count_noise_std)
        )
        self.rng = rng
        self._round = 0
        self._global = np.zeros(size)
        self._sum = np.zeros(size)
        self._delta = np.zeros(size)
        self.folded = 0
        self.clipped = 0
        self.weight_total = 0.0

    @classmethod
    def from_settings(
        cls, settings: DPSettings, inner: Strategy, *, size: int, rng: np.random.Generator
    ) -> DifferentiallyPrivate:
        """``inner`` wrapped with the clip norm, noise and adaptive clipping of ``spec.privacy.dp``."""
        return cls(
            inner,
            size=size,
            clip_norm=settings.clip_norm,
            noise_multiplier=settings.noise_multiplier,
            rng=rng,
            adaptive=settings.adaptive,
        )

    def begin_round(self, *, round: int, global_params: np.ndarray, n_expected: int | None = None) -> None:
        del n_expected  # NB: the sum is O(P) whatever the count
        if global_params.shape != (self.size,):
            raise PrivacyError(f"global model has shape {global_params.shape}, expected ({self.size},)")
        self._round = round
        np.copyto(self._global, global_params)
        self._sum.fill(0.0)
        self.folded = self.clipped = 0
        self.weight_total = 0.0

    def fold(self, update: np.ndarray, weight: float) -> None:
        """Clip ``update - global`` to ``clip_norm`` and add it; ``weight`` is checked but not used."""
        if update.shape != (self.size,):
            raise PrivacyError(f"update shape {update.shape} does not match the model ({self.size},)")
        if not weight > 0 or not np.isfinite(weight):
            raise PrivacyError(f"aggregation weight must be a finite number > 0, got {weight!r}")
        np.subtract(update, self._global, out=self._delta)
        if clip_inplace(self._delta, clip_norm=self.clip_norm) > self.clip_norm:
            self.clipped += 1
        self._sum += self._delta
        self.folded += 1
        self.weight_total += 1.0

    def noised_mean(self) -> np.ndarray:
        """The round's mean model, noised on the sum (std ``sum_noise_multiplier * clip_norm``)."""
        if self.folded == 0:
            raise PrivacyError("no update was folded this round")
        noised = self._sum.copy()
        add_gaussian_noise(noised, std=self.sum_noise_multiplier * self.clip_norm, rng=self.rng)
        return self._global + noised / self.folded

    def _adapt(self) -> None:
        if self.adaptive is None:
            return
        a = self.adaptive
        count = (self.folded - self.clipped) + self.rng.normal(0.0, a.count_noise_std)
        self.clip_norm = adapt_clip_norm(
            self.clip_norm,
            unclipped_fraction=count / self.folded,
            target_quantile=a.target_quantile,
            learning_rate=a.learning_rate,
        )

    def finish(self) -> np.ndarray:
        mean = self.noised_mean()
        self._adapt()
        self.inner.begin_round(round=self._round, global_params=self._global.astype(np.float32))
        self.inner.fold(mean.astype(np.float32), 1.0)
        return self.inner.finish()

    def client_config(self) -> dict[str, Any]:
        return self.inner.client_config()

    def state_dict(self) -> dict[str, Any]:
        """The inner rule's state under ``inner.``, plus the (possibly adapted) clip norm."""
        inner = self.inner.state_dict()
        return {"clip_norm": np.array(self.clip_norm), **{f"inner.{k}": v for k, v in inner.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "clip_norm" not in state:
            raise PrivacyError("DP state needs 'clip_norm'")
        clip = positive("clip_norm", float(np.asarray(state["clip_norm"])))
        inner = {k.removeprefix("inner."): v for k, v in state.items() if k.startswith("inner.")}
        self.inner.load_state_dict(inner)
        self.clip_norm = clip
