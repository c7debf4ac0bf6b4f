"""A real single-node Kubernetes v1.20.2 cluster for tests: the control plane of apiserver.py plus
kube-scheduler, a kubelet on Debian's dockerd, kube-proxy and a DNS server for Service names.

Why real: a session in pods exercises what no emulator does: the images, probes, Service routing,
DNS names in certificates, volume permissions, Jobs and Deployments restarting pods.

Everything runs on this machine and stays on it:

- the node's network is a bridge (``BRIDGE``, ``NODE_ADDRESS``) that this module creates and hands to a
  ``dockerd`` of its own (own socket, data root and exec root, no iptables of its own);
- the API server and the kubelet listen on the bridge address only; kube-proxy (iptables mode) routes
  ClusterIPs and opens node ports only on the bridge and on the external site's link (``outside.py``);
- ``dnsmasq`` on the bridge answers Service names from a hosts directory this module fills from the
  Services list (no CoreDNS image exists offline) and has no upstream resolver at all;
- the **egress guard** (chains ``FEDATTN-GUARD-*`` in the mangle table, so ahead of every filter rule)
  drops anything forwarded from or to the bridge other than bridge<->bridge and bridge<->site, and
  anything arriving on the host's external interface for the API server's or the kubelet's port. Pods
  reach one another and this host, never another machine.

Every component authenticates with the control plane's admin certificate: the tests are about fedattn,
not the node authorizer. Images are built into the node's dockerd by ``scripts/build-images.sh``
(cached there, never pulled); the pause image is the tree's ``pause.c`` compiled by ``build.sh --node``.
``stop()`` removes every container, iptables rule, mount, the bridge and the processes it started.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import threading
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes
import yaml
from apiserver import REPO, ControlPlane, ControlPlaneError, build_binaries, free_port

BRIDGE = "fedattn0"
NODE_ADDRESS = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
NODE_NAME = "fedattn-node"
GUARD = "FEDATTN-GUARD"
#: NB: the guard lives in the mangle table, whose FORWARD and INPUT chains run before the filter table's,
#: where kube-proxy and the kubelet keep inserting their own accept rules in front of anything else.
GUARD_TABLE = "mangle"
#: the host side of the external site's link (outside.py): its address is the site's view of the node
SITE_LINK = "fasite0"
SITE_CIDR = "10.245.0.0/30"
#: node ports are opened on these networks only: the bridge and the external site's link
NODE_PORT_CIDRS = (POD_CIDR, SITE_CIDR)
NODE_PORT_RANGE = "30000-30999"
PAUSE_IMAGE = "fedattn-pause:3.4"
CLUSTER_DOMAIN = "cluster.local"
#: dockerd's state survives the node, so images are built once per machine.
DOCKER_ROOT = Path(os.environ.get("FEDATTN_K8S_CACHE", "/var/cache/fedattn")) / "node" / "docker"
DOCKER_RUN = Path("/run/fedattn-node")
DOCKER_SOCKET = DOCKER_RUN / "docker.sock"
#: dnsmasq's hosts directory: readable by the unprivileged user dnsmasq drops to (a pytest tmp dir is not)
DNS_DIR = DOCKER_RUN / "dns"
DOCKER_BIN = "/usr/bin/docker"
CONTROLLERS = ",".join(
    [
        "serviceaccount-token",
        "serviceaccount",
        "namespace",
        "garbagecollector",
        "clusterrole-aggregation",
        "deployment",
        "replicaset",
        "statefulset",
        "job",
        "endpoint",
        "endpointslice",
        "disruption",
        "podgc",
        "nodelifecycle",
    ]
)
#: How long the node may take to report Ready; generous because CI machines have 2 cores.
READY_TIMEOUT_S = 180.0


def run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kw)


def external_interface() -> str:
    """The interface of the default route: the one nothing from the node may leave through."""
    routes = json.loads(run("ip", "-j", "route", "show", "default").stdout or "[]")
    if not routes:
        raise ControlPlaneError("no default route: cannot tell the external interface for the egress guard")
    return routes[0]["dev"]


def docker(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """The node's docker CLI (Debian's, the daemon's own version), talking to the node's daemon only."""
    return run(DOCKER_BIN, "--host", f"unix://{DOCKER_SOCKET}", *argv, check=check)


@dataclass
class EgressGuard:
    """iptables rules that keep the node's traffic on this machine (see the module docstring)."""

    external: str
    api_port: int
    kubelet_port: int

    def rules(self) -> list[tuple[str, list[str]]]:
        """(chain, rule) pairs in order; the guard chain is jumped to first from INPUT and FORWARD."""
        forward = [
            ["-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"],
            ["-i", BRIDGE, "-o", SITE_LINK, "-j", "ACCEPT"],
            ["-i", SITE_LINK, "-o", BRIDGE, "-j", "ACCEPT"],
            ["-i", BRIDGE, "-j", "DROP"],
            ["-o", BRIDGE, "-j", "DROP"],
            # NB: the site's own namespace has only this link; nothing it sends goes further either.
            ["-i", SITE_LINK, "-j", "DROP"],
        ]
        inbound = [
            ["-i", self.external, "-p", "tcp", "--dport", str(port), "-j", "DROP"]
            for port in (self.api_port, self.kubelet_port)
        ]
        return [(f"{GUARD}-FWD", r) for r in forward] + [(f"{GUARD}-IN", r) for r in inbound]

    def install(self) -> None:
        self.remove()
        for chain, parent in ((f"{GUARD}-FWD", "FORWARD"), (f"{GUARD}-IN", "INPUT")):
            run("iptables", "-t", GUARD_TABLE, "-N", chain)
            run("iptables", "-t", GUARD_TABLE, "-I", parent, "1", "-j", chain)
        for chain, rule in self.rules():
            run("iptables", "-t", GUARD_TABLE, "-A", chain, *rule)
        # NB: the bridge has no IPv6 addresses, but a pod could still try link-local routes out.
        run("ip6tables", "-t", GUARD_TABLE, "-I", "FORWARD", "1", "-i", BRIDGE, "-j", "DROP", check=False)

    @staticmethod
    def remove() -> None:
        for chain, parent in ((f"{GUARD}-FWD", "FORWARD"), (f"{GUARD}-IN", "INPUT")):
            while run("iptables", "-t", GUARD_TABLE, "-D", parent, "-j", chain, check=False).returncode == 0:
                pass
            run("iptables", "-t", GUARD_TABLE, "-F", chain, check=False)
            run("iptables", "-t", GUARD_TABLE, "-X", chain, check=False)
        drop6 = ("-t", GUARD_TABLE, "-D", "FORWARD", "-i", BRIDGE, "-j", "DROP")
        while run("ip6tables", *drop6, check=False).returncode == 0:
            pass


