"""``fedattn operator`` as a local process against the real API server, with the chart's RBAC.

The operator authenticates with the token of the chart's ServiceAccount, so a rule missing from the
chart shows up as a 403 here. No kubelet runs: the pods of the Deployments and Jobs it creates stay
Pending, which is enough to check what the operator creates, how it reports status, and that deleting a
session lets the controller manager's garbage collector remove every child.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from apiserver import ControlPlane
from kube import children, create_all, dynamic, load_manifests
from release import Release, run_operator, wait_for

REPO = Path(__file__).resolve().parents[2]
#: How a denied call shows in the log: kopf's APIForbiddenError, the client's "(403) Reason: Forbidden",
#: the API's "... is forbidden: User ... cannot ...". (A bare "403" also matches resourceVersions.)
FORBIDDEN = re.compile(r"[Ff]orbidden|\(403\)")


@contextlib.contextmanager
def running_operator(
    plane: ControlPlane, release: Release, *scope: str, env: dict[str, str] | None = None
) -> Iterator[Path]:
    """``fedattn operator SCOPE...`` authenticated as ``release``'s ServiceAccount, healthy; yields its log.
    ``env``: more environment, e.g. what the chart's Deployment sets."""
    with run_operator(
        kubeconfig=release.operator_kubeconfig,
        namespace=release.namespace,
        workdir=plane.workdir,
        log_name=f"{release.name}-operator",
        args=[*scope, "--log-level=DEBUG", "--poll-seconds=1"],
        env=env,
    ) as running:
        yield running.log_path


def forbidden_lines(log_path: Path) -> list[str]:
    return [line for line in log_path.read_text(errors="replace").splitlines() if FORBIDDEN.search(line)]


@pytest.fixture(scope="module")
def operator_process(control_plane: ControlPlane, chart_release: Release) -> Iterator[Path]:
    """``fedattn operator`` watching the release namespace with the chart's namespaced Role."""
    with running_operator(control_plane, chart_release, f"--namespace={chart_release.namespace}") as log_path:
        yield log_path


@pytest.fixture(scope="module", params=["learning-digits.yaml", "attention-smollm2.yaml"])
def example_session(
    request: pytest.FixtureRequest,
    operator_process: Path,
    chart_release: Release,
    admin_client: kubernetes.client.ApiClient,
):
    """One example's manifests applied in the watched namespace: (client, session, participants)."""
    client = dynamic(admin_client)
    created = create_all(client, load_manifests(REPO / "examples" / request.param), namespace=chart_release.namespace)
    session = next(o for o in created if o.kind == "FedSession")
    participants = [o for o in created if o.kind == "FedParticipant"]
    return client, session, participants


def test_operator_creates_every_child_with_owner_references(example_session, chart_release: Release) -> None:
    """Coordinator and aggregator (Deployment + Service each) for the session; credentials (Secret) and
    a Job for every in-cluster participant; each child controlled by the session or its participant."""
    client, session, participants = example_session
    owners = {session.metadata.uid} | {p.metadata.uid for p in participants}
    wanted = {p.metadata.name for p in participants}

    def of_participant(found: list[dict], kind: str) -> set[str]:
        return {c["metadata"].get("labels", {}).get("fedattn.io/participant") for c in found if c["kind"] == kind}

    def complete() -> list[dict] | None:
        found = children(client, namespace=chart_release.namespace, owner_uids=owners)
        kinds = [c["kind"] for c in found]
        has_all = (
            kinds.count("Deployment") >= 2
            and kinds.count("Service") >= 2
            and wanted <= of_participant(found, "Job")
            and wanted <= of_participant(found, "Secret")
        )
        return found if has_all else None

    found = wait_for(
        complete,
        what="coordinator/aggregator Deployments+Services and a Job+Secret per participant, owned by the "
        "session or its participants",
        timeout_s=120,
    )
    for child in found:
        refs = [r for r in child["metadata"]["ownerReferences"] if r["uid"] in owners]
        assert refs and refs[0].get("controller") is True, child["metadata"]["name"]


def test_a_pending_session_has_its_claims_and_disruption_budgets(example_session, chart_release: Release) -> None:
    """Store and checkpoints on claims of this run (UID in the name); a PodDisruptionBudget per
    coordinator and aggregator at the version a v1.20 server serves (policy/v1beta1), owned by the session."""
    client, session, _ = example_session
    ns, uid = chart_release.namespace, session.metadata.uid

    def owned(api_version: str, kind: str) -> set[str]:
        items = client.resources.get(api_version=api_version, kind=kind).get(namespace=ns).to_dict()["items"]
        refs = {i["metadata"]["name"]: i["metadata"].get("ownerReferences") or [] for i in items}
        return {n for n, owners in refs.items() if any(r["uid"] == uid for r in owners)}

    name = session.metadata.name
    claims = {f"{name}-coordinator-state-{uid[:8]}", f"{name}-aggregator-state-{uid[:8]}"}
    wait_for(lambda: owned("v1", "PersistentVolumeClaim") == claims, what=f"claims {claims}", timeout_s=120)
    budgets = {f"{name}-coordinator", f"{name}-aggregator"}
    wait_for(lambda: owned("policy/v1beta1", "PodDisruptionBudget") == budgets, what="the budgets", timeout_s=120)


