"""A site outside the cluster, on this machine: a network namespace linked to the host by one veth pair.

The site sees exactly one address, the host end of its link (``NODE_SIDE``), which is where kube-proxy
opens the node ports (node.py ``NODE_PORT_CIDRS``); it has no route to the pod network, to the Service
network or anywhere else, and the egress guard drops anything it might try to forward. A participant
run in it with ``fedattn participant`` is as far outside the cluster as a process on this machine gets.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from node import SITE_CIDR, SITE_LINK, run

NETNS = "fedattn-site"
#: the host end of the link: "the node's address" as the site sees it
NODE_SIDE = str(next(ipaddress.ip_network(SITE_CIDR).hosts()))
SITE_SIDE = str(list(ipaddress.ip_network(SITE_CIDR).hosts())[1])
PEER = "fasite1"


@dataclass
class Site:
    """The namespace exists between ``up()`` and ``down()``."""

    def up(self) -> Site:
        self.down()
        prefix = ipaddress.ip_network(SITE_CIDR).prefixlen
        run("ip", "netns", "add", NETNS)
        run("ip", "link", "add", SITE_LINK, "type", "veth", "peer", "name", PEER)
        run("ip", "link", "set", PEER, "netns", NETNS)
        run("ip", "addr", "add", f"{NODE_SIDE}/{prefix}", "dev", SITE_LINK)
        run("ip", "link", "set", SITE_LINK, "up")
        run("ip", "netns", "exec", NETNS, "ip", "addr", "add", f"{SITE_SIDE}/{prefix}", "dev", PEER)
        run("ip", "netns", "exec", NETNS, "ip", "link", "set", PEER, "up")
        run("ip", "netns", "exec", NETNS, "ip", "link", "set", "lo", "up")
        return self

    @staticmethod
    def down() -> None:
        run("ip", "link", "del", SITE_LINK, check=False)
        run("ip", "netns", "del", NETNS, check=False)

    def popen(self, argv: list[str], *, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` inside the site's namespace, output to ``log``."""
        with open(log, "wb") as out:
            return subprocess.Popen(
                ["ip", "netns", "exec", NETNS, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )
