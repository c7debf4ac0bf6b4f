"""The operator's RBAC rules (``rbac.yaml`` next to this file) as data the chart and tests share."""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml


@functools.cache
def rules() -> list[dict[str, Any]]:
    return yaml.safe_load(resources.files(__package__).joinpath("rbac.yaml").read_text())


def role(*, name: str, namespace: str) -> dict[str, Any]:
    """The namespaced Role object (the Helm chart renders the same rules)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules(),
    }


def allows(*, group: str, resource: str, verb: str, subresource: str | None = None) -> bool:
    """Whether the rules grant ``verb`` on ``group``/``resource[/subresource]``."""
    target = f"{resource}/{subresource}" if subresource else resource
    return any(group in rule["apiGroups"] and target in rule["resources"] and verb in rule["verbs"] for rule in rules())
