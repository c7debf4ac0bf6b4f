"""Central differential privacy for federated rounds: clip each update, noise the sum, count epsilon.

DP-FedAvg (McMahan et al., "Learning Differentially Private Recurrent Language Models", 2018) with
fixed clipping: each participant's model delta is scaled to L2 norm at most ``clipNorm`` (C), the
clipped deltas are summed with equal weight -- example weights would let one participant's
contribution exceed C -- and Gaussian noise of standard deviation ``noiseMultiplier * C`` is added
to the sum before dividing by the number of contributions (the add/remove-one sensitivity of the
sum is C). The noised mean then feeds the session's rule, so a server optimizer only ever sees
noised data (post-processing keeps the guarantee).

Adaptive clipping (Andrew et al., "Differentially Private Learning with Adaptive Clipping", NeurIPS
2021) optionally moves C geometrically towards the ``targetQuantile`` of the update norms, using a
noised count of unclipped updates; the noise budget is split so the round as a whole is still a
Gaussian mechanism of multiplier ``noiseMultiplier`` (:func:`split_noise_multiplier`).

The wrapper that applies these to a rule is a strategy itself
(``fedattn.aggregator.strategies.private``); this module keeps the math, the settings and the budget.

Epsilon is counted by Google's ``dp-accounting`` (RDP accountant): each round is one Gaussian
mechanism, Poisson-subsampled when only a share ``sampling_rate`` of the population takes part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import dp_accounting
import numpy as np

from fedattn.api.spec import DPSpec


class PrivacyError(ValueError):
    """Invalid DP settings or a rule DP cannot wrap; the text says which."""


def positive(name: str, value: float) -> float:
    """``value`` as a float; raises :class:`PrivacyError` naming the field unless finite and > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise PrivacyError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_accounting(*, noise_multiplier: float, sampling_rate: float, delta: float) -> None:
    positive("noiseMultiplier", noise_multiplier)
    if not positive("sampling rate", sampling_rate) <= 1:
        raise PrivacyError(f"sampling rate must be in (0, 1], got {sampling_rate!r}")
    if not positive("delta", delta) < 1:
        raise PrivacyError(f"delta must be in (0, 1), got {delta!r}")


def clip_inplace(delta: np.ndarray, *, clip_norm: float) -> float:
    """Scale ``delta`` to L2 norm <= ``clip_norm`` in place; returns the norm before clipping."""
    norm = float(np.linalg.norm(delta))
    if norm > clip_norm:
        delta *= clip_norm / norm
    return norm


def add_gaussian_noise(values: np.ndarray, *, std: float, rng: np.random.Generator) -> None:
    """``values += N(0, std^2)`` per coordinate, in place."""
    values += rng.normal(0.0, std, size=values.shape)


def split_noise_multiplier(noise_multiplier: float, *, count_noise_std: float) -> float:
    """The multiplier left for the update sum when the unclipped count is noised with ``count_noise_std``.

    Andrew et al. Thm. 1: ``z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` keeps the pair (sum, count) a
    Gaussian mechanism of multiplier ``z``; needs ``2 sigma_b > z``.
    """
    if 2 * count_noise_std <= noise_multiplier:
        raise PrivacyError(
            f"count noise std {count_noise_std:g} must exceed noiseMultiplier / 2 = {noise_multiplier / 2:g}"
        )
    return (noise_multiplier**-2 - (2 * count_noise_std) ** -2) ** -0.5


