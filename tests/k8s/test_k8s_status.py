"""What the cluster says about a session, against the real v1.20 API server (legacy CRDs, no CEL).

The operator's real handlers run in kopf (in this process, as tests/operator_cluster.py runs them on
kmock), authenticated as cluster admin; the coordinator's answers come from a recorded provider shaped
like ``CoordinatorService.status`` (no kubelet runs, so no coordinator pod would). What is real here is
what these tests are about: the API server's schema pruning of ``status`` (a field the CRD lacks is
dropped silently), its printer columns (``kubectl get fs`` is the server's Table), the status
subresource, generations, Events, and the RBAC of the publisher's output Secret.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException
from release import service_account_token

from fedattn.operator import names
from fedattn.participant.output import publish_text
from fedattn.results.command import render, results
from operator_cluster import RecordedStatus, running_operator

NAMESPACE = "status-k8s"
GROUP, VERSION = "fedattn.io", "v1alpha1"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


@pytest.fixture(scope="module")
def namespace(admin_client: kubernetes.client.ApiClient, chart_release) -> str:
    """A namespace of its own (the chart release installed the CRDs: the legacy flavour on v1.20)."""
    kubernetes.client.CoreV1Api(admin_client).create_namespace({"metadata": {"name": NAMESPACE}})
    return NAMESPACE


@pytest.fixture
def kube(control_plane) -> kubernetes.client.ApiClient:
    """A fresh admin client for the operator (running_operator closes it)."""
    return kubernetes.config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig))


def _session(name: str, **spec: Any) -> dict[str, Any]:
    base = {"mode": "learning", "minParticipants": 2, "rounds": 20, "checkpoint": {"everyRounds": 5}}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FedSession", "metadata": {"name": name},
            "spec": {**base, **spec}}  # fmt: skip


def _participant(name: str, session: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FedParticipant", "metadata": {"name": name},
            "spec": {"sessionRef": session, **spec}}  # fmt: skip


def _coordinator(name: str, phase: str = "Running", *, closed: int = 3, **extra: Any) -> dict[str, Any]:
    """A learning session's coordinator status after ``closed`` rounds with DP (as service.status answers)."""
    rounds = [
        {"round": r, "state": "Closed", "accuracy": 0.5 + r / 100, "epsilon": 0.8 * r,
         "closed_at": f"2026-01-01T00:0{r % 10}:00.000Z"}
        for r in range(1, closed + 1)
    ]  # fmt: skip
    return {
        "name": name, "mode": "learning", "phase": phase, "message": "", "round": closed, "rounds_total": 20,
        "started_at": "2026-01-01T00:00:00.000Z", "participants": {"joined": 2, "ready": 2, "total": 2},
        "participant_status": {}, "rounds": rounds, "epsilon": 0.8 * closed, "syncs": 0, "results": {},
        **extra,
    }  # fmt: skip


class Cluster:
    """Reads and writes of one namespace through the real API server (admin)."""

    def __init__(self, api: kubernetes.client.ApiClient, namespace: str) -> None:
        self.api, self.ns = api, namespace
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.core = kubernetes.client.CoreV1Api(api)

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        plural = obj["kind"].lower() + "s"
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, plural, obj)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, kind.lower() + "s", name)

    def patch_spec(self, kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.ns, kind.lower() + "s", name, {"spec": spec}
        )

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return self.get(kind, name).get("status") or {}

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any]:
        return next((c for c in self.status(kind, name).get("conditions", []) if c["type"] == type_), {})

    def events(self, name: str) -> list[Any]:
        found = self.core.list_namespaced_event(self.ns, field_selector=f"involvedObject.name={name}").items
        return [e for e in found if e.reason not in ("Logging",)]  # NB: kopf's handler log lines

    def table(self, *, wide: bool = False) -> str:
        """``kubectl get fs [-o wide]`` as the API server renders it (its Table of the printer columns)."""
        url = f"{self.api.configuration.host}/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/fedsessions"
        reply = self.api.call_api("GET", url, header_params={"Accept": TABLE})
        reply.read()
        got = json.loads(reply.data)
        keep = [i for i, c in enumerate(got["columnDefinitions"]) if wide or c.get("priority", 0) == 0]
        header = [got["columnDefinitions"][i]["name"].upper() for i in keep]
        rows = [[("" if r["cells"][i] is None else str(r["cells"][i])) for i in keep] for r in got["rows"]]
        widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=False)]
        return "\n".join("   ".join(x.ljust(w) for x, w in zip(line, widths, strict=False)).rstrip()
                         for line in [header, *rows])  # fmt: skip


