"""The Helm chart, linted and installed by Helm's own engine into a real v1.20.2 API server."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import helm_engine as helm
import kubernetes
import pytest
import yaml
from apiserver import ControlPlane
from kube import dynamic
from release import Release, wait_for

from fedattn.operator import names

REPO = Path(__file__).resolve().parents[2]
LINT_ERROR = 3  # helm's support.ErrorSev
LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/version",
    "app.kubernetes.io/part-of",
]


def lint_errors(result: dict) -> list:
    return [m for m in result.get("Messages") or [] if m["Severity"] >= LINT_ERROR] + list(result.get("Errors") or [])


def test_helm_lint_passes() -> None:
    result = helm.lint()
    assert result["TotalChartsLinted"] == 1
    assert lint_errors(result) == []


def test_helm_lint_fails_on_values_outside_the_schema(tmp_path: Path) -> None:
    chart = tmp_path / "fedattn"
    shutil.copytree(helm.CHART, chart)
    values = yaml.safe_load((chart / "values.yaml").read_text())
    values["operator"]["replicas"] = 2  # kopf handlers must not run twice: the schema caps it at 1
    (chart / "values.yaml").write_text(yaml.safe_dump(values))
    assert lint_errors(helm.lint(chart)), "lint accepted operator.replicas=2"


def _paths(values: dict, schema: dict, prefix: str = "") -> tuple[set[str], set[str]]:
    """(keys of values.yaml, keys the schema declares) down to where the schema stops describing."""
    in_values, in_schema = set(), set()
    props = schema.get("properties")
    if props is None:
        return in_values, in_schema
    for key in set(values) | set(props):
        path = f"{prefix}{key}"
        if key in values:
            in_values.add(path)
        if key in props:
            in_schema.add(path)
        if isinstance(values.get(key), dict) and key in props:
            sub_v, sub_s = _paths(values[key], props[key], f"{path}.")
            in_values |= sub_v
            in_schema |= sub_s
    return in_values, in_schema


def test_values_schema_mirrors_values_yaml_field_by_field() -> None:
    values = yaml.safe_load((helm.CHART / "values.yaml").read_text())
    schema = json.loads((helm.CHART / "values.schema.json").read_text())
    in_values, in_schema = _paths(values, schema)
    assert in_values - in_schema == set(), "values without a schema entry"
    assert in_schema - in_values == set(), "schema entries without a default in values.yaml"


def test_chart_matches_generated_sources() -> None:
    """CRD templates and RBAC rules are copies of crds/ and the operator's rules, never hand edits."""
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts/k8s/sync_chart.py"), "--check"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_operator_deployment(chart_release: Release, admin_client: kubernetes.client.ApiClient) -> None:
    dep = kubernetes.client.AppsV1Api(admin_client).read_namespaced_deployment(
        "fedattn-operator", chart_release.namespace
    )
    assert dep.spec.replicas == 1
    assert dep.spec.strategy.type == "Recreate"
    pod = dep.spec.template.spec
    assert pod.service_account_name == chart_release.service_account
    assert pod.security_context.run_as_non_root is True
    (container,) = pod.containers
    assert container.image == "fedattn-operator:0.1.0"
    assert container.args[0] == "operator"
    assert f"--namespace={chart_release.namespace}" in container.args
    assert [(p.name, p.container_port) for p in container.ports] == [("metrics", 8080)]
    for probe in (container.liveness_probe, container.readiness_probe):
        assert (probe.http_get.path, probe.http_get.port) == ("/healthz", "metrics")
    assert container.security_context.read_only_root_filesystem is True
    env = {e.name: e.value for e in container.env}
    assert env["FEDATTN_PARTICIPANT_IMAGE"] == "fedattn-participant:0.1.0"
    assert "FEDATTN_DEFAULT_DATABASE_SECRET" not in env  # no database configured by default
    assert "FEDATTN_IMAGE_PULL_SECRETS" not in env  # none configured
    assert json.loads(env["FEDATTN_POD_RESOURCES"]).keys() == {"coordinator", "aggregator", "participant"}