def adapt_clip_norm(
    clip_norm: float, *, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """Geometric update ``C exp(-lr (b - gamma))``: grows while fewer than ``gamma`` of updates fit under C."""
    return clip_norm * math.exp(-learning_rate * (unclipped_fraction - target_quantile))


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al.'s defaults: the median norm, lr 0.2, count noise ``expected participants / 20``."""

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise_std: float = 1.0

    def __post_init__(self) -> None:
        q = self.target_quantile
        if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q < 1:
            raise PrivacyError(f"targetQuantile must be in (0, 1), got {self.target_quantile!r}")
        positive("clip learningRate", self.learning_rate)
        positive("count noise std", self.count_noise_std)


def _round_event(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


def epsilon_after(rounds: int, *, noise_multiplier: float, sampling_rate: float, delta: float) -> float:
    """Epsilon spent after ``rounds`` rounds at ``delta`` (RDP accountant of ``dp-accounting``)."""
    _check_accounting(noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, delta=delta)
    if rounds < 0:
        raise PrivacyError(f"rounds must be >= 0, got {rounds}")
    if rounds == 0:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(_round_event(noise_multiplier, sampling_rate), rounds)
    return float(accountant.get_epsilon(delta))


@dataclass(frozen=True)
class BudgetCheck:
    """Whether one more round fits the budget, the epsilon it would bring, and why not if it does not."""

    allowed: bool
    epsilon_next: float
    reason: str = ""


@dataclass
class PrivacyBudget:
    """Tracks rounds done against ``targetEpsilon``; ask :meth:`check_next_round` before opening one."""

    target_epsilon: float
    delta: float
    noise_multiplier: float
    sampling_rate: float = 1.0
    rounds_done: int = 0

    def __post_init__(self) -> None:
        positive("targetEpsilon", self.target_epsilon)
        _check_accounting(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate, delta=self.delta)

    def _accounting(self) -> dict[str, float]:
        return {"noise_multiplier": self.noise_multiplier, "sampling_rate": self.sampling_rate, "delta": self.delta}

    @property
    def epsilon_spent(self) -> float:
        return epsilon_after(self.rounds_done, **self._accounting())

    def check_next_round(self) -> BudgetCheck:
        """Would round ``rounds_done + 1`` keep epsilon <= target? ``reason`` is the stop message."""
        nxt = epsilon_after(self.rounds_done + 1, **self._accounting())
        if nxt <= self.target_epsilon:
            return BudgetCheck(True, nxt)
        return BudgetCheck(
            False,
            nxt,
            f"PrivacyBudgetExhausted: round {self.rounds_done + 1} would spend epsilon {nxt:.4g} > "
            f"targetEpsilon {self.target_epsilon:g} at delta {self.delta:g}",
        )

    def record_round(self) -> float:
        """Count a finished round; returns the epsilon spent so far."""
        self.rounds_done += 1
        return self.epsilon_spent

    def max_rounds(self, *, limit: int = 100_000) -> int:
        """The most rounds the budget allows in total (binary search; epsilon grows with rounds)."""
        if epsilon_after(1, **self._accounting()) > self.target_epsilon:
            return 0
        lo, hi = 1, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if epsilon_after(mid, **self._accounting()) <= self.target_epsilon:
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass(frozen=True)
class DPSettings:
    """``spec.privacy.dp`` checked once; builds the session's budget (the wrapper: ``strategies.private``)."""

    noise_multiplier: float
    clip_norm: float
    target_epsilon: float
    delta: float
    adaptive: AdaptiveClipping | None = None

    #: CRD field -> default (docs/resources.md, fedattn.api schema)
    FIELDS: ClassVar[dict[str, Any]] = {
        "mechanism": "gaussian",
        "noiseMultiplier": 1.0,
        "clipNorm": 1.0,
        "targetEpsilon": 10.0,
        "delta": 1e-5,
        "adaptiveClipping": None,
    }

    @classmethod
    def from_manifest(cls, dp: Mapping[str, Any]) -> DPSettings:
        unknown = sorted(set(dp) - set(cls.FIELDS))
        if unknown:
            raise PrivacyError(f"privacy.dp does not take {unknown}; it takes {sorted(cls.FIELDS)}")
        v = {**cls.FIELDS, **dp}
        if v["mechanism"] != "gaussian":
            raise PrivacyError(f"privacy.dp.mechanism {v['mechanism']!r} is not supported; use 'gaussian'")
        adaptive = v["adaptiveClipping"]
        settings = cls(
            noise_multiplier=positive("noiseMultiplier", v["noiseMultiplier"]),
            clip_norm=positive("clipNorm", v["clipNorm"]),
            target_epsilon=positive("targetEpsilon", v["targetEpsilon"]),
            delta=v["delta"],
            adaptive=None if adaptive is None else _adaptive_from_manifest(adaptive),
        )
        _check_accounting(noise_multiplier=settings.noise_multiplier, sampling_rate=1.0, delta=settings.delta)
        return settings

    @classmethod
    def from_spec(cls, dp: DPSpec) -> DPSettings:
        """The typed ``spec.privacy.dp`` (defaults applied by the schema), checked like :meth:`from_manifest`."""
        return cls.from_manifest(
            {
                "mechanism": dp.mechanism,
                "noiseMultiplier": dp.noise_multiplier,
                "clipNorm": dp.clip_norm,
                "targetEpsilon": dp.target_epsilon,
                "delta": dp.delta,
            }
        )

    def budget(self, *, sampling_rate: float = 1.0) -> PrivacyBudget:
        return PrivacyBudget(
            target_epsilon=self.target_epsilon,
            delta=self.delta,
            noise_multiplier=self.noise_multiplier,
            sampling_rate=sampling_rate,
        )


def _adaptive_from_manifest(raw: Any) -> AdaptiveClipping:
    fields = {"targetQuantile": "target_quantile", "learningRate": "learning_rate", "countNoiseStd": "count_noise_std"}
    if not isinstance(raw, Mapping) or set(raw) - set(fields):
        raise PrivacyError(f"privacy.dp.adaptiveClipping must be a map of {sorted(fields)}")
    return AdaptiveClipping(**{fields[k]: value for k, value in raw.items()})
