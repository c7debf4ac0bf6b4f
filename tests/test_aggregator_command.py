"""``fedattn aggregator`` as a real process: flags, probes, a Curve client, JSON logs, clean SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

from fedattn import pki
from fedattn.aggregator.client import AggregatorClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_serves_probes_and_curve_clients_and_stops_on_sigterm(tmp_path):
    server, alice = pki.curve_keypair(), pki.curve_keypair()
    (tmp_path / "server.curve.pub").write_bytes(server.public)
    (tmp_path / "server.curve.sec").write_bytes(server.secret)
    allow = tmp_path / "allow"
    allow.mkdir()
    (allow / "alice.curve.pub").write_bytes(alice.public)
    port, metrics_port = free_port(), free_port()
    cmd = [sys.executable, "-m", "fedattn.cli", "aggregator", "--bind", f"tcp://127.0.0.1:{port}"]
    cmd += [
        "--curve-secret",
        str(tmp_path / "server.curve.sec"),
        "--curve-public",
        str(tmp_path / "server.curve.pub"),
    ]
    cmd += ["--allow-dir", str(allow), "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics_port)]
    cmd += ["--max-message-bytes", "1048576"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert time.monotonic() < deadline, "aggregator never became ready"
            time.sleep(0.1)
        with AggregatorClient(
            endpoint=f"tcp://127.0.0.1:{port}",
            server_public=server.public,
            public=alice.public,
            secret=alice.secret,
            session="nope",
            name="alice",
            timeout_seconds=10,
        ) as client:
            reply = client.request("hello")
        assert reply.kind == "error" and reply.meta["code"] == "unknown_session"
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
            assert 'fedattn_aggregator_rejected_total{reason="unknown_session"} 1.0' in r.read().decode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        lines = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith("{")]
        rejected = [e for e in lines if e.get("reason") == "unknown_session"]
        # NB: a rejection for a session the sender is no member of is not attributed to that session (#14 item 7)
        assert rejected and rejected[0]["participant"] == "alice" and rejected[0]["session"] == "-"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
