"""The operator's coordinator status source against a small real HTTPS server with mutual TLS."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from fedattn import pki
from fedattn.api.spec import SessionSpec
from fedattn.operator.objects import Session
from fedattn.operator.progress import CoordinatorStatus

STATUS = {"name": "s1", "phase": "Running", "round": 2, "participants": {"joined": 2, "ready": 2, "total": 2}}


class Coordinator(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str]] = []
    create_reply = 201
    #: how many status reads answer 404 (a coordinator restarted on a store without the session)
    forgotten = 0

    def _reply(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _caller(self) -> str:
        cert = x509.load_der_x509_certificate(self.connection.getpeercert(binary_form=True))
        return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(("POST", self.path, self._caller()))
        if self.path.endswith("/evict"):
            assert body == {"reason": "FedParticipant deleted"}
            self._reply(200 if self.path == "/v1/sessions/s1/participants/p1/evict" else 404, {})
            return
        assert body["manifest"]["metadata"]["name"] == "s1" and body["participants"][0]["metadata"]["name"] == "p1"
        self._reply(self.create_reply, {"name": "s1"} if self.create_reply == 201 else {"error": "conflict"})

    def do_GET(self) -> None:
        self.seen.append(("GET", self.path, self._caller()))
        if Coordinator.forgotten:
            Coordinator.forgotten -= 1
            self._reply(404, {"error": "not_found", "message": "no session named 's1'"})
            return
        self._reply(200, STATUS)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[int, dict[str, bytes]]]:
    ca = pki.make_ca("test-ca")
    server = pki.issue(ca, "server", server_names=["127.0.0.1"])
    operator = pki.issue(ca, "operator")
    for name, data in {"ca.crt": ca.cert_pem, "server.crt": server.cert_pem, "server.key": server.key_pem}.items():
        (tmp_path / name).write_bytes(data)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Coordinator)
    ctx = pki.server_ssl_context(cert=tmp_path / "server.crt", key=tmp_path / "server.key", ca=tmp_path / "ca.crt")
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    Coordinator.seen = []
    Coordinator.forgotten = 0
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    identity = {"ca.crt": ca.cert_pem, "operator.crt": operator.cert_pem, "operator.key": operator.key_pem}
    yield httpd.server_address[1], identity
    httpd.shutdown()


def _session() -> Session:
    return {
        "apiVersion": "fedattn.io/v1alpha1",
        "kind": "FedSession",
        "metadata": {"name": "s1", "namespace": "team", "uid": "u1"},
        "spec": SessionSpec.from_manifest({"mode": "learning", "resilience": {"timeoutSeconds": 5, "retries": 0}}),
        "status": {},
    }


@pytest.mark.parametrize("create_reply", [201, 409])
async def test_registers_once_then_reads_status_as_operator(coordinator, tmp_path: Path, create_reply: int) -> None:
    port, identity = coordinator
    Coordinator.create_reply = create_reply
    source = CoordinatorStatus(url_for=lambda name, ns: f"https://127.0.0.1:{port}", workdir=tmp_path / "op")
    participants = [{"metadata": {"name": "p1"}, "spec": {"sessionRef": "s1"}}]
    assert await source(session=_session(), participants=participants, identity=identity) == STATUS
    assert await source(session=_session(), participants=participants, identity=identity) == STATUS
    assert Coordinator.seen == [
        ("POST", "/v1/sessions", "operator"),
        ("GET", "/v1/sessions/s1", "operator"),
        ("GET", "/v1/sessions/s1", "operator"),
    ]
    key = tmp_path / "op" / "team" / "s1" / "operator.key"
    assert key.stat().st_mode & 0o077 == 0  # the private key is readable by the operator only


async def test_a_certificate_from_another_ca_is_refused(coordinator, tmp_path: Path) -> None:
    port, _ = coordinator
    other = pki.make_ca("other-ca")
    stranger = pki.issue(other, "operator")
    identity = {"ca.crt": other.cert_pem, "operator.crt": stranger.cert_pem, "operator.key": stranger.key_pem}
    source = CoordinatorStatus(url_for=lambda name, ns: f"https://127.0.0.1:{port}", workdir=tmp_path / "op")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        await source(session=_session(), participants=[], identity=identity)
    assert Coordinator.seen == []


async def test_eviction_is_posted_as_operator_and_unknown_participants_are_fine(coordinator, tmp_path: Path) -> None:
    port, identity = coordinator
    source = CoordinatorStatus(url_for=lambda name, ns: f"https://127.0.0.1:{port}", workdir=tmp_path / "op")
    for name in ("p1", "never-joined"):
        await source.evict(session=_session(), identity=identity, participant=name, reason="FedParticipant deleted")
    assert Coordinator.seen == [
        ("POST", "/v1/sessions/s1/participants/p1/evict", "operator"),
        ("POST", "/v1/sessions/s1/participants/never-joined/evict", "operator"),
    ]


async def test_a_coordinator_that_forgot_the_session_gets_it_registered_again(coordinator, tmp_path: Path) -> None:
    port, identity = coordinator
    Coordinator.create_reply = 201
    source = CoordinatorStatus(url_for=lambda name, ns: f"https://127.0.0.1:{port}", workdir=tmp_path / "op")
    participants = [{"metadata": {"name": "p1"}, "spec": {"sessionRef": "s1"}}]
    assert await source(session=_session(), participants=participants, identity=identity) == STATUS
    Coordinator.forgotten = 1  # the coordinator pod restarted on a fresh store
    assert await source(session=_session(), participants=participants, identity=identity) == STATUS
    assert Coordinator.seen == [
        ("POST", "/v1/sessions", "operator"),
        ("GET", "/v1/sessions/s1", "operator"),
        ("GET", "/v1/sessions/s1", "operator"),
        ("POST", "/v1/sessions", "operator"),
        ("GET", "/v1/sessions/s1", "operator"),
    ]