def test_status_conditions_are_written_through_the_status_subresource(example_session, chart_release: Release) -> None:
    client, session, _ = example_session
    fs = client.resources.get(api_version="fedattn.io/v1alpha1", kind="FedSession")

    def conditions() -> list[dict] | None:
        status = fs.get(name=session.metadata.name, namespace=chart_release.namespace).to_dict().get("status") or {}
        return status.get("conditions") or None

    conds = wait_for(conditions, what="FedSession status.conditions", timeout_s=120)
    for cond in conds:
        assert {"type", "status", "reason", "lastTransitionTime"} <= cond.keys(), cond
        assert cond["status"] in ("True", "False", "Unknown")
    got = fs.get(name=session.metadata.name, namespace=chart_release.namespace).to_dict()
    assert got["status"].get("phase") in ("Pending", "Running", "Suspended", "Failed", "Succeeded")
    assert got["status"].get("observedGeneration") == got["metadata"]["generation"]


def test_deleting_the_session_garbage_collects_its_children(example_session, chart_release: Release) -> None:
    client, session, _ = example_session
    owners = {session.metadata.uid}
    assert children(client, namespace=chart_release.namespace, owner_uids=owners), "nothing to collect"
    fs = client.resources.get(api_version="fedattn.io/v1alpha1", kind="FedSession")
    fs.delete(name=session.metadata.name, namespace=chart_release.namespace)

    def gone() -> bool:
        left = children(client, namespace=chart_release.namespace, owner_uids=owners)
        return (
            not left
            and not fs.get(
                namespace=chart_release.namespace, field_selector=f"metadata.name={session.metadata.name}"
            ).items
        )

    wait_for(gone, what="the session and every child it owned to be deleted", timeout_s=120)


def test_a_session_applied_again_reissues_its_participants(example_session, chart_release: Release) -> None:
    """Runs after the session was deleted (above): the same manifest applied again is a new run, and its
    in-cluster participants get credentials and a Job of that run, signed by its new CA."""
    client, session, participants = example_session
    ns = chart_release.namespace
    doc = session.to_dict()
    again = create_all(
        client,
        [{"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": {"name": doc["metadata"]["name"]},
          "spec": doc["spec"]}],
        namespace=ns,
    )[0]
    assert again.metadata.uid != session.metadata.uid
    secrets = client.resources.get(api_version="v1", kind="Secret")
    jobs = client.resources.get(api_version="batch/v1", kind="Job")
    in_cluster = [p.metadata.name for p in participants if not (p.spec.to_dict() or {}).get("external")]

    def stamped(resource, name: str) -> bool:
        found = resource.get(namespace=ns, field_selector=f"metadata.name={name}").to_dict()["items"]
        annotations = found[0]["metadata"].get("annotations") or {} if found else {}
        return annotations.get("fedattn.io/session-uid") == again.metadata.uid

    for p in in_cluster:
        wait_for(lambda p=p: stamped(secrets, f"{p}-credentials"), what=f"{p}'s new credentials", timeout_s=120)
        wait_for(lambda p=p: stamped(jobs, f"{p}-participant"), what=f"{p}'s Job of the new run", timeout_s=120)
        ca = secrets.get(name=f"{doc['metadata']['name']}-ca", namespace=ns).to_dict()["data"]["ca.crt"]
        assert secrets.get(name=f"{p}-credentials", namespace=ns).to_dict()["data"]["ca.crt"] == ca


def test_operator_never_got_a_403(operator_process: Path, example_session) -> None:
    # NB: runs after the tests above (file order), so the log holds their whole history.
    lines = forbidden_lines(operator_process)
    assert lines == [], "the chart's RBAC is missing rules:\n" + "\n".join(lines[:20])


def test_cluster_wide_operator_reconciles_any_namespace_with_the_cluster_role(
    control_plane: ControlPlane, cluster_wide_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    namespace = "elsewhere"
    kubernetes.client.CoreV1Api(admin_client).create_namespace({"metadata": {"name": namespace}})
    client = dynamic(admin_client)
    with running_operator(control_plane, cluster_wide_release, "--all-namespaces") as log_path:
        created = create_all(client, load_manifests(REPO / "examples" / "learning-digits.yaml"), namespace=namespace)
        owners = {o.metadata.uid for o in created}

        def deployments() -> bool:
            found = children(client, namespace=namespace, owner_uids=owners)
            return sum(c["kind"] == "Deployment" for c in found) >= 2

        wait_for(deployments, what=f"coordinator and aggregator Deployments in {namespace}", timeout_s=120)
    lines = forbidden_lines(log_path)
    assert lines == [], "the chart's ClusterRole is missing rules:\n" + "\n".join(lines[:20])
