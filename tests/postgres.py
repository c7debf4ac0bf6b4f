"""A throwaway PostgreSQL server for tests: initdb into a temp dir, start on a free loopback port.

Real PostgreSQL, not a stand-in, so the store's SQL, pool and reconnect behaviour are what runs in
production. initdb refuses to run as root, so as root every server command runs as the ``postgres``
system user (created by Debian's package) over a data dir chowned to it; as any other user it runs
directly. The server can be stopped and started again on the same port (outage tests).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

MISSING = (
    "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH or in /usr/lib/postgresql/*/bin; "
    "run `scripts/bootstrap.sh --test` (it installs Debian's postgresql package)"
)


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).parent
    # NB: Debian keeps server binaries off PATH; prefer the newest major version.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One PostgreSQL cluster in a temp dir; ``dsn(db)`` gives a loopback TCP DSN as superuser."""

    def __init__(self, *, bin_dir: Path, root: Path | None = None) -> None:
        self.bin_dir = bin_dir
        self.root = Path(root or tempfile.mkdtemp(prefix="fedattn-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.log = self.root / "server.log"
        self.port = _free_port()
        self._run_as = "postgres" if os.geteuid() == 0 else None

    def _cmd(self, *args: str) -> None:
        argv = [str(self.bin_dir / args[0]), *args[1:]]
        if self._run_as:
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            detail = f"{done.stderr}{done.stdout}\n{log}"
            raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {detail}")

    def init(self) -> None:
        self.sockets.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            user = pwd.getpwnam(self._run_as)
            self.root.chmod(0o755)
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        data, log = str(self.data), str(self.log)
        self._cmd("pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def running(self) -> bool:
        argv = [str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "status"]
        if self._run_as:
            argv = ["runuser", "-u", self._run_as, "--", *argv]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; returns its DSN."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def destroy(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
