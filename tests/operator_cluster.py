"""An emulated Kubernetes API (kmock) with the operator's kinds, and the real kopf operator on it.

Not a mock of the operator's logic: kopf watches, patches and posts events over HTTP exactly as
against a cluster; the emulator stores objects and streams watch events. What it does not do
(garbage collection, resourceVersion, defaulting) the tests do not rely on, or do by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import kmock
import kopf
from kubernetes import client

from fedattn.operator.handlers import REGISTRY, Config
from fedattn.operator.kube import Kube

NAMESPACE = "default"

RESOURCES = {
    "fedattn.io/v1alpha1/fedsessions": ("FedSession", ["fs"], ["status"]),
    "fedattn.io/v1alpha1/fedparticipants": ("FedParticipant", ["fp"], ["status"]),
    "v1/secrets": ("Secret", [], []),
    "v1/configmaps": ("ConfigMap", [], []),
    "v1/services": ("Service", [], []),
    "v1/events": ("Event", [], []),
    "apps/v1/deployments": ("Deployment", [], ["scale"]),
    "batch/v1/jobs": ("Job", [], ["status"]),
    "v1/persistentvolumeclaims": ("PersistentVolumeClaim", [], []),
    "policy/v1/poddisruptionbudgets": ("PodDisruptionBudget", [], []),
}


_VERSIONS = itertools.count(1000)
_LATEST = [999]  # the newest resourceVersion handed out


class ApiServer(kmock.KubernetesEmulator):
    """kmock's emulator plus what kopf relies on and a real API server does on every write:
    a fresh ``resourceVersion`` (kopf skips stale watch events by it), and on create a ``uid``,
    a ``creationTimestamp`` and a name from ``generateName`` (kopf's events use it)."""

    #: keep only this many requests in kmock's log (None: all). kmock matches each request against its
    #: whole log, so a long benchmark needs a window; tests that inspect the log keep everything.
    history_limit: int | None = None

    async def _handle(self, request: kmock.Request) -> Any:
        if self.history_limit is not None and len(self._requests) > self.history_limit:
            del self._requests[: -self.history_limit]
        data = request.data
        if request.resource is not None and request.action in (kmock.action.CREATE, kmock.action.UPDATE):
            _LATEST[0] = next(_VERSIONS)
            version = str(_LATEST[0])
            if isinstance(data, dict):
                meta = data.setdefault("metadata", {})
                if request.action == kmock.action.UPDATE and meta.get("resourceVersion"):
                    self._precondition(request, meta["resourceVersion"])
                if request.action == kmock.action.CREATE:
                    if not meta.get("name") and meta.get("generateName"):
                        meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                    meta.setdefault("uid", str(uuid.uuid4()))
                    meta.setdefault("creationTimestamp", dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                meta["resourceVersion"] = version
            elif isinstance(data, list):  # a JSON patch: kopf's own, with a `test` of the old version first
                data.append({"op": "replace", "path": "/metadata/resourceVersion", "value": version})
        elif request.resource is not None and request.action == kmock.action.DELETE and request.name:
            key = (request.resource, request.namespace, request.name)
            obj = self.objects[key] if key in self.objects else None  # noqa: SIM401  (no .get on kmock's array)
            # marking an object deleted is a write too (marking it again is not)
            if obj is not None and not obj.deleted and not obj.get("metadata", {}).get("deletionTimestamp"):
                _LATEST[0] = next(_VERSIONS)
                obj.patch({"metadata": {"resourceVersion": str(_LATEST[0])}})
        return await super()._handle(request)

    def _precondition(self, request: kmock.Request, expected: str) -> None:
        """A patch that names a resourceVersion applies only to that version (optimistic concurrency)."""
        key = (request.resource, request.namespace, request.name)
        current = self.objects[key].get("metadata", {}).get("resourceVersion") if key in self.objects else None
        if current is not None and current != expected:
            raise kmock.KubernetesError(
                status=409, reason="Conflict", message=f"object is at {current}, not {expected}"
            )

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        listing["metadata"]["resourceVersion"] = str(_LATEST[0])
        return listing

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        # NB: kmock replays existing objects and its event bus to a new watcher; a real watch sends
        # only what is newer than the listing it continues (and never an object older than one it
        # sent), and kopf's resourceVersion checks rely on that.
        since = request.params.get("resourceVersion", "")
        floor = int(since) if since.isdigit() else -1
        sent: dict[tuple[str, str], int] = {}
        async for event in super()._serve_watch(request):
            obj = event.get("object") if isinstance(event, dict) else None
            if obj:
                meta = obj.get("metadata", {})
                key = (meta.get("namespace"), meta.get("name"))
                version = int(meta.get("resourceVersion") or 0)
                if event.get("type") != "DELETED" and version <= max(floor, sent.get(key, -1)):
                    continue
                sent[key] = version
            yield event


def declare(emulator: kmock.KubernetesEmulator) -> None:
    verbs = ["get", "list", "watch", "create", "patch", "update", "delete"]
    for path, (kind, short, sub) in RESOURCES.items():
        emulator.resources[path] = kmock.ResourceInfo(
            kind=kind, namespaced=True, shortnames=short, subresources=sub, verbs=verbs
        )
    # Discovered (kopf's backbone waits for them) but never listed: scanning is disabled.
    emulator.resources["v1/namespaces"] = kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=verbs)
    emulator.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = kmock.ResourceInfo(
        kind="CustomResourceDefinition", namespaced=False, verbs=verbs
    )


def stored(emulator: kmock.KubernetesEmulator, path: str, name: str) -> dict[str, Any] | None:
    """The emulator's current object (None if absent or deleted)."""
    key = (kmock.resource(path), NAMESPACE, name)
    if key not in emulator.objects or emulator.objects[key].deleted:
        return None
    return dict(emulator.objects[key].raw)


def names_of(emulator: kmock.KubernetesEmulator, path: str) -> set[str]:
    res = kmock.resource(path)
    return {name for (r, _, name), obj in emulator.objects.items() if r == res and not obj.deleted}


def seeded(kind: str, name: str, spec: dict[str, Any], *, age_seconds: float = 0) -> dict[str, Any]:
    """A custom object as the API server would store it (kmock maintains none of these fields)."""
    created = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_seconds)
    return {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "uid": str(uuid.uuid4()),
            "resourceVersion": "1",
            "generation": 1,
            "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "spec": spec,
    }


