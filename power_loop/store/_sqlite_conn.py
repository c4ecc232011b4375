"""The SQLite adapter's plumbing: connections to one file, the writer's worker thread, and the
checks that the path still names the file first opened.

Guarantees:

* One writer connection per store, in WAL mode with ``synchronous=NORMAL``, foreign keys on,
  and a ``busy_timeout`` for other processes sharing the file (:func:`configure`).
* ``_call`` runs one store operation as one transaction on aiosqlite's worker thread, in a
  single hop (:func:`in_worker` queues the whole transaction as one function): statements
  are never interleaved with another coroutine's transaction, the event loop never waits on
  SQLite, and no transaction stays open across an ``await``.
* ``_call_sync`` runs it on a short-lived connection in the calling thread, configured like
  the writer (the ``*_sync`` conveniences and 0.11's sync methods).
* Only the store's first opening may create the file (and its directory); it never leaves a
  file without the schema behind. Every write transaction checks, before ``BEGIN`` and after
  its ``COMMIT``, that the path still names the file opened (a ``stat`` each, under a
  microsecond); if the file was deleted, moved or replaced, the call raises
  :class:`~power_loop.errors.StoreFileGoneError` instead of reporting a write that is not
  durable at the path.
* SQLite faults are translated once (``_faults.store_error``) into the ``StoreError`` family,
  with the path and what to do, and the ``sqlite3`` exception as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import os
import sqlite3
import threading
import warnings
import weakref
from collections.abc import Callable, Coroutine, Generator
from contextlib import closing, suppress
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from .._util import stop_iteration_refused
from ..errors import PowerLoopError, StoreError
from ._faults import FileId, file_id, gone_error, path_changed, store_error, surrogate_error
from ._sqlite_tx import SQLiteTx, transaction
from .schema import migrate, schema_version

__all__ = ["Closed", "SQLiteFileStore", "configure", "connection_file", "in_worker"]

T = TypeVar("T")
S = TypeVar("S", bound="SQLiteFileStore")

_EXIT_CLOSE_WAIT_S = 5.0  # how long closing from sync code or at exit waits for the worker

HANDOFF_MAX_S = 0.001
"""How long the worker waits, at most, for the event loop to take the previous result."""


_DELIVERY_CONTEXTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, contextvars.Context] = (
    weakref.WeakKeyDictionary()
)


def _delivery_context(loop: asyncio.AbstractEventLoop) -> contextvars.Context:
    """One empty context per event loop for the callbacks that deliver results: setting a
    result runs no application code, so it needs no copy of the worker thread's context (a
    new object per transaction otherwise). Per loop, since a context cannot be entered by
    two threads at once."""
    context = _DELIVERY_CONTEXTS.get(loop)
    if context is None:
        context = _DELIVERY_CONTEXTS.setdefault(loop, contextvars.Context())
    return context


class _Reported:
    """What a job's queue item gives aiosqlite's worker as its future: nothing to report into,
    since the job delivers its own outcome. Falsy, so aiosqlite 0.22 reports nothing; 0.20 and
    0.21 report every item unconditionally (``future.get_loop().call_soon_threadsafe(...)``),
    into this no-op (``None`` there would raise on the worker thread and end it)."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def get_loop(self) -> _Reported:
        return self

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> None:
        return None


_REPORTED = _Reported()


