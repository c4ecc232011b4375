"""The PostgreSQL session store: the same operations and rules as SQLite, over psycopg 3.

Install with ``pip install "power-loop[postgres]"``; nothing here imports psycopg until a
store is opened.

Guarantees:

* Every store call is one transaction run on one of the store's worker threads with a pooled
  connection: the event loop never waits on the database, and no transaction stays open
  across an ``await``. A read-only call runs its statements without a transaction.
* The rules are the SQLite store's (:mod:`._operations`); none relies on a database-wide
  lock. Leases and fences are conditional ``UPDATE ... WHERE fence = ?`` whose row count is
  checked in the run's own transaction; timers are claimed with ``FOR UPDATE SKIP LOCKED``.
  A transaction that PostgreSQL aborts as a deadlock or a serialization failure is run again
  (it is all or nothing), a few times, then reported.
* The tables live in one PostgreSQL schema (``schema=``, default ``power_loop``), created
  and migrated under a transaction-level advisory lock (see :mod:`._pg_schema`). No
  session-level advisory lock and, with ``transaction_pooler=True``, no session state at
  all (``SET LOCAL`` per transaction, no prepared statements): safe behind PgBouncer in
  transaction mode.
* Faults come back as the :class:`~power_loop.errors.StoreError` family:
  :class:`~power_loop.errors.StoreConnectionError` when the server cannot be reached, with
  the address (password left out) and psycopg's exception as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from .._util import call_in_thread
from ..errors import StoreConnectionError, StoreError, StoreLockedError
from ._faults import surrogate_error
from ._inspect_sql import InspectMethods
from ._operations import StoreOperations
from ._pg_schema import check_schema_name, migrate
from ._pg_tx import PgTx
from .protocols import Tx

__all__ = ["PostgresSessionStore", "redact_url"]

T = TypeVar("T")

_RETRIED_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock detected
_RETRIES = 5
_LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired
_LOCK_TIMEOUT_MAX_S = 2_147_483.647  # lock_timeout is an int of milliseconds
_INSTALL = 'PostgreSQL stores need psycopg 3: pip install "power-loop[postgres]"'


_PASSWORD_PARAM = re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)")


def redact_url(url: str) -> str:
    """``url`` with its passwords replaced by ``***``: the one in a URL's user part, and a
    ``password=`` of a libpq ``key=value`` string or of a URL's query."""
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def _psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:  # pragma: no cover - the extra is installed in the test env
        raise StoreError(_INSTALL) from exc
    return psycopg, psycopg_pool


def _session_settings(schema: str, lock_timeout_ms: int | None, *, local: bool) -> str:
    """The ``SET`` statements every transaction runs under: the schema, and how long a
    statement waits for a row lock held by another connection (0: no limit)."""
    scope = "SET LOCAL" if local else "SET"
    return f'{scope} search_path TO "{schema}"; {scope} lock_timeout = {lock_timeout_ms or 0}'


def _configure(settings: str, conn: Any) -> None:
    _apply_settings(conn, settings)


def _apply_settings(conn: Any, settings: str) -> None:
    """Run ``settings`` (several statements) on ``conn``: never as a prepared statement,
    which holds one command only (``prepare_threshold=0`` prepares from the first use)."""
    conn.execute(settings, prepare=False)


def _close_pool(pool: Any, executor: ThreadPoolExecutor) -> None:
    # Calls already queued still run (and find the pool closed: a StoreError), none is cancelled.
    executor.shutdown(wait=False)
    pool.close(timeout=5.0)


