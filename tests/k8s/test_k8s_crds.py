"""The CRDs, as installed by the chart, on a real v1.20.2 API server: accepted, established, enforcing
their structural schema (types, enums, ranges, required fields), defaulting, and serving status as a
subresource."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes
import pytest
from kube import create_all, dynamic, load_manifests
from release import Release, wait_for

REPO = Path(__file__).resolve().parents[2]
#: Every example is a Kubernetes manifest (data such as benchmark prompt sets lives elsewhere), so
#: ``kubectl apply -f examples/`` works.
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
TEST_NS = "crd-tests"


def _established(api: kubernetes.client.ApiClient, name: str) -> bool:
    crd = kubernetes.client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


@pytest.fixture(scope="module")
def sessions(chart_release: Release, admin_client: kubernetes.client.ApiClient):
    for name in ("fedsessions.fedattn.io", "fedparticipants.fedattn.io"):
        wait_for(lambda name=name: _established(admin_client, name), what=f"CRD {name} Established")
    kubernetes.client.CoreV1Api(admin_client).create_namespace({"metadata": {"name": TEST_NS}})
    client = dynamic(admin_client)
    return (
        client.resources.get(api_version="fedattn.io/v1alpha1", kind="FedSession"),
        client.resources.get(api_version="fedattn.io/v1alpha1", kind="FedParticipant"),
    )


def _session(name: str, **spec) -> dict:
    return {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": "FedSession",
        "metadata": {"name": name},
        "spec": {"mode": "learning", **spec},
    }


def test_crds_are_served_with_short_names_and_status_subresource(
    sessions, admin_client: kubernetes.client.ApiClient
) -> None:
    crd = kubernetes.client.ApiextensionsV1Api(admin_client).read_custom_resource_definition("fedsessions.fedattn.io")
    assert crd.spec.names.short_names == ["fs"]
    (version,) = crd.spec.versions
    assert version.name == "v1alpha1" and version.subresources.status is not None
    assert [c.name for c in version.additional_printer_columns][:3] == ["Mode", "Phase", "Round"]


def test_every_example_applies_into_one_namespace(sessions, admin_client: kubernetes.client.ApiClient) -> None:
    """``kubectl apply -f examples/`` into one namespace: every example is accepted and none overwrites another
    (a name shared by two examples would answer 409 Conflict here)."""
    namespace = "examples"
    kubernetes.client.CoreV1Api(admin_client).create_namespace({"metadata": {"name": namespace}})
    docs = [doc for example in EXAMPLES for doc in load_manifests(example)]
    created = create_all(dynamic(admin_client), docs, namespace=namespace)
    sessions_made = [obj.metadata.name for obj in created if obj.kind == "FedSession"]
    assert len(sessions_made) == len(EXAMPLES)
    _, participants = sessions
    listed = participants.get(namespace=namespace).to_dict()["items"]
    expected = {d["metadata"]["name"]: d["spec"]["sessionRef"] for d in docs if d["kind"] == "FedParticipant"}
    assert {p["metadata"]["name"]: p["spec"]["sessionRef"] for p in listed} == expected


def test_schema_defaults_are_applied_by_the_server(sessions) -> None:
    fs, _ = sessions
    got = fs.create(body=_session("defaults"), namespace=TEST_NS)
    assert got.spec.minParticipants == 2
    assert got.spec.roundTimeoutSeconds == 300
    assert got.spec.suspend is False


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"mode": "telepathy"}, "spec.mode"),
        ({"minParticipants": 0}, "spec.minParticipants"),
        ({"minParticipants": "two"}, "spec.minParticipants"),
        ({"roundTimeoutSeconds": -5}, "spec.roundTimeoutSeconds"),
        ({"waitAfterMinSeconds": -1}, "spec.waitAfterMinSeconds"),
    ],
    ids=["unknown-mode", "zero-quorum", "string-quorum", "negative-timeout", "negative-wait"],
)
def test_invalid_sessions_are_rejected_naming_the_field(sessions, change: dict, field: str) -> None:
    fs, _ = sessions
    with pytest.raises(kubernetes.client.ApiException) as rejected:
        fs.create(body=_session("bad", **change), namespace=TEST_NS)
    assert rejected.value.status == 422
    assert field in rejected.value.body


def test_participant_without_session_ref_is_rejected(sessions) -> None:
    _, fp = sessions
    body = {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": "FedParticipant",
        "metadata": {"name": "orphan"},
        "spec": {"weight": 1},
    }
    with pytest.raises(kubernetes.client.ApiException) as rejected:
        fp.create(body=body, namespace=TEST_NS)
    assert rejected.value.status == 422
    assert "spec.sessionRef" in rejected.value.body


def test_status_is_a_subresource(sessions) -> None:
    """A write to the main resource cannot change status; a write to /status can (and only status)."""
    fs, _ = sessions
    obj = fs.create(body=_session("status-sub"), namespace=TEST_NS).to_dict()
    tampered = copy.deepcopy(obj)
    tampered["status"] = {"phase": "Succeeded"}
    after = fs.replace(body=tampered, namespace=TEST_NS).to_dict()
    assert (after.get("status") or {}).get("phase") != "Succeeded"
    after["status"] = {"phase": "Running", "round": 3}
    after["spec"]["minParticipants"] = 7
    via_status = fs.status.replace(body=after, namespace=TEST_NS).to_dict()
    assert via_status["status"]["phase"] == "Running"
    assert via_status["spec"]["minParticipants"] == 2  # spec changes through /status are ignored
