"""The SQLite adapter's transaction: a :class:`~power_loop.store.protocols.Tx` over one
``sqlite3.Connection``.

Rows come back as ``sqlite3.Row`` (readable by column name and by position), set per cursor
so the connection itself keeps returning tuples to anyone else using it. Opening and ending
the transaction (``BEGIN IMMEDIATE``/``COMMIT``) is the store's business, not this class's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["SQLiteTx"]


class SQLiteTx:
    """One transaction's statements on ``conn`` (the connection's own thread only)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement; its rows read by column name."""
        cursor = self.conn.cursor()
        cursor.row_factory = sqlite3.Row
        return cursor.execute(sql, params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        """Run one statement once per parameter tuple."""
        return self.conn.executemany(sql, params)