def remove_kube_chains() -> None:
    """Delete every ``KUBE-*`` chain and every jump to one, in all tables, IPv4 and IPv6."""
    for tool in ("iptables", "ip6tables"):
        for table in ("filter", "nat", "mangle"):
            listing = run(tool, "-t", table, "-S", check=False).stdout.splitlines()
            for line in listing:
                words = shlex.split(line)
                if words[:1] == ["-A"] and not words[1].startswith("KUBE-") and "KUBE-" in line:
                    run(tool, "-t", table, "-D", *words[1:], check=False)
            chains = [line.split()[1] for line in listing if line.startswith("-N KUBE-")]
            for chain in chains:
                run(tool, "-t", table, "-F", chain, check=False)
            for chain in chains:
                run(tool, "-t", table, "-X", chain, check=False)


def service_hosts(services: list) -> str:
    """dnsmasq hosts lines for ClusterIP Services: ``IP name.ns.svc.cluster.local name.ns.svc name.ns``."""
    lines = []
    for svc in services:
        ip = svc.spec.cluster_ip
        if not ip or ip == "None":
            continue
        name, ns = svc.metadata.name, svc.metadata.namespace
        lines.append(f"{ip} {name}.{ns}.svc.{CLUSTER_DOMAIN} {name}.{ns}.svc {name}.{ns}")
    return "\n".join(sorted(lines)) + "\n"


