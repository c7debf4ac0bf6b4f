"""The CRD schemas: generated files in sync, structural, examples valid, bad specs rejected with paths."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from fedattn.api import ManifestError, apply_defaults_and_validate, build_crd, crd_files, kinds
from fedattn.api.crds import CEL_KEY
from fedattn.api.validation import default

ROOT = Path(__file__).resolve().parents[1]


def _session(**spec) -> dict:
    return {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": "FedSession",
        "metadata": {"name": "s1"},
        "spec": {"mode": "learning", **spec},
    }


@pytest.mark.parametrize("legacy", [False, True])
def test_crd_files_match_the_code(legacy: bool) -> None:
    folder = ROOT / "crds" / ("legacy" if legacy else "")
    expected = crd_files(legacy=legacy)
    on_disk = {p.name: p.read_text() for p in folder.glob("*.yaml")}
    assert on_disk == expected, "crds/ drifted from fedattn.api: run `fedattn crds --out crds` (and --legacy)"


def test_only_the_default_flavour_carries_cel() -> None:
    assert all(CEL_KEY in text for text in crd_files().values())
    assert not any(CEL_KEY in text for text in crd_files(legacy=True).values())


def _walk(node: dict, path: str):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from _walk(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")


@pytest.mark.parametrize("kind", ["FedSession", "FedParticipant"])
def test_schema_is_structural_and_documented(kind: str) -> None:
    crd = build_crd(kinds()[kind])
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["categories"] == ["fed"]
    for path, node in _walk(version["schema"]["openAPIV3Schema"], kind):
        assert node.get("type") or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if path.count(".") >= 2:  # below spec/status
            assert node.get("description"), f"{path} has no description"
        for forbidden in ("oneOf", "anyOf", "allOf", "$ref"):
            assert forbidden not in node, f"{path} uses {forbidden}"
        if "default" in node:  # a default must itself be valid, as the API server checks
            assert isinstance(
                node["default"],
                {
                    "object": dict,
                    "array": list,
                    "string": str,
                    "boolean": bool,
                    "integer": int,
                    "number": (int, float),
                }[node["type"]],
            ), path


@pytest.mark.parametrize("kind", ["FedSession", "FedParticipant"])
def test_what_the_api_server_checks_in_a_crd(kind: str) -> None:
    """Rules a real API server enforces at CRD creation: root metadata carries nothing but its type,
    and every default is itself valid against its own node (after its children's defaults)."""
    root = build_crd(kinds()[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert root["properties"]["metadata"] == {"type": "object"}
    for path, node in _walk(root, kind):
        if "default" in node:
            value = default(node, node["default"])
            errors = list(jsonschema.Draft4Validator(node).iter_errors(value))
            assert not errors, f"{path}: default {node['default']!r} is invalid: {errors[0].message}"


def test_printer_columns() -> None:
    names = {
        k: [c["name"] for c in build_crd(v)["spec"]["versions"][0]["additionalPrinterColumns"]]
        for k, v in kinds().items()
    }
    assert names == {
        "FedSession": ["Mode", "Phase", "Round", "Participants", "Age"],
        "FedParticipant": ["Session", "Phase", "Last heartbeat", "Age"],
    }


def _manifests(path: Path) -> list[dict]:
    docs = yaml.safe_load_all(path.read_text())
    return [d for d in docs if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("fedattn.io/")]


EXAMPLES = [p for p in sorted((ROOT / "examples").glob("*.yaml")) if _manifests(p)]


def test_the_examples_include_both_modes() -> None:
    modes = {d["spec"]["mode"] for p in EXAMPLES for d in _manifests(p) if d["kind"] == "FedSession"}
    assert modes == {"attention", "learning"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    for doc in _manifests(path):
        out = apply_defaults_and_validate(doc["kind"], doc)
        assert out["metadata"] == doc["metadata"]


def test_defaults_are_applied_structurally() -> None:
    out = apply_defaults_and_validate("FedSession", _session(resilience={"retries": 5}))
    spec = out["spec"]
    assert spec["minParticipants"] == 2 and spec["roundTimeoutSeconds"] == 300 and spec["suspend"] is False
    assert spec["resilience"] == {
        "retries": 5,
        "timeoutSeconds": 30,
        "backoffSeconds": 1.0,
        "circuitBreaker": {"failures": 5, "openSeconds": 60},
    }
    assert spec["tls"] == {"selfSigned": {"validityDays": 365, "renewBeforeDays": 30}}
    assert spec["strategy"] == {"name": "fedavg", "params": {}}
    assert "privacy" not in spec and "activeDeadlineSeconds" not in spec  # no default: off unless set
    assert isinstance(spec["resilience"]["backoffSeconds"], float)


def test_input_is_not_mutated() -> None:
    manifest = _session()
    before = copy.deepcopy(manifest)
    apply_defaults_and_validate("FedSession", manifest)
    assert manifest == before


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"minParticipants": 0}, "spec.minParticipants: 0 is less than the minimum of 1"),
        ({"minParticipants": "3"}, "spec.minParticipants: '3' is not of type 'integer'"),
        ({"mode": "gossip"}, "spec.mode: 'gossip' is not one of"),
        ({"rounds": 3, "roundz": 4}, "spec: Additional properties are not allowed ('roundz' was unexpected)"),
        ({"kvKeepRatio": 0}, "spec.kvKeepRatio: 0.0 is less than or equal to the minimum of 0"),
        ({"kvCodec": "int3"}, "spec.kvCodec: 'int3' is not one of"),
        ({"holderSync": "some"}, "spec.holderSync: 'some' is not one of"),
        ({"mode": "attention"}, "spec: publisher is required in attention mode"),
        (
            {"strategy": {"name": "fedavg", "params": {"proximalMu": 0.1}}},
            "spec.strategy: strategy.params has a key this strategy does not take",
        ),
        (
            {"strategy": {"name": "trimmedmean", "params": {"trimFraction": 0.5}}},
            "spec.strategy: trimFraction must be in [0, 0.5)",
        ),
        (
            {"tls": {"issuerRef": {"name": "ca"}, "selfSigned": {}}},
            "spec.tls: set exactly one of tls.issuerRef and tls.selfSigned",
        ),
        (
            {"tls": {"selfSigned": {"validityDays": 10, "renewBeforeDays": 10}}},
            "spec.tls.selfSigned: renewBeforeDays must be below validityDays",
        ),
        (
            {"syncLayers": [0, 4], "syncPolicy": "uniform"},
            "spec: set at most one of syncLayers and syncPolicy",
        ),
        ({"database": {}}, "spec.database: 'secretRef' is a required property"),
        (
            {"coordinator": {"nodeSelector": {"zone": 3}}},
            "spec.coordinator.nodeSelector.zone: 3 is not of type",
        ),
    ],
)
def test_invalid_sessions_are_rejected_with_the_field_path(spec: dict, expected: str) -> None:
    with pytest.raises(ManifestError) as err:
        apply_defaults_and_validate("FedSession", _session(**spec))
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_valid_strategy_params_pass() -> None:
    out = apply_defaults_and_validate(
        "FedSession", _session(strategy={"name": "fedadam", "params": {"serverLearningRate": 0.01, "tau": 1}})
    )
    assert out["spec"]["strategy"]["params"] == {"serverLearningRate": 0.01, "tau": 1.0}


