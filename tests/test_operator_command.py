"""``fedattn operator`` as a real process against the emulated API: kubeconfig login, /healthz,
/metrics with reconcile timings, children created, clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import kmock
import yaml
from kubernetes import client

from fedattn.operator.kube import Kube
from operator_cluster import ApiServer, declare, eventually, names_of, seeded


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulator",
                "clusters": [{"name": "emulator", "cluster": {"server": url}}],
                "users": [{"name": "operator", "user": {"token": "not-checked-by-the-emulator"}}],
                "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "operator"}}],
            }
        )
    )
    return path


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


async def test_operator_process_serves_health_and_metrics_and_reconciles(tmp_path: Path) -> None:
    async with ApiServer() as emulator, kmock.Server(emulator) as server:
        declare(emulator)
        port = _free_port()
        env = {
            **os.environ,
            "KUBECONFIG": str(_kubeconfig(tmp_path / "kubeconfig", str(server.url))),
            "FEDATTN_COORDINATOR_IMAGE": "registry.example/fedattn-coordinator:1",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fedattn.cli",
                "operator",
                "--namespace=default",
                f"--health-address=127.0.0.1:{port}",
                "--poll-seconds=0.2",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            await eventually(lambda: _get(f"{base}/healthz")[0] == 200, attempts=600, step=0.05)
            kube = Kube(client.ApiClient(client.Configuration(host=str(server.url))))
            await kube.apply(seeded("FedSession", "proc", {"mode": "learning"}))
            await eventually(
                lambda: names_of(emulator, "apps/v1/deployments") == {"proc-coordinator", "proc-aggregator"},
                attempts=600,
                step=0.05,
            )
            coordinator = emulator.objects[kmock.resource("apps/v1/deployments"), "default", "proc-coordinator"]
            assert coordinator.raw["spec"]["template"]["spec"]["containers"][0]["image"] == (
                "registry.example/fedattn-coordinator:1"
            )
            reconciled = re.compile(
                r'fedattn_operator_reconcile_duration_seconds_count\{handler="reconcile",resource="fedsessions"\} (\d+)'
            )

            def metrics_show_the_session() -> bool:
                code, text = _get(f"{base}/metrics")
                count = reconciled.search(text)
                return (
                    code == 200
                    and bool(count)
                    and int(count.group(1)) >= 1
                    and ('fedattn_operator_sessions{phase="Pending"} 1.0' in text)
                )

            await eventually(metrics_show_the_session, attempts=600, step=0.05)  # NB: 30 s: a loaded CI machine
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
        assert proc.returncode == 0, out.decode()[-3000:]
        lines = [yaml.safe_load(line) for line in out.decode().splitlines() if line.startswith("{")]
        assert any(entry.get("component") == "operator" and entry.get("session") == "proc" for entry in lines)