def test_every_release_object_carries_the_recommended_labels(
    chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    client = dynamic(admin_client)
    objects = [
        ("v1", "ServiceAccount", chart_release.namespace, chart_release.service_account),
        ("v1", "Service", chart_release.namespace, "fedattn-operator"),
        ("apps/v1", "Deployment", chart_release.namespace, "fedattn-operator"),
        ("rbac.authorization.k8s.io/v1", "Role", chart_release.namespace, "fedattn"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding", chart_release.namespace, "fedattn"),
        ("v1", "ConfigMap", chart_release.namespace, "fedattn-dashboard"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "fedsessions.fedattn.io"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "fedparticipants.fedattn.io"),
    ]
    for api_version, kind, namespace, name in objects:
        obj = client.resources.get(api_version=api_version, kind=kind).get(name=name, namespace=namespace)
        labels = obj.to_dict()["metadata"].get("labels") or {}
        missing = [k for k in LABELS if k not in labels]
        assert not missing, f"{kind} {name} lacks {missing}"
        assert labels["app.kubernetes.io/instance"] == chart_release.name


def test_crds_are_kept_on_uninstall(chart_release: Release, admin_client: kubernetes.client.ApiClient) -> None:
    api = kubernetes.client.ApiextensionsV1Api(admin_client)
    for name in ("fedsessions.fedattn.io", "fedparticipants.fedattn.io"):
        crd = api.read_custom_resource_definition(name)
        assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"


def test_dashboard_is_valid_grafana_json(chart_release: Release, admin_client: kubernetes.client.ApiClient) -> None:
    cm = kubernetes.client.CoreV1Api(admin_client).read_namespaced_config_map(
        "fedattn-dashboard", chart_release.namespace
    )
    assert cm.metadata.labels["grafana_dashboard"] == "1"
    dash = json.loads(cm.data["fedattn.json"])
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("sessions", "rounds", "sync latency", "bytes", "rejections", "epsilon"):
        assert topic in titles, f"dashboard has no {topic} panel"


def test_helm_test_hook_checks_the_operator_healthz(chart_release: Release) -> None:
    (hook,) = [h for h in chart_release.installed["hooks"] if h["kind"] == "Pod" and h["name"].endswith("healthz")]
    pod = yaml.safe_load(hook["manifest"])
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["command"][-1]
    assert f"http://fedattn-operator.{chart_release.namespace}.svc:8080/healthz" in script
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True


def test_notes_tell_the_user_what_to_do_next(chart_release: Release) -> None:
    notes = chart_release.installed["info"]["notes"]
    assert "helm test fedattn -n fedattn" in notes
    assert "kubectl apply -n fedattn -f examples/learning-digits.yaml" in notes
    assert "No database configured" in notes


def _can(
    api: kubernetes.client.ApiClient,
    user: str,
    *,
    verb: str,
    resource: str,
    group: str = "",
    namespace: str | None = None,
) -> bool:
    review = kubernetes.client.V1SubjectAccessReview(
        spec=kubernetes.client.V1SubjectAccessReviewSpec(
            user=user,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=kubernetes.client.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, namespace=namespace
            ),
        )
    )
    return kubernetes.client.AuthorizationV1Api(api).create_subject_access_review(review).status.allowed


def test_rbac_is_namespaced_by_default(chart_release: Release, admin_client: kubernetes.client.ApiClient) -> None:
    sa = f"system:serviceaccount:{chart_release.namespace}:{chart_release.service_account}"
    assert _can(admin_client, sa, verb="create", resource="secrets", namespace=chart_release.namespace)
    assert _can(
        admin_client,
        sa,
        verb="patch",
        resource="fedsessions/status",
        group="fedattn.io",
        namespace=chart_release.namespace,
    )
    assert not _can(admin_client, sa, verb="create", resource="secrets", namespace="default")
    assert not _can(admin_client, sa, verb="list", resource="namespaces")
    selector = f"app.kubernetes.io/instance={chart_release.name},app.kubernetes.io/component=operator"
    cluster_roles = kubernetes.client.RbacAuthorizationV1Api(admin_client).list_cluster_role(label_selector=selector)
    assert cluster_roles.items == []  # (the tenant roles for people are cluster-wide; the operator's are not)


def test_cluster_wide_watching_binds_a_cluster_role(
    cluster_wide_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    sa = "system:serviceaccount:fedattn-all:fedattn-all"
    assert _can(admin_client, sa, verb="watch", resource="fedsessions", group="fedattn.io", namespace="anywhere")
    roles = kubernetes.client.RbacAuthorizationV1Api(admin_client).list_namespaced_role("fedattn-all").items
    assert roles == []
    dep = kubernetes.client.AppsV1Api(admin_client).read_namespaced_deployment("fedattn-all-operator", "fedattn-all")
    (container,) = dep.spec.template.spec.containers
    assert "--all-namespaces" in container.args
    env = {e.name: e.value for e in container.env}
    assert (env["FEDATTN_DEFAULT_DATABASE_SECRET"], env["FEDATTN_DEFAULT_DATABASE_SECRET_KEY"]) == (
        "shared-pg",
        "uri",
    )


def test_postgresql_option_keeps_its_generated_password_across_upgrades(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    values = {
        "postgresql": {"enabled": True, "storageSize": ""},
        "crds": {"create": False},
        "dashboard": {"enabled": False},
    }
    helm.install(kubeconfig=control_plane.admin_kubeconfig, namespace="fedattn-pg", release="pg", values=values)
    core = kubernetes.client.CoreV1Api(admin_client)

    def secret() -> dict[str, str]:
        data = core.read_namespaced_secret("pg-fedattn-postgresql", "fedattn-pg").data
        return {k: base64.b64decode(v).decode() for k, v in data.items()}

    first = secret()
    assert len(first["password"]) == 32
    assert first["dsn"] == (
        f"postgresql://fedattn:{first['password']}@pg-fedattn-postgresql.fedattn-pg.svc:5432/fedattn"
    )
    sts = kubernetes.client.AppsV1Api(admin_client).read_namespaced_stateful_set("pg-fedattn-postgresql", "fedattn-pg")
    assert sts.spec.template.spec.containers[0].image == "postgres:16-bookworm"
    dep = kubernetes.client.AppsV1Api(admin_client).read_namespaced_deployment("pg-fedattn-operator", "fedattn-pg")
    env = {e.name: e.value for e in dep.spec.template.spec.containers[0].env}
    assert env["FEDATTN_DEFAULT_DATABASE_SECRET"] == "pg-fedattn-postgresql"
    helm.upgrade(kubeconfig=control_plane.admin_kubeconfig, namespace="fedattn-pg", release="pg", values=values)
    assert secret()["password"] == first["password"]


def test_service_account_token_authenticates(control_plane: ControlPlane, chart_release: Release) -> None:
    """The token the operator tests use really is the chart's ServiceAccount, with only its rights:
    a read of a missing Secret in its namespace is authorized (404), the same read elsewhere is not (403)."""
    api = kubernetes.config.new_client_from_config(config_file=str(chart_release.operator_kubeconfig))
    core = kubernetes.client.CoreV1Api(api)
    for namespace, status in ((chart_release.namespace, 404), ("kube-system", 403)):
        with pytest.raises(kubernetes.client.ApiException) as refused:
            core.read_namespaced_secret("no-such-secret", namespace)
        assert refused.value.status == status, namespace


def _permissive_crd(plural: str, kind: str) -> dict:
    """A stand-in for prometheus-operator's CRD (its real schema is not available offline): same group,
    names and scope, schema open. Enough to install and read back what the chart renders."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "kind": kind},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }  # fmt: skip


def test_monitors_scrape_the_metrics_port_of_fedattn_pods(
    control_plane: ControlPlane, chart_release: Release, admin_client: kubernetes.client.ApiClient
) -> None:
    ext = kubernetes.client.ApiextensionsV1Api(admin_client)
    for plural, kind in (("servicemonitors", "ServiceMonitor"), ("podmonitors", "PodMonitor")):
        ext.create_custom_resource_definition(_permissive_crd(plural, kind))
        wait_for(lambda p=plural: _served(admin_client, p), what=f"{kind} CRD served")
    values = {
        "crds": {"create": False},
        "dashboard": {"enabled": False},
        "metrics": {
            "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            "podMonitor": {"enabled": True, "interval": "15s"},
        },
    }
    helm.install(kubeconfig=control_plane.admin_kubeconfig, namespace="fedattn-mon", release="mon", values=values)
    custom = kubernetes.client.CustomObjectsApi(admin_client)
    sm = custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", "fedattn-mon", "servicemonitors",
                                             "mon-fedattn-operator")  # fmt: skip
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    svc = kubernetes.client.CoreV1Api(admin_client).read_namespaced_service("mon-fedattn-operator", "fedattn-mon")
    assert sm["spec"]["selector"]["matchLabels"] == svc.spec.selector
    pm = custom.get_namespaced_custom_object("monitoring.coreos.com", "v1", "fedattn-mon", "podmonitors", "mon-fedattn")
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["fedattn-mon"]}
    # selects what the operator labels its coordinators and aggregators with
    selector = pm["spec"]["selector"]["matchLabels"].items()
    for component in ("coordinator", "aggregator"):
        assert selector <= names.labels("any-session", component).items()


def _served(api: kubernetes.client.ApiClient, plural: str) -> bool:
    crd = kubernetes.client.ApiextensionsV1Api(api).read_custom_resource_definition(f"{plural}.monitoring.coreos.com")
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])
