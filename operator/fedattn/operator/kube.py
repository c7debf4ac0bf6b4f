"""The operator's Kubernetes calls: create-then-patch-on-409, create-if-absent, read, delete.

Why the official ``kubernetes`` client in a thread (``asyncio.to_thread``) rather than kopf's
internal aiohttp session or ``kubernetes_asyncio``: it is a declared dependency, it is the same
client every cluster tool is tested with (auth plugins, in-cluster config, proxies), and the
operator's own calls are few per reconcile, so a thread hop costs nothing measurable next to the
API round trip (see benchmarks/operator_reconcile.py). kopf keeps its own client for watching.

Every function returns plain dicts (as the API would send them), never client models.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from fedattn.api import crds, schema

MERGE = "application/merge-patch+json"

#: kind -> (API class attribute, method suffix). Namespaced kinds the operator manages.
_TYPED = {
    "Secret": ("core", "namespaced_secret"),
    "ConfigMap": ("core", "namespaced_config_map"),
    "Service": ("core", "namespaced_service"),
    "Deployment": ("apps", "namespaced_deployment"),
    "Job": ("batch", "namespaced_job"),
}
#: kind -> (group, version, plural) of custom resources the operator touches.
CUSTOM = {
    **{kind: (schema.GROUP, schema.VERSION, k.plural) for kind, k in crds.kinds().items()},
    "Certificate": ("cert-manager.io", "v1", "certificates"),
}


@dataclass
class Kube:
    """Typed access to the namespaced kinds above through one :class:`kubernetes.client.ApiClient`."""

    api: client.ApiClient

    def __post_init__(self) -> None:
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.batch = client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return obj if isinstance(obj, dict) else self.api.sanitize_for_serialization(obj)

    def _call(self, verb: str, kind: str, namespace: str, *args: Any, **kw: Any) -> dict[str, Any]:
        if kind in CUSTOM:
            group, version, plural = CUSTOM[kind]
            suffix = "_status" if kw.pop("status", False) else ""
            fn = getattr(self.custom, f"{verb}_namespaced_custom_object{suffix}")
            return self._plain(fn(group, version, namespace, plural, *args, **kw))
        api, suffix = _TYPED[kind]
        return self._plain(getattr(getattr(self, api), f"{verb}_{suffix}")(*args[:1], namespace, *args[1:], **kw))

    def _create(self, obj: dict[str, Any]) -> dict[str, Any]:
        ns = obj["metadata"]["namespace"]
        if obj["kind"] in CUSTOM:
            group, version, plural = CUSTOM[obj["kind"]]
            return self._plain(self.custom.create_namespaced_custom_object(group, version, ns, plural, obj))
        api, suffix = _TYPED[obj["kind"]]
        return self._plain(getattr(getattr(self, api), f"create_{suffix}")(ns, obj))

    def _patch(self, kind: str, namespace: str, name: str, body: dict[str, Any], *, status: bool = False) -> dict:
        if kind in CUSTOM:
            return self._call("patch", kind, namespace, name, body, status=status, _content_type=MERGE)
        return self._call("patch", kind, namespace, name, body, _content_type=MERGE)

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            if kind in CUSTOM:
                return self._call("get", kind, namespace, name)
            return self._call("read", kind, namespace, name)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._create(obj)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        meta = obj["metadata"]
        return self._patch(obj["kind"], meta["namespace"], meta["name"], obj)

    def _ensure(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        try:
            return self._create(obj), True
        except client.ApiException as exc:
            if exc.status != 409:
                raise
        meta = obj["metadata"]
        existing = self._read(obj["kind"], meta["namespace"], meta["name"])
        if existing is None:  # deleted between our create and read: let the handler retry
            raise client.ApiException(status=409, reason=f"{obj['kind']} {meta['name']} is being replaced")
        return existing, False

    def _delete(self, kind: str, namespace: str, name: str) -> bool:
        try:
            if kind in CUSTOM:
                self._call("delete", kind, namespace, name)
            else:
                self._call("delete", kind, namespace, name, propagation_policy="Background")
            return True
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def _list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        group, version, plural = CUSTOM[kind]
        return list(self.custom.list_namespaced_custom_object(group, version, namespace, plural).get("items", []))

    def _has_group_version(self, group_version: str) -> bool:
        group, version = group_version.split("/")
        try:
            self.custom.get_api_resources(group, version)  # GET /apis/GROUP/VERSION
            return True
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    # The async surface the handlers use.

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` or, if it exists ("already exists" is success), merge-patch it to match."""
        return await asyncio.to_thread(self._apply, obj)

    async def ensure(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj`` unless it exists; returns (the stored object, created?). Never overwrites
        (key material must survive a retried handler)."""
        return await asyncio.to_thread(self._ensure, obj)

    async def read(self, *, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it is gone (it may be deleted while we work)."""
        return await asyncio.to_thread(self._read, kind, namespace, name)

    async def patch(self, *, kind: str, namespace: str, name: str, body: dict, status: bool = False) -> dict:
        return await asyncio.to_thread(self._patch, kind, namespace, name, body, status=status)

    async def delete(self, *, kind: str, namespace: str, name: str) -> bool:
        """Delete; False if it was already gone."""
        return await asyncio.to_thread(self._delete, kind, namespace, name)

    async def list(self, *, kind: str, namespace: str) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._list, kind, namespace)

    async def has_group_version(self, group_version: str) -> bool:
        """API discovery (allowed to every authenticated user), e.g. is cert-manager installed?"""
        return await asyncio.to_thread(self._has_group_version, group_version)
