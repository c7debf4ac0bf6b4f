"""The chart's optional parts, installed by Helm's engine into the real v1.20.2 API server: pull secrets and
default resources on every session pod (through a real operator), image digests, PostgreSQL's existingSecret,
NetworkPolicies, the PrometheusRule, tenant ClusterRoles, the dry-run `helm test` and the pre-delete hook."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import helm_engine as helm
import kubernetes
import pytest
import yaml
from apiserver import ControlPlane
from kube import children, create_all, dynamic, load_manifests
from release import Release, install_release, service_account_token, wait_for
from test_k8s_chart import _can, _permissive_crd, _served, lint_errors
from test_k8s_operator import running_operator

from fedattn.aggregator.metrics import Metrics as AggregatorMetrics
from fedattn.coordinator.metrics import Metrics as CoordinatorMetrics
from fedattn.operator import names

REPO = Path(__file__).resolve().parents[2]
HOOKS = helm.CHART / "files" / "hooks"
DIGEST = "sha256:" + "ab" * 32
FINALIZER = "fedattn.io/finalizer"
VALUES = yaml.safe_load((helm.CHART / "values.yaml").read_text())
QUIET = {"crds": {"create": False}, "dashboard": {"enabled": False}}  # the CRDs are chart_release's


def _pod_specs(objects: list[dict]) -> dict[str, dict]:
    """name -> pod spec of every workload (Deployment, StatefulSet, Job) or Pod among ``objects``."""
    out = {}
    for obj in objects:
        if obj["kind"] == "Pod":
            out[obj["metadata"]["name"]] = obj["spec"]
        elif obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            out[obj["metadata"]["name"]] = obj["spec"]["template"]["spec"]
    return out


def _manifests(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def _hooks(release: Release) -> list[dict]:
    return [yaml.safe_load(h["manifest"]) for h in release.installed["hooks"]]


# --- pull secrets, digests, default resources ----------------------------------------------------------


@pytest.fixture(scope="module")
def pods_release(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> Release:
    values = {
        **QUIET,
        "imagePullSecrets": [{"name": "regcred"}],
        "image": {"digests": {"participant": DIGEST}},
        "postgresql": {"enabled": True, "storageSize": ""},
    }
    return install_release(control_plane, admin_client, name="fedattn-pods", namespace="fedattn-pods", values=values)


def test_every_chart_pod_gets_the_pull_secrets(pods_release: Release) -> None:
    specs = _pod_specs(_manifests(pods_release.installed["manifest"]) + _hooks(pods_release))
    assert {"fedattn-pods-operator", "fedattn-pods-postgresql", "fedattn-pods-test-healthz",
            "fedattn-pods-test-dry-run", "fedattn-pods-uninstall"} <= specs.keys()  # fmt: skip
    for name, spec in specs.items():
        assert spec.get("imagePullSecrets") == [{"name": "regcred"}], name


def test_session_pods_get_pull_secrets_digests_and_resources_through_the_operator(
    control_plane: ControlPlane, pods_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    """The operator runs with exactly the environment the chart's Deployment gives it; every coordinator,
    aggregator and participant pod template it creates carries the pull secret and the default resources."""
    dep = kubernetes.client.AppsV1Api(admin_client).read_namespaced_deployment(
        "fedattn-pods-operator", pods_release.namespace
    )
    env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env if e.value is not None}
    assert env["FEDATTN_IMAGE_PULL_SECRETS"] == "regcred"
    assert env["FEDATTN_PARTICIPANT_IMAGE"] == f"fedattn-participant@{DIGEST}"
    assert env["FEDATTN_COORDINATOR_IMAGE"] == "fedattn-coordinator:0.1.0"
    client = dynamic(admin_client)
    scope = f"--namespace={pods_release.namespace}"
    with running_operator(control_plane, pods_release, scope, env=env):
        created = create_all(client, load_manifests(REPO / "examples/learning-digits.yaml"),
                             namespace=pods_release.namespace)  # fmt: skip
        owners = {o.metadata.uid for o in created}
        wanted = sum(o.kind == "FedParticipant" for o in created)

        def workloads() -> list[dict] | None:
            found = [c for c in children(client, namespace=pods_release.namespace, owner_uids=owners)
                     if c["kind"] in ("Deployment", "Job")]  # fmt: skip
            return found if len(found) == 2 + wanted else None

        found = wait_for(workloads, what="coordinator, aggregator and participant workloads", timeout_s=180)
    defaults = VALUES["sessionPods"]["resources"]
    for obj in found:
        component = obj["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = obj["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}], obj["metadata"]["name"]
        (container,) = pod["containers"]
        assert container["resources"] == defaults[component], obj["metadata"]["name"]
        if component == "participant":
            assert container["image"] == f"fedattn-participant@{DIGEST}"


# --- PostgreSQL existingSecret ---------------------------------------------------------------------------


def test_postgresql_existing_secret_is_used_and_never_generated(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    namespace = "fedattn-pgx"
    core = kubernetes.client.CoreV1Api(admin_client)
    core.create_namespace({"metadata": {"name": namespace}})
    dsn = f"postgresql://fedattn:from-my-vault@pgx-fedattn-postgresql.{namespace}.svc:5432/fedattn"
    mine = {"password": "from-my-vault", "dsn": dsn}
    core.create_namespaced_secret(namespace, {"metadata": {"name": "my-pg"}, "stringData": mine})
    values = {**QUIET, "postgresql": {"enabled": True, "storageSize": "", "existingSecret": "my-pg"}}
    installed = helm.install(kubeconfig=control_plane.admin_kubeconfig, namespace=namespace, release="pgx",
                             values=values)  # fmt: skip
    assert not [d for d in _manifests(installed["manifest"]) if d["kind"] == "Secret"], "the chart made a Secret"
    sts = kubernetes.client.AppsV1Api(admin_client).read_namespaced_stateful_set("pgx-fedattn-postgresql", namespace)
    env = {e.name: e for e in sts.spec.template.spec.containers[0].env}
    ref = env["POSTGRES_PASSWORD"].value_from.secret_key_ref
    assert (ref.name, ref.key) == ("my-pg", "password")
    assert (env["POSTGRES_USER"].value, env["POSTGRES_DB"].value) == ("fedattn", "fedattn")
    dep = kubernetes.client.AppsV1Api(admin_client).read_namespaced_deployment("pgx-fedattn-operator", namespace)
    op_env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env}
    assert op_env["FEDATTN_DEFAULT_DATABASE_SECRET"] == "my-pg"
    assert op_env["FEDATTN_DEFAULT_DATABASE_SECRET_KEY"] == "dsn"
    helm.upgrade(kubeconfig=control_plane.admin_kubeconfig, namespace=namespace, release="pgx", values=values)
    data = core.read_namespaced_secret("my-pg", namespace).data
    assert {k: base64.b64decode(v).decode() for k, v in data.items()} == mine


# --- NetworkPolicy ----------------------------------------------------------------------------------------


def test_network_policies_let_participants_reach_only_their_coordinator_and_aggregator(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    namespace = "fedattn-np"
    monitoring = {"matchLabels": {"team": "monitoring"}}
    values = {**QUIET, "postgresql": {"enabled": True, "storageSize": ""},
              "networkPolicy": {"enabled": True, "metricsNamespaceSelector": monitoring}}  # fmt: skip
    helm.install(kubeconfig=control_plane.admin_kubeconfig, namespace=namespace, release="np", values=values)
    net = kubernetes.client.NetworkingV1Api(admin_client)
    got = {p.metadata.name: admin_client.sanitize_for_serialization(p)["spec"]
           for p in net.list_namespaced_network_policy(namespace).items}  # fmt: skip
    assert set(got) == {f"np-fedattn-{n}" for n in ("participants", "coordinators", "aggregators", "operator",
                                                    "postgresql")}  # fmt: skip

    def selects(spec: dict, component: str) -> bool:
        return spec["podSelector"]["matchLabels"].items() <= names.labels("s", component, participant="p").items()

    part = got["np-fedattn-participants"]
    assert selects(part, "participant") and not part.get("ingress")  # nothing may connect to a participant
    assert set(part["policyTypes"]) == {"Ingress", "Egress"}
    reach = {}
    for rule in part["egress"]:
        ports = {p["port"] for p in rule["ports"]}
        for peer in rule.get("to") or [{}]:
            component = (peer.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/component")
            reach[component] = ports
    assert reach == {"coordinator": {names.API_PORT}, "aggregator": {names.ZMQ_PORT}, None: {53}}

    def ingress(policy: str) -> dict[int, list[dict]]:
        return {p["port"]: rule["from"] for rule in got[policy]["ingress"] for p in rule["ports"]}

    coord, agg = ingress("np-fedattn-coordinators"), ingress("np-fedattn-aggregators")
    assert selects(got["np-fedattn-coordinators"], "coordinator")
    assert selects(got["np-fedattn-aggregators"], "aggregator")
    for rules in (coord, agg):
        assert rules[names.METRICS_PORT] == [{"namespaceSelector": monitoring}]  # /metrics: monitoring only
    peers = [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in agg[names.ZMQ_PORT]]
    assert sorted(peers) == ["coordinator", "participant"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in coord[names.API_PORT]] == [
        "participant", "operator"]  # fmt: skip
    assert ingress("np-fedattn-operator")[8080][0] == {"namespaceSelector": monitoring}
    (pg_from,) = ingress("np-fedattn-postgresql")[5432]
    assert selects(pg_from, "coordinator")


# --- PrometheusRule ----------------------------------------------------------------------------------------


def _exported_metric_names() -> set[str]:
    """Every metric family name the components register (operator: the default registry)."""
    from prometheus_client import REGISTRY

    import fedattn.operator.metrics  # noqa: F401  (registers the operator's metrics)

    registries = [REGISTRY, AggregatorMetrics().registry, CoordinatorMetrics().registry]
    return {m.name for r in registries for m in r.collect()}


def test_prometheus_rule_alerts_on_metrics_that_exist(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(admin_client)
    ext.create_custom_resource_definition(_permissive_crd("prometheusrules", "PrometheusRule"))
    wait_for(lambda: _served(admin_client, "prometheusrules"), what="PrometheusRule CRD served")
    values = {**QUIET, "metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "prom"},
                                                      "degradedFor": "20m"}}}  # fmt: skip
    helm.install(kubeconfig=control_plane.admin_kubeconfig, namespace="fedattn-rules", release="rules", values=values)
    rule = kubernetes.client.CustomObjectsApi(admin_client).get_namespaced_custom_object(
        "monitoring.coreos.com", "v1", "fedattn-rules", "prometheusrules", "rules-fedattn"
    )
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert set(alerts) == {"FedattnSessionFailed", "FedattnSessionDegraded", "FedattnPrivacyBudgetNearlySpent",
                           "FedattnAccuracyDrop", "FedattnOperatorAbsent"}  # fmt: skip
    assert alerts["FedattnSessionDegraded"]["for"] == "20m"
    assert 'job="rules-fedattn-operator", namespace="fedattn-rules"' in alerts["FedattnOperatorAbsent"]["expr"]
    exported = _exported_metric_names()
    for name, alert in alerts.items():
        used = set(re.findall(r"\bfedattn_[a-z_]+", alert["expr"]))
        assert used <= exported, f"{name} reads metrics nobody exports: {used - exported}"
        assert used or name == "FedattnOperatorAbsent", name  # (that one reads Prometheus' own `up`)


# --- tenant ClusterRoles ---------------------------------------------------------------------------------


def test_tenant_roles_aggregate_into_edit_and_view(
    chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    """A namespace's editors may create sessions and its viewers only read them, through Kubernetes' own
    edit/view ClusterRoles (the aggregation controller folds the chart's roles into them)."""
    rbac = kubernetes.client.RbacAuthorizationV1Api(admin_client)
    edit, view = rbac.read_cluster_role("fedattn-edit"), rbac.read_cluster_role("fedattn-view")
    assert edit.metadata.labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view.metadata.labels["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    namespace = "tenant-a"
    kubernetes.client.CoreV1Api(admin_client).create_namespace({"metadata": {"name": namespace}})
    for user, role in (("alice", "edit"), ("bob", "view")):
        rbac.create_namespaced_role_binding(namespace, {
            "metadata": {"name": f"{user}-{role}"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "name": user, "apiGroup": "rbac.authorization.k8s.io"}],
        })  # fmt: skip

    def can(user: str, verb: str) -> bool:
        return _can(admin_client, user, verb=verb, resource="fedsessions", group="fedattn.io", namespace=namespace)

    wait_for(lambda: can("alice", "create") and can("bob", "list"), what="fedattn roles aggregated into edit/view")
    assert not can("bob", "create") and not can("bob", "delete")
    elsewhere = _can(
        admin_client, "alice", verb="create", resource="fedsessions", group="fedattn.io", namespace="default"
    )
    assert not elsewhere  # the binding is the namespace's


# --- hooks: helm test, pre-delete ------------------------------------------------------------------------


def _run_hook_script(
    plane: ControlPlane,
    api: kubernetes.client.ApiClient,
    release: Release,
    *,
    pod_spec: dict,
    rbac: list[dict],
) -> subprocess.CompletedProcess:
    """Create a hook's ServiceAccount and RBAC as Helm would, then run its container's Python as that
    ServiceAccount (a local process: no kubelet here), with the container's environment."""
    client = dynamic(api)
    for doc in rbac:
        resource = client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        resource.create(body=doc, namespace=doc["metadata"].get("namespace"))
    sa = pod_spec["serviceAccountName"]
    token = service_account_token(api, namespace=release.namespace, name=sa)
    kubeconfig = plane.token_kubeconfig(sa, token, namespace=release.namespace)
    (container,) = pod_spec["containers"]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), **{e["name"]: e["value"] for e in container.get("env", [])}}
    assert container["command"][:2] == ["python3", "-c"]
    return subprocess.run([sys.executable, "-c", container["command"][2]], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def _hook_parts(release: Release, hook: str, workload: str) -> tuple[dict, list[dict]]:
    docs = [d for d in _hooks(release) if d["metadata"]["annotations"]["helm.sh/hook"] == hook]
    (pod,) = [d for d in docs if d["kind"] == workload and d["metadata"]["name"].endswith(("dry-run", "uninstall"))]
    spec = pod["spec"] if workload == "Pod" else pod["spec"]["template"]["spec"]
    rbac = [d for d in docs if d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                             "ClusterRoleBinding")]  # fmt: skip
    return spec, rbac


