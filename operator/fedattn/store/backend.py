"""What the store needs from a database: run a batch of writes in one transaction, run a query,
apply migrations under a lock, and tell a transient failure (retry it) from a permanent one.

Queries are written once, with ``%s`` placeholders (psycopg's style); the SQLite backend rewrites
them to ``?``. That is the whole difference between the dialects we use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from fedattn.store.migrations import Migration

Params = Sequence[Any]
Op = tuple[str, Params]

SCHEMA_MIGRATIONS = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)"
)


class Backend(Protocol):
    #: ``postgresql`` or ``sqlite``
    name: str

    async def open(self) -> None: ...

    async def migrate(self, migrations: Sequence[Migration]) -> list[int]:
        """Apply the migrations not applied yet, atomically and one process at a time; returns
        the versions this call applied (empty when the schema was already current)."""

    async def execute(self, ops: Sequence[Op]) -> None:
        """Run the writes in order in one transaction, committed when this returns."""

    async def fetch(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]: ...

    def is_transient(self, exc: BaseException) -> bool:
        """True when retrying the same write later may succeed (connection lost, database locked)."""

    async def close(self) -> None: ...


def pending(migrations: Sequence[Migration], applied: set[int]) -> list[Migration]:
    """The migrations still to apply, refusing a database that is newer than this code."""
    known = {m.version for m in migrations}
    unknown = applied - known
    if unknown:
        raise RuntimeError(
            f"database has schema versions {sorted(unknown)} this fedattn does not know; upgrade fedattn"
        )
    return [m for m in migrations if m.version not in applied]
