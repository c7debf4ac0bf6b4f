"""SQLite backend for local mode: stdlib ``sqlite3`` in WAL mode behind the same async interface.

One connection, used from a worker thread under a lock; every call is a short transaction, so the
event loop never waits on disk. ``BEGIN IMMEDIATE`` takes the write lock up front, which is what
makes two processes migrating the same file at once safe (the second waits on ``busy_timeout``).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tenacity

from fedattn.store.backend import SCHEMA_MIGRATIONS, Op, Params, pending
from fedattn.store.migrations import Migration

T = TypeVar("T")


def _portable(sql: str) -> str:
    return sql.replace("%s", "?")


class SqliteBackend:
    name = "sqlite"

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 30.0) -> None:
        self.path = path
        self._busy_ms = int(busy_timeout_seconds * 1000)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {self._busy_ms}")
        # NB: switching a fresh file to WAL while another connection opens it can fail with "database is
        # locked" at once, without waiting on busy_timeout; so retry it for as long as busy_timeout.
        for attempt in tenacity.Retrying(
            stop=tenacity.stop_after_delay(self._busy_ms / 1000),
            wait=tenacity.wait_random(0.01, 0.05),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, sqlite3.OperationalError) and "locked" in str(e)),
            reraise=True,
        ):
            with attempt:
                conn.execute("PRAGMA journal_mode = WAL")
        # NB: NORMAL in WAL mode keeps every commit across a process crash (not across power loss).
        conn.execute("PRAGMA synchronous = FULL")  # NB: an acknowledged commit survives a power cut too
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._conn is None:
                    raise sqlite3.OperationalError("store is closed")
                return fn(self._conn)

        return await asyncio.to_thread(locked)

    async def open(self) -> None:
        self._conn = await asyncio.to_thread(self._connect)

    @staticmethod
    def _transaction(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = body(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        def body(conn: sqlite3.Connection) -> list[int]:
            conn.execute(SCHEMA_MIGRATIONS)
            todo = pending(migrations, {r[0] for r in conn.execute("SELECT version FROM schema_migrations")})
            for migration in todo:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
            return [m.version for m in todo]

        return await self._call(lambda conn: self._transaction(conn, body))

    async def execute(self, ops: Sequence[Op]) -> None:
        def body(conn: sqlite3.Connection) -> None:
            for sql, params in ops:
                conn.execute(_portable(sql), tuple(params))

        await self._call(lambda conn: self._transaction(conn, body))

    async def fetch(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        return await self._call(lambda conn: conn.execute(_portable(sql), tuple(params)).fetchall())

    def is_transient(self, exc: BaseException) -> bool:
        # NB: "database is locked" / "disk I/O error" may pass; constraint or syntax errors will not.
        return isinstance(exc, sqlite3.OperationalError)

    async def close(self) -> None:
        def shut() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(shut)
