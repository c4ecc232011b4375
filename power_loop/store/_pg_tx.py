"""The PostgreSQL adapter's transaction: a :class:`~power_loop.store.protocols.Tx` over one
psycopg 3 connection.

The rules write ``?`` for a parameter; psycopg takes ``%s``. :func:`to_pg` rewrites a
statement once (cached): every ``?`` outside a quoted literal or identifier becomes ``%s`` and
every ``%`` is doubled. It knows plain ``'...'`` and ``"..."`` quoting only: in a statement
with a comment, an ``E'...'`` string or a dollar-quoted string, no ``?`` may follow one of
them (the rules use none of these). Booleans are bound as integers (the schema keeps flags in
``BIGINT`` columns, as SQLite does). Rows read by column name and by position, like
``sqlite3.Row``.

This module imports no psycopg: the connection is whatever the store hands it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, ClassVar

__all__ = ["PgRow", "PgTx", "row_factory", "to_pg"]


@functools.lru_cache(maxsize=2048)
def to_pg(sql: str) -> str:
    """``sql`` with ``?`` placeholders as psycopg's ``%s`` (and ``%`` escaped)."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            out.append("%%" if ch == "%" else ch)
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
            out.append(ch)
        elif ch == "?":
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
    return "".join(out)


class PgRow(tuple):  # type: ignore[type-arg]
    """A row: ``row["column"]`` and ``row[0]`` alike."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        """The column names, in order."""
        return list(self._index)


@functools.lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[PgRow]:
    return type("PgRow", (PgRow,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)}})


def row_factory(cursor: Any) -> Any:
    """psycopg row factory making :class:`PgRow` rows."""
    description = cursor.description
    if description is None:
        return tuple
    cls = _row_class(tuple(c.name for c in description))
    return lambda values: cls(values)


class PgTx:
    """One transaction's statements on a psycopg connection (in the thread that holds it)."""

    __slots__ = ("conn",)

    dialect: ClassVar[str] = "postgresql"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; its rows read by column name."""
        cursor = self.conn.cursor(row_factory=row_factory)
        if params:
            cursor.execute(to_pg(sql), [int(p) if isinstance(p, bool) else p for p in params])
        else:  # no placeholders to bind: psycopg takes the text as it is
            cursor.execute(sql)
        return cursor