@dataclass
class Node:
    """A running single-node cluster. ``plane`` is the control plane (same API as apiserver.py's)."""

    workdir: Path
    bin_dir: Path
    plane: ControlPlane | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    guard: EgressGuard | None = None
    image_tag: str = ""
    _stop_watch: threading.Event = field(default_factory=threading.Event)
    _watcher: threading.Thread | None = None
    _ip_forward: str = "0"

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> Node:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._bridge_up()
        self._ip_forward = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
        self._start_docker()
        self._import_pause()
        self.image_tag = self._build_images()
        kubelet_port = 10250
        self.plane = ControlPlane(
            workdir=self.workdir / "plane",
            bin_dir=self.bin_dir,
            address=NODE_ADDRESS,
            controllers=CONTROLLERS,
            apiserver_args=[
                "--kubelet-client-certificate",
                str(self.workdir / "plane" / "pki" / "admin.crt"),
                "--kubelet-client-key",
                str(self.workdir / "plane" / "pki" / "admin.key"),
                "--service-node-port-range",
                NODE_PORT_RANGE,
                # NB: the node's name is not in any resolver; logs and exec dial its address instead.
                "--kubelet-preferred-address-types",
                "InternalIP",
            ],
        )
        self.plane.start()
        self.guard = EgressGuard(
            external=external_interface(),
            api_port=int(self.plane.server.rsplit(":", 1)[1]),
            kubelet_port=kubelet_port,
        )
        self.guard.install()
        self._start_dns()
        self._start_scheduler()
        self._start_kube_proxy()
        self._start_kubelet(kubelet_port)
        self._watcher = threading.Thread(target=self._watch, name="node-dns-hairpin", daemon=True)
        self._watcher.start()
        self.wait_ready()
        return self

    def stop(self) -> None:
        """Tear down in dependency order; every step runs even when an earlier one failed."""
        self._stop_watch.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        for name in ("kubelet", "kube-scheduler"):
            self._terminate(name)
        with contextlib.suppress(Exception):
            ids = docker("ps", "-aq").stdout.split()
            if ids:
                docker("rm", "-f", *ids, check=False)
        self._terminate("kube-proxy")
        # NB: kube-proxy's own clean-up removes its KUBE-* chains; the kubelet's (KUBE-FIREWALL, which
        # drops non-loopback traffic to 127.0.0.0/8, marks, canaries) stay unless removed by hand.
        run(str(self.bin_dir / "kube-proxy"), "--cleanup", "--proxy-mode", "iptables", check=False)
        remove_kube_chains()
        self._terminate("dnsmasq")
        shutil.rmtree(DNS_DIR, ignore_errors=True)
        if self.plane is not None:
            self.plane.stop()
        self._terminate("dockerd")
        self._unmount(self.workdir / "kubelet")
        EgressGuard.remove()
        Path("/proc/sys/net/ipv4/ip_forward").write_text(f"{self._ip_forward}\n")
        run("ip", "link", "del", BRIDGE, check=False)

    # --- clients ----------------------------------------------------------------------------------
    @property
    def admin_kubeconfig(self) -> Path:
        assert self.plane is not None and self.plane.admin_kubeconfig is not None
        return self.plane.admin_kubeconfig

    def client(self) -> kubernetes.client.ApiClient:
        return kubernetes.config.new_client_from_config(config_file=str(self.admin_kubeconfig))

    def wait_ready(self) -> None:
        core = kubernetes.client.CoreV1Api(self.client())
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(kubernetes.client.ApiException):
                node = core.read_node(NODE_NAME)
                if any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or []):
                    return
            time.sleep(0.5)
        tail = self.log_tail("kubelet")
        raise ControlPlaneError(f"node {NODE_NAME} not Ready after {READY_TIMEOUT_S:.0f} s:\n{tail}")

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # --- pieces -----------------------------------------------------------------------------------
    def _bridge_up(self) -> None:
        if run("ip", "link", "show", BRIDGE, check=False).returncode != 0:
            run("ip", "link", "add", BRIDGE, "type", "bridge")
        prefix = ipaddress.ip_network(POD_CIDR).prefixlen
        run("ip", "addr", "replace", f"{NODE_ADDRESS}/{prefix}", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 -- owned by the child until stop()
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, "GOMAXPROCS": "2", **(env or {})},
            start_new_session=True,
        )
        self.processes[name] = proc
        return proc

    def _terminate(self, name: str) -> None:
        proc = self.processes.pop(name, None)
        if proc is None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                raise ControlPlaneError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")

    def _start_docker(self) -> None:
        DOCKER_RUN.mkdir(parents=True, exist_ok=True)
        DOCKER_ROOT.mkdir(parents=True, exist_ok=True)
        stale = DOCKER_RUN / "docker.pid"
        if stale.exists():
            raise ControlPlaneError(f"{stale} exists: another node's dockerd runs (or died); stop it first")
        self._spawn(
            "dockerd",
            [
                "/usr/sbin/dockerd",
                "--host", f"unix://{DOCKER_SOCKET}",
                "--data-root", str(DOCKER_ROOT),
                "--exec-root", str(DOCKER_RUN / "exec"),
                "--pidfile", str(stale),
                "--bridge", BRIDGE,
                # NB: the node's iptables are kube-proxy's and the guard's; docker adds none (no NAT out).
                "--iptables=false",
                "--ip-masq=false",
                "--storage-driver", "overlay2",
                "--exec-opt", "native.cgroupdriver=cgroupfs",
            ],
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while docker("info", check=False).returncode != 0:
            self._check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"dockerd did not answer:\n{self.log_tail('dockerd')}")
            time.sleep(0.5)

    def _import_pause(self) -> None:
        if docker("image", "inspect", PAUSE_IMAGE, check=False).returncode == 0:
            return
        tar = self.workdir / "pause.tar"
        with tarfile.open(tar, "w") as out:
            out.add(self.bin_dir / "pause", arcname="pause")
        docker("import", "--change", 'ENTRYPOINT ["/pause"]', str(tar), PAUSE_IMAGE)

    def _build_images(self) -> str:
        """Build the fedattn images into the node's dockerd with scripts/build-images.sh (its layer cache
        makes a rebuild of unchanged code quick); returns their tag."""
        work = DOCKER_ROOT.parent / "images"
        with open(self.workdir / "build-images.log", "wb") as log:
            done = subprocess.run(
                ["bash", str(REPO / "scripts" / "build-images.sh")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "DOCKER_HOST": f"unix://{DOCKER_SOCKET}", "FEDATTN_IMAGE_WORK": str(work)},
            )
        if done.returncode != 0:
            raise ControlPlaneError(f"scripts/build-images.sh failed:\n{self.log_tail('build-images')}")
        return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]

    def _start_dns(self) -> None:
        hosts = DNS_DIR
        hosts.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "dnsmasq",
            [
                "/usr/sbin/dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",  # NB: no upstream: a name that is not a Service stays unanswered here
                "--no-hosts",
                f"--hostsdir={hosts}",
                f"--listen-address={NODE_ADDRESS}",
                "--bind-interfaces",
                "--except-interface=lo",
                f"--local=/{CLUSTER_DOMAIN}/",
                "--local=/svc/",
                f"--pid-file={self.workdir / 'dnsmasq.pid'}",
                "--log-facility=-",
            ],
        )
        resolv = self.workdir / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_ADDRESS}\n")

    def _start_scheduler(self) -> None:
        assert self.plane is not None
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                "--kubeconfig", str(self.admin_kubeconfig),
                "--leader-elect=false",
                "--port", "0",
                "--bind-address", "127.0.0.1",
                "--secure-port", str(free_port()),
                "--profiling=false",
            ],
        )  # fmt: skip

    def _start_kube_proxy(self) -> None:
        self._spawn(
            "kube-proxy",
            [
                str(self.bin_dir / "kube-proxy"),
                "--kubeconfig", str(self.admin_kubeconfig),
                "--proxy-mode", "iptables",
                "--hostname-override", NODE_NAME,
                "--bind-address", NODE_ADDRESS,
                "--cluster-cidr", POD_CIDR,
                "--nodeport-addresses", ",".join(NODE_PORT_CIDRS),
                "--oom-score-adj", "0",
                # NB: 0 leaves the machine's conntrack table size alone (it is not ours to change).
                "--conntrack-max-per-core", "0",
                "--healthz-bind-address", f"127.0.0.1:{free_port()}",
                "--metrics-bind-address", f"127.0.0.1:{free_port()}",
            ],
        )  # fmt: skip

    def _start_kubelet(self, port: int) -> None:
        assert self.plane is not None
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_ADDRESS,
            "port": port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self.workdir / "plane" / "pki" / "ca.crt")},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "clusterDNS": [NODE_ADDRESS],
            "clusterDomain": CLUSTER_DOMAIN,
            "resolvConf": str(self.workdir / "resolv.conf"),
            "failSwapOn": False,
            "hairpinMode": "hairpin-veth",
            "serializeImagePulls": False,
            # NB: the machine is shared; evict only when it is really out of room, never images.
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "staticPodPath": "",
        }
        path = self.workdir / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                "--config", str(path),
                "--kubeconfig", str(self.admin_kubeconfig),
                "--container-runtime", "docker",
                "--docker-endpoint", f"unix://{DOCKER_SOCKET}",
                "--pod-infra-container-image", PAUSE_IMAGE,
                "--root-dir", str(self.workdir / "kubelet"),
                "--cert-dir", str(self.workdir / "kubelet-pki"),
                "--hostname-override", NODE_NAME,
                "--node-ip", NODE_ADDRESS,
                "--oom-score-adj", "0",
            ],
            # NB: otherwise the v1.20 kubelet probes a cloud metadata address at start.
            env={"AWS_EC2_METADATA_DISABLED": "true"},
        )  # fmt: skip

    def _watch(self) -> None:
        """Keep dnsmasq's hosts file equal to the Services, and hairpin mode on every bridge port (a pod
        that dials its own Service is routed back to itself)."""
        core = kubernetes.client.CoreV1Api(self.client())
        hosts = DNS_DIR / "services"
        staged = DOCKER_RUN / "services.tmp"
        last = ""
        while not self._stop_watch.is_set():
            with contextlib.suppress(Exception):
                text = service_hosts(core.list_service_for_all_namespaces().items)
                if text != last:
                    staged.write_text(text)
                    staged.replace(hosts)  # NB: atomic, dnsmasq never reads half a file
                    last = text
            for flag in Path(f"/sys/class/net/{BRIDGE}/brif").glob("*/hairpin_mode"):
                with contextlib.suppress(OSError):
                    if flag.read_text().strip() != "1":
                        flag.write_text("1\n")
            self._stop_watch.wait(0.5)

    @staticmethod
    def _unmount(root: Path) -> None:
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(root))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            run("umount", "-l", mount, check=False)


def start_node(*, workdir: Path) -> Node:
    """Build what is missing (binaries, images) and start a node under ``workdir``."""
    node = Node(workdir=workdir, bin_dir=build_binaries(node=True))
    try:
        node.start()
    except BaseException:
        node.stop()
        raise
    return node
