"""Reconcile N sessions x M participants with ``fedattn operator`` (a real process) on the emulated API.

Reports the time from the first object created to every child present (per session: CA, server,
operator and Curve Secrets, allowlist ConfigMap, 2 Deployments, 2 Services; per participant: its
credentials Secret and Job), the operator process's peak resident memory (VmHWM) and the CPU time
the operator itself used (the emulator runs in this process; its cost grows with its request log,
so the wall time is an upper bound on the operator's).

    .venv/bin/python benchmarks/operator_reconcile.py --sessions 100 --participants 4 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import kmock
import yaml
from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the emulator the tests use
from fedattn.operator.kube import Kube
from operator_cluster import ApiServer, declare, names_of, seeded


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as reply:
            return reply.status == 200
    except OSError:
        return False


def _expected(sessions: int, participants: int) -> dict[str, int]:
    return {
        "apps/v1/deployments": 2 * sessions,
        "v1/services": 2 * sessions,
        "batch/v1/jobs": sessions * participants,
        "v1/secrets": 4 * sessions + sessions * participants,
        "v1/configmaps": sessions,
    }


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def bench(sessions: int, participants: int, timeout_s: float, history: int) -> dict:
    async with ApiServer() as emulator, kmock.Server(emulator) as server:
        emulator.history_limit = history
        declare(emulator)
        workdir = Path(tempfile.mkdtemp(prefix="fedattn-bench-"))
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "e",
                    "clusters": [{"name": "e", "cluster": {"server": str(server.url)}}],
                    "users": [{"name": "u", "user": {"token": "t"}}],
                    "contexts": [{"name": "e", "context": {"cluster": "e", "user": "u"}}],
                }
            )
        )
        port = _free_port()
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = open(workdir / "operator.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedattn.cli",
                "operator",
                "--namespace=default",
                "--log-level=WARNING",
                f"--health-address=127.0.0.1:{port}",
                "--poll-seconds=3600",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            while not await asyncio.to_thread(_healthy, port):
                if proc.poll() is not None:
                    raise RuntimeError(f"operator exited: {(workdir / 'operator.log').read_text()[-2000:]}")
                await asyncio.sleep(0.1)
            kube = Kube(client.ApiClient(client.Configuration(host=str(server.url))))
            objs = []
            for i in range(sessions):
                name = f"bench-{i:03d}"
                objs.append(seeded("FedSession", name, {"mode": "learning", "minParticipants": participants}))
                objs += [seeded("FedParticipant", f"{name}-p{j}", {"sessionRef": name}) for j in range(participants)]
            expected = _expected(sessions, participants)
            start = time.perf_counter()
            for k in range(0, len(objs), 8):
                await asyncio.gather(*(kube.apply(o) for o in objs[k : k + 8]))
            created = time.perf_counter() - start
            while any(len(names_of(emulator, path)) < n for path, n in expected.items()):
                if time.perf_counter() - start > timeout_s:
                    have = {p: len(names_of(emulator, p)) for p in expected}
                    raise TimeoutError(f"children after {timeout_s}s: {have}, expected {expected}")
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            peak = _peak_mb(proc.pid)
            cpu = _cpu_seconds(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 60)
            log.close()
    return {
        "sessions": sessions,
        "participants_per_session": participants,
        "children": sum(expected.values()),
        "seconds_to_create_objects": round(created, 3),
        "seconds_to_all_children": round(elapsed, 3),
        "peak_mb": round(peak, 1),
        "operator_cpu_seconds": round(cpu, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--participants", type=int, default=4)
    parser.add_argument("--timeout-seconds", type=float, default=900)
    parser.add_argument("--history", type=int, default=64, help="emulator request log window (see ApiServer)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(bench(args.sessions, args.participants, args.timeout_seconds, args.history))
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
