"""The SQLite session store.

:class:`SQLiteSessionStore` (0.11 name: ``SessionStore``) keeps every session in one SQLite
file through ``aiosqlite``: each call is one transaction in one hop on the connection's worker
thread. The row types returned by its read methods, 0.11's enums and the message sinks are
here too.
"""

from __future__ import annotations

from ._compat import UnsupportedStoreCallError
from .rows import (
    CompactionRow,
    MessageRow,
    MessageState,
    PendingCall,
    PendingState,
    SessionKind,
    SessionRow,
    SessionStateRow,
    SessionStatsRow,
    SessionStatus,
    StoredMessage,
    TimerRow,
)
from .schema import LATEST_VERSION
from .sinks import MessageSink, NullSink, SQLiteSink
from .sqlite import DEFAULT_DB_PATH, SessionStore, SQLiteSessionStore

__all__ = [
    "DEFAULT_DB_PATH",
    "LATEST_VERSION",
    "CompactionRow",
    "MessageRow",
    "MessageSink",
    "MessageState",
    "NullSink",
    "PendingCall",
    "PendingState",
    "SQLiteSessionStore",
    "SQLiteSink",
    "SessionKind",
    "SessionRow",
    "SessionStateRow",
    "SessionStatsRow",
    "SessionStatus",
    "SessionStore",
    "StoredMessage",
    "TimerRow",
    "UnsupportedStoreCallError",
]
