"""Aggregation rules against closed forms, brute-force references and scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fedattn.aggregator.strategies import (
    PARAMS,
    STRATEGIES,
    StrategyError,
    build_session_strategy,
    build_strategy,
    check_learning_spec,
    check_quorum,
    params_schema,
)
from fedattn.aggregator.strategies.private import DifferentiallyPrivate
from fedattn.aggregator.strategies.robust import (
    krum_scores,
    krum_select,
    median_inplace,
    pairwise_sq_distances,
    trimmed_mean_inplace,
)
from fedattn.api.spec import SessionSpec


def run_round(strategy, global_params, updates, weights=None, *, round=1):
    weights = [1.0] * len(updates) if weights is None else weights
    strategy.begin_round(round=round, global_params=np.asarray(global_params, dtype=np.float32))
    for u, w in zip(updates, weights, strict=True):
        strategy.fold(np.asarray(u, dtype=np.float32), w)
    return strategy.finish()


# --- pure robust functions -------------------------------------------------------------------------


def test_gram_distances_equal_brute_force():
    x = np.random.default_rng(0).normal(size=(9, 33))
    brute = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=-1)
    np.testing.assert_allclose(pairwise_sq_distances(x), brute, rtol=1e-10, atol=1e-10)


def _krum_scores_naive(x, f):
    n = len(x)
    out = []
    for i in range(n):
        d = sorted(float(np.sum((x[i] - x[j]) ** 2)) for j in range(n) if j != i)
        out.append(sum(d[: n - f - 2]))
    return np.array(out)


@pytest.mark.parametrize("f", [0, 1, 2])
def test_krum_scores_match_naive_definition(f):
    x = np.random.default_rng(f).normal(size=(8, 5))
    np.testing.assert_allclose(krum_scores(x, byzantine=f), _krum_scores_naive(x, f), rtol=1e-9)


def test_krum_hand_computed_on_a_line():
    # points 0..4 on a line, f=0 -> 3 neighbours: scores 14, 6, 6, 6, 14
    x = np.arange(5, dtype=float)[:, None]
    np.testing.assert_allclose(krum_scores(x, byzantine=0), [14, 6, 6, 6, 14])
    assert list(krum_select(x, byzantine=0, selected=3)) == [1, 2, 3]


def test_krum_needs_2f_plus_3_updates():
    with pytest.raises(StrategyError, match="2f \\+ 3"):
        krum_scores(np.zeros((4, 2)), byzantine=1)


def test_trimmed_mean_matches_scipy():
    x = np.random.default_rng(1).normal(size=(10, 17))
    expected = stats.trim_mean(x, 0.2, axis=0)
    np.testing.assert_allclose(trimmed_mean_inplace(x.copy(), beta=0.2), expected, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 5, 6])
def test_median_matches_numpy(n):
    x = np.random.default_rng(n).normal(size=(n, 11))
    np.testing.assert_allclose(median_inplace(x.copy()), np.median(x, axis=0), rtol=1e-12)


def test_trimmed_mean_that_cuts_everything_is_refused():
    with pytest.raises(StrategyError, match="leaves none"):
        trimmed_mean_inplace(np.zeros((2, 3)), beta=0.5)


# --- rules through the aggregator's life cycle ------------------------------------------------------


def test_every_registered_rule_aggregates_identical_updates_to_themselves_or_steps_towards_them():
    g = np.zeros(4)
    u = np.array([1.0, -2.0, 0.5, 3.0])
    for name in STRATEGIES:
        out = run_round(build_strategy(name, size=4), g, [u] * 5)
        assert out.dtype == np.float32 and out.shape == (4,)
        # all rules move every coordinate from g towards u, none overshoots
        assert np.all(np.sign(out) == np.sign(u)), name
        assert np.all(np.abs(out) <= np.abs(u) + 1e-6), name


def test_fedavgm_closed_form_over_two_rounds():
    lr, beta = 0.5, 0.9
    s = build_strategy("fedavgm", {"serverLearningRate": lr, "serverMomentum": beta}, size=1)
    x1 = run_round(s, [0.0], [[2.0], [4.0]], [1.0, 3.0])  # mean 3.5, delta 3.5, m = 3.5
    assert x1[0] == pytest.approx(lr * 3.5)
    x2 = run_round(s, x1, [[x1[0] + 1.0]], round=2)  # delta 1, m = 0.9*3.5 + 1
    assert x2[0] == pytest.approx(x1[0] + lr * (beta * 3.5 + 1.0), rel=1e-6)


def test_fedavgm_without_momentum_at_lr_one_is_fedavg():
    rng = np.random.default_rng(3)
    g, ups, ws = rng.normal(size=6), rng.normal(size=(4, 6)), [1.0, 2.0, 3.0, 4.0]
    a = run_round(build_strategy("fedavgm", size=6), g, ups, ws)
    b = run_round(build_strategy("fedavg", size=6), g, ups, ws)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def _adaptive_reference(name, deltas, *, eta, b1, b2, tau):
    """Scalar Reddi et al. Algorithm 2 written out with Python floats."""
    x, m, v = 0.0, 0.0, tau * tau
    for d in deltas:
        m = b1 * m + (1 - b1) * d
        if name == "fedadam":
            v = b2 * v + (1 - b2) * d * d
        elif name == "fedyogi":
            v = v - (1 - b2) * d * d * float(np.sign(v - d * d))
        else:
            v = v + d * d
        x = x + eta * m / (math.sqrt(v) + tau)
    return x


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad"])
def test_adaptive_server_optimizers_follow_reddi_algorithm_2(name):
    eta, b1, b2, tau = 0.3, 0.8, 0.95, 1e-2
    params = {"serverLearningRate": eta, "tau": tau}
    if name == "fedadagrad":
        b1 = 0.0
    else:
        params.update(beta1=b1, beta2=b2)
    s = build_strategy(name, params, size=1)
    x = np.zeros(1, dtype=np.float32)
    deltas = []
    for r, d in enumerate([0.5, -0.2, 0.7], start=1):
        deltas.append(d)
        x = run_round(s, x, [[x[0] + d]], round=r)
        assert x[0] == pytest.approx(_adaptive_reference(name, deltas, eta=eta, b1=b1, b2=b2, tau=tau), abs=1e-5)


def test_fedadam_first_step_closed_form():
    # m = (1-b1) d, v = b2 tau^2 + (1-b2) d^2: the step is eta (1-b1) d / (sqrt(v) + tau)
    eta, b1, b2, tau, d = 0.1, 0.9, 0.99, 1e-9, 0.25
    s = build_strategy("fedadam", size=3)
    out = run_round(s, np.zeros(3), [np.full(3, d)])
    expected = eta * (1 - b1) * d / (math.sqrt(b2 * tau**2 + (1 - b2) * d * d) + tau)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_server_optimizer_state_survives_a_checkpoint():
    rng = np.random.default_rng(4)
    g0, r1, r2 = rng.normal(size=5), rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    a = build_strategy("fedyogi", size=5)
    g1 = run_round(a, g0, r1)
    state = a.state_dict()
    g2 = run_round(a, g1, r2, round=2)
    b = build_strategy("fedyogi", size=5)
    b.load_state_dict(state)
    np.testing.assert_array_equal(run_round(b, g1, r2, round=2), g2)
    fresh = build_strategy("fedyogi", size=5)
    assert not np.array_equal(run_round(fresh, g1, r2, round=2), g2)


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({"m": np.zeros(5)}, "needs keys"),
        ({"m": np.zeros(4), "v": np.zeros(4)}, "shape"),
        ({"m": np.zeros(5), "v": np.full(5, np.nan)}, "finite"),
    ],
)
def test_bad_optimizer_state_is_rejected(state, match):
    with pytest.raises(StrategyError, match=match):
        build_strategy("fedadam", size=5).load_state_dict(state)


def test_krum_rules_ignore_byzantine_outliers():
    rng = np.random.default_rng(5)
    honest = rng.normal(0.0, 0.1, size=(7, 20))
    attackers = np.full((2, 20), 100.0)
    ups = np.vstack([honest, attackers])
    k = run_round(build_strategy("krum", {"byzantine": 2}, size=20), np.zeros(20), ups)
    assert any(np.allclose(k, h, atol=1e-6) for h in honest.astype(np.float32))
    mk = build_strategy("multikrum", {"byzantine": 2, "selected": 5}, size=20)
    weights = list(range(1, 10))
    out = run_round(mk, np.zeros(20), ups, weights)
    chosen = krum_select(ups, byzantine=2, selected=5)
    assert set(chosen) <= set(range(7))
    w = np.array(weights, dtype=float)[chosen]
    np.testing.assert_allclose(out, (w @ ups[chosen]) / w.sum(), rtol=1e-5)


@pytest.mark.parametrize("name", ["median", "trimmedmean"])
def test_coordinate_rules_stay_within_honest_range_under_attack(name):
    rng = np.random.default_rng(6)
    honest = rng.normal(0.0, 1.0, size=(8, 30))
    ups = np.vstack([honest, np.full((2, 30), 1e6)])
    params = {"trimFraction": 0.2} if name == "trimmedmean" else {}
    out = run_round(build_strategy(name, params, size=30), np.zeros(30), ups)
    assert np.all(out <= honest.max(axis=0) + 1e-6) and np.all(out >= honest.min(axis=0) - 1e-6)


def test_robust_buffer_is_preallocated_and_reused():
    s = build_strategy("median", size=8)
    s.begin_round(round=1, global_params=np.zeros(8, np.float32), n_expected=6)
    buf = s._rows
    for i in range(6):
        s.fold(np.full(8, i, np.float32), 1.0)
        assert s._rows is buf  # no allocation per update
    s.finish()
    s.begin_round(round=2, global_params=np.zeros(8, np.float32), n_expected=6)
    assert s._rows is buf  # nor per round


def test_robust_buffer_grows_without_n_expected():
    s = build_strategy("median", size=3)
    ups = np.arange(27, dtype=np.float32).reshape(9, 3)
    np.testing.assert_allclose(run_round(s, np.zeros(3), ups), np.median(ups, axis=0))


@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"fedavg", "fedprox"}))
def test_rules_reject_bad_updates_and_empty_rounds(name):
    s = build_strategy(name, size=4)
    s.begin_round(round=1, global_params=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="shape"):
        s.fold(np.zeros(5, np.float32), 1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weight"):
            s.fold(np.zeros(4, np.float32), bad)
    with pytest.raises(ValueError, match="no update"):
        s.finish()


# --- registry -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("fedsgd", {}, "unknown strategy 'fedsgd'"),
        ("fedadam", {"eta": 0.1}, r"does not take params \['eta'\]"),
        ("fedavg", {"proximalMu": 0.1}, "it takes none"),
        ("fedadam", {"beta1": 1.0}, r"beta1=1.0 must be in \[0, 1\)"),
        ("fedadam", {"tau": 0}, r"tau=0 must be in \(0, inf\)"),
        ("fedyogi", {"serverLearningRate": float("nan")}, "finite"),
        ("krum", {"byzantine": 1.5}, "integer"),
        ("krum", {"byzantine": True}, "number"),
        ("multikrum", {"selected": 0}, "selected=0"),
        ("trimmedmean", {"trimFraction": 0.5}, "trimFraction"),
        ("fedprox", {"proximalMu": -1}, "proximalMu"),
        ("fedavgm", {"serverMomentum": "0.9"}, "number"),
    ],
)
def test_build_strategy_rejects_with_a_clear_message(name, params, match):
    with pytest.raises(StrategyError, match=match):
        build_strategy(name, params, size=3)


def test_build_strategy_applies_params():
    s = build_strategy("fedyogi", {"serverLearningRate": 0.5, "tau": 0.01}, size=2)
    assert (s.server_learning_rate, s.tau, s.beta1, s.beta2) == (0.5, 0.01, 0.9, 0.99)
    assert build_strategy("fedprox", {"proximalMu": 0.3}, size=2).client_config() == {"proximal_mu": 0.3}


def test_check_quorum_for_krum():
    check_quorum("krum", {"byzantine": 1}, min_participants=5)
    with pytest.raises(StrategyError, match="minParticipants >= 5"):
        check_quorum("krum", {"byzantine": 1}, min_participants=4)
    with pytest.raises(StrategyError, match="selects 4"):
        check_quorum("multikrum", {"selected": 4}, min_participants=3)
    check_quorum("fedavg", {}, min_participants=1)


def test_params_schema_mirrors_the_table():
    schema = params_schema("fedadam")
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(PARAMS["fedadam"]) == {"serverLearningRate", "beta1", "beta2", "tau"}
    beta1 = schema["properties"]["beta1"]
    assert (beta1["minimum"], beta1["maximum"], beta1["exclusiveMaximum"], beta1["default"]) == (
        0.0,
        1.0,
        True,
        0.9,
    )
    assert params_schema("krum")["properties"]["byzantine"]["type"] == "integer"


# --- session-level checks -------------------------------------------------------------------------------


def _spec(**over):
    spec = {"mode": "learning", "minParticipants": 5, "strategy": {"name": "fedavg", "params": {}}}
    spec.update(over)
    return SessionSpec.from_manifest(spec)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (_spec(strategy={"name": "fedsgd"}), "unknown strategy"),
        (_spec(strategy={"name": "krum", "params": {"byzantine": 2}}), "minParticipants >= 7"),
        (_spec(strategy={"name": "median"}, privacy={"dp": {"noiseMultiplier": 1.0}}), "privacy.dp needs"),
        (_spec(strategy={"name": "krum"}, privacy={"secureAggregation": {"enabled": True}}), "only the sum"),
        (
            _spec(privacy={"secureAggregation": {"enabled": True}}, compression={"quantizeBits": 8, "topK": 1.0}),
            "cannot also be compressed",
        ),
        (_spec(privacy={"secureAggregation": {"enabled": True}}, compression={"topK": 0.1}), "compressed"),
        (_spec(privacy={"secureAggregation": {"enabled": True, "threshold": 6}}), "could not be unmasked"),
        (_spec(privacy={"secureAggregation": {"enabled": True, "threshold": -1}}), "integer >= 0"),
    ],
)
def test_learning_spec_conflicts_are_named(spec, match):
    with pytest.raises(ValueError, match=match):  # StrategyError, or SecAggError for its own block
        check_learning_spec(spec)


def test_compatible_learning_specs_pass():
    check_learning_spec(_spec(privacy={"secureAggregation": {"enabled": True}}, compression={"quantizeBits": 0}))
    check_learning_spec(_spec(strategy={"name": "krum", "params": {"byzantine": 1}}, compression={"topK": 0.1}))


def test_session_strategy_wraps_dp_around_the_rule():
    rng = np.random.default_rng(0)
    plain = build_session_strategy(_spec(strategy={"name": "fedadam", "params": {}}), size=4, rng=rng)
    assert plain.name == "fedadam"
    dp_spec = _spec(strategy={"name": "fedadam"}, privacy={"dp": {"noiseMultiplier": 0.7, "clipNorm": 2.0}})
    wrapped = build_session_strategy(dp_spec, size=4, rng=rng)
    assert isinstance(wrapped, DifferentiallyPrivate)
    assert wrapped.inner.name == "fedadam" and (wrapped.clip_norm, wrapped.noise_multiplier) == (2.0, 0.7)


def _doc_row(name, key, p):
    kind = "integer" if p.kind is int else "number"
    return f"| `{name}` | `{key}` | {kind} in {p.interval()} | {p.default:g} | {p.doc} |"


def test_docs_list_every_rule_parameter_as_the_table_declares_it():
    from pathlib import Path

    from fedattn.api.strategy_params import RULE_PARAMS

    doc = (Path(__file__).parent.parent / "docs" / "strategies.md").read_text()
    for name, table in RULE_PARAMS.items():
        rows = [_doc_row(name, key, p) for key, p in table.items()] or [f"| `{name}` | none | | | |"]
        for row in rows:
            assert row in doc, f"docs/strategies.md lacks: {row}"


def test_every_registered_rule_is_a_complete_strategy_under_its_own_name():
    from fedattn.aggregator.strategies import STRATEGIES, Strategy

    for name, rule in STRATEGIES.items():
        assert issubclass(rule, Strategy) and rule.name == name
        assert not rule.__abstractmethods__, f"{name} leaves {sorted(rule.__abstractmethods__)} abstract"


def test_a_stateless_rule_takes_only_an_empty_state():
    strategy = build_strategy("median", size=3)
    assert strategy.state_dict() == {}
    strategy.load_state_dict({})
    with pytest.raises(StrategyError, match="median keeps no state"):
        strategy.load_state_dict({"m": np.zeros(3)})