class _Job(asyncio.Future[T]):
    """A unit of work for aiosqlite's worker thread, and the future its result lands in.

    Three differences from aiosqlite's own ``(future, function)`` items:

    - The job runs itself and delivers its outcome (it is queued as the function, with no
      future for aiosqlite to report into): one callback on the event loop per transaction,
      in a shared context, and a job whose event loop has closed meanwhile is dropped
      instead of killing the worker thread with ``RuntimeError: Event loop is closed``.
    - It tells the worker when the event loop has taken its result: ``taken`` is held from
      creation until the event loop has set the result (or exception), so the worker can
      block on it (GIL released, one wake-up) instead of polling.
    - It cannot be cancelled: a job handed to the worker cannot be taken back. A task
      cancelled while it awaits one is told so once the job has ended (asyncio marks the
      task and throws ``CancelledError`` at its next step), which is what ``asyncio.shield``
      plus a wait would do, without the extra future and callbacks on every transaction.
    """

    __slots__ = ("_context", "_conn", "_fn", "taken")

    def __init__(self, *, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self.taken = threading.Lock()
        self.taken.acquire()
        self._context = _delivery_context(loop)
        self._fn: Callable[[sqlite3.Connection], T] | None = None
        self._conn: sqlite3.Connection | None = None

    def __call__(self) -> None:
        """Run the work on the worker thread (aiosqlite's queue calls it) and deliver it."""
        fn, conn = self._fn, self._conn
        self._fn = self._conn = None
        assert fn is not None and conn is not None
        try:
            result = fn(conn)
        except StopIteration as exc:  # a future refuses it: see stop_iteration_refused
            self._deliver(self._settle_exception, stop_iteration_refused(exc, "a store operation"))
        except BaseException as exc:  # delivered to the caller, as aiosqlite does
            self._deliver(self._settle_exception, exc)
        else:
            self._deliver(self._settle_result, result)

    def _deliver(self, settle: Callable[[Any], None], outcome: Any) -> None:
        try:
            self.get_loop().call_soon_threadsafe(settle, outcome, context=self._context)
        except RuntimeError:  # its event loop is closed: nobody is left to take it
            self._hand_back()

    def _settle_result(self, result: T) -> None:
        if not self.done():
            self.set_result(result)
        self._hand_back()

    def _settle_exception(self, exc: BaseException) -> None:
        if not self.done():
            self.set_exception(exc)
        self._hand_back()

    def cancel(self, msg: Any | None = None) -> bool:
        return False

    def _hand_back(self) -> None:
        if self.taken.locked():
            self.taken.release()


def configure(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Set the pragmas every connection of the store uses."""
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute("PRAGMA foreign_keys = ON")
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")


class Closed(Coroutine[Any, None, None]):
    """What ``close()`` returns when nothing is left to close: awaitable (``await
    store.close()``), runnable by ``asyncio.run``, and harmless when dropped unawaited (0.11's
    ``store.close()`` was synchronous)."""

    __slots__ = ()

    def send(self, value: None) -> None:
        raise StopIteration

    def throw(self, *args: Any) -> None:
        raise StopIteration

    def close(self) -> None:
        return None

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]


class SQLiteFileStore:
    """A store bound to one SQLite file: its connections, the writer's worker thread, the
    transaction runner and the file checks. :class:`~power_loop.store.SQLiteSessionStore`
    adds the operations.

    Args:
        path: The database file (already checked not to be in-memory).
        busy_timeout_ms: How long a connection waits for another process's write lock.
    """

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        # Pinned at construction, so a later chdir cannot point the store at another file.
        self._abs_path = os.path.abspath(self.path)
        self._db: aiosqlite.Connection | None = None
        # The opening in progress, shared by every event loop: ``send_sync`` from several
        # threads runs one event loop per thread against this one store.
        self._opening: concurrent.futures.Future[None] | None = None
        self._opening_guard = threading.Lock()
        self._file_id: FileId | None = None  # set by the first opening, then checked
        self._first_open_lock = threading.Lock()
        self._closed = False
        self._handed: _Job[Any] | None = None  # the result the worker handed out last

    # ------------------------------------------------------------------ lifecycle

    def _connect(self) -> sqlite3.Connection:
        """A configured connection to this store's file (on the thread that will own it).

        The first opening creates the directory and the file when missing and migrates the
        schema; later ones (sync conveniences, a reopened writer) never create anything:
        they open the existing file read-write and check it is the one first opened.

        Raises:
            StoreError: The file is gone, unreadable or not a database (see ``_fault``).
        """
        try:
            if self._file_id is None:
                with self._first_open_lock:
                    if self._file_id is None:
                        return self._first_connect()
            conn = self._sqlite_connect("rw")
            try:
                configure(conn, self.busy_timeout_ms)
                self._check_file()
            except BaseException:
                conn.close()
                raise
            return conn
        except sqlite3.Error as exc:
            raise self._fault(exc) from exc

    def _sqlite_connect(self, mode: str) -> sqlite3.Connection:
        uri = f"{Path(self._abs_path).as_uri()}?mode={mode}"
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=self.busy_timeout_ms / 1000)

    def _first_connect(self) -> sqlite3.Connection:
        try:
            Path(self._abs_path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise store_error(exc, self._abs_path) from exc
        existed = file_id(self._abs_path) is not None
        conn = self._sqlite_connect("rwc")
        try:
            configure(conn, self.busy_timeout_ms)
            migrate(conn, path=self.path)
            opened = file_id(self._abs_path)
            if opened is None:
                raise gone_error(self._abs_path, "no longer exists")
        except BaseException:
            # Never leave a file without the schema behind: remove one this opening created.
            created = not existed and schema_less(conn)
            conn.close()
            if created:
                for suffix in ("", "-wal", "-shm", "-journal"):
                    with suppress(OSError):
                        os.remove(self._abs_path + suffix)
            raise
        self._file_id = opened
        return conn

    def _moved(self) -> str | None:
        """How the path stopped naming the file first opened, or None (one ``stat``)."""
        opened = self._file_id
        return path_changed(self._abs_path, opened) if opened is not None else None

    def _check_file(self) -> None:
        """Raise StoreFileGoneError when the path no longer names the file first opened."""
        how = self._moved()
        if how is not None:
            raise gone_error(self._abs_path, how)

    def _fault(self, exc: sqlite3.Error) -> StoreError:
        """The StoreError for an SQLite fault; a vanished file explains any fault best."""
        how = self._moved()
        return gone_error(self._abs_path, how) if how is not None else store_error(exc, self._abs_path)

    def _run(self, fn: Callable[[SQLiteTx], T], tx: bool, conn: sqlite3.Connection) -> T:
        """Run one store operation on ``conn``'s thread: the transaction, the fault mapping and
        the check, after ``COMMIT``, that what was committed is in the file at the path."""
        if tx:
            # Do not even start writing into a file that is gone or replaced: the -wal file is
            # found by name, so writes through the old inode would leak into the new file.
            self._check_file()
        try:
            result = transaction(conn, fn) if tx else fn(SQLiteTx(conn))
        except sqlite3.Error as exc:
            raise self._fault(exc) from exc
        except PowerLoopError as exc:
            # A refused write (a lost lease, a busy session) on a file that has vanished: the
            # vanished file is what the caller must deal with first.
            how = self._moved()
            if how is not None:
                raise gone_error(self._abs_path, how) from exc
            raise
        except UnicodeEncodeError as exc:
            # The transaction was rolled back.
            raise surrogate_error(exc, self._abs_path) from exc
        self._check_file()
        return result

    async def _open_async(self: S) -> S:
        """Open the writer connection and migrate the schema (idempotent): ``await store.open()``.

        One opening at a time across threads and event loops: callers on other event loops
        (``send_sync`` from several threads) wait for it and share the connection it opens.
        """
        while self._db is None:
            if self._closed:
                raise StoreError(f"{self!r} is closed; create a new store to reopen the file")
            with self._opening_guard:
                opening = self._opening
                lead = opening is None
                if lead:
                    opening = self._opening = concurrent.futures.Future()
            assert opening is not None
            if lead:
                await self._lead_opening(opening)
                continue
            try:
                await asyncio.wrap_future(opening)
            except asyncio.CancelledError:
                if opening.cancelled():
                    continue  # the leader was cancelled; open again
                raise
        return self

    async def _lead_opening(self, opening: concurrent.futures.Future[None]) -> None:
        """Open the connection for every waiting caller and report the outcome to them."""
        try:
            await self._connect_writer()
        except asyncio.CancelledError:
            opening.cancel()
            raise
        except BaseException as exc:
            opening.set_exception(exc)
            raise
        else:
            opening.set_result(None)
        finally:
            with self._opening_guard:
                self._opening = None

    async def _connect_writer(self) -> None:
        # The whole opening (directory, file, pragmas, migrations) runs on the connection's
        # worker thread, off the event loop.
        db = aiosqlite.Connection(self._connect, 64)
        worker = worker_thread(db)
        # A daemon thread: a program that never closes its loop (or raises with one open)
        # still exits. Every store call is one transaction, so exiting loses nothing that
        # was committed; the finalizer below closes the connection at exit when it can.
        worker.daemon = True
        try:
            await db
        except Exception:
            # aiosqlite stops its worker thread on a failed connect; let it finish while
            # this event loop still runs, so it does not outlive the loop.
            for _ in range(1000):
                if not (isinstance(worker, threading.Thread) and worker.is_alive()):
                    break
                await asyncio.sleep(0.001)
            raise
        self._db = db
        self._finalizer = weakref.finalize(self, stop_worker, db, worker, _EXIT_CLOSE_WAIT_S)

    def close(self) -> Coroutine[Any, Any, None]:
        """Close the writer connection (pending store calls finish first): ``await store.close()``.

        A store used only through its sync methods (0.11's ``SessionStore.open(path)``) has no
        connection left open; ``store.close()`` without ``await`` is then complete as well.
        """
        self._closed = True
        db, self._db = self._db, None
        if db is None:
            return Closed()
        return db.close()

    def close_nowait(self) -> None:
        """Close from synchronous code: queued store calls finish, then the connection closes."""
        self._closed = True
        db, self._db = self._db, None
        if db is not None:
            # Wait (briefly) for the worker to close the connection: called from async code
            # just before the event loop ends (the 0.11 pattern), a worker still running
            # afterwards would report to a closed loop.
            stop_worker(db, worker_thread(db), _EXIT_CLOSE_WAIT_S)

    async def __aenter__(self: S) -> S:
        return await self._open_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def is_open(self) -> bool:
        """True while the writer connection is open."""
        return self._db is not None

    # ------------------------------------------------------------------ execution

    async def _call(self, fn: Callable[[SQLiteTx], T], *, tx: bool = True) -> T:
        """Run ``fn`` on the writer connection's thread, in one transaction, in one hop.

        aiosqlite executes every operation of a connection on one worker thread, in order.
        Handing it a whole transaction (rather than one awaited statement at a time) keeps
        transactions from interleaving between coroutines and means a write lock is never
        held while the event loop is busy elsewhere.
        """
        db = self._db
        if db is None:
            await self._open_async()
            db = self._db
            assert db is not None
        job: _Job[T] = _Job(loop=asyncio.get_running_loop())
        return await in_worker(db, partial(self._run_in_worker, fn, tx, job), job)

    def _run_in_worker(self, fn: Callable[[SQLiteTx], T], tx: bool, job: _Job[T], conn: sqlite3.Connection) -> T:
        """``_run`` on the worker thread, after handing the GIL to the event loop (below).

        Each statement releases the GIL around SQLite's work and takes it back a few
        microseconds later, before a thread waiting for it has woken: a worker running queued
        transactions back to back would keep the event loop thread (which needs the GIL to
        take each result) waiting for its whole busy period, milliseconds under load.
        CPython's switch interval never forces a hand-over, since the GIL does change hands.
        So before a transaction, while the event loop has not yet taken the previous result,
        the worker blocks on that result's ``taken`` lock (GIL released) until the event loop
        sets it, up to :data:`HANDOFF_MAX_S`: one wake-up, no polling. A worker that was idle
        finds the result taken and does not wait.
        """
        handed = self._handed
        if handed is not None and handed.taken.locked():
            handed.taken.acquire(timeout=HANDOFF_MAX_S)
        self._handed = job
        return self._run(fn, tx, conn)

    def _call_sync(self, fn: Callable[[SQLiteTx], T], *, tx: bool = True) -> T:
        """Run ``fn`` on a short-lived connection in the calling thread, in one transaction."""
        with closing(self._connect()) as conn:
            return self._run(fn, tx, conn)


def worker_thread(db: aiosqlite.Connection) -> threading.Thread:
    """The thread that runs ``db``'s operations."""
    worker = getattr(db, "_thread", db)  # aiosqlite < 0.22: the connection is the thread
    assert isinstance(worker, threading.Thread)
    return worker


def stop_worker(db: aiosqlite.Connection, worker: threading.Thread, wait_s: float) -> None:
    """Close ``db`` from synchronous code and wait up to ``wait_s`` for its worker to end.

    Queued transactions run first. Used by ``close_nowait`` and, through a finalizer, at
    interpreter exit or when an unclosed store is collected. Never raises.
    """
    if not worker.is_alive():
        return
    try:
        with warnings.catch_warnings():
            # aiosqlite asks for "the" event loop to make a future; outside one, newer Pythons warn.
            warnings.simplefilter("ignore", DeprecationWarning)
            db.stop()
    except Exception:  # best effort at shutdown
        return
    if worker is not threading.current_thread():
        worker.join(wait_s)


def submit(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T], future: _Job[T] | None = None) -> _Job[T]:
    """Queue ``fn(connection)`` on ``db``'s worker thread; the future its result lands in
    (``future`` when given, else a new one of the running event loop).

    What ``Connection._execute`` does, without the coroutine and the task around it (one store
    call per transaction, on every step of every run): an item on the same queue, whose
    function is the job itself (it delivers its own outcome: see :class:`_Job`).
    """
    if not db._running or db._connection is None:
        raise ValueError("Connection closed")
    job = _Job(loop=asyncio.get_running_loop()) if future is None else future
    job._fn, job._conn = fn, db._connection
    db._tx.put_nowait((_REPORTED, job))  # type: ignore[arg-type]  # the job delivers its own outcome
    return job


async def in_worker(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T], job: _Job[T] | None = None) -> T:
    """Run ``fn(connection)`` on aiosqlite's worker thread and await its result (landing in
    ``job`` when given).

    aiosqlite's public methods each run one statement per hop; its worker queue (what
    ``Connection._execute`` feeds, the same across the aiosqlite releases pinned in
    pyproject.toml) takes any function, which is what lets a whole transaction run in one hop.

    A caller cancelled while ``fn`` is queued or running waits for it before the cancellation
    goes on: the transaction cannot be taken back, and ``asyncio.run`` closes the event loop
    right after cancelling the remaining tasks (a timer runner nobody stopped, a send still
    going); a worker that then reports into the closed loop prints a traceback and dies.
    """
    if job is None:
        job = _Job(loop=asyncio.get_running_loop())
    submit(db, fn, job)
    try:
        return await job  # a _Job: a cancellation lands once the job has ended
    except asyncio.CancelledError:
        if job.done():
            job.exception()  # the caller is cancelled: its outcome is not reported
        raise


def schema_less(conn: sqlite3.Connection) -> bool:
    """Whether the file behind ``conn`` has no schema (it can be removed without loss)."""
    try:
        return schema_version(conn) == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.Error:
        return True  # a file this opening created and cannot even read holds nothing


def connection_file(conn: sqlite3.Connection) -> str:
    """The file of an ``sqlite3.Connection``'s main database (0.11's ``SessionStore(conn, path)``)."""
    for _, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return str(file)
    raise StoreError("SessionStore(conn) needs a connection to a database file, not an in-memory database")
