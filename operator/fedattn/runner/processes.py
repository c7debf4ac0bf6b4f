"""Start the session's components as local processes on loopback and stop them all, whatever happens.

Each component is the same ``fedattn <component>`` command an image runs, so a local run exercises
exactly what a cluster would, with a fresh PKI and ports the OS hands out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Supervisor:
    """Owns child processes; :meth:`stop_all` ends them (TERM, then KILL after a grace period)."""

    logs: Path
    env: dict[str, str] = field(default_factory=dict)
    children: dict[str, Process] = field(default_factory=dict)

    def start(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> Process:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        handle = log.open("ab")
        popen = subprocess.Popen(
            [sys.executable, "-m", "fedattn.cli", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **self.env, **(env or {})},
        )
        handle.close()
        proc = Process(name=name, popen=popen, log=log, args=args, env=env)
        self.children[name] = proc
        return proc

    def restart(self, name: str) -> Process:
        """A fresh process with the same command line (e.g. after :meth:`kill`), on the same disk."""
        old = self.children[name]
        if old.alive():
            raise RuntimeError(f"{name} is still running; kill or stop it first")
        return self.start(name, old.args, env=old.env)

    def kill(self, name: str) -> None:
        """SIGKILL one child (used to simulate a crashed participant)."""
        self.children[name].popen.send_signal(signal.SIGKILL)
        self.children[name].popen.wait()

    def stop(self, name: str, *, grace_seconds: float = 10.0) -> int | None:
        proc = self.children[name].popen
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def stop_all(self, *, grace_seconds: float = 10.0) -> None:
        # NB: participants first, then the servers they talk to, so nobody logs spurious errors.
        for name in sorted(self.children, key=lambda n: n in ("coordinator", "aggregator")):
            self.stop(name, grace_seconds=grace_seconds)


@contextlib.contextmanager
def supervised(logs: Path) -> Iterator[Supervisor]:
    sup = Supervisor(logs=logs)
    try:
        yield sup
    finally:
        sup.stop_all()


def wait_ready(url: str, *, proc: Process, timeout_seconds: float = 60.0) -> None:
    """Poll a plain-HTTP readiness endpoint until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready at {url} after {timeout_seconds:.0f}s:\n{proc.tail()}")