@dataclass
class RecordedStatus:
    """A coordinator status provider fed by the test: session name -> status dict (or an exception)."""

    statuses: dict[str, Any] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    evictions: list[tuple[str, str]] = field(default_factory=list)

    async def evict(self, *, session: dict, identity: dict[str, bytes], participant: str, reason: str) -> None:
        assert identity["operator.crt"] and reason
        self.evictions.append((session["metadata"]["name"], participant))

    async def __call__(self, *, session: dict, participants: list[dict], identity: dict[str, bytes]) -> dict:
        name = session["metadata"]["name"]
        self.calls.append(name)
        assert identity["operator.crt"] and identity["operator.key"] and identity["ca.crt"]
        value = self.statuses.get(name, ConnectionError("coordinator not up yet"))
        if isinstance(value, Exception):
            raise value
        return value


@contextlib.asynccontextmanager
async def running_operator(
    url: str,
    status_source: Any,
    *,
    poll_seconds: float = 0.05,
    clock: Callable[[], dt.datetime] | None = None,
    renew_check_seconds: float = 3600.0,
) -> AsyncIterator[Config]:
    api = client.ApiClient(client.Configuration(host=url))
    config = Config(
        kube=Kube(api),
        status_source=status_source,
        poll_seconds=poll_seconds,
        retry_seconds=0.1,
        renew_check_seconds=renew_check_seconds,
    )
    if clock is not None:
        config.clock = clock
    memo = kopf.Memo(config=config)
    stop, ready = threading.Event(), threading.Event()

    # NB: kopf runs in its own thread and loop (as kopf.testing.KopfRunner does): at exit kopf waits
    # for every task its loop spawned, and the emulator's request handlers must not be among them.
    def serve() -> None:
        asyncio.run(
            kopf.operator(
                registry=REGISTRY, memo=memo, namespaces=[NAMESPACE], standalone=True, stop_flag=stop, ready_flag=ready
            )
        )

    thread = threading.Thread(target=serve, name="kopf", daemon=True)
    thread.start()
    try:
        await asyncio.to_thread(ready.wait, 30)
        yield config
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 30)
        api.close()


async def eventually(check: Callable[[], Any], *, attempts: int = 400, step: float = 0.025) -> Any:
    """Poll ``check`` until it returns a truthy value (bounded by attempts, not by wall-clock asserts)."""
    last: Any = None
    for _ in range(attempts):
        try:
            last = check()
            if last:
                return last
        except (KeyError, TypeError, AssertionError) as exc:
            last = exc
        await asyncio.sleep(step)
    raise AssertionError(f"condition never held; last value: {last!r}")
