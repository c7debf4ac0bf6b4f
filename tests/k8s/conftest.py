"""Fixtures for tests against a real Kubernetes v1.20.2 control plane (see apiserver.py).

- ``control_plane``: etcd + kube-apiserver + kube-controller-manager on loopback, one per test session.
- ``admin_client``: a ``kubernetes.client.ApiClient`` with cluster-admin rights (client certificate).
- ``chart_release``: the chart installed with Helm's own engine into namespace ``fedattn`` (release
  ``fedattn``), and a kubeconfig that authenticates as the chart's ServiceAccount (its token Secret),
  so whatever runs with it has exactly the chart's RBAC (see release.py, which the benchmark shares).
- ``cluster_wide_release``: a second release with ``watch.allNamespaces`` (ClusterRole), same idea.

Every test here is marked ``apiserver``. Nothing is skipped: a missing binary fails with the command to
run (the build script is idempotent and called here, so a fresh machine builds once, 3-7 minutes).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kubernetes
import pytest
from apiserver import ControlPlane, build_binaries, start_control_plane
from release import Release, install_release

NAMESPACE = "fedattn"
RELEASE = "fedattn"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.apiserver)


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
