"""The operator's Kubernetes calls: create-then-patch-on-409, create-if-absent, read, delete.

Why the official ``kubernetes`` client in threads rather than kopf's internal aiohttp session or
``kubernetes_asyncio``: it is a declared dependency, it is the same client every cluster tool is
tested with (auth plugins, in-cluster config, proxies), and a thread hop costs little next to the
API round trip. The threads are our own, as many as the client keeps connections
(``connection_pool_maxsize``, :data:`CONCURRENCY` in ``fedattn operator``): a wave of reconciles is
bound by API latency, and the event loop's default executor (cores + 4 threads) would let only ~6
requests be in flight (see benchmarks/operator_reconcile.py). kopf keeps its own client for watching.

Requests go through the client's REST layer (authentication, TLS, connection pool) with JSON in and
out, not through its generated typed methods: those validate every argument with pydantic and build
models that we turned back into dicts (~15% of the operator's GIL time in the 100 x 4 benchmark profile,
more than the HTTP work of the same threads).
Every function returns plain dicts (as the API sends them).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from kubernetes import client

from fedattn.api import crds, schema

MERGE = "application/merge-patch+json"
#: Requests in flight at once for ``fedattn operator`` (threads = kept-alive connections). etcd commits
#: concurrent writes together, so with a slow disk (200-900 ms a commit measured) throughput grows with it.
CONCURRENCY = 64
T = TypeVar("T")

#: kind -> (API group/version path, plural) of the namespaced kinds the operator touches.
PATHS = {
    "Secret": ("/api/v1", "secrets"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Job": ("/apis/batch/v1", "jobs"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    **{kind: (f"/apis/{schema.GROUP}/{schema.VERSION}", k.plural) for kind, k in crds.kinds().items()},
    "Certificate": ("/apis/cert-manager.io/v1", "certificates"),
}
#: PodDisruptionBudget is policy/v1 from Kubernetes 1.21, policy/v1beta1 before (with the fields we use);
#: its path is the version the server serves, discovered on first use.
PDB = "PodDisruptionBudget"
PDB_VERSIONS = ("policy/v1", "policy/v1beta1")


@dataclass
class Kube:
    """Access to the namespaced kinds above through one :class:`kubernetes.client.ApiClient`."""

    api: client.ApiClient

    def __post_init__(self) -> None:
        # NB: no more threads than pooled connections: urllib3 would open (and drop) a TLS connection per extra call
        workers = self.api.configuration.connection_pool_maxsize
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kube")
        self._pdb: str | None = None

    async def _run(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)`` on our threads, in a copy of the caller's context (as ``asyncio.to_thread``)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kw)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One call; the reply's JSON. ApiException (``.status`` 404, 409, ...) for any non-2xx reply."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self.api.param_serialize(
            method,
            path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        reply = self.api.call_api(*request)
        reply.read()
        if not 200 <= reply.status <= 299:
            text = reply.data.decode(errors="replace")
            raise client.ApiException.from_response(http_resp=reply, body=text, data=None)
        return json.loads(reply.data) if reply.data else {}

    def _pdb_version(self) -> str:
        if self._pdb is None:
            self._pdb = next((v for v in PDB_VERSIONS if self._has_group_version(v)), PDB_VERSIONS[0])
        return self._pdb

    def _path(self, kind: str, namespace: str, name: str | None = None, *, status: bool = False) -> str:
        prefix, plural = (f"/apis/{self._pdb_version()}", "poddisruptionbudgets") if kind == PDB else PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return path + (f"/{name}" if name else "") + ("/status" if status else "")

    def _create(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._request("POST", self._path(obj["kind"], obj["metadata"]["namespace"]), body=obj)

    def _patch(self, kind: str, namespace: str, name: str, body: dict[str, Any], *, status: bool = False) -> dict:
        path = self._path(kind, namespace, name, status=status)
        return self._request("PATCH", path, body=body, content_type=MERGE)

    def _read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._request("GET", self._path(kind, namespace, name))
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
        # NB: explicit, because a batch/v1 Job's default is to orphan its pods; custom resources' default anyway
        query = {"propagationPolicy": "Background"}
        try:
            self._request("DELETE", self._path(kind, namespace, name), query=query)
            return True
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def _list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        return list(self._request("GET", self._path(kind, namespace)).get("items", []))

    def _has_group_version(self, group_version: str) -> bool:
        try:
            self._request("GET", f"/apis/{group_version}")
            return True
        except client.ApiException as exc:
            if exc.status == 404:
                return False
            raise

    # The async surface the handlers use.

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` or, if it exists ("already exists" is success), merge-patch it to match."""
        return await self._run(self._apply, obj)

    async def ensure(self, obj: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create ``obj`` unless it exists; returns (the stored object, created?). Never overwrites
        (key material must survive a retried handler)."""
        return await self._run(self._ensure, obj)

    async def read(self, *, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object, or None if it is gone (it may be deleted while we work)."""
        return await self._run(self._read, kind, namespace, name)

    async def patch(self, *, kind: str, namespace: str, name: str, body: dict, status: bool = False) -> dict:
        return await self._run(self._patch, kind, namespace, name, body, status=status)

    async def delete(self, *, kind: str, namespace: str, name: str) -> bool:
        """Delete; False if it was already gone."""
        return await self._run(self._delete, kind, namespace, name)

    async def list(self, *, kind: str, namespace: str) -> list[dict[str, Any]]:
        return await self._run(self._list, kind, namespace)

    async def disruption_budget_version(self) -> str:
        """The PodDisruptionBudget apiVersion this server serves (policy/v1, or v1beta1 before 1.21)."""
        return await self._run(self._pdb_version)

    async def has_group_version(self, group_version: str) -> bool:
        """API discovery (allowed to every authenticated user), e.g. is cert-manager installed?"""
        return await self._run(self._has_group_version, group_version)
