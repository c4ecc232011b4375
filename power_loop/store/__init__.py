"""The SQLite session store.

:class:`SQLiteSessionStore` (0.11 name: ``SessionStore``) keeps every session in one SQLite
file through ``aiosqlite``: each call is one transaction in one hop on the connection's worker
thread. The row types returned by its read methods are here too.
"""

from __future__ import annotations

from .rows import PendingCall, PendingState, SessionRow, SessionStatsRow, StoredMessage, TimerRow
from .schema import LATEST_VERSION
from .sqlite import DEFAULT_DB_PATH, SessionStore, SQLiteSessionStore

__all__ = [
    "DEFAULT_DB_PATH",
    "LATEST_VERSION",
    "PendingCall",
    "PendingState",
    "SQLiteSessionStore",
    "SessionRow",
    "SessionStatsRow",
    "SessionStore",
    "StoredMessage",
    "TimerRow",
]
