"""Central DP: clipping, the noise actually added, and epsilon against closed-form Gaussian bounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from fedattn.aggregator.strategies import build_strategy
from fedattn.aggregator.strategies.private import DifferentiallyPrivate
from fedattn.learning.privacy import (
    AdaptiveClipping,
    DPSettings,
    PrivacyBudget,
    PrivacyError,
    adapt_clip_norm,
    clip_inplace,
    epsilon_after,
    split_noise_multiplier,
)


def test_clip_scales_long_vectors_onto_the_ball_and_leaves_short_ones():
    long = np.array([3.0, 4.0])
    assert clip_inplace(long, clip_norm=1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(long, [0.6, 0.8])
    short = np.array([0.3, 0.4])
    assert clip_inplace(short, clip_norm=1.0) == pytest.approx(0.5)
    np.testing.assert_array_equal(short, [0.3, 0.4])


def _dp(inner="fedavg", params=None, *, size, clip=1.0, z=1e-12, seed=0):
    return DifferentiallyPrivate(
        build_strategy(inner, params, size=size),
        size=size,
        clip_norm=clip,
        noise_multiplier=z,
        rng=np.random.default_rng(seed),
    )


def _round(strategy, g, updates, weights=None):
    strategy.begin_round(round=1, global_params=np.asarray(g, np.float32))
    for i, u in enumerate(updates):
        strategy.fold(np.asarray(u, np.float32), 1.0 if weights is None else weights[i])
    return strategy.finish()


def test_dp_mean_is_the_unweighted_mean_of_clipped_deltas():
    g = np.array([1.0, 1.0])
    ups = [g + np.array([3.0, 4.0]), g + np.array([0.3, -0.4])]  # norms 5 (clipped to 1) and 0.5 (kept)
    s = _dp(size=2)
    out = _round(s, g, ups, weights=[100.0, 1.0])  # weights must not matter under DP
    np.testing.assert_allclose(out, g + 0.5 * (np.array([0.6, 0.8]) + np.array([0.3, -0.4])), atol=1e-6)
    assert s.clipped == 1


def test_dp_noise_has_the_calibrated_standard_deviation():
    # zero deltas: the output is pure noise of std z*C/n per coordinate
    size, n, z, clip = 40_000, 4, 1.3, 0.5
    s = _dp(size=size, clip=clip, z=z, seed=1)
    g = np.zeros(size)
    out = _round(s, g, [g] * n).astype(np.float64)
    expected = z * clip / n
    # chi-square confidence interval for the sample variance (99.9%)
    lo, hi = stats.chi2.ppf([0.0005, 0.9995], df=size) / size
    assert lo * expected**2 <= out.var() <= hi * expected**2
    assert abs(out.mean()) < 4 * expected / math.sqrt(size)


def test_dp_feeds_the_noised_mean_to_a_server_optimizer():
    g = np.zeros(3)
    ups = [np.array([2.0, 0.0, 0.0]), np.array([0.0, 0.5, 0.0])]
    # NB: tau well above the 1e-12 noise, else Adam's normalisation would magnify it to a visible step
    out = _round(_dp("fedadam", {"tau": 0.01}, size=3), g, ups)
    clipped_mean = 0.5 * (np.array([1.0, 0.0, 0.0]) + np.array([0.0, 0.5, 0.0]))
    reference = _round(build_strategy("fedadam", {"tau": 0.01}, size=3), g, [clipped_mean])
    np.testing.assert_allclose(out, reference, rtol=1e-6, atol=1e-9)


def test_dp_refuses_robust_rules_and_bad_settings():
    with pytest.raises(PrivacyError, match="cannot wrap krum"):
        _dp("krum", size=2)
    for bad in (0.0, -1.0, float("nan"), True):
        with pytest.raises(PrivacyError, match="clipNorm"):
            _dp(size=2, clip=bad)
    s = _dp(size=2)
    s.begin_round(round=1, global_params=np.zeros(2, np.float32))
    with pytest.raises(PrivacyError, match="shape"):
        s.fold(np.zeros(3, np.float32), 1.0)
    with pytest.raises(PrivacyError, match="no update"):
        s.finish()


def _tight_gaussian_epsilon(sigma, rounds, delta):
    """Exact epsilon of T composed Gaussian mechanisms (mu-GDP with mu = sqrt(T)/sigma; Dong et al.)."""
    mu = math.sqrt(rounds) / sigma

    def gap(eps):
        return stats.norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * stats.norm.cdf(-eps / mu - mu / 2) - delta

    return optimize.brentq(gap, 0.0, 500.0)


def _eps(rounds, noise_multiplier, sampling_rate, delta=1e-5):
    return epsilon_after(rounds, noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, delta=delta)


def _classic_rdp_epsilon(sigma, rounds, delta):
    """min over alpha of T alpha / (2 sigma^2) + log(1/delta) / (alpha - 1), in closed form."""
    return rounds / (2 * sigma**2) + math.sqrt(2 * rounds * math.log(1 / delta)) / sigma


@pytest.mark.parametrize(("sigma", "rounds"), [(1.0, 1), (1.1, 10), (4.0, 100), (0.8, 3)])
def test_epsilon_lies_between_the_tight_gaussian_value_and_the_classic_rdp_bound(sigma, rounds):
    delta = 1e-5
    eps = epsilon_after(rounds, noise_multiplier=sigma, sampling_rate=1.0, delta=delta)
    assert _tight_gaussian_epsilon(sigma, rounds, delta) <= eps <= _classic_rdp_epsilon(sigma, rounds, delta)


def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling():
    e = [_eps(t, 1.0, 1.0) for t in (0, 1, 2, 10)]
    assert e[0] == 0.0 and e[1] < e[2] < e[3]
    assert _eps(5, 2.0, 1.0) < _eps(5, 1.0, 1.0)
    assert _eps(5, 1.0, 0.1) < _eps(5, 1.0, 1.0)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((1, 0.0, 1.0, 1e-5), "noiseMultiplier"),
        ((1, 1.0, 0.0, 1e-5), "sampling"),
        ((1, 1.0, 1.0, 1.0), "delta"),
        ((-1, 1.0, 1.0, 1e-5), "rounds"),
    ],
)
def test_epsilon_after_rejects_bad_input(args, match):
    with pytest.raises(PrivacyError, match=match):
        rounds, noise_multiplier, sampling_rate, delta = args
        epsilon_after(rounds, noise_multiplier=noise_multiplier, sampling_rate=sampling_rate, delta=delta)


def test_budget_stops_before_the_round_that_would_exceed_it():
    budget = PrivacyBudget(target_epsilon=3.0, delta=1e-5, noise_multiplier=2.0)
    allowed = budget.max_rounds()
    assert _eps(allowed, 2.0, 1.0) <= 3.0 < _eps(allowed + 1, 2.0, 1.0)
    for _ in range(allowed):
        check = budget.check_next_round()
        assert check.allowed and check.epsilon_next <= 3.0
        budget.record_round()
    assert budget.epsilon_spent <= 3.0
    check = budget.check_next_round()
    assert not check.allowed and check.epsilon_next > 3.0
    assert check.reason.startswith(f"PrivacyBudgetExhausted: round {allowed + 1} would spend epsilon")


def test_budget_too_small_for_one_round():
    budget = PrivacyBudget(target_epsilon=0.01, delta=1e-5, noise_multiplier=0.5)
    assert budget.max_rounds() == 0 and not budget.check_next_round().allowed
    with pytest.raises(PrivacyError, match="targetEpsilon"):
        PrivacyBudget(target_epsilon=0, delta=1e-5, noise_multiplier=1.0)


# --- adaptive clipping and settings ----------------------------------------------------------------------


def test_split_noise_multiplier_keeps_the_overall_gaussian_multiplier():
    z, sigma_b = 1.0, 1.0
    z_delta = split_noise_multiplier(z, count_noise_std=sigma_b)
    assert z_delta == pytest.approx(1 / math.sqrt(0.75))
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)
    with pytest.raises(PrivacyError, match="must exceed"):
        split_noise_multiplier(2.0, count_noise_std=1.0)


def test_adapt_clip_norm_closed_form():
    assert adapt_clip_norm(2.0, unclipped_fraction=0.5, target_quantile=0.5, learning_rate=0.2) == 2.0
    assert adapt_clip_norm(2.0, unclipped_fraction=1.0, target_quantile=0.5, learning_rate=0.2) == pytest.approx(
        2.0 * math.exp(-0.1)
    )
    assert adapt_clip_norm(2.0, unclipped_fraction=0.0, target_quantile=0.5, learning_rate=0.2) > 2.0


def test_adaptive_clip_norm_converges_to_the_target_quantile_of_update_norms():
    rng = np.random.default_rng(7)
    size, n = 16, 40
    s = DifferentiallyPrivate(
        build_strategy("fedavg", size=size),
        size=size,
        clip_norm=0.5,
        noise_multiplier=1e-6,
        rng=np.random.default_rng(8),
        adaptive=AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_noise_std=1e-6),
    )
    g = np.zeros(size, np.float32)
    history = []
    for r in range(150):
        directions = rng.normal(size=(n, size))
        norms = rng.uniform(1.0, 9.0, size=n)  # median 5
        ups = directions / np.linalg.norm(directions, axis=1, keepdims=True) * norms[:, None]
        s.begin_round(round=r, global_params=g)
        for u in ups:
            s.fold(u.astype(np.float32), 1.0)
        s.finish()
        history.append(s.clip_norm)
    assert 4.0 < np.mean(history[-50:]) < 6.0
    state = s.state_dict()
    assert float(state["clip_norm"]) == s.clip_norm
    fresh = _dp(size=size)
    fresh.load_state_dict(state)
    assert fresh.clip_norm == s.clip_norm


def test_settings_from_manifest():
    dp = DPSettings.from_manifest({"noiseMultiplier": 1.1, "clipNorm": 0.5, "targetEpsilon": 8, "delta": 1e-6})
    assert (dp.noise_multiplier, dp.clip_norm, dp.target_epsilon, dp.delta, dp.adaptive) == (1.1, 0.5, 8, 1e-6, None)
    assert dp.budget().check_next_round().allowed
    wrapped = DifferentiallyPrivate.from_settings(
        dp, build_strategy("fedavg", size=3), size=3, rng=np.random.default_rng(0)
    )
    assert wrapped.clip_norm == 0.5 and wrapped.sum_noise_multiplier == 1.1
    adaptive = DPSettings.from_manifest({"noiseMultiplier": 1.0, "adaptiveClipping": {"targetQuantile": 0.7}})
    assert adaptive.adaptive == AdaptiveClipping(target_quantile=0.7)
    wrapped = DifferentiallyPrivate.from_settings(
        adaptive, build_strategy("fedavg", size=3), size=3, rng=np.random.default_rng(0)
    )
    assert wrapped.sum_noise_multiplier > 1


@pytest.mark.parametrize(
    ("dp", "match"),
    [
        ({"mechanism": "laplace"}, "mechanism 'laplace'"),
        ({"epsilon": 1.0}, r"does not take \['epsilon'\]"),
        ({"noiseMultiplier": 0}, "noiseMultiplier"),
        ({"clipNorm": "1"}, "clipNorm"),
        ({"delta": 1.0}, "delta"),
        ({"delta": "1e-5"}, "delta"),
        ({"adaptiveClipping": {"targetQuantile": 1.0}}, "targetQuantile"),
        ({"adaptiveClipping": {"quantile": 0.5}}, "adaptiveClipping"),
    ],
)
def test_settings_reject_bad_manifests(dp, match):
    with pytest.raises(PrivacyError, match=match):
        DPSettings.from_manifest(dp)
