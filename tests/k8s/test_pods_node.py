"""The node itself: what the pod suite relies on and what keeps its traffic on this machine."""

from __future__ import annotations

import kubernetes
from in_pods import exec_in
from node import BRIDGE, GUARD, GUARD_TABLE, Node, run
from release import Release

RESOLVE = (
    "import socket, sys\n"
    "for name in sys.argv[1:]:\n"
    "    try:\n"
    "        print(name, socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)[0][4][0])\n"
    "    except OSError as exc:\n"
    "        print(name, 'unresolved', type(exc).__name__)\n"
)


def test_the_egress_guard_comes_first_and_drops_what_leaves_the_bridge(node: Node) -> None:
    forward = run("iptables", "-t", GUARD_TABLE, "-S", "FORWARD").stdout.splitlines()
    inbound = run("iptables", "-t", GUARD_TABLE, "-S", "INPUT").stdout.splitlines()
    assert forward[1] == f"-A FORWARD -j {GUARD}-FWD", forward
    assert inbound[1] == f"-A INPUT -j {GUARD}-IN", inbound
    rules = run("iptables", "-t", GUARD_TABLE, "-S", f"{GUARD}-FWD").stdout
    assert f"-A {GUARD}-FWD -i {BRIDGE} -j DROP" in rules
    assert f"-A {GUARD}-FWD -o {BRIDGE} -j DROP" in rules


def test_pods_resolve_service_names_and_nothing_else(node: Node, pod_release: Release) -> None:
    """The operator pod's resolver is the node's dnsmasq: Services resolve to their ClusterIP, outside
    names do not resolve at all (no upstream), so a pod cannot even name another machine."""
    api = node.client()
    core = kubernetes.client.CoreV1Api(api)
    pod = core.list_namespaced_pod(pod_release.namespace, label_selector="app.kubernetes.io/component=operator")
    name = next(p.metadata.name for p in pod.items if p.status.phase == "Running")
    service = core.read_namespaced_service("kubernetes", "default")
    out = exec_in(
        api,
        namespace=pod_release.namespace,
        pod=name,
        command=["python", "-c", RESOLVE, "kubernetes.default.svc", "deb.debian.org"],
    )
    lines = dict(line.split(" ", 1) for line in out.strip().splitlines())
    assert lines["kubernetes.default.svc"] == service.spec.cluster_ip, out
    assert lines["deb.debian.org"].startswith("unresolved"), out
