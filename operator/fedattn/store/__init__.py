"""Persistence for sessions, participants, rounds, contributions and audit events.

PostgreSQL (psycopg 3, pooled) or SQLite (local mode) behind one async :class:`Store`; a DSN picks
the backend. Usage::

    store = await open_store("postgresql://..." or "sqlite:////abs/path.db")
    await store.record_contribution(Contribution(...))   # resolves once committed
    await store.close()
"""

from fedattn.store.rows import Contribution, Event, ParticipantRow, RoundRow, SessionRow
from fedattn.store.store import Store, backend_for, open_store
from fedattn.store.writer import StoreUnavailable

__all__ = [
    "Contribution",
    "Event",
    "ParticipantRow",
    "RoundRow",
    "SessionRow",
    "Store",
    "StoreUnavailable",
    "backend_for",
    "open_store",
]
