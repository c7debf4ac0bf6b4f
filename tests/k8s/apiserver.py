"""A real Kubernetes control plane on loopback for tests: etcd + kube-apiserver + kube-controller-manager.

Why real: the CRDs' schema validation, RBAC (a missing rule shows as 403), owner-reference garbage
collection and the status subresource are behaviours of the API server and controller manager, which an
emulator only imitates. There is no kubelet on purpose: pods stay Pending, nothing runs containers.

The binaries come from ``scripts/k8s/build.sh`` (v1.20.2 built from Debian's source package); etcd is
Debian's ``etcd-server``. Every listener binds 127.0.0.1 on a free port; the PKI is thrown away with the
working directory. The controller manager runs only the controllers the tests rely on: the service
account token controller (v1.20 issues token Secrets, which the chart's ServiceAccount needs), the
service account controller, the namespace controller, the garbage collector and the ClusterRole
aggregation controller (the chart's tenant roles aggregate into the built-in admin/edit/view).
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from fedattn import pki

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "k8s" / "build.sh"
ETCD = "/usr/bin/etcd"
SERVICE_CIDR = "10.0.0.0/24"
#: How long the control plane may take to come up; generous because CI machines have 2 cores.
START_TIMEOUT_S = 120.0


class ControlPlaneError(RuntimeError):
    """The control plane could not start; the message carries the tail of the failing process's log."""


def build_binaries() -> Path:
    """Run the idempotent build (instant when cached) and return the directory of the binaries."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    # NB: the port is released before the server binds it; on loopback in a test run the race is benign.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_dns(argv: list[str], *, workdir: Path) -> list[str]:
    """``argv`` wrapped so that its DNS lookups go to 127.0.0.1 only (where nothing answers).

    Why: a process that dials in-cluster names (``svc.namespace.svc``) outside a cluster would send
    those lookups to the machine's resolver; tests keep every packet on loopback. A private mount
    namespace gives the child its own /etc/resolv.conf without touching the machine's.
    """
    resolv = workdir / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, str(resolv), *argv]


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def kubeconfig(
    *,
    server: str,
    ca_pem: bytes,
    user: str,
    token: str | None = None,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    namespace: str = "default",
) -> dict:
    """A kubeconfig dict for one user, authenticated by a bearer token or a client certificate."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    creds: dict[str, str] = (
        {"token": token}
        if token
        else {
            "client-certificate-data": b64(cert_pem or b""),
            "client-key-data": b64(key_pem or b""),
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": user, "context": {"cluster": "local", "user": user, "namespace": namespace}}],
        "current-context": user,
    }


