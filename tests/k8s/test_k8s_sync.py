"""scripts/k8s/sync_chart.py's pure renderers: what the chart's generated templates must look like."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "k8s" / "sync_chart.py"
_spec = importlib.util.spec_from_file_location("sync_chart", SCRIPT)
sync_chart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sync_chart)

CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.io
  labels: {app.kubernetes.io/part-of: fedattn, team: ml}
spec: {group: example.io, x: %s}
"""


def _branches(template: str) -> tuple[str, str]:
    """The (new servers, old servers) YAML bodies of a rendered CRD template."""
    body = template.split(".Capabilities.KubeVersion.Version }}\n", 1)[1]
    new, old = body.split("{{- else }}\n")
    return new, old.split("{{- end }}")[0]


def test_crd_template_is_guarded_kept_and_chooses_flavour_by_server_version() -> None:
    text = sync_chart.crd_template(CRD % "cel", CRD % "legacy", source="crds/widgets.yaml")
    assert text.splitlines()[1] == "{{- if .Values.crds.create }}"
    assert 'semverCompare ">=1.25.0-0"' in text.splitlines()[2]
    new, old = _branches(text)
    for body, flavour in ((new, "cel"), (old, "legacy")):
        assert f"x: {flavour}" in body
        doc = yaml.safe_load(body.replace(sync_chart.CHART_LABELS, ""))
        assert doc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        # the chart's own app.kubernetes.io/* labels replace the source's; other labels stay
        assert doc["metadata"]["labels"] == {"team": "ml"}
        assert sync_chart.CHART_LABELS in body


def test_crd_template_refuses_helm_delimiters() -> None:
    with pytest.raises(ValueError, match="template delimiters"):
        sync_chart.crd_template(CRD % "'{{ oops }}'", CRD % "ok", source="crds/widgets.yaml")


def test_crd_template_refuses_other_kinds() -> None:
    with pytest.raises(ValueError, match="expected CustomResourceDefinition"):
        sync_chart.crd_template(CRD.replace("CustomResourceDefinition", "ConfigMap") % "a", CRD % "b", source="x")


def test_rbac_rules_file_round_trips() -> None:
    rules = [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]}]
    text = sync_chart.rbac_rules_file(rules, source="operator/fedattn/operator/rbac.yaml")
    assert text.startswith("# GENERATED")
    assert yaml.safe_load(text) == rules
