"""The typed spec: every schema field has a typed twin, and every default comes from the schema.

The checks walk the schema, not a list kept here, so a field or default added to
``fedattn.api.schema`` without its typed field in ``fedattn.api.spec`` fails them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fedattn.api import ManifestError, schema
from fedattn.api.spec import ParticipantSpec, SessionSpec, camel, snake
from fedattn.api.validation import default


def _is_object(node: dict) -> bool:
    return node.get("type") == "object" and "properties" in node


def _filled(node: dict) -> dict:
    """Every sub-object present (with its required strings), so the walk reaches every nested default.

    NB: this may break CEL rules (tls gets both issuerRef and selfSigned); the typed reader only
    applies structural defaults and types, which is all this test is about.
    """
    out: dict[str, Any] = {}
    for key, child in node["properties"].items():
        if _is_object(child):
            out[key] = _filled(child)
        elif key in node.get("required", []) and child.get("type") == "string":
            out[key] = "a"
    return out


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or not isinstance(expected, int | float):
        return value == expected and type(value) is type(expected)
    return value == expected and not isinstance(value, bool)


def _check(node: dict, view: Any, path: str) -> int:
    """Asserts ``view`` mirrors ``node`` field by field; returns how many defaults it checked."""
    fields = {f.name for f in dataclasses.fields(view)}
    keys = {snake(k) for k in node["properties"]}
    assert fields == keys, f"{path}: typed fields {sorted(fields - keys)} / schema keys {sorted(keys - fields)}"
    checked = 0
    for key, child in node["properties"].items():
        assert camel(snake(key)) == key, f"{path}.{key} does not survive camel(snake(key))"
        value = getattr(view, snake(key))
        where = f"{path}.{key}"
        if "default" in child:
            assert value is not None, f"{where} has a schema default but reads None"
            checked += 1
            if _is_object(child):
                for sub in child["default"]:
                    assert getattr(value, snake(sub)) is not None, f"{where}.{sub} from the default is unset"
            elif child.get("type") == "array":
                assert list(value) == child["default"], where
            elif child.get("type") == "object":  # a map, e.g. strategy.params
                assert value == child["default"], where
            else:
                assert _same(value, child["default"]), f"{where}: {value!r} != schema default {child['default']!r}"
        if _is_object(child) and value is not None:
            checked += _check(child, value, where)
    return checked


@pytest.mark.parametrize("mode", ["learning", "attention"])
def test_session_spec_defaults_are_the_schemas(mode: str) -> None:
    node = schema.session_spec()
    minimal = SessionSpec.from_manifest({"mode": mode})
    assert minimal.mode == mode
    assert _check(node, minimal, "spec") > 0
    # nothing without a schema default is invented
    assert minimal.privacy is None and minimal.compression is None and minimal.eviction is None
    assert minimal.publisher is None and minimal.active_deadline_seconds is None
    filled = SessionSpec.from_manifest({**_filled(node), "mode": mode})
    assert _check(node, filled, "spec") > _check(node, minimal, "spec")


def test_participant_spec_defaults_are_the_schemas() -> None:
    node = schema.participant_spec()
    minimal = ParticipantSpec.from_manifest({"sessionRef": "s1"})
    assert minimal.session_ref == "s1" and minimal.data_ref is None and minimal.simulation is None
    assert _check(node, minimal, "spec") > 0
    filled = ParticipantSpec.from_manifest(_filled(node))
    assert _check(node, filled, "spec") > _check(node, minimal, "spec")


def test_a_whole_object_or_its_spec_read_alike_and_round_trip() -> None:
    spec = {
        "mode": "learning",
        "rounds": 3,
        "privacy": {"dp": {"noiseMultiplier": 2}},
        "compression": {"topK": 0.5},
        "syncLayers": [0, 2],
        "coordinator": {"tolerations": [{"key": "gpu"}]},
    }
    whole = SessionSpec.from_manifest({"kind": "FedSession", "metadata": {"name": "s1"}, "spec": spec})
    bare = SessionSpec.from_manifest(spec)
    assert whole == bare
    assert bare.rounds == 3 and bare.dp is not None and bare.dp.noise_multiplier == 2.0
    assert bare.dp.clip_norm == 1.0 and bare.secure_aggregation is None
    assert bare.compression is not None and bare.compression.quantize_bits == 8
    assert bare.sync_layers == (0, 2)
    assert bare.to_manifest() == default(schema.session_spec(), spec)
    assert SessionSpec.from_manifest(bare.to_manifest()) == bare
    with pytest.raises(dataclasses.FrozenInstanceError):
        bare.rounds = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"mode": "learning", "rounds": "10"}, "spec.rounds: expected an integer, got '10'"),
        ({"mode": "learning", "rounds": True}, "spec.rounds: expected an integer, got True"),
        ({"mode": "learning", "strategy": {"params": {"mu": "x"}}}, "spec.strategy.params.mu: expected a number"),
        ({"mode": "learning", "privacy": {"dp": 3}}, "spec.privacy.dp: expected an object, got int"),
        ({"mode": "chat"}, "spec.mode: 'chat' is not one of ['attention', 'learning']"),
        ({}, "spec.mode: required"),
        ({"mode": "learning", "compression": {"bits": 8}}, "spec.compression.bits: unknown field"),
    ],
)
def test_a_wrong_type_is_named_by_its_path(spec: dict, problem: str) -> None:
    with pytest.raises(ManifestError) as caught:
        SessionSpec.from_manifest(spec)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
