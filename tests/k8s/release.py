"""The chart on a running control plane and ``fedattn operator`` authenticated as its ServiceAccount.

Shared by the fixtures in conftest.py and by ``benchmarks/operator_reconcile.py --real-apiserver``, so
the benchmark measures the operator under exactly the RBAC the tests check. Nothing here imports
pytest: a wait that runs out raises :class:`TimeoutError` naming what it waited for.
"""

from __future__ import annotations

import base64
import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import helm_engine as helm
import kubernetes
from apiserver import ControlPlane, free_port, loopback_dns

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], *, what: str, timeout_s: float = 60.0, interval_s: float = 0.25) -> T:
    """Poll ``predicate`` until it returns something truthy; TimeoutError naming ``what`` otherwise.

    The bound is a guard against hanging, not a performance assertion.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(interval_s)


def service_account_token(api: kubernetes.client.ApiClient, *, namespace: str, name: str) -> str:
    """The token of a ServiceAccount, from the Secret that v1.20's tokens controller creates for it."""
    core = kubernetes.client.CoreV1Api(api)

    def token() -> str | None:
        sa = core.read_namespaced_service_account(name, namespace)
        for ref in sa.secrets or []:
            secret = core.read_namespaced_secret(ref.name, namespace)
            if secret.type == "kubernetes.io/service-account-token" and (secret.data or {}).get("token"):
                return base64.b64decode(secret.data["token"]).decode()
        return None

    return wait_for(token, what=f"token Secret of ServiceAccount {namespace}/{name}")


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str
    operator_kubeconfig: Path
    #: what Helm returned: manifest, hooks, notes (info), ...
    installed: dict


def install_release(
    plane: ControlPlane, api: kubernetes.client.ApiClient, *, name: str, namespace: str, values: dict | None = None
) -> Release:
    """``helm install`` the chart, then wait for its ServiceAccount's token (release names here contain
    "fedattn", so the chart's full name, and the ServiceAccount's, is the release name)."""
    assert plane.admin_kubeconfig is not None
    installed = helm.install(kubeconfig=plane.admin_kubeconfig, namespace=namespace, release=name, values=values)
    token = service_account_token(api, namespace=namespace, name=name)
    return Release(
        name=name,
        namespace=namespace,
        service_account=name,
        operator_kubeconfig=plane.token_kubeconfig(f"{name}-operator", token, namespace=namespace),
        installed=installed,
    )


@dataclass(frozen=True)
class OperatorProcess:
    process: subprocess.Popen
    log_path: Path


@contextlib.contextmanager
def run_operator(
    *,
    kubeconfig: Path,
    namespace: str,
    workdir: Path,
    log_name: str,
    args: list[str],
    env: dict[str, str] | None = None,
) -> Iterator[OperatorProcess]:
    """``fedattn operator ARGS...`` with ``kubeconfig`` and ``POD_NAMESPACE``, healthy; stopped on exit.
    ``env``: more environment, e.g. what the chart's Deployment sets.

    Its coordinator client dials in-cluster names; :func:`loopback_dns` keeps those lookups local.
    A process that exits before it is healthy raises RuntimeError with the tail of its log.
    """
    log_path = workdir / f"{log_name}.log"
    port = free_port()
    env = {**os.environ, **(env or {}), "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": namespace}
    env.pop("KUBERNETES_SERVICE_HOST", None)  # NB: never the in-cluster config of a machine inside a pod
    argv = [sys.executable, "-m", "fedattn.cli", "operator", *args, f"--health-address=127.0.0.1:{port}"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            loopback_dns(argv, workdir=workdir), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=workdir
        )
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"fedattn operator exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                    return reply.status == 200
            except OSError:
                return False

        wait_for(healthy, what="the operator's /healthz", timeout_s=90, interval_s=0.1)
        yield OperatorProcess(proc, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
