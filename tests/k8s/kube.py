"""Small helpers over the ``kubernetes`` client for the control-plane tests: create any manifest
(custom resources included) and find an object's children by owner reference."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import kubernetes
import yaml
from kubernetes.dynamic import DynamicClient

#: Kinds the operator may create for a session or participant (group/version, kind).
CHILD_KINDS = [
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
]


def dynamic(api: kubernetes.client.ApiClient) -> DynamicClient:
    return DynamicClient(api)


def load_manifests(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def create_all(client: DynamicClient, docs: Iterable[dict], *, namespace: str) -> list:
    """Create every document in ``namespace`` (like ``kubectl create -n``); returns the created objects."""
    created = []
    for doc in docs:
        resource = client.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        created.append(resource.create(body=doc, namespace=namespace))
    return created


def children(client: DynamicClient, *, namespace: str, owner_uids: set[str]) -> list[dict]:
    """Objects of CHILD_KINDS in ``namespace`` that name one of ``owner_uids`` in their ownerReferences."""
    found = []
    for api_version, kind in CHILD_KINDS:
        resource = client.resources.get(api_version=api_version, kind=kind)
        for item in resource.get(namespace=namespace).to_dict()["items"]:
            refs = item["metadata"].get("ownerReferences") or []
            if any(ref["uid"] in owner_uids for ref in refs):
                found.append(item)
    return found
