"""Blocking HTTPS client for the coordinator's API (mTLS), with the session's resilience policy.

The counterpart of :mod:`fedattn.coordinator.api`, as :mod:`fedattn.aggregator.client` is the aggregator's.
Used by participants (as themselves), and by the operator and the local runner (as ``operator``). 4xx answers are
:class:`~fedattn.resilience.PermanentFailure` carrying the coordinator's message; 5xx answers,
timeouts and connection errors are retried with backoff and counted by the circuit breaker.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from fedattn import pki
from fedattn.resilience import PermanentFailure, Policy, call

#: the code of a 404 for a session the coordinator does not have (yet: not registered, or it restarted
#: on an empty store); a participant waits for it, while ``not_found`` (not a participant of it) is final
NO_SESSION = "no_session"


class CoordinatorError(PermanentFailure):
    """The coordinator rejected a request; ``status`` and ``code`` say how."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"coordinator answered {status} {code}: {message}")
        self.status = status
        self.code = code


class CoordinatorClient:
    def __init__(self, *, base_url: str, identity: pki.Paths, policy: Policy | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.policy = policy or Policy.default()
        self._ssl: ssl.SSLContext = pki.client_ssl_context(ca=identity.ca, cert=identity.cert, key=identity.key)
        self._breaker = self.policy.breaker(f"coordinator:{self.base_url}")

    def _once(self, method: str, path: str, body: Any) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=self.policy.timeout_seconds) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            payload = err.read()
            try:
                detail = json.loads(payload)
            except ValueError:
                detail = {"error": "http_error", "message": payload.decode(errors="replace")[:500]}
            if 400 <= err.code < 500:
                raise CoordinatorError(err.code, detail.get("error", "error"), detail.get("message", "")) from None
            raise ConnectionError(f"coordinator answered {err.code}: {detail.get('message', '')}") from None

    def request(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """One API call with retries; raises CoordinatorError for 4xx, the last error otherwise."""
        return call(
            lambda: self._once(method, path, body),
            policy=self.policy,
            breaker=self._breaker,
            what=f"{method} {path}",
        )

    def _member(self, session: str, participant: str, action: str) -> str:
        quote = urllib.parse.quote
        return f"/v1/sessions/{quote(session)}/participants/{quote(participant)}/{action}"

    def create_session(self, manifest: dict[str, Any], participants: list[dict[str, Any]]) -> dict[str, Any]:
        return self.request("POST", "/v1/sessions", {"manifest": manifest, "participants": participants})

    def status(self, session: str) -> dict[str, Any]:
        return self.request("GET", f"/v1/sessions/{urllib.parse.quote(session)}")

    def join(self, session: str, participant: str) -> dict[str, Any]:
        return self.request("POST", self._member(session, participant, "join"), {})

    def heartbeat(self, session: str, participant: str) -> dict[str, Any]:
        return self.request("POST", self._member(session, participant, "heartbeat"), {})

    def leave(self, session: str, participant: str, result: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.request("POST", self._member(session, participant, "leave"), {"result": result or {}})


def identity_from_dir(pki_dir: Path, name: str) -> pki.Paths:
    """The identity ``name`` in a PKI directory laid out by :func:`fedattn.pki.write_session_pki`."""
    paths = pki.Paths(Path(pki_dir), name)
    missing = [p for p in (paths.ca, paths.cert, paths.key) if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing credentials for {name!r}: {', '.join(map(str, missing))}")
    return paths
