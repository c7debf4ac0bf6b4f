"""Session PKI: certificates chain to the session CA and work in a real TLS 1.3 mTLS handshake."""

import socket
import ssl
import threading

import pytest

from fedattn import pki


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    return root, pki.write_session_pki(root, session="s1", participants=["alice", "bob"],
                                       server_names=["127.0.0.1", "localhost"])


def _handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[str | None, str | None]:
    """Run one TLS handshake over loopback; returns (peer CN seen by server, server error)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: dict[str, str | None] = {"cn": None, "error": None}

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                cert = tls.getpeercert()
                seen["cn"] = dict(x[0] for x in cert["subject"])["commonName"]
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as exc:
            seen["error"] = str(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.3"
            tls.recv(2)
    except (ssl.SSLError, OSError):
        pass
    thread.join(5)
    listener.close()
    return seen["cn"], seen["error"]


def test_participant_certificate_is_accepted_and_names_the_participant(material):
    _, ids = material
    server = pki.server_ssl_context(cert=ids["server"].cert, key=ids["server"].key, ca=ids["server"].ca)
    client = pki.client_ssl_context(ca=ids["alice"].ca, cert=ids["alice"].cert, key=ids["alice"].key)
    cn, error = _handshake(server, client)
    assert (cn, error) == ("alice", None)
    assert pki.common_name(ids["bob"].cert.read_bytes()) == "bob"


def test_client_without_certificate_is_refused(material):
    _, ids = material
    server = pki.server_ssl_context(cert=ids["server"].cert, key=ids["server"].key, ca=ids["server"].ca)
    cn, error = _handshake(server, pki.client_ssl_context(ca=ids["server"].ca))
    assert cn is None and error is not None


def test_certificate_from_another_ca_is_refused(material, tmp_path):
    _, ids = material
    other = pki.write_session_pki(tmp_path, session="s2", participants=["mallory"], server_names=["127.0.0.1"])
    server = pki.server_ssl_context(cert=ids["server"].cert, key=ids["server"].key, ca=ids["server"].ca)
    client = pki.client_ssl_context(ca=ids["server"].ca, cert=other["mallory"].cert, key=other["mallory"].key)
    cn, error = _handshake(server, client)
    assert cn is None and "certificate" in (error or "").lower()


def test_secrets_are_private_and_curve_keys_are_z85(material):
    root, ids = material
    assert not (root / "ca.key").exists()  # local mode never issues again: the CA key is not kept
    assert ids["alice"].key.stat().st_mode & 0o077 == 0
    assert len(ids["alice"].curve_public.read_bytes()) == 40
    assert ids["alice"].curve_public.read_bytes() != ids["bob"].curve_public.read_bytes()


def test_leaf_never_outlives_its_ca():
    ca = pki.make_ca("short", validity_days=2)
    leaf = pki.issue(ca, "p", validity_days=90)
    assert pki.not_after(leaf.cert_pem) <= pki.not_after(ca.cert_pem)