@pytest.mark.parametrize(
    ("old_spec", "new_spec", "expected"),
    [
        ({"mode": "attention", "publisher": "a"}, {"mode": "learning"}, "spec: mode is immutable"),
        (
            {"activeDeadlineSeconds": 60},
            {"activeDeadlineSeconds": 61},
            "spec: activeDeadlineSeconds is immutable",
        ),
        ({}, {"activeDeadlineSeconds": 61}, "spec: activeDeadlineSeconds is immutable"),
    ],
)
def test_transition_rules_apply_on_update(old_spec: dict, new_spec: dict, expected: str) -> None:
    new, old = _session(**new_spec), _session(**old_spec)
    apply_defaults_and_validate("FedSession", new)  # fine as a create
    with pytest.raises(ManifestError) as err:
        apply_defaults_and_validate("FedSession", new, old=old)
    assert expected in err.value.problems


def test_participant_rules() -> None:
    base = {"apiVersion": "fedattn.io/v1alpha1", "kind": "FedParticipant", "metadata": {"name": "p"}}
    with pytest.raises(ManifestError) as err:
        apply_defaults_and_validate("FedParticipant", {**base, "spec": {}})
    assert "spec: 'sessionRef' is a required property" in err.value.problems
    both = {"configMapKeyRef": {"name": "a", "key": "k"}, "secretKeyRef": {"name": "b", "key": "k"}}
    with pytest.raises(ManifestError) as err:
        apply_defaults_and_validate("FedParticipant", {**base, "spec": {"sessionRef": "s", "promptRef": both}})
    assert err.value.problems == ["spec.promptRef: set exactly one of configMapKeyRef and secretKeyRef"]
    with pytest.raises(ManifestError) as err:
        apply_defaults_and_validate(
            "FedParticipant", {**base, "spec": {"sessionRef": "t"}}, old={**base, "spec": {"sessionRef": "s"}}
        )
    assert err.value.problems == ["spec: sessionRef is immutable"]


def test_wrong_kind_and_missing_name() -> None:
    with pytest.raises(ManifestError) as err:
        apply_defaults_and_validate(
            "FedSession", {"apiVersion": "v1", "kind": "FedSession", "spec": {"mode": "learning"}}
        )
    assert err.value.problems[:2] == [
        "apiVersion: 'v1' is not 'fedattn.io/v1alpha1'",
        "metadata.name: required",
    ]
    with pytest.raises(ValueError, match="unknown kind"):
        apply_defaults_and_validate("FedThing", {})


@pytest.mark.parametrize(
    ("section", "kind"), [("FedSession `spec`", "FedSession"), ("FedParticipant `spec`", "FedParticipant")]
)
def test_docs_list_exactly_the_spec_fields(section: str, kind: str) -> None:
    text = (ROOT / "docs" / "resources.md").read_text()
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    documented = set()
    for m in re.finditer(r"^\| ((?:`[A-Za-z]+`(?:, )?)+) \|", body, re.M):
        documented |= set(re.findall(r"`([A-Za-z]+)`", m.group(1)))
    assert documented == set(kinds()[kind].spec["properties"])


def test_schema_enums_match_what_the_components_implement() -> None:
    """The CRD's strategy params and sync policies are the ones the aggregator and attention code take."""
    from fedattn.aggregator.strategies.registry import PARAMS, STRATEGIES
    from fedattn.api.schema import KV_CODECS, STRATEGY_PARAMS, SYNC_POLICIES
    from fedattn.attention.kvcodec import KVCodec
    from fedattn.attention.masks import SyncPolicy

    assert {k: sorted(v) for k, v in PARAMS.items()} == {k: sorted(v) for k, v in STRATEGY_PARAMS.items()}
    assert all(rule.PARAMS is STRATEGY_PARAMS[name] for name, rule in STRATEGIES.items())
    assert sorted(p.value for p in SyncPolicy) == sorted(SYNC_POLICIES)
    assert sorted(c.value for c in KVCodec) == sorted(KV_CODECS)
