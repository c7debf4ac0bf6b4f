"""Reconcile N sessions x M participants with ``fedattn operator`` (a real process); seconds to all children.

Children: per session its CA, server, operator and Curve Secrets, the allowlist ConfigMap, 2 Deployments
and 2 Services; per participant its credentials Secret and Job (100 x 4: 1,700). Reported: seconds from
the first object created to every child present, its ratio to the target (< 30 s for 100 x 4 on a real
API server, issue 13), the operator process's CPU seconds (utime + stime, its start-up's part apart too)
and peak resident memory (VmHWM); on the real API server also the CPU seconds of etcd, kube-apiserver and
the controller manager during the run, and the requests it served (every client's, by verb and resource).

Two API servers:

- ``--real-apiserver``: the v1.20.2 control plane of tests/k8s (etcd + kube-apiserver + controller
  manager on loopback, binaries from scripts/k8s/build.sh), the Helm chart installed (CRDs, Role,
  ServiceAccount), the operator authenticated with the ServiceAccount's token: the chart's RBAC applies,
  as in tests/k8s/test_k8s_operator.py. Nothing runs the pods (no kubelet). The objects are created with
  the admin's client (its own threads, 16 in flight), whichever operator code is measured.
- default: kmock's emulator in this process (its cost grows with its request log, so the wall time is
  an upper bound on the operator's).

    .venv/bin/python benchmarks/operator_reconcile.py --real-apiserver --sessions 100 --participants 4 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import yaml
from kubernetes import client, config
from prometheus_client.parser import text_string_to_metric_families

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "k8s")]  # the emulator and the control plane the tests use
from apiserver import start_control_plane  # noqa: E402
from release import OperatorProcess, install_release, run_operator  # noqa: E402

from operator_cluster import ApiServer, declare, names_of, seeded  # noqa: E402

#: How many creates the benchmark keeps in flight (as a parallel ``kubectl apply`` would).
CREATE_CONCURRENCY = 16
#: The target of issue 13: 100 sessions x 4 participants to all children on a real API server.
LIMIT_S = 30.0
#: child kind (group/version/plural, as kmock names it) -> how many per session and per participant
CHILDREN = {
    "apps/v1/deployments": (2, 0),
    "v1/services": (2, 0),
    "batch/v1/jobs": (0, 1),
    "v1/secrets": (4, 1),
    "v1/configmaps": (1, 0),
}


@dataclass
class Cluster:
    """What the measurement needs from an API server, whichever it is."""

    namespace: str
    #: the admin's client, to create the FedSessions and FedParticipants (with :func:`_create`, not the
    #: operator's code: the load generator stays the same whichever operator is measured)
    api: client.ApiClient
    #: kind path -> how many objects of it the namespace holds now
    count: Callable[[str], Awaitable[int]]
    #: a custom object as this API server wants it created: (kind, name, spec) -> manifest
    manifest: Callable[[str, str, dict[str, Any]], dict[str, Any]]
    kubeconfig: Path
    workdir: Path
    #: "VERB resource[/subresource]" -> requests the API server has served so far (every client's), if it says
    served: Callable[[], Awaitable[Counter[str]]] | None = None
    #: name -> pid of the API server's own processes, whose CPU seconds during the run are reported too
    server_pids: dict[str, int] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def emulated() -> AsyncIterator[Cluster]:
    async with ApiServer() as emulator, kmock.Server(emulator) as server:
        emulator.history_limit = 64  # NB: kmock matches each request against its whole log: keep a window
        declare(emulator)
        workdir = Path(tempfile.mkdtemp(prefix="fedattn-bench-"))
        kubeconfig = workdir / "kubeconfig"
        cluster = {"name": "e", "cluster": {"server": str(server.url)}}
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "e",
                    "clusters": [cluster],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
                }
            )
        )

        async def count(path: str) -> int:
            return len(names_of(emulator, path))

        yield Cluster(
            namespace="default",
            api=_client(client.Configuration(host=str(server.url))),
            count=count,
            manifest=seeded,
            kubeconfig=kubeconfig,
            workdir=workdir,
        )


def _client(settings: client.Configuration) -> client.ApiClient:
    settings.connection_pool_maxsize = CREATE_CONCURRENCY
    return client.ApiClient(settings)


def _call(api: client.ApiClient, method: str, path: str, *, body: Any = None, **query: Any) -> bytes:
    """One request through ``api``'s connection and credentials; the raw body (no client models)."""
    request = api.param_serialize(
        method, path, query_params=list(query.items()), body=body, auth_settings=["BearerToken"]
    )
    response = api.call_api(*request)
    response.read()
    if not 200 <= response.status <= 299:
        raise client.ApiException(http_resp=response)
    return response.data


