"""Session PKI: a CA, server and per-participant client certificates (mTLS, TLS 1.3) and CurveZMQ keys.

The functions that make material are pure (bytes out), so the operator can put the very same PEMs
into Secrets that local mode writes to a directory. EC P-256 keys keep issuance fast enough to mint
one certificate per participant on every reconcile retry without noticeable cost.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import zmq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Identity (certificate name and Curve key name) of the coordinator's control link to the aggregator;
#: the aggregator takes ``ctl_*`` requests from it alone.
CONTROL_CLIENT = "coordinator-client"


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes


@dataclass(frozen=True)
class CurveKeyPair:
    """A CurveZMQ key pair, both halves Z85-encoded (40 ASCII bytes each)."""

    public: bytes
    secret: bytes


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str, *, validity_days: int = 365) -> KeyPair:
    """A self-signed CA that signs one session's server and client certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def issue(
    ca: KeyPair,
    common_name: str,
    *,
    server_names: list[str] | None = None,
    organization: str | None = None,
    validity_days: int = 90,
) -> KeyPair:
    """A leaf certificate signed by ``ca``: a server one when ``server_names`` is given, else a client one.

    A client certificate's CN is the participant name; the coordinator trusts that CN as the caller's
    identity, which is why only the CA (held by the operator or the local runner) can mint them.
    """
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    now = _now()
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=validity_days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
    )
    if server_names:
        builder = builder.add_extension(_san(server_names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def not_after(cert_pem: bytes) -> dt.datetime:
    """When a certificate expires (UTC); the operator renews ahead of this."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def common_name(cert_pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def curve_keypair() -> CurveKeyPair:
    """A fresh CurveZMQ key pair (Z85)."""
    public, secret = zmq.curve_keypair()
    return CurveKeyPair(public=public, secret=secret)


def server_ssl_context(*, cert: Path, key: Path, ca: Path) -> ssl.SSLContext:
    """TLS 1.3 server context that requires a client certificate signed by the session CA."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(*, ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """TLS 1.3 client context that verifies the server against the session CA and presents ours."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


@dataclass(frozen=True)
class Paths:
    """Where local mode keeps one identity's material under a PKI directory."""

    root: Path
    name: str

    @property
    def cert(self) -> Path:
        return self.root / f"{self.name}.crt"

    @property
    def key(self) -> Path:
        return self.root / f"{self.name}.key"

    @property
    def curve_public(self) -> Path:
        return self.root / f"{self.name}.curve.pub"

    @property
    def curve_secret(self) -> Path:
        return self.root / f"{self.name}.curve.sec"

    @property
    def ca(self) -> Path:
        return self.root / "ca.crt"


def _write_secret(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    path.chmod(0o600)


def write_identity(root: Path, name: str, pair: KeyPair, curve: CurveKeyPair) -> Paths:
    """Write one identity (certificate, key, Curve pair) into ``root``; secrets are mode 0600."""
    paths = Paths(root, name)
    paths.cert.write_bytes(pair.cert_pem)
    _write_secret(paths.key, pair.key_pem)
    paths.curve_public.write_bytes(curve.public)
    _write_secret(paths.curve_secret, curve.secret)
    return paths


def write_session_pki(
    root: Path, *, session: str, participants: list[str], server_names: list[str]
) -> dict[str, Paths]:
    """Local mode: a fresh CA, the ``server`` identity and one client identity per participant.

    Returns the paths by identity name: "server", "coordinator-client" (the coordinator's control link
    to the aggregator), "operator" (admin calls to the coordinator) and each participant name.
    """
    root.mkdir(parents=True, exist_ok=True)
    ca = make_ca(f"fedattn-{session}-ca")
    root.joinpath("ca.crt").write_bytes(ca.cert_pem)
    # NB: the CA key is not written: a local session never issues again, and a file is what another
    # process of the same user (any participant) could read.
    out = {"server": write_identity(root, "server", issue(ca, "server", server_names=server_names), curve_keypair())}
    for name in [CONTROL_CLIENT, "operator", *participants]:
        out[name] = write_identity(root, name, issue(ca, name, organization=session), curve_keypair())
    return out


def move_identity(paths: Paths, dest: Path) -> Paths:
    """Move one identity's files into its own directory ``dest`` (mode 0700) with a copy of ``ca.crt``,
    so a process given ``dest`` as its PKI directory finds its own keys and nobody else's."""
    dest.mkdir(parents=True, exist_ok=True)
    dest.chmod(0o700)
    moved = Paths(dest, paths.name)
    moved.ca.write_bytes(paths.ca.read_bytes())
    for source, target in (
        (paths.cert, moved.cert),
        (paths.key, moved.key),
        (paths.curve_public, moved.curve_public),
        (paths.curve_secret, moved.curve_secret),
    ):
        source.replace(target)
    return moved
