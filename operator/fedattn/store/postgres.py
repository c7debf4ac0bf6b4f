"""PostgreSQL backend: psycopg 3 with an async connection pool and server-side prepared statements.

Connections are autocommit and every write batch runs in an explicit transaction in pipeline mode
(one round trip for the batch). The pool checks a connection before lending it, so after a database
restart the dead connections are replaced instead of failing the first write.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from fedattn.store.backend import SCHEMA_MIGRATIONS, Op, Params, pending
from fedattn.store.migrations import Migration

#: pg_advisory_xact_lock key that serialises migrations across processes ("fedattn" in ASCII)
MIGRATION_LOCK = 0x66656461_74746E


class PostgresBackend:
    name = "postgresql"

    def __init__(self, dsn: str, *, max_connections: int = 4, connect_timeout: float = 2.0) -> None:
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=max_connections,
            open=False,
            timeout=connect_timeout,
            check=AsyncConnectionPool.check_connection,
            # NB: prepare from the second run of a query; the store repeats a handful of statements.
            kwargs={"autocommit": True, "prepare_threshold": 1, "connect_timeout": int(connect_timeout)},
        )

    async def open(self) -> None:
        await self._pool.open(wait=True)

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        async with self._pool.connection() as conn, conn.transaction():
            # NB: the lock is held until commit, so a second process waits, then sees the schema done.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            await conn.execute(SCHEMA_MIGRATIONS)
            rows = await (await conn.execute("SELECT version FROM schema_migrations")).fetchall()
            todo = pending(migrations, {r[0] for r in rows})
            for migration in todo:
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                    (migration.version, migration.name, time.time()),
                )
        return [m.version for m in todo]

    async def execute(self, ops: Sequence[Op]) -> None:
        async with self._pool.connection() as conn, conn.transaction(), conn.pipeline():
            for sql, params in ops:
                await conn.execute(sql, params)

    async def fetch(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        async with self._pool.connection() as conn:
            return await (await conn.execute(sql, params)).fetchall()

    def is_transient(self, exc: BaseException) -> bool:
        # NB: OperationalError covers lost connections and server shutdown; PoolTimeout is one.
        return isinstance(exc, psycopg.OperationalError | PoolTimeout | OSError)

    async def close(self) -> None:
        await self._pool.close()
