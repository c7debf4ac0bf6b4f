"""The installation's pod defaults (pull secrets, default resources) on the builders' real workloads; the
operator's environment parsed strictly."""

from __future__ import annotations

import json

import pytest

from fedattn.api import apply_defaults_and_validate
from fedattn.api.spec import ParticipantSpec, SessionSpec
from fedattn.operator import builders
from fedattn.operator.pod_defaults import PodDefaults

RESOURCES = {
    "coordinator": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "aggregator": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
    "participant": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
}
ENV = {"FEDATTN_IMAGE_PULL_SECRETS": "regcred, mirror-cred", "FEDATTN_POD_RESOURCES": json.dumps(RESOURCES)}


def _doc(kind: str, name: str, spec: dict) -> dict:
    out = apply_defaults_and_validate(kind, {"apiVersion": "fedattn.io/v1alpha1", "kind": kind,
                                             "metadata": {"name": name}, "spec": spec})  # fmt: skip
    out["metadata"]["namespace"] = "team"
    # NB: the builders take the object with its spec parsed into the typed view, as handlers pass it.
    typed = SessionSpec if kind == "FedSession" else ParticipantSpec
    return {**out, "spec": typed.from_manifest(out)}


def _workloads(**session_spec) -> dict[str, dict]:
    session = _doc("FedSession", "s1", {"mode": "learning", **session_spec})
    participant = _doc("FedParticipant", "s1-a", {"sessionRef": "s1"})
    return {
        "coordinator": builders.build_coordinator_deployment(session),
        "aggregator": builders.build_aggregator_deployment(session),
        "participant": builders.build_participant_job(participant, session),
    }


def _pod(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def test_every_session_pod_gets_the_pull_secrets_and_resources() -> None:
    defaults = PodDefaults.from_env(ENV)
    for component, workload in _workloads().items():
        pod = _pod(defaults.apply(workload))
        assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "mirror-cred"}], component
        (container,) = pod["containers"]
        assert container["resources"] == RESOURCES[component], component


def test_a_sessions_own_resources_win_and_the_input_is_not_changed() -> None:
    own = {"limits": {"cpu": "2", "memory": "8Gi"}}
    built = _workloads(coordinator={"resources": own})["coordinator"]
    before = json.dumps(built, sort_keys=True)
    applied = PodDefaults.from_env(ENV).apply(built)
    assert _pod(applied)["containers"][0]["resources"] == own
    assert json.dumps(built, sort_keys=True) == before


def test_without_the_environment_nothing_is_added() -> None:
    for workload in _workloads().values():
        assert PodDefaults.from_env({}).apply(workload) == workload


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{not json", "FEDATTN_POD_RESOURCES is not JSON"),
        ("[1]", "must be a JSON object"),
        ('{"operator": {}}', "unknown component 'operator'"),
        ('{"coordinator": {"requsts": {}}}', "FEDATTN_POD_RESOURCES.coordinator must be an object"),
    ],
)
def test_bad_resources_are_rejected_saying_what_is_wrong(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(")):
        PodDefaults.from_env({"FEDATTN_POD_RESOURCES": value})
