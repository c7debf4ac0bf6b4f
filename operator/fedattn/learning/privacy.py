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

from fedattn.aggregator.strategy import Strategy

#: rules whose result depends on the updates only through their mean: noising the mean privatises
#: them; robust rules (Krum, median, trimmed mean) are not means and are refused
MEAN_BASED = frozenset({"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad"})


class PrivacyError(ValueError):
    """Invalid DP settings or a rule DP cannot wrap; the text says which."""


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise PrivacyError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_accounting(*, noise_multiplier: float, sampling_rate: float, delta: float) -> None:
    _positive("noiseMultiplier", noise_multiplier)
    if not _positive("sampling rate", sampling_rate) <= 1:
        raise PrivacyError(f"sampling rate must be in (0, 1], got {sampling_rate!r}")
    if not _positive("delta", delta) < 1:
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
        _positive("clip learningRate", self.learning_rate)
        _positive("count noise std", self.count_noise_std)


def _round_event(noise_multiplier: float, sampling_rate: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sampling_rate == 1:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sampling_rate, gaussian)


def epsilon_after(rounds: int, noise_multiplier: float, sampling_rate: float, delta: float) -> float:
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
        _positive("targetEpsilon", self.target_epsilon)
        _check_accounting(noise_multiplier=self.noise_multiplier, sampling_rate=self.sampling_rate, delta=self.delta)

    @property
    def epsilon_spent(self) -> float:
        return epsilon_after(self.rounds_done, self.noise_multiplier, self.sampling_rate, self.delta)

    def check_next_round(self) -> BudgetCheck:
        """Would round ``rounds_done + 1`` keep epsilon <= target? ``reason`` is the stop message."""
        nxt = epsilon_after(self.rounds_done + 1, self.noise_multiplier, self.sampling_rate, self.delta)
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
        if epsilon_after(1, self.noise_multiplier, self.sampling_rate, self.delta) > self.target_epsilon:
            return 0
        lo, hi = 1, limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if epsilon_after(mid, self.noise_multiplier, self.sampling_rate, self.delta) <= self.target_epsilon:
                lo = mid
            else:
                hi = mid - 1
        return lo


@dataclass(frozen=True)
class DPSettings:
    """``spec.privacy.dp`` checked once; builds the session's budget and the DP wrapper of its rule."""

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
            noise_multiplier=_positive("noiseMultiplier", v["noiseMultiplier"]),
            clip_norm=_positive("clipNorm", v["clipNorm"]),
            target_epsilon=_positive("targetEpsilon", v["targetEpsilon"]),
            delta=v["delta"],
            adaptive=None if adaptive is None else _adaptive_from_manifest(adaptive),
        )
        _check_accounting(noise_multiplier=settings.noise_multiplier, sampling_rate=1.0, delta=settings.delta)
        return settings

    def budget(self, *, sampling_rate: float = 1.0) -> PrivacyBudget:
        return PrivacyBudget(
            target_epsilon=self.target_epsilon,
            delta=self.delta,
            noise_multiplier=self.noise_multiplier,
            sampling_rate=sampling_rate,
        )

    def wrap(self, inner: Strategy, *, size: int, rng: np.random.Generator) -> DifferentiallyPrivate:
        return DifferentiallyPrivate(
            inner,
            size=size,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            rng=rng,
            adaptive=self.adaptive,
        )


def _adaptive_from_manifest(raw: Any) -> AdaptiveClipping:
    fields = {"targetQuantile": "target_quantile", "learningRate": "learning_rate", "countNoiseStd": "count_noise_std"}
    if not isinstance(raw, Mapping) or set(raw) - set(fields):
        raise PrivacyError(f"privacy.dp.adaptiveClipping must be a map of {sorted(fields)}")
    return AdaptiveClipping(**{fields[k]: value for k, value in raw.items()})


class DifferentiallyPrivate:
    """Wraps a mean-based rule (FedAvg, FedProx, FedAvgM, FedAdam, FedYogi, FedAdagrad) with central DP.

    ``fold`` clips the update's delta from the round's global model and adds it to an O(P) sum with
    weight 1; ``finish`` noises the sum, forms the mean model and hands it to the inner rule as the
    round's only update, so the inner rule's step sees the noised mean. Same life cycle and factory
    shape as every rule (:class:`fedattn.aggregator.strategy.Strategy`).
    """


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
        name = getattr(inner, "name", type(inner).__name__.lower())
        if name not in MEAN_BASED:
            raise PrivacyError(f"differential privacy cannot wrap {name}; use one of {sorted(MEAN_BASED)}")
        self.inner, self.size = inner, size
        self.clip_norm = _positive("clipNorm", clip_norm)
        self.noise_multiplier = _positive("noiseMultiplier", noise_multiplier)
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

    def begin_round(self, *, round: int, global_params: np.ndarray, n_expected: int | None = None) -> None:
        del n_expected  # NB: accepted like the robust rules do; the sum is O(P) whatever the count
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
        inner = self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}
        return {"clip_norm": np.array(self.clip_norm), **{f"inner.{k}": v for k, v in inner.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if "clip_norm" not in state:
            raise PrivacyError("DP state needs 'clip_norm'")
        clip = _positive("clip_norm", float(np.asarray(state["clip_norm"])))
        inner = {k.removeprefix("inner."): v for k, v in state.items() if k.startswith("inner.")}
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(inner)
        self.clip_norm = clip