def _get(api: client.ApiClient, path: str, **query: Any) -> bytes:
    return _call(api, "GET", path, **query)


def _create(api: client.ApiClient, obj: dict[str, Any]) -> None:
    """POST a FedSession or FedParticipant (plural: the kind in lower case + s)."""
    path = f"/apis/{obj['apiVersion']}/namespaces/{obj['metadata']['namespace']}/{obj['kind'].lower()}s"
    _call(api, "POST", path, body=obj)


@contextlib.asynccontextmanager
async def real_apiserver() -> AsyncIterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="fedattn-bench-k8s-"))
    plane = await asyncio.to_thread(start_control_plane, workdir=workdir)
    try:
        settings = client.Configuration()
        config.load_kube_config(config_file=str(plane.admin_kubeconfig), client_configuration=settings)
        admin = _client(settings)
        release = await asyncio.to_thread(install_release, plane, admin, name="fedattn", namespace="fedattn")
        ns = release.namespace

        def count_now(path: str) -> int:
            # NB: limit=1 makes the API server count in etcd (remainingItemCount) instead of sending the
            # objects: polling stays cheap next to the load it measures.
            prefix = "/api/v1" if path.startswith("v1/") else f"/apis/{path.rsplit('/', 1)[0]}"
            listed = json.loads(_get(admin, f"{prefix}/namespaces/{ns}/{path.rsplit('/', 1)[1]}", limit=1))
            return len(listed["items"]) + int(listed["metadata"].get("remainingItemCount") or 0)

        async def count(path: str) -> int:
            return await asyncio.to_thread(count_now, path)

        def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
            meta = {"name": name, "namespace": ns}
            return {"apiVersion": "fedattn.io/v1alpha1", "kind": kind, "metadata": meta, "spec": spec}

        def served_now() -> Counter[str]:
            text = _get(admin, "/metrics").decode()
            served: Counter[str] = Counter()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "apiserver_request_total" and sample.labels.get("resource"):
                        sub = sample.labels.get("subresource")
                        served[f"{sample.labels['verb']} {sample.labels['resource']}{'/' + sub if sub else ''}"] += int(
                            sample.value
                        )
            return served

        async def served() -> Counter[str]:
            return await asyncio.to_thread(served_now)

        yield Cluster(
            namespace=ns,
            api=admin,
            count=count,
            manifest=manifest,
            kubeconfig=release.operator_kubeconfig,
            workdir=workdir,
            served=served,
            server_pids={name: proc.pid for name, proc in plane.processes.items()},
        )
    finally:
        await asyncio.to_thread(plane.stop)


