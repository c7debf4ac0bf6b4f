"""Property tests of manifest validation: any input either validates or gets a ManifestError naming
field paths (never another exception), and defaulting is idempotent."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from fedattn.api import ManifestError, apply_defaults_and_validate, kinds

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10**7),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["attention", "learning", "fedavg", "krum", "uniform", "", "x" * 300]),
    st.lists(st.integers(-1, 64), max_size=4),
    st.dictionaries(
        st.sampled_from(["name", "key", "params", "proximalMu", "selfSigned", "issuerRef"]),
        st.one_of(st.integers(-1, 5), st.text(max_size=4), st.just({})),
        max_size=3,
    ),
)


def _specs(kind: str):
    fields = sorted(kinds()[kind].spec["properties"])
    return st.dictionaries(st.sampled_from(fields), VALUES, max_size=6)


def _manifest(kind: str, spec: dict) -> dict:
    return {"apiVersion": "fedattn.io/v1alpha1", "kind": kind, "metadata": {"name": "p"}, "spec": spec}


def _finite(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


@settings(max_examples=150, deadline=None)
@given(spec=_specs("FedSession"), mode=st.sampled_from(["attention", "learning"]))
def test_session_specs_validate_or_fail_with_paths(spec: dict, mode: str) -> None:
    spec = {"mode": mode, **spec}
    try:
        out = apply_defaults_and_validate("FedSession", _manifest("FedSession", spec))
    except ManifestError as err:
        assert err.problems and all(p.split(":", 1)[0] for p in err.problems)
        return
    assert _finite(out)  # NaN and infinities never pass
    assert apply_defaults_and_validate("FedSession", out) == out  # defaulting is idempotent
    assert out["spec"]["minParticipants"] >= 1 and "tls" in out["spec"]


@settings(max_examples=100, deadline=None)
@given(spec=_specs("FedParticipant"))
def test_participant_specs_validate_or_fail_with_paths(spec: dict) -> None:
    try:
        out = apply_defaults_and_validate("FedParticipant", _manifest("FedParticipant", spec))
    except ManifestError as err:
        assert err.problems
        return
    assert "sessionRef" in out["spec"] and out["spec"]["weight"] > 0
    assert apply_defaults_and_validate("FedParticipant", out) == out


def test_nan_is_refused_with_its_path() -> None:
    try:
        apply_defaults_and_validate(
            "FedSession", _manifest("FedSession", {"mode": "learning", "kvKeepRatio": math.nan})
        )
    except ManifestError as err:
        assert "spec.kvKeepRatio: nan is not a finite number" in err.problems
    else:
        raise AssertionError("NaN accepted")