def test_helm_test_dry_runs_a_session_create(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    spec, rbac = _hook_parts(chart_release, "test", "Pod")
    assert spec["containers"][0]["command"][2] == (HOOKS / "dry_run_session.py").read_text()
    out = _run_hook_script(control_plane, admin_client, chart_release, pod_spec=spec, rbac=rbac)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "helm-test-dry-run accepted" in out.stdout and "was rejected" in out.stdout
    fs = dynamic(admin_client).resources.get(api_version="fedattn.io/v1alpha1", kind="FedSession")
    assert not fs.get(namespace=chart_release.namespace, field_selector="metadata.name=helm-test-dry-run").items


def _with_finalizer(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "fedattn.io/v1alpha1", "kind": kind, "spec": spec,
            "metadata": {"name": name, "finalizers": [FINALIZER]}}  # fmt: skip


def test_uninstall_orphans_sessions_so_they_stay_deletable_without_the_operator(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    """The default pre-delete hook stops the operator and takes its finalizer off every session and
    participant: they survive the release, and deleting them later does not hang."""
    release = install_release(control_plane, admin_client, name="fedattn-un", namespace="fedattn-un", values=QUIET)
    client = dynamic(admin_client)
    docs = [_with_finalizer("FedSession", "kept", {"mode": "learning"}),
            _with_finalizer("FedParticipant", "kept-a", {"sessionRef": "kept"})]  # fmt: skip
    create_all(client, docs, namespace=release.namespace)
    spec, rbac = _hook_parts(release, "pre-delete", "Job")
    assert spec["containers"][0]["command"][2] == (HOOKS / "uninstall.py").read_text()
    out = _run_hook_script(control_plane, admin_client, release, pod_spec=spec, rbac=rbac)
    assert out.returncode == 0, out.stdout + out.stderr
    dep = kubernetes.client.AppsV1Api(admin_client).read_namespaced_deployment("fedattn-un-operator", release.namespace)
    assert dep.spec.replicas == 0
    for kind, name in (("FedParticipant", "kept-a"), ("FedSession", "kept")):
        resource = client.resources.get(api_version="fedattn.io/v1alpha1", kind=kind)
        assert not resource.get(name=name, namespace=release.namespace).metadata.finalizers, name
        resource.delete(name=name, namespace=release.namespace)
        wait_for(lambda r=resource, n=name: not r.get(namespace=release.namespace,
                                                      field_selector=f"metadata.name={n}").items,
                 what=f"{kind} {name} deleted without an operator", timeout_s=30)  # fmt: skip


def test_uninstall_delete_policy_waits_for_the_operator_to_clean_up(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    """uninstall.sessions=delete: with the operator still running, every session and participant is
    deleted (their finalizers processed: participants revoked) before the hook succeeds."""
    release = install_release(control_plane, admin_client, name="fedattn-del", namespace="fedattn-del",
                              values={**QUIET, "uninstall": {"sessions": "delete", "timeoutSeconds": 120}})  # fmt: skip
    client = dynamic(admin_client)
    spec, rbac = _hook_parts(release, "pre-delete", "Job")
    with running_operator(control_plane, release, f"--namespace={release.namespace}"):
        create_all(client, load_manifests(REPO / "examples/learning-dp.yaml"), namespace=release.namespace)
        fp = client.resources.get(api_version="fedattn.io/v1alpha1", kind="FedParticipant")

        def finalized() -> bool:
            items = fp.get(namespace=release.namespace).to_dict()["items"]
            return bool(items) and all(FINALIZER in (i["metadata"].get("finalizers") or []) for i in items)

        wait_for(finalized, what="the operator's finalizer on every participant", timeout_s=120)
        out = _run_hook_script(control_plane, admin_client, release, pod_spec=spec, rbac=rbac)
    assert out.returncode == 0, out.stdout + out.stderr
    for kind in ("FedSession", "FedParticipant"):
        resource = client.resources.get(api_version="fedattn.io/v1alpha1", kind=kind)
        assert resource.get(namespace=release.namespace).items == [], kind


# --- schema ---------------------------------------------------------------------------------------------


def test_values_with_global_pass_the_schema(tmp_path: Path) -> None:
    """As a subchart, the chart's values carry the parent's `global` (Helm copies it into every subchart's
    values before validating them against values.schema.json): an additionalProperties: false schema
    without `global` fails lint and install of any parent chart."""
    chart = tmp_path / "fedattn"
    shutil.copytree(helm.CHART, chart)
    values = yaml.safe_load((chart / "values.yaml").read_text())
    values["global"] = {"imageRegistry": "registry.example.com", "imagePullSecrets": ["regcred"]}
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    assert lint_errors(helm.lint(chart)) == []


def test_every_schema_field_has_a_description() -> None:
    schema = json.loads((helm.CHART / "values.schema.json").read_text())
    missing = []

    def walk(node: dict, path: str) -> None:
        for key, sub in (node.get("properties") or {}).items():
            if not sub.get("description"):
                missing.append(f"{path}{key}")
            walk(sub, f"{path}{key}.")

    walk(schema, "")
    assert missing == []
