"""The SQLite adapter's transaction: a :class:`~power_loop.store.protocols.Tx` over one
``sqlite3.Connection``.

Rows come back as ``sqlite3.Row`` (readable by column name and by position), set per cursor
so the connection itself keeps returning tuples to anyone else using it. Opening and ending
the transaction (``BEGIN IMMEDIATE``/``COMMIT``) is :func:`transaction`'s business, not this
class's.

The rules use ``UPDATE ... RETURNING`` (SQLite 3.35 and later, PostgreSQL). On an older
SQLite the statement runs as the ``UPDATE`` followed by a ``SELECT`` of the returned columns
with the same ``WHERE``, in the same transaction: the rules only return from updates that
match the row by its key, which the update does not change.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, TypeVar

from ._pragmas import rollback

__all__ = ["SQLiteTx", "transaction"]

T = TypeVar("T")

_RETURNING = " RETURNING "


class _Holder:
    __slots__ = ("_cursor",)

    def __init__(self) -> None:
        self._cursor = object()


def _unshared_refs() -> int:
    """``sys.getrefcount`` of an object referred to only as :meth:`SQLiteTx._free_cursor`
    refers to its cursor (an attribute and a local name), measured the same way: the count
    differs across Python versions, which borrow some references."""
    holder = _Holder()
    cursor = holder._cursor
    return sys.getrefcount(cursor)


_UNSHARED_REFS = _unshared_refs()


class SQLiteTx:
    """One transaction's statements on ``conn`` (the connection's own thread only)."""

    __slots__ = ("_cursor", "conn")

    dialect: ClassVar[str] = "sqlite"

    native_returning: ClassVar[bool] = sqlite3.sqlite_version_info >= (3, 35, 0)
    """Whether this SQLite runs ``UPDATE ... RETURNING`` itself."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._cursor: sqlite3.Cursor | None = None

    def _free_cursor(self) -> sqlite3.Cursor:
        """A cursor for the next statement: the last one when its caller has let go of it.

        Every new cursor is also a weak reference the connection keeps until it has made 200
        more, so a transaction of a few statements would leave a dozen objects for the garbage
        collector each time. A cursor nobody else references (CPython's reference count: this
        transaction's own, the local name and the call's argument) holds no result anyone
        will read, so it is reused; one a caller still holds (it iterates the rows, or keeps
        the cursor for its ``rowcount``) is left alone.
        """
        cursor = self._cursor
        if cursor is None or sys.getrefcount(cursor) > _UNSHARED_REFS:
            cursor = self._cursor = self.conn.cursor()
            cursor.row_factory = sqlite3.Row
        return cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """Run one statement; its rows read by column name."""
        if not self.native_returning and _RETURNING in sql:
            if not sql.lstrip().upper().startswith("UPDATE "):
                raise sqlite3.NotSupportedError(
                    f"SQLite {sqlite3.sqlite_version} has no RETURNING; only UPDATE ... RETURNING is emulated"
                )
            return self._update_returning(sql, params)
        return self._free_cursor().execute(sql, params)

    def _update_returning(self, sql: str, params: Sequence[Any]) -> sqlite3.Cursor:
        """``UPDATE t SET ... WHERE w RETURNING c`` as the update, then ``SELECT c FROM t WHERE w``
        (the parameters of ``c``, then those of ``w``)."""
        update, columns = sql.rsplit(_RETURNING, 1)
        table = update.split()[1]
        where = update.rsplit(" WHERE ", 1)[1]
        values = list(params)
        in_columns = columns.count("?")
        update_params = values[: len(values) - in_columns]
        self.conn.execute(update, update_params)
        where_params = update_params[len(update_params) - where.count("?") :]
        cursor = self.conn.cursor()
        cursor.row_factory = sqlite3.Row
        select_params = values[len(values) - in_columns :] + where_params if in_columns else where_params
        return cursor.execute(f"SELECT {columns} FROM {table} WHERE {where}", select_params)

    def executemany(self, sql: str, params: Iterable[Sequence[Any]]) -> sqlite3.Cursor:
        """Run one statement once per parameter tuple."""
        return self.conn.executemany(sql, params)


def transaction(conn: sqlite3.Connection, fn: Callable[[SQLiteTx], T]) -> T:
    """Run ``fn`` in a ``BEGIN IMMEDIATE`` transaction: commit on success, roll back on error
    (a failed ``COMMIT`` included).

    ``IMMEDIATE`` takes SQLite's write lock at once, so a transaction never fails half-way
    on a lock upgrade; the rules do not depend on it for correctness (see ``protocols.py``).
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(SQLiteTx(conn))
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        raise
    return result
