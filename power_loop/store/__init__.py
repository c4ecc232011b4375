"""The session stores.

:class:`SQLiteSessionStore` (0.11 name: ``SessionStore``) keeps every session in one SQLite
file through ``aiosqlite``: each call is one transaction in one hop on the connection's worker
thread. :class:`~power_loop.store.postgres.PostgresSessionStore` keeps them in PostgreSQL for
services running many processes on many machines (``pip install "power-loop[postgres]"``).
:func:`open_store` picks one from a URL. The row types returned by their read methods, 0.11's
enums and the message sinks are here too.
"""

from __future__ import annotations

from ._compat import UnsupportedStoreCallError
from ._inspect_rows import (
    HealthFinding,
    HealthReport,
    PruneReport,
    RunOverview,
    SessionOverview,
    TimersReport,
    TranscriptEntry,
)
from .factory import DB_URL_ENV, open_store
from .postgres import PostgresSessionStore
from .rows import (
    CompactionRow,
    EventRecord,
    MessageRow,
    MessageState,
    PendingCall,
    PendingState,
    RunRecord,
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
    "DB_URL_ENV",
    "DEFAULT_DB_PATH",
    "LATEST_VERSION",
    "CompactionRow",
    "EventRecord",
    "HealthFinding",
    "HealthReport",
    "MessageRow",
    "MessageSink",
    "MessageState",
    "NullSink",
    "PendingCall",
    "PendingState",
    "PruneReport",
    "RunOverview",
    "PostgresSessionStore",
    "RunRecord",
    "SQLiteSessionStore",
    "SQLiteSink",
    "SessionKind",
    "SessionOverview",
    "SessionRow",
    "SessionStateRow",
    "SessionStatsRow",
    "SessionStatus",
    "SessionStore",
    "StoredMessage",
    "TimerRow",
    "TimersReport",
    "TranscriptEntry",
    "UnsupportedStoreCallError",
    "open_store",
]
