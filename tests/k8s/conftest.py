"""Fixtures for tests against a real Kubernetes v1.20.2 control plane (see apiserver.py).

- ``control_plane``: etcd + kube-apiserver + kube-controller-manager on loopback, one per test session.
- ``admin_client``: a ``kubernetes.client.ApiClient`` with cluster-admin rights (client certificate).
- ``chart_release``: the chart installed with Helm's own engine into namespace ``fedattn`` (release
  ``fedattn``), and a kubeconfig that authenticates as the chart's ServiceAccount (its token Secret),
  so whatever runs with it has exactly the chart's RBAC (see release.py, which the benchmark shares).
- ``cluster_wide_release``: a second release with ``watch.allNamespaces`` (ClusterRole), same idea.
- ``node``: a whole single-node cluster (node.py: scheduler, kubelet on its own dockerd, kube-proxy, DNS,
  egress guard) with the fedattn images built into it; ``pod_release``: the chart installed there, its
  operator pod Ready.

Every test here is marked ``apiserver``. The ``test_pods_*`` files, which run sessions in real pods, are
also marked ``pods`` and run only when asked for (``pytest -m pods tests/k8s``): they take minutes and a
node's worth of machine. Nothing is skipped: a missing binary fails with the command to run (the build
script is idempotent and called here, so a fresh machine builds once, 3-7 minutes, more with --node).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import helm_engine as helm
import kubernetes
import pytest
from apiserver import ControlPlane, build_binaries, start_control_plane
from node import Node, start_node
from release import Release, install_release, wait_for

NAMESPACE = "fedattn"
RELEASE = "fedattn"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    wants_pods = "pods" in (config.option.markexpr or "")
    deselected = []
    for item in items:
        path = Path(item.fspath)
        if here in path.parents:
            item.add_marker(pytest.mark.apiserver)
            if path.name.startswith("test_pods_"):
                item.add_marker(pytest.mark.pods)
                if not wants_pods:
                    deselected.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    plane = start_control_plane(workdir=tmp_path_factory.mktemp("k8s"), bin_dir=build_binaries())
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def admin_client(control_plane: ControlPlane) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig))


@pytest.fixture(scope="session")
def chart_release(control_plane: ControlPlane, admin_client: kubernetes.client.ApiClient) -> Release:
    """The chart with default values: CRDs, operator watching its own namespace with a Role."""
    return install_release(control_plane, admin_client, name=RELEASE, namespace=NAMESPACE)


@pytest.fixture(scope="session")
def cluster_wide_release(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> Release:
    """A second release watching every namespace (ClusterRole); the CRDs stay chart_release's."""
    values = {
        "watch": {"allNamespaces": True},
        "crds": {"create": False},
        "externalDatabase": {"secretName": "shared-pg", "secretKey": "uri"},
    }
    return install_release(control_plane, admin_client, name="fedattn-all", namespace="fedattn-all", values=values)


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    started = start_node(workdir=tmp_path_factory.mktemp("node"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def pod_release(node: Node) -> Release:
    """The chart installed on the node (release ``fedattn`` in ``fedattn-pods``), operator pod Ready."""
    api = node.client()
    namespace = "fedattn-pods"
    # NB: the chart's default requests (a participant asks for 500m CPU) do not fit five participants
    # on this 2-CPU node; the requests shrink, the memory limits stay.
    small = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "2Gi"}}
    values = {
        "image": {"tag": node.image_tag},
        "sessionPods": {"resources": {c: small for c in ("coordinator", "aggregator", "participant")}},
    }
    installed = helm.install(kubeconfig=node.admin_kubeconfig, namespace=namespace, release=RELEASE, values=values)
    apps = kubernetes.client.AppsV1Api(api)

    def ready() -> bool:
        found = apps.list_namespaced_deployment(namespace, label_selector="app.kubernetes.io/component=operator")
        return any((dep.status.ready_replicas or 0) >= 1 for dep in found.items)

    wait_for(ready, what="the operator pod to be Ready", timeout_s=300, interval_s=1)
    return Release(
        name=RELEASE,
        namespace=namespace,
        service_account=RELEASE,
        operator_kubeconfig=node.admin_kubeconfig,
        installed=installed,
    )
