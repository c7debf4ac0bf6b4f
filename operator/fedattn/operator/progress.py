"""How the operator learns a session's progress: the coordinator's ``GET /v1/sessions/{s}`` over mTLS.

The handlers only see the :class:`StatusSource` protocol, so tests plug in a recorded status
provider or point :class:`CoordinatorStatus` at a small real HTTPS server; no API is mocked.
"""

from __future__ import annotations

import asyncio
import tempfile
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from fedattn import pki
from fedattn.coordinator.client import CoordinatorClient, CoordinatorError
from fedattn.operator import names
from fedattn.operator.objects import Session, manifest
from fedattn.resilience import Policy


class StatusSource(Protocol):
    async def __call__(
        self, *, session: Session, participants: list[dict[str, Any]], identity: dict[str, bytes]
    ) -> dict[str, Any]:
        """The coordinator's status of ``session``; raises when it cannot be had (the caller reports it)."""
        ...

    async def evict(
        self, *, session: Session, identity: dict[str, bytes], participant: str, reason: str
    ) -> None:
        """Ask the coordinator to evict ``participant`` now (it revokes the Curve key at the aggregator at
        once, while a ConfigMap change takes the kubelet up to a minute to reach the allowlist)."""
        ...


def _write_identity(root: Path, files: dict[str, bytes]) -> pki.Paths:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in files.items():
        path = root / name
        path.write_bytes(data)
        path.chmod(0o600)
    return pki.Paths(root, names.OPERATOR)


class CoordinatorStatus:
    """Registers each session with its coordinator (idempotent POST), then reads its status.

    Registration happens once per operator process and again whenever the coordinator answers 404
    (it restarted without the session in its store), so a restart on either side never strands a session.

    ``url_for(namespace, name)`` says where the coordinator is; by default its Service DNS name.
    Client certificates live only in a private temporary directory of the operator process,
    because the TLS stack loads them from files.
    """

    def __init__(self, *, url_for=names.coordinator_url, workdir: Path | None = None) -> None:
        self._url_for = url_for
        self._root = workdir or Path(tempfile.mkdtemp(prefix="fedattn-operator-"))
        self._registered: set[tuple[str, str, str]] = set()
        # NB: its own threads, so coordinators that time out never starve the Kubernetes API calls
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="coordinator-status")

    def _client(self, session: Session, identity: dict[str, bytes]) -> CoordinatorClient:
        meta = session["metadata"]
        paths = _write_identity(self._root / meta["namespace"] / meta["name"], identity)
        policy = Policy.from_spec(session["spec"].resilience)
        return CoordinatorClient(base_url=self._url_for(meta["name"], meta["namespace"]), identity=paths, policy=policy)

    def _fetch(self, session: Session, participants: list[dict[str, Any]], identity: dict[str, bytes]) -> dict:
        meta = session["metadata"]
        api = self._client(session, identity)
        key = (meta["namespace"], meta["name"], str(meta.get("uid", "")))
        if key not in self._registered:
            self._register(api, session, participants)
            self._registered.add(key)
        try:
            return api.status(meta["name"])
        except CoordinatorError as exc:
            if exc.status != 404:
                raise
        # NB: a coordinator that restarted on a store without this session (or an operator that restarted
        # while the coordinator did) answers 404: register again, and it resumes what its store holds.
        self._register(api, session, participants)
        return api.status(meta["name"])

    @staticmethod
    def _register(api: CoordinatorClient, session: Session, participants: list[dict[str, Any]]) -> None:
        try:
            api.create_session(manifest(session), participants)
        except CoordinatorError as exc:
            # NB: 409 = registered earlier with another spec (e.g. before a suspend toggle): the
            # coordinator keeps the session it has, which is what we want to observe.
            if exc.status != 409:
                raise

    def _evict(self, session: Session, identity: dict[str, bytes], participant: str, reason: str) -> None:
        quote = urllib.parse.quote
        path = f"/v1/sessions/{quote(session['metadata']['name'])}/participants/{quote(participant)}/evict"
        try:
            self._client(session, identity).request("POST", path, {"reason": reason})
        except CoordinatorError as exc:
            if exc.status != 404:  # NB: a participant the coordinator never saw has nothing to revoke
                raise

    async def evict(
        self, *, session: Session, identity: dict[str, bytes], participant: str, reason: str
    ) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, self._evict, session, identity, participant, reason)

    async def __call__(
        self, *, session: Session, participants: list[dict[str, Any]], identity: dict[str, bytes]
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._fetch, session, participants, identity)