def _status_value(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def measure(cluster: Cluster, *, sessions: int, participants: int, timeout_s: float) -> dict[str, Any]:
    objs = []
    for i in range(sessions):
        name = f"bench-{i:03d}"
        objs.append(cluster.manifest("FedSession", name, {"mode": "learning", "minParticipants": participants}))
        objs += [cluster.manifest("FedParticipant", f"{name}-p{j}", {"sessionRef": name}) for j in range(participants)]
    with contextlib.ExitStack() as stack:
        operator: OperatorProcess = await asyncio.to_thread(
            stack.enter_context,
            run_operator(
                kubeconfig=cluster.kubeconfig,
                namespace=cluster.namespace,
                workdir=cluster.workdir,
                log_name="operator",
                args=[f"--namespace={cluster.namespace}", "--log-level=WARNING", "--poll-seconds=3600"],
            ),
        )
        pid = operator.process.pid
        # NB: the chart's own objects (ServiceAccount token Secrets, the operator's Deployment) are there
        # before the benchmark's: count on top of them.
        before = {path: await cluster.count(path) for path in CHILDREN}
        expected = {
            path: before[path] + per_session * sessions + per_participant * sessions * participants
            for path, (per_session, per_participant) in CHILDREN.items()
        }
        served_before = await cluster.served() if cluster.served else Counter()
        servers_before = {name: _cpu_seconds(pid) for name, pid in cluster.server_pids.items()}
        startup_cpu = _cpu_seconds(pid)
        start = time.perf_counter()
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=CREATE_CONCURRENCY) as creators:
            await asyncio.gather(*(loop.run_in_executor(creators, _create, cluster.api, o) for o in objs))
        created = time.perf_counter() - start
        have = dict.fromkeys(CHILDREN, 0)
        while True:
            # NB: a kind once complete is not counted again: fewer requests competing with the operator's
            have |= {path: await cluster.count(path) for path, n in expected.items() if have[path] < n}
            if all(have[path] >= n for path, n in expected.items()):
                break
            if time.perf_counter() - start > timeout_s:
                raise TimeoutError(f"children after {timeout_s} s: {have}, expected {expected}")
            await asyncio.sleep(0.25)
        elapsed = time.perf_counter() - start
        served = (await cluster.served() - served_before) if cluster.served else Counter()
        peak_mb = _status_value(pid, "VmHWM") / 1024
        cpu = _cpu_seconds(pid)
        servers = {
            f"{name}_cpu_seconds": round(_cpu_seconds(server) - servers_before[name], 2)
            for name, server in cluster.server_pids.items()
        }
        await asyncio.to_thread(stack.close)
    print(f"operator log: {operator.log_path}", file=sys.stderr)
    # NB: every client's requests (the benchmark's creates and counts too), to see the round trips
    requests = {"api_requests": sum(served.values()), "api_requests_by_kind": dict(served.most_common())}
    return {
        "sessions": sessions,
        "participants_per_session": participants,
        "children": sum(expected[path] - before[path] for path in CHILDREN),
        "seconds_to_create_objects": round(created, 3),
        "seconds_to_all_children": round(elapsed, 3),
        "limit_seconds": LIMIT_S,
        "ratio_to_limit": round(elapsed / LIMIT_S, 3),
        "operator_cpu_seconds": round(cpu, 2),
        "operator_startup_cpu_seconds": round(startup_cpu, 2),  # NB: included above (imports, kopf's start)
        "operator_peak_mb": round(peak_mb, 1),
        **servers,
        **(requests if served else {}),
    }


async def bench(*, real: bool, sessions: int, participants: int, timeout_s: float) -> dict[str, Any]:
    async with real_apiserver() if real else emulated() as cluster:
        result = await measure(cluster, sessions=sessions, participants=participants, timeout_s=timeout_s)
    return {"api_server": "kube-apiserver v1.20.2" if real else "kmock", **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real-apiserver", action="store_true", help="the v1.20.2 control plane of tests/k8s")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--timeout-seconds", type=float, default=900)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.sessions < 1 or args.participants < 1:
        parser.error("--sessions and --participants must be at least 1")
    result = asyncio.run(
        bench(
            real=args.real_apiserver,
            sessions=args.sessions,
            participants=args.participants,
            timeout_s=args.timeout_seconds,
        )
    )
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
