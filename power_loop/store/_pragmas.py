"""Small connection helpers shared by the schema migrations and the 0.11-file migration.

They import nothing from the store, so both ``schema.py`` and ``_legacy.py`` can use them
without importing each other.
"""

from __future__ import annotations

import sqlite3


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's ``user_version``."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any, without masking the error being handled.

    After some faults (a full disk, an I/O error) SQLite has already rolled back, and a
    failed ``COMMIT`` leaves the transaction open; either way the caller's error is the one
    worth reporting.
    """
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