async def until(check: Callable[[], Any], *, what: str, timeout_s: float = 60.0) -> Any:
    """Poll ``check`` (blocking client calls, off the loop) until truthy; a guard, not a performance bound."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await asyncio.to_thread(check)
        except (KeyError, StopIteration, ApiException) as exc:
            last = exc  # NB: not yet; an exception is truthy but no answer
        else:
            if last:
                return last
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


@pytest.fixture
def cluster(admin_client, namespace) -> Cluster:
    return Cluster(admin_client, namespace)


async def test_progress_outputs_and_the_printer_columns(kube, cluster: Cluster) -> None:
    recorded = RecordedStatus()
    async with running_operator(kube, recorded, poll_seconds=0.2, namespace=cluster.ns):
        for obj in (_session("digits"), _participant("digits-a", "digits"), _participant("digits-b", "digits")):
            await asyncio.to_thread(cluster.create, obj)
        recorded.statuses["digits"] = _coordinator("digits")
        progress = await until(lambda: cluster.status("FedSession", "digits").get("progress"), what="status.progress")
        # survived the API server's pruning: every field is in the CRD's status schema
        assert progress == {"round": 3, "roundsTotal": 20, "rounds": "3/20", "accuracy": 0.53,
                            "lastRoundAt": "2026-01-01T00:03:00.000Z", "epsilonSpent": 2.4}  # fmt: skip
        outputs = cluster.status("FedSession", "digits")["outputs"]
        model = {"deployment": "digits-aggregator", "path": "/var/lib/fedattn/checkpoints/digits.ckpt.npz"}
        assert outputs == {"model": model}
        running = await asyncio.to_thread(cluster.table, wide=True)
        print(f"\n$ kubectl get fs -o wide   # running\n{running}")
        assert running.splitlines()[0].split() == ["NAME", "MODE", "PHASE", "ROUNDS", "PARTICIPANTS", "ACCURACY",
                                                   "EPSILON", "REASON", "AGE"]  # fmt: skip
        assert running.splitlines()[1].split()[:8] == ["digits", "learning", "Running", "3/20", "2", "0.53", "2.4",
                                                       "RoundInProgress"]  # fmt: skip

        recorded.statuses["digits"] = _coordinator("digits", "Succeeded", closed=20, message="20 rounds completed")
        await until(lambda: cluster.status("FedSession", "digits").get("phase") == "Succeeded", what="Succeeded")
        finished = await asyncio.to_thread(cluster.table)
        print(f"\n$ kubectl get fs   # finished\n{finished}")
        assert finished.splitlines()[1].split()[:7] == ["digits", "learning", "Succeeded", "20/20", "2", "0.7", "16"]


async def test_ready_stays_true_after_success_without_a_warning(kube, cluster: Cluster) -> None:
    recorded = RecordedStatus()
    async with running_operator(kube, recorded, poll_seconds=0.2, namespace=cluster.ns):
        for obj in (_session("done"), _participant("done-a", "done"), _participant("done-b", "done")):
            await asyncio.to_thread(cluster.create, obj)
        recorded.statuses["done"] = _coordinator("done")
        await until(lambda: cluster.status("FedSession", "done").get("phase") == "Running", what="Running")
        recorded.statuses["done"] = _coordinator("done", "Succeeded", closed=20, message="20 rounds completed")
        ready = await until(
            lambda: (c := cluster.condition("FedSession", "done", "Ready")).get("status") == "True" and c,
            what="Ready=True",
        )
        assert ready["reason"] == "Succeeded"
        # the coordinator is gone (scaled down, deleted): the poller must not turn that into a verdict
        recorded.statuses["done"] = ConnectionError("connection refused")
        before = cluster.get("FedSession", "done")["metadata"]["resourceVersion"]
        await asyncio.sleep(2.0)  # ten more progress passes
        after = cluster.get("FedSession", "done")
        assert after["metadata"]["resourceVersion"] == before  # nothing written at all
        assert cluster.condition("FedSession", "done", "Ready") == ready
        assert {c["type"]: c["status"] for c in after["status"]["conditions"]}["Degraded"] == "False"
    events = await asyncio.to_thread(cluster.events, "done")
    assert [(e.type, e.reason) for e in events if e.type == "Warning"] == []
    assert ("Normal", "Succeeded") in {(e.type, e.reason) for e in events}


async def test_kstatus_conditions_and_a_failure_that_stalls(kube, cluster: Cluster) -> None:
    recorded = RecordedStatus()
    async with running_operator(kube, recorded, poll_seconds=0.2, namespace=cluster.ns):
        for obj in (_session("live"), _session("late", activeDeadlineSeconds=1), _participant("live-a", "live")):
            await asyncio.to_thread(cluster.create, obj)
        recorded.statuses["live"] = _coordinator("live")
        recorded.statuses["late"] = _coordinator("late")
        await until(lambda: cluster.status("FedSession", "live").get("phase") == "Running", what="Running")
        conds = {c["type"]: c for c in cluster.status("FedSession", "live")["conditions"]}
        assert (conds["Ready"]["status"], conds["Reconciling"]["status"], conds["Stalled"]["status"]) == (
            "False", "True", "False")  # fmt: skip
        await until(lambda: cluster.status("FedSession", "late").get("phase") == "Failed", what="DeadlineExceeded")
        conds = {c["type"]: c for c in cluster.status("FedSession", "late")["conditions"]}
        assert (conds["Stalled"]["status"], conds["Stalled"]["reason"]) == ("True", "DeadlineExceeded")
        assert (conds["Ready"]["status"], conds["Reconciling"]["status"]) == ("False", "False")
    warnings = [(e.reason, e.message) for e in await asyncio.to_thread(cluster.events, "late") if e.type == "Warning"]
    assert warnings and warnings[0][0] == "Failed" and "DeadlineExceeded" in warnings[0][1]


async def test_observed_generation_moves_only_when_reconcile_acted(kube, cluster: Cluster) -> None:
    """An edit the operator cannot act on (the API server refuses the Deployment it asks for) stays
    unobserved while the poller keeps writing progress; the fix is observed."""
    recorded = RecordedStatus()
    async with running_operator(kube, recorded, poll_seconds=0.2, namespace=cluster.ns):
        for obj in (_session("gen"), _participant("gen-a", "gen")):
            await asyncio.to_thread(cluster.create, obj)
        recorded.statuses["gen"] = _coordinator("gen", closed=3)
        await until(lambda: cluster.status("FedSession", "gen").get("observedGeneration") == 1, what="generation 1")
        edited = await asyncio.to_thread(
            cluster.patch_spec, "FedSession", "gen", {"coordinator": {"resources": {"limits": {"cpu": "lots"}}}}
        )
        assert edited["metadata"]["generation"] == 2
        recorded.statuses["gen"] = _coordinator("gen", closed=4)
        await until(lambda: cluster.status("FedSession", "gen").get("round") == 4, what="the poller's next write")
        await asyncio.sleep(1.0)
        assert cluster.status("FedSession", "gen")["observedGeneration"] == 1  # not acted on: not observed
        fixed = await asyncio.to_thread(
            cluster.patch_spec, "FedSession", "gen", {"coordinator": {"resources": {"limits": {"cpu": "1"}}}}
        )
        await until(
            lambda: cluster.status("FedSession", "gen").get("observedGeneration") == fixed["metadata"]["generation"],
            what="the fixed generation observed",
        )


async def test_immutable_fields_are_enforced_by_the_operator_on_legacy_crds(kube, cluster: Cluster) -> None:
    """v1.20 has no CEL: the API server stores the edit, the operator refuses it and says so."""
    recorded = RecordedStatus()
    async with running_operator(kube, recorded, poll_seconds=0.2, namespace=cluster.ns):
        for obj in (_session("fixed"), _participant("fixed-a", "fixed")):
            await asyncio.to_thread(cluster.create, obj)
        recorded.statuses["fixed"] = _coordinator("fixed")
        await until(lambda: cluster.status("FedSession", "fixed").get("phase") == "Running", what="Running")
        edited = await asyncio.to_thread(cluster.patch_spec, "FedSession", "fixed", {"rounds": 30})
        assert edited["spec"]["rounds"] == 30  # stored: nothing on the server refuses it
        stalled = await until(
            lambda: (c := cluster.condition("FedSession", "fixed", "Stalled")).get("status") == "True" and c,
            what="Stalled=True",
        )
        assert stalled["reason"] == "ImmutableFieldChanged"
        assert "rounds is immutable" in stalled["message"]
        generation = edited["metadata"]["generation"]
        st = await until(  # reconcile acted on it (by refusing the edit): observed, and what it says is Stalled
            lambda: (got := cluster.status("FedSession", "fixed")).get("observedGeneration") == generation and got,
            what="the refused generation observed",
        )
        assert st["phase"] == "Running" and st["progress"]["roundsTotal"] == 20
        warnings = [e for e in await asyncio.to_thread(cluster.events, "fixed") if e.type == "Warning"]
        assert [e.reason for e in warnings] == ["ImmutableFieldChanged"]

        await asyncio.to_thread(cluster.patch_spec, "FedSession", "fixed", {"rounds": 20})  # reverted
        await until(lambda: cluster.condition("FedSession", "fixed", "Stalled").get("status") == "False",
                    what="Stalled=False after the revert")  # fmt: skip

        await asyncio.to_thread(cluster.patch_spec, "FedParticipant", "fixed-a", {"weight": 3.0})
        stalled = await until(
            lambda: (c := cluster.condition("FedParticipant", "fixed-a", "Stalled")).get("status") == "True" and c,
            what="participant Stalled=True",
        )
        assert stalled["reason"] == "ImmutableFieldChanged" and "weight is immutable" in stalled["message"]


async def test_the_publishers_text_reaches_fedattn_results_through_its_own_secret(
    kube, cluster: Cluster, control_plane
) -> None:
    recorded = RecordedStatus()
    session = _session("qa", mode="attention", publisher="asker", checkpoint={"everyRounds": 0})
    async with running_operator(kube, recorded, poll_seconds=0.2, namespace=cluster.ns):
        for obj in (session, _participant("asker", "qa"), _participant("holder", "qa")):
            await asyncio.to_thread(cluster.create, obj)
        secret = names.participant_output("asker")
        await until(lambda: cluster.core.read_namespaced_secret(secret, cluster.ns), what="the output Secret")
        # the publisher pod's identity: its ServiceAccount may patch its output Secret and nothing else
        writer = names.participant_output_writer("asker")
        await until(lambda: cluster.core.read_namespaced_service_account(writer, cluster.ns), what="its ServiceAccount")
        token = await asyncio.to_thread(service_account_token, cluster.api, namespace=cluster.ns, name=writer)
        as_pod = control_plane.token_kubeconfig(writer, token, namespace=cluster.ns)
        pod = kubernetes.config.new_client_from_config(config_file=str(as_pod))
        # NB: the operator makes the binding last (before the Job), and the authorizer's cache follows the
        # API a moment later: until it does, the pod would be refused too
        await until(lambda: publish_text("Paris.", secret=secret, namespace=cluster.ns, api=pod) or True,
                    what="the writer's RoleBinding to take effect")  # fmt: skip
        with pytest.raises(ApiException) as denied:
            await asyncio.to_thread(publish_text, "x", secret=names.participant_secret("holder"), namespace=cluster.ns,
                                    api=pod)  # fmt: skip
        assert denied.value.status == 403
        done = {"asker": {"phase": "Done"}, "holder": {"phase": "Done"}}
        recorded.statuses["qa"] = {**_coordinator("qa", "Succeeded", closed=0), "mode": "attention", "syncs": 6,
                                   "participant_status": done}  # fmt: skip
        await until(lambda: cluster.status("FedSession", "qa").get("outputs"), what="status.outputs")
    found = await asyncio.to_thread(results, cluster.api, namespace=cluster.ns, session="qa")
    assert found["outputs"] == {"text": {"secretName": secret, "key": "text"}} and found["text"] == "Paris."
    assert found["progress"]["rounds"] == "6 syncs"
    assert "Paris." in render(found)
    owner = cluster.core.read_namespaced_secret(secret, cluster.ns).metadata.owner_references
    assert [(o.kind, o.name) for o in owner] == [("FedParticipant", "asker")]
