"""``fedattn coordinator`` as a real process: DSN from the environment, probes up, clean SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from fedattn import pki

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def test_command_serves_probes_with_the_dsn_from_the_environment(tmp_path: Path):
    root = tmp_path / "pki"
    pki.write_session_pki(root, session="s", participants=["alice"], server_names=["127.0.0.1"])
    server, client = pki.Paths(root, "server"), pki.Paths(root, "coordinator-client")
    metrics_port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "operator"),
        "FEDATTN_DATABASE_DSN": f"sqlite:///{tmp_path / 'store.db'}",
    }
    options = {
        "--api-host": "127.0.0.1",
        "--api-port": "0",
        "--metrics-host": "127.0.0.1",
        "--metrics-port": str(metrics_port),
        "--tls-cert": server.cert,
        "--tls-key": server.key,
        "--tls-ca": server.ca,
        "--aggregator": f"tcp://127.0.0.1:{_free_port()}",
        "--aggregator-public-key": server.curve_public,
        "--client-curve-public": client.curve_public,
        "--client-curve-secret": client.curve_secret,
    }
    argv = [sys.executable, "-m", "fedattn.cli", "coordinator", *(str(x) for kv in options.items() for x in kv)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    try:
        while _get(f"http://127.0.0.1:{metrics_port}/healthz")[0] != 200:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        status, text = _get(f"http://127.0.0.1:{metrics_port}/readyz")
        # NB: no aggregator listens on that port: alive, but honestly not ready.
        assert status == 503 and "aggregator control link" in text
        assert (tmp_path / "store.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert '"component": "coordinator"' in stderr