@dataclass
class ControlPlane:
    """A running control plane. ``stop()`` ends its processes; the working directory stays for debugging."""

    workdir: Path
    bin_dir: Path
    server: str = ""
    ca: pki.KeyPair | None = None
    admin: pki.KeyPair | None = None
    admin_kubeconfig: Path | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> ControlPlane:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pki_dir = self.workdir / "pki"
        pki_dir.mkdir(exist_ok=True)
        self.ca = pki.make_ca("fedattn-test-kubernetes-ca", validity_days=7)
        ca_crt = _write(pki_dir / "ca.crt", self.ca.cert_pem, 0o644)
        # 10.0.0.1 is the first address of the service CIDR: the in-cluster "kubernetes" Service.
        serving = pki.issue(
            self.ca,
            "kube-apiserver",
            validity_days=7,
            server_names=[
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
            ],
        )
        _write(pki_dir / "apiserver.crt", serving.cert_pem)
        _write(pki_dir / "apiserver.key", serving.key_pem)
        self.admin = pki.issue(self.ca, "fedattn-test-admin", organization="system:masters", validity_days=7)
        # NB: RSA for service-account tokens: every v1.20 component accepts RS256 without extra flags.
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_priv = _write(
            pki_dir / "sa.key",
            sa_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        sa_pub = _write(
            pki_dir / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            0o644,
        )

        etcd_port, etcd_peer, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        self._spawn(
            "etcd",
            [
                ETCD,
                "--name",
                "test",
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                etcd_url,
                "--advertise-client-urls",
                etcd_url,
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer}",
                "--initial-cluster",
                f"test=http://127.0.0.1:{etcd_peer}",
                "--listen-metrics-urls",
                f"http://127.0.0.1:{free_port()}",
            ],
        )
        self._wait_http(f"{etcd_url}/health", "etcd")

        self.server = f"https://127.0.0.1:{api_port}"
        self._spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                "--etcd-servers",
                etcd_url,
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(api_port),
                # NB: v1.20 still opens an unauthenticated port 8080 by default: close it.
                "--insecure-port",
                "0",
                "--tls-cert-file",
                str(pki_dir / "apiserver.crt"),
                "--tls-private-key-file",
                str(pki_dir / "apiserver.key"),
                "--client-ca-file",
                str(ca_crt),
                "--service-account-key-file",
                str(sa_pub),
                "--service-account-signing-key-file",
                str(sa_priv),
                "--service-account-issuer",
                "https://kubernetes.default.svc",
                "--authorization-mode",
                "RBAC",
                "--service-cluster-ip-range",
                SERVICE_CIDR,
                # NB: a loopback advertise address is invalid in Endpoints; nobody dials the Service here.
                "--endpoint-reconciler-type",
                "none",
                "--cert-dir",
                str(pki_dir),
                "--profiling=false",
            ],
        )
        admin_cfg = kubeconfig(
            server=self.server,
            ca_pem=self.ca.cert_pem,
            user="admin",
            cert_pem=self.admin.cert_pem,
            key_pem=self.admin.key_pem,
        )
        self.admin_kubeconfig = self.write_kubeconfig("admin", admin_cfg)
        self._wait_http(f"{self.server}/readyz", "kube-apiserver", tls=True)

        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                "--kubeconfig",
                str(self.admin_kubeconfig),
                "--controllers",
                "serviceaccount-token,serviceaccount,namespace,garbagecollector,clusterrole-aggregation",
                "--service-account-private-key-file",
                str(sa_priv),
                "--root-ca-file",
                str(ca_crt),
                "--leader-elect=false",
                # NB: no serving at all: nothing scrapes it, and fixed default ports could clash.
                "--port",
                "0",
                "--secure-port",
                "0",
                "--profiling=false",
            ],
        )
        return self

    def stop(self) -> None:
        for name in reversed(list(self.processes)):
            proc = self.processes.pop(name)
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    # --- helpers ----------------------------------------------------------------------------------
    def write_kubeconfig(self, name: str, config: dict) -> Path:
        return _write(self.workdir / f"{name}.kubeconfig", yaml.safe_dump(config).encode())

    def token_kubeconfig(self, name: str, token: str, *, namespace: str) -> Path:
        """A kubeconfig file that authenticates with ``token`` (e.g. a ServiceAccount's)."""
        assert self.ca is not None
        cfg = kubeconfig(server=self.server, ca_pem=self.ca.cert_pem, user=name, token=token, namespace=namespace)
        return self.write_kubeconfig(name, cfg)

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _spawn(self, name: str, argv: list[str]) -> None:
        if not Path(argv[0]).exists():
            raise ControlPlaneError(f"{argv[0]} is missing: run scripts/k8s/build.sh (it installs etcd too)")
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 -- owned by the child until stop()
        self.processes[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, "GOMAXPROCS": "2"},
        )

    def _wait_http(self, url: str, name: str, *, tls: bool = False) -> None:
        ctx = None
        if tls:
            assert self.ca is not None and self.admin is not None
            pki_dir = self.workdir / "pki"
            _write(pki_dir / "admin.crt", self.admin.cert_pem)
            _write(pki_dir / "admin.key", self.admin.key_pem)
            ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
            ctx.load_cert_chain(pki_dir / "admin.crt", pki_dir / "admin.key")
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        while time.monotonic() < deadline:
            proc = self.processes[name]
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            try:
                with urllib.request.urlopen(url, timeout=5, context=ctx) as reply:
                    if reply.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.25)
        raise ControlPlaneError(
            f"{name} not ready at {url} after {START_TIMEOUT_S:.0f} s ({last}):\n{self.log_tail(name)}"
        )


def start_control_plane(*, workdir: Path, bin_dir: Path | None = None) -> ControlPlane:
    """Start etcd, kube-apiserver and kube-controller-manager under ``workdir``, building them if needed
    (the build script also installs etcd-server)."""
    return ControlPlane(workdir=workdir, bin_dir=bin_dir or build_binaries()).start()