class PostgresSessionStore(StoreOperations, InspectMethods):
    """Sessions, history, leases, timers and runtime state in one PostgreSQL schema.

    Args:
        url: A libpq URL or connection string (``postgresql://user:pw@host:5432/db``,
            ``postgresql:///db?host=/var/run/postgresql``).
        schema: The PostgreSQL schema holding the tables (created when missing): several
            applications can share one database, each in its own schema.
        min_size: Connections the pool keeps open.
        max_size: Most connections open at once (and worker threads running store calls).
        prepare_threshold: Executions of a statement on a connection before psycopg
            prepares it on the server; None never prepares (needed behind a transaction
            pooler).
        transaction_pooler: The URL points at PgBouncer (or another pooler) in transaction
            mode: no session state is kept (``SET LOCAL search_path`` in every transaction,
            no prepared statements).
        connect_timeout_s: How long opening the pool waits for its first connection, and a
            store call for a free connection.
        lock_timeout_s: How long a statement waits for a row another connection holds
            locked (PostgreSQL's ``lock_timeout``) before its transaction is rolled back
            with :class:`StoreLockedError`: a process stopped in the middle of a
            transaction cannot hang every other one. None waits without limit.

    Use ``async with PostgresSessionStore(url) as store``, ``await store.open()`` /
    ``await store.aclose()``, or hand it to ``StatefulAgentLoop(store=...)`` (connections open
    on first use). The blocking ``*_sync`` methods work as on SQLite, in the calling thread.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "power_loop",
        min_size: int = 1,
        max_size: int = 10,
        prepare_threshold: int | None = 5,
        transaction_pooler: bool = False,
        connect_timeout_s: float = 10.0,
        lock_timeout_s: float | None = 10.0,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ValueError("PostgresSessionStore needs a connection URL")
        if lock_timeout_s is not None and not 0 < lock_timeout_s <= _LOCK_TIMEOUT_MAX_S:
            raise ValueError(
                f"lock_timeout_s must be a positive number of seconds up to {_LOCK_TIMEOUT_MAX_S:g} (PostgreSQL's "
                f"limit), or None for no limit; got {lock_timeout_s!r}"
            )
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}")
        self.url = url
        self.schema = check_schema_name(schema)
        self.min_size = min_size
        self.max_size = max_size
        self.transaction_pooler = transaction_pooler
        self.prepare_threshold = None if transaction_pooler else prepare_threshold
        self.connect_timeout_s = connect_timeout_s
        self.lock_timeout_s = lock_timeout_s
        lock_ms = None if lock_timeout_s is None else max(1, round(lock_timeout_s * 1000))
        # A transaction pooler keeps no session state: the settings go into every transaction.
        self._settings = _session_settings(self.schema, lock_ms, local=transaction_pooler)
        self._pool: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"PostgresSessionStore({redact_url(self.url)!r}, schema={self.schema!r})"

    @property
    def path(self) -> str:
        """Where the data lives, for messages: the URL without its password, and the schema."""
        return f"{redact_url(self.url)} (schema {self.schema})"

    # ------------------------------------------------------------------ lifecycle

    def _ensure_open(self) -> Any:
        """The pool, opened (and the schema migrated) on first use; blocking."""
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise StoreError(f"{self!r} is closed; create a new store to reconnect")
            psycopg, psycopg_pool = _psycopg()
            try:
                with psycopg.connect(
                    self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s))
                ) as c:
                    migrate(c, self.schema)
            except psycopg.Error as exc:
                raise self._fault(exc, psycopg, migrating=True) from exc
            pool = psycopg_pool.ConnectionPool(
                self.url,
                min_size=self.min_size,
                max_size=self.max_size,
                kwargs={"autocommit": True, "prepare_threshold": self.prepare_threshold},
                # Not a bound method: the pool must not keep the store alive.
                configure=None if self.transaction_pooler else functools.partial(_configure, self._settings),
                timeout=self.connect_timeout_s,
                open=False,
                name=f"power_loop-{self.schema}",
            )
            try:
                pool.open(wait=True, timeout=self.connect_timeout_s)
            except psycopg_pool.PoolTimeout as exc:
                pool.close()
                raise self._unreachable(exc) from exc
            executor = ThreadPoolExecutor(self.max_size, thread_name_prefix="power_loop-pg")
            self._executor = executor
            self._pool = pool
            self._finalizer = weakref.finalize(self, _close_pool, pool, executor)
            return pool

    def _unreachable(self, exc: BaseException) -> StoreConnectionError:
        return StoreConnectionError(
            f"cannot connect to PostgreSQL at {redact_url(self.url)}: {str(exc).strip() or type(exc).__name__}. "
            "Check that the server runs and the URL (host, port, database, user, password) is right."
        )

    async def open(self) -> PostgresSessionStore:
        """Connect and migrate the schema (idempotent), off the event loop."""
        await asyncio.to_thread(self._ensure_open)
        return self

    def close(self) -> Coroutine[Any, Any, None]:
        """Close the pool (calls in progress finish first): ``await store.close()``."""
        return self.aclose()

    async def aclose(self) -> None:
        """Close the pool (calls in progress finish first)."""
        await asyncio.to_thread(self.close_nowait)

    def close_nowait(self) -> None:
        """Close from synchronous code (calls already queued end with a ``StoreError``)."""
        with self._lock:
            self._closed = True
            finalizer, self._finalizer = self._finalizer, None
            self._pool = None
            self._executor = None
        if finalizer is not None:
            finalizer()

    async def __aenter__(self) -> PostgresSessionStore:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def is_open(self) -> bool:
        """True while the pool is open."""
        return self._pool is not None

    # ------------------------------------------------------------------ execution

    def _run(self, fn: Callable[[Tx], T], tx: bool) -> T:
        """Run one store operation with a pooled connection in the calling thread.

        Run again: a transaction PostgreSQL aborted as a deadlock or a serialization failure
        (a few times), and a call that found its connection dead (the server restarted, a
        proxy dropped it) before anything of it could commit: a read, or a transaction whose
        ``BEGIN`` failed. A connection lost later, during the transaction, is reported.
        """
        pool = self._ensure_open()
        psycopg, psycopg_pool = _psycopg()
        aborted = dead = 0
        while True:
            conn: Any = None
            begun = False
            try:
                with pool.connection() as conn:
                    if not tx and not self.transaction_pooler:
                        return fn(PgTx(conn))
                    with conn.transaction():
                        begun = True
                        if self.transaction_pooler:
                            _apply_settings(conn, self._settings)
                        return fn(PgTx(conn))
            except psycopg_pool.PoolTimeout as exc:  # before psycopg.Error: it is an OperationalError
                raise StoreLockedError(
                    f"no free PostgreSQL connection within {self.connect_timeout_s:g}s (all {self.max_size} in use); "
                    "raise max_size or lower the load"
                ) from exc
            except psycopg_pool.PoolClosed as exc:
                raise StoreError(f"{self!r} is closed; create a new store to reconnect") from exc
            except psycopg.Error as exc:
                if getattr(exc, "sqlstate", None) in _RETRIED_SQLSTATES and aborted < _RETRIES:
                    aborted += 1
                    time.sleep(random.uniform(0.001, 0.005) * aborted)
                    continue
                broken = conn is not None and bool(getattr(conn, "broken", False))
                if broken and (not tx or not begun) and dead <= self.max_size:
                    dead += 1  # the pool drops the dead connection; take another one
                    continue
                if broken and tx and begun:
                    raise StoreConnectionError(
                        f"the connection to PostgreSQL at {redact_url(self.url)} was lost during a transaction: "
                        f"{str(exc).strip() or type(exc).__name__}. If it was lost while committing, the "
                        "transaction may have committed; read the session before doing it again"
                    ) from exc
                raise self._fault(exc, psycopg) from exc
            except UnicodeEncodeError as exc:
                raise surrogate_error(exc, self.path) from exc

    def _fault(self, exc: Exception, psycopg: Any, *, migrating: bool = False) -> StoreError:
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate in _RETRIED_SQLSTATES:
            return StoreLockedError(f"PostgreSQL kept aborting the transaction ({sqlstate}: {exc}); it was rolled back")
        if sqlstate == _LOCK_NOT_AVAILABLE:
            return self._lock_not_available(exc, migrating)
        if isinstance(exc, psycopg.OperationalError) and sqlstate is None:
            return self._unreachable(exc)
        return StoreError(f"PostgreSQL error ({sqlstate or type(exc).__name__}): {str(exc).strip()}")

    def _lock_not_available(self, exc: Exception, migrating: bool) -> StoreLockedError:
        if migrating or self.lock_timeout_s is None:
            # Not the store's own setting: the schema's migration runs on a connection of its
            # own, and with lock_timeout_s=None the store sets no limit; the server's
            # lock_timeout (a role's or database's default, the URL's options) ran out.
            what = (
                "while migrating the schema (waiting for another process's migration, or for a table in use)"
                if migrating
                else "waiting for a lock"
            )
            return StoreLockedError(
                f"PostgreSQL's lock_timeout ran out {what} ({str(exc).strip()}); the transaction was rolled "
                "back. Retry, or find the connection holding a long transaction (pg_stat_activity)"
            )
        return StoreLockedError(
            f"a lock the transaction needed (a row, or a table another process migrates) stayed held by another "
            f"connection for longer than lock_timeout_s ({self.lock_timeout_s:g}s); the transaction was rolled "
            "back. Retry, raise PostgresSessionStore(lock_timeout_s=...), or find the connection holding a long "
            "transaction (pg_stat_activity)"
        )

    async def _call(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T:
        """Run ``fn`` in one transaction on a worker thread with a pooled connection."""
        if self._closed:
            raise StoreError(f"{self!r} is closed; create a new store to reconnect")
        if self._executor is None:
            await self.open()
        executor = self._executor
        if executor is None:
            raise StoreError(f"{self!r} is closed; create a new store to reconnect")
        call = partial(call_in_thread, "a store operation", self._run, fn, tx)
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    def _call_sync(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T:
        """Run ``fn`` in one transaction in the calling thread."""
        return self._run(fn, tx)

    async def execute_fetchall(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (for diagnostics and tests)."""
        return await self._call(lambda c: [tuple(r) for r in c.execute(sql, params).fetchall()], tx=False)
