"""The SQLite session store, asynchronous through ``aiosqlite``: the operations.

Guarantees:

* Every store call is one transaction executed entirely on aiosqlite's worker thread in a
  single hop (:mod:`._sqlite_conn`): statements are never interleaved with another
  coroutine's transaction, the event loop never waits on SQLite, and no transaction stays
  open across an ``await``.
* Each operation with a blocking twin is declared once (:mod:`._twins`): one method gives
  ``await store.x(...)`` and ``store.x_sync(...)`` (or 0.11's sync ``x`` and ``x_async``),
  with the same parameters, the same transaction and the same checks. The blocking twins
  open a short-lived connection in the calling thread; they are meant for setup and
  tooling, not for a request's hot path.
* The connections, the worker thread and the file checks (the path must keep naming the
  file first opened) live in :mod:`._sqlite_conn`; ``BEGIN IMMEDIATE`` in :mod:`._sqlite_tx`;
  the rules in the ``_*_sql`` modules; 0.11's extra methods in :mod:`._compat`.
"""

from __future__ import annotations

import os
import sqlite3
import types
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar, overload

from ..errors import StoreError
from ._inspect_sql import InspectMethods
from ._operations import StoreOperations
from ._sqlite_conn import SQLiteFileStore, connection_file
from ._sqlite_tx import transaction

__all__ = ["DEFAULT_DB_PATH", "SQLiteSessionStore", "SessionStore", "transaction"]

DEFAULT_DB_PATH = "./power_loop_sessions.db"

S = TypeVar("S", bound="SQLiteSessionStore")


class _OpenMethod(Generic[S]):
    """``open`` on the class is 0.11's sync ``SessionStore.open(path)``; on an instance it is
    the async ``await store.open()``."""

    @overload
    def __get__(self, instance: None, owner: type[S]) -> Callable[..., S]: ...

    @overload
    def __get__(self, instance: S, owner: type[S]) -> Callable[[], Coroutine[Any, Any, S]]: ...

    def __get__(self, instance: S | None, owner: type[S]) -> Any:
        if instance is None:
            return types.MethodType(_open_sync, owner)
        return types.MethodType(owner._open_async, instance)


def _open_sync(cls: type[S], path: str | os.PathLike[str] = DEFAULT_DB_PATH) -> S:
    """0.11's ``SessionStore.open(path)``: a store whose file exists with the current schema
    (created or migrated now, in the calling thread)."""
    store = cls(path)
    store._call_sync(lambda conn: None, tx=False)
    return store


class SQLiteSessionStore(SQLiteFileStore, StoreOperations, InspectMethods):
    """Sessions, messages, tool calls, usage, stats, leases and inbox in one SQLite file.

    Args:
        path: Database file. The store's first opening creates it (and its directory) when
            missing; a relative path is resolved against the working directory at
            construction. ``":memory:"`` is not supported: the store and its sync
            conveniences use separate connections.
        conn: 0.11's form, ``SessionStore(conn, path)``: an ``sqlite3.Connection`` to the
            database file (it may also come first). Only its file is used; the store opens
            connections of its own, and the caller keeps (and closes) ``conn``.
        busy_timeout_s: How long a connection waits for another process's write lock.

    Use ``async with SQLiteSessionStore(path) as store`` or ``await store.open()`` /
    ``await store.close()``. Async methods open the store on first use. 0.11's
    ``SessionStore.open(path)`` (on the class, sync) returns a store ready for the sync
    methods.
    """

    open = _OpenMethod["SQLiteSessionStore"]()

    def __init__(
        self,
        path: str | os.PathLike[str] | sqlite3.Connection | None = DEFAULT_DB_PATH,
        conn: sqlite3.Connection | str | os.PathLike[str] | None = None,
        *,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if isinstance(path, sqlite3.Connection):
            path, conn = conn, path
        if isinstance(conn, sqlite3.Connection):
            path = connection_file(conn) if path is None else path
        elif conn is not None:
            raise TypeError(f"conn must be an sqlite3.Connection, not {type(conn).__name__}")
        if path is None:
            path = DEFAULT_DB_PATH
        text = str(path)
        if text == ":memory:" or text.startswith("file::memory:"):
            raise StoreError("SQLiteSessionStore needs a file path; use a temporary file for throwaway stores")
        super().__init__(text, int(busy_timeout_s * 1000))

    def __repr__(self) -> str:
        return f"SQLiteSessionStore({self.path!r})"


# The 0.11 stable name for the store class.
SessionStore = SQLiteSessionStore
