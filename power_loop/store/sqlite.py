"""The SQLite session store, asynchronous through ``aiosqlite``.

Guarantees:

* One writer connection per store, in WAL mode with ``synchronous=NORMAL``, foreign keys on,
  and a ``busy_timeout`` for other processes sharing the file.
* Every store call is one transaction executed entirely on aiosqlite's worker thread in a
  single hop: statements are never interleaved with another coroutine's transaction, the
  event loop never waits on SQLite, and no transaction stays open across an ``await``.
* The sync conveniences (``*_sync`` methods, used by the 0.11 sync API such as
  ``loop.new_session``) open a short-lived connection in the calling thread. They are meant
  for setup and tooling, not for a request's hot path; every one has an async twin.
* Only the store's first opening may create the file (and its directory); it never leaves a
  file without the schema behind. Every write transaction checks, before ``BEGIN`` and after
  its ``COMMIT``, that the path still names the file opened (a ``stat`` each, under a
  microsecond); if the file was deleted, moved or
  replaced, the call raises :class:`~power_loop.errors.StoreFileGoneError` instead of
  reporting a write that is not durable at the path.
* SQLite faults are translated once (``_faults.store_error``) into the ``StoreError`` family,
  with the path and what to do, and the ``sqlite3`` exception as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Coroutine, Generator, Mapping, Sequence
from contextlib import closing, suppress
from functools import partial
from pathlib import Path
from typing import Any, Generic, TypeVar, overload

import aiosqlite

from ..errors import PowerLoopError, StoreError
from . import _compat_sql, _leases, _sql
from . import _subagents_sql as _subagents
from . import _timers_sql as _timers
from ._compat import Store011Methods
from ._faults import FileId, file_id, gone_error, path_changed, store_error
from ._pragmas import rollback
from ._sqlite_tx import SQLiteTx
from .rows import (
    BackgroundChild,
    BeginOutcome,
    BeginRun,
    LeaseClaim,
    PendingState,
    SessionKind,
    SessionRow,
    SessionStatsRow,
    StoredMessage,
    TimerRow,
    WriteOp,
    WriteOutcome,
    check_metadata,
)
from .schema import migrate, schema_version

__all__ = ["SQLiteSessionStore"]

T = TypeVar("T")

DEFAULT_DB_PATH = "./power_loop_sessions.db"


def _configure(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    conn.execute("PRAGMA foreign_keys = ON")
    if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")


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


class _Closed(Coroutine[Any, None, None]):
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


class SQLiteSessionStore(Store011Methods):
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
            path = _connection_file(conn) if path is None else path
        elif conn is not None:
            raise TypeError(f"conn must be an sqlite3.Connection, not {type(conn).__name__}")
        if path is None:
            path = DEFAULT_DB_PATH
        self.path = str(path)
        if self.path == ":memory:" or self.path.startswith("file::memory:"):
            raise StoreError("SQLiteSessionStore needs a file path; use a temporary file for throwaway stores")
        self.busy_timeout_ms = int(busy_timeout_s * 1000)
        # Pinned at construction, so a later chdir cannot point the store at another file.
        self._abs_path = os.path.abspath(self.path)
        self._db: aiosqlite.Connection | None = None
        self._open_lock: asyncio.Lock | None = None
        self._file_id: FileId | None = None  # set by the first opening, then checked
        self._first_open_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteSessionStore({self.path!r})"

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
                _configure(conn, self.busy_timeout_ms)
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
            _configure(conn, self.busy_timeout_ms)
            migrate(conn, path=self.path)
            opened = file_id(self._abs_path)
            if opened is None:
                raise gone_error(self._abs_path, "no longer exists")
        except BaseException:
            # Never leave a file without the schema behind: remove one this opening created.
            created = not existed and _schema_less(conn)
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
            # Free text is scrubbed before it is bound (``_sql.text``); what is left is a key
            # (a session id, say) that holds a lone surrogate and cannot be changed silently.
            # The transaction was rolled back.
            raise ValueError(
                f"cannot store {exc.object[max(0, exc.start - 20) : exc.end + 20]!r} in {self._abs_path}: it "
                "holds a lone surrogate (a half of a UTF-16 pair, e.g. from os.fsdecode of non-UTF-8 bytes), "
                "which is not valid UTF-8. Use an id or key made of valid text; nothing was stored."
            ) from exc
        self._check_file()
        return result

    async def _open_async(self) -> SQLiteSessionStore:
        """Open the writer connection and migrate the schema (idempotent): ``await store.open()``."""
        if self._db is not None:
            return self
        if self._closed:
            raise StoreError(f"{self!r} is closed; create a new store to reopen the file")
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._db is not None:
                return self
            # The whole opening (directory, file, pragmas, migrations) runs on the
            # connection's worker thread, off the event loop.
            db = aiosqlite.Connection(self._connect, 64)
            worker = _worker_thread(db)
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
            self._finalizer = weakref.finalize(self, _stop_worker, db, worker, _EXIT_CLOSE_WAIT_S)
        return self

    def close(self) -> Coroutine[Any, Any, None]:
        """Close the writer connection (pending store calls finish first): ``await store.close()``.

        A store used only through its sync methods (0.11's ``SessionStore.open(path)``) has no
        connection left open; ``store.close()`` without ``await`` is then complete as well.
        """
        self._closed = True
        db, self._db = self._db, None
        if db is None:
            return _Closed()
        return db.close()

    def close_nowait(self) -> None:
        """Close from synchronous code: queued store calls finish, then the connection closes."""
        self._closed = True
        db, self._db = self._db, None
        if db is not None:
            # Wait (briefly) for the worker to close the connection: called from async code
            # just before the event loop ends (the 0.11 pattern), a worker still running
            # afterwards would report to a closed loop.
            _stop_worker(db, _worker_thread(db), _EXIT_CLOSE_WAIT_S)

    async def __aenter__(self) -> SQLiteSessionStore:
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
        return await _in_worker(db, partial(self._run, fn, tx))

    def _call_sync(self, fn: Callable[[SQLiteTx], T], *, tx: bool = True) -> T:
        with closing(self._connect()) as conn:
            return self._run(fn, tx, conn)

    # ------------------------------------------------------------------ sessions

    @overload
    def create_session(
        self,
        sid: str,
        /,
        *,
        metadata: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        parent_session_id: str | None = None,
        kind: str = "main",
        lifecycle: str | None = None,
        depth: int = 0,
        spawn_tool_call_id: str | None = None,
    ) -> Coroutine[Any, Any, None]: ...

    @overload
    def create_session(
        self,
        /,
        *,
        system_prompt: str | None = None,
        model: str | None = None,
        config: Mapping[str, Any] | None = None,
        parent_session_id: str | None = None,
        spawn_tool_call_id: str | None = None,
        kind: str = SessionKind.ROOT,
        lifecycle: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_id: str | None = None,
    ) -> str: ...

    def create_session(
        self,
        sid: str | None = None,
        /,
        *,
        system_prompt: str | None = None,
        model: str | None = None,
        config: Mapping[str, Any] | None = None,
        parent_session_id: str | None = None,
        spawn_tool_call_id: str | None = None,
        kind: str = SessionKind.ROOT,
        lifecycle: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        depth: int = 0,
    ) -> Coroutine[Any, Any, None] | str:
        """Create a session row, in one of two forms.

        * ``await store.create_session(sid, metadata=..., system_prompt=..., ...)``: the id
          comes first, positionally; a coroutine.
        * 0.11's form, keywords only: ``store.create_session(system_prompt=..., model=...,
          config=..., session_id=None, ...)`` runs synchronously and returns the id (a new
          ``"sess_" + 24 hex`` id unless ``session_id`` is given); a sub-agent's depth follows
          its parent. ``model``, ``config`` and ``spawn_tool_call_id`` are kept and read back
          on the :class:`SessionRow`.

        ``kind`` is ``SessionKind.ROOT`` (also spelled ``"root"`` or ``"main"``) or
        ``SessionKind.SUBAGENT``.

        Raises:
            ValueError: The id exists already or the metadata is not JSON-serialisable.
            SessionNotFoundError: ``parent_session_id`` does not exist.
        """
        if sid is None:
            return self._create_session_011(
                system_prompt=system_prompt,
                model=model,
                config=config,
                parent_session_id=parent_session_id,
                spawn_tool_call_id=spawn_tool_call_id,
                kind=kind,
                lifecycle=lifecycle,
                metadata=metadata,
                session_id=session_id,
            )
        if session_id is not None and session_id != sid:
            raise TypeError(f"create_session got two session ids: {sid!r} and session_id={session_id!r}")
        meta = check_metadata(metadata)
        extra = {"model": model, "config_json": _config_json(config), "spawn_tool_call_id": spawn_tool_call_id}

        def create(c: SQLiteTx) -> None:
            _sql.create_session(
                c,
                sid,
                metadata=meta,
                system_prompt=system_prompt,
                parent_session_id=parent_session_id,
                kind=kind,
                lifecycle=lifecycle,
                depth=depth,
            )
            if any(v is not None for v in extra.values()):
                _compat_sql.set_compat_fields(c, sid, **extra)

        return self._call(create)

    def create_session_sync(
        self,
        session_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        parent_session_id: str | None = None,
        kind: str = "main",
        lifecycle: str | None = None,
        depth: int = 0,
    ) -> None:
        """Blocking twin of :meth:`create_session`."""
        meta = check_metadata(metadata)
        self._call_sync(
            lambda c: _sql.create_session(
                c,
                session_id,
                metadata=meta,
                system_prompt=system_prompt,
                parent_session_id=parent_session_id,
                kind=kind,
                lifecycle=lifecycle,
                depth=depth,
            )
        )

    def get_session(self, session_id: str) -> SessionRow | None:
        """The session row, or None (blocking; 0.11 API). See :meth:`get_session_async`."""
        return self._call_sync(lambda c: _compat_sql.get_session(c, session_id), tx=False)

    async def get_session_async(self, session_id: str) -> SessionRow | None:
        """The session row, or None."""
        return await self._call(lambda c: _compat_sql.get_session(c, session_id), tx=False)

    async def delete_session(self, session_id: str, *, cascade: bool = True) -> int:
        """Delete a session (with its sub-agent sessions when ``cascade``); return the count."""
        return await self._call(lambda c: _sql.delete_session(c, session_id, cascade=cascade))

    def delete_session_sync(self, session_id: str, *, cascade: bool = True) -> int:
        """Blocking twin of :meth:`delete_session`."""
        return self._call_sync(lambda c: _sql.delete_session(c, session_id, cascade=cascade))

    # ------------------------------------------------------------------ history

    async def load_messages(self, session_id: str, *, include_compacted: bool = False) -> list[StoredMessage]:
        """The session's messages with seqs (folded rows only with ``include_compacted``)."""
        return await self._call(
            lambda c: _sql.load_history(c, session_id, include_compacted=include_compacted), tx=False
        )

    def load_messages_sync(self, session_id: str, *, include_compacted: bool = False) -> list[StoredMessage]:
        """Blocking twin of :meth:`load_messages`."""
        return self._call_sync(
            lambda c: _sql.load_history(c, session_id, include_compacted=include_compacted), tx=False
        )

    async def prune_compacted(
        self, session_id: str | None = None, *, older_than_ms: int | None = None, keep_last: int | None = None
    ) -> int:
        """Delete folded (compacted) message rows; see :meth:`StatefulAgentLoop.prune_compacted`."""
        return await self._call(
            lambda c: _sql.prune_compacted(c, session_id, older_than_ms=older_than_ms, keep_last=keep_last)
        )

    async def get_pending(self, session_id: str) -> PendingState | None:
        """Unanswered tool calls, or None."""
        return await self._call(lambda c: _sql.pending_state(c, session_id), tx=False)

    def get_pending_sync(self, session_id: str) -> PendingState | None:
        """Blocking twin of :meth:`get_pending`."""
        return self._call_sync(lambda c: _sql.pending_state(c, session_id), tx=False)

    async def abort_pending(self, session_id: str, reason: str) -> int:
        """Answer every unresolved call with ``<aborted: reason>`` (finished calls keep their
        stored result); return how many calls were answered."""
        return await self._call(lambda c: _sql.abort_pending(c, session_id, reason))

    def abort_pending_sync(self, session_id: str, reason: str) -> int:
        """Blocking twin of :meth:`abort_pending`."""
        return self._call_sync(lambda c: _sql.abort_pending(c, session_id, reason))

    async def answer_interaction(self, session_id: str, interaction_id: str, value: str) -> list[dict[str, Any]]:
        """Record the answer to a ``request_user_input`` question; return those still open.

        Raises:
            ValueError: No open interaction has that id in the session.
        """
        return await self._call(lambda c: _sql.answer_interaction(c, session_id, interaction_id, value))

    # ------------------------------------------------------------------ runs

    async def begin_run(self, begin: BeginRun) -> BeginOutcome:
        """Start a run (lease, pending check, inbox, input) in one transaction."""
        return await self._call(lambda c: _sql.begin_run(c, begin))

    async def write(
        self,
        session_id: str,
        ops: Sequence[WriteOp],
        *,
        lease: LeaseClaim | None = None,
        event_seq: int | None = None,
    ) -> WriteOutcome:
        """Apply a run step's operations in one transaction (checking the run's lease)."""
        return await self._call(lambda c: _sql.write(c, session_id, ops, lease=lease, event_seq=event_seq))

    async def renew_lease(self, session_id: str, lease: LeaseClaim) -> None:
        """Extend a run's lease; raises ``LeaseLostError`` when another run took it."""
        await self._call(lambda c: _leases.renew_lease(c, session_id, lease))

    async def release_lease(self, session_id: str, owner: str) -> None:
        """Release a lease held by ``owner``."""
        await self._call(lambda c: _leases.release_lease_of(c, session_id, owner))

    async def enqueue(
        self,
        session_id: str,
        content: Any,
        *,
        kind: str = "follow_up",
        ref: str | None = None,
        only_if_busy: bool = False,
    ) -> int | None:
        """Queue an inbox item; with ``only_if_busy``, only while a run holds the session.

        Returns:
            The queue depth, or None when ``only_if_busy`` and the session is idle.
        """
        return await self._call(
            lambda c: _sql.enqueue(c, session_id, kind=kind, content=content, ref=ref, only_if_busy=only_if_busy)
        )

    async def inbox_depth(self, session_id: str) -> int:
        """Items waiting in a session's inbox."""
        return await self._call(lambda c: _sql.inbox_depth(c, session_id), tx=False)

    # ------------------------------------------------------------------ timers

    async def schedule_timer(
        self,
        session_id: str,
        *,
        due_at: int,
        note: str,
        every_ms: int | None = None,
        count: int | None = None,
        until_at: int | None = None,
        max_live: int | None = None,
        origin: str | None = None,
    ) -> TimerRow:
        """Arm a timer (see ``StatefulAgentLoop.schedule_timer``); with ``origin``, return the
        timer armed earlier with the same origin instead of arming another."""
        return await self._call(
            lambda c: _timers.schedule_timer(
                c,
                session_id,
                due_at=due_at,
                note=note,
                every_ms=every_ms,
                count=count,
                until_at=until_at,
                max_live=max_live,
                origin=origin,
            )
        )

    def schedule_timer_sync(
        self,
        session_id: str,
        *,
        due_at: int,
        note: str,
        every_ms: int | None = None,
        count: int | None = None,
        until_at: int | None = None,
    ) -> TimerRow:
        """Blocking twin of :meth:`schedule_timer`."""
        return self._call_sync(
            lambda c: _timers.schedule_timer(
                c, session_id, due_at=due_at, note=note, every_ms=every_ms, count=count, until_at=until_at
            )
        )

    async def cancel_timer(self, session_id: str, timer_id: int) -> bool:
        """Cancel an armed or in-flight timer."""
        return await self._call(lambda c: _timers.cancel_timer(c, session_id, timer_id))

    def cancel_timer_sync(self, session_id: str, timer_id: int) -> bool:
        """Blocking twin of :meth:`cancel_timer`."""
        return self._call_sync(lambda c: _timers.cancel_timer(c, session_id, timer_id))

    async def list_timers(self, session_id: str, *, statuses: Sequence[str] = ("armed", "firing")) -> list[TimerRow]:
        """Timers of a session in ``statuses``, soonest first (default: armed and in flight).

        Statuses are ``armed``, ``claimed`` (0.11: ``firing``), ``fired`` and ``cancelled``.
        """
        wanted = _compat_sql.timer_statuses(statuses)
        return await self._call(lambda c: _timers.list_timers(c, session_id, wanted), tx=False)

    def list_timers_sync(self, session_id: str, *, statuses: Sequence[str] = ("armed", "firing")) -> list[TimerRow]:
        """Blocking twin of :meth:`list_timers`."""
        wanted = _compat_sql.timer_statuses(statuses)
        return self._call_sync(lambda c: _timers.list_timers(c, session_id, wanted), tx=False)

    async def claim_due_timers(
        self, owner: str, *, lease_ms: int, limit: int, due_by: int | None = None
    ) -> list[_timers.ClaimedTimer]:
        """Claim timers due by ``due_by`` (default now), and stale claims, for ``owner``."""
        return await self._call(lambda c: _timers.claim_due(c, owner, lease_ms=lease_ms, limit=limit, due_by=due_by))

    async def renew_timer_claims(self, owner: str, *, lease_ms: int) -> int:
        """Extend ``owner``'s claims."""
        return await self._call(lambda c: _timers.renew_claims(c, owner, lease_ms=lease_ms))

    async def release_timer_claims(self, owner: str) -> int:
        """Give back ``owner``'s claims."""
        return await self._call(lambda c: _timers.release_claims(c, owner))

    async def deliver_timers(self, owner: str, deliveries: list[_timers.Delivery]) -> list[tuple[str | None, int]]:
        """Apply claimed timers' outcomes in one transaction; per timer the outcome (None when
        its claim was lost, ``error`` when its write failed) and the event seq reserved for it."""
        return await self._call(lambda c: _timers.deliver_many(c, owner, deliveries))

    async def retry_timer_later(self, timer: _timers.ClaimedTimer, owner: str, *, delay_ms: int) -> bool:
        """Give back a claim whose delivery failed; the timer is due again ``delay_ms`` later."""
        return await self._call(lambda c: _timers.retry_later(c, timer, owner, delay_ms=delay_ms))

    async def next_timer_due_at(self, owner: str | None = None) -> int | None:
        """When a runner next has work: the earliest armed due time, or the expiry of a claim
        held by another owner."""
        return await self._call(lambda c: _timers.next_due_at(c, owner), tx=False)

    async def orphan_inboxes(self, *, limit: int = 100) -> list[str]:
        """Sessions whose inbox waits with no run to drain it."""
        return await self._call(lambda c: _timers.orphan_inboxes(c, limit=limit), tx=False)

    # ------------------------------------------------------------------ stats

    async def get_stats(self, session_id: str) -> SessionStatsRow | None:
        """Stats of a session, or None before its first finished run."""
        return await self._call(lambda c: _sql.get_stats(c, session_id), tx=False)

    def get_stats_sync(self, session_id: str) -> SessionStatsRow | None:
        """Blocking twin of :meth:`get_stats`."""
        return self._call_sync(lambda c: _sql.get_stats(c, session_id), tx=False)

    async def list_stats(self) -> list[SessionStatsRow]:
        """Stats of every session, most recently active first."""
        return await self._call(_sql.list_stats, tx=False)

    def list_stats_sync(self) -> list[SessionStatsRow]:
        """Blocking twin of :meth:`list_stats`."""
        return self._call_sync(_sql.list_stats, tx=False)

    # ------------------------------------------------------------------ background sub-agents

    async def start_background_child(
        self,
        child_session_id: str,
        *,
        parent_session_id: str,
        task: str,
        metadata: Mapping[str, Any],
        system_prompt: str | None,
        lifecycle: str,
        depth: int,
        spawn_tool_call_id: str | None = None,
    ) -> bool:
        """Create a background sub-agent with its task waiting in its inbox (one transaction);
        False when it exists already."""
        meta = check_metadata(metadata)

        def start(c: SQLiteTx) -> bool:
            created = _subagents.start_background(
                c,
                child_session_id,
                parent_session_id=parent_session_id,
                task=task,
                metadata=meta,
                system_prompt=system_prompt,
                lifecycle=lifecycle,
                depth=depth,
            )
            if created and spawn_tool_call_id is not None:
                _compat_sql.set_compat_fields(c, child_session_id, spawn_tool_call_id=spawn_tool_call_id)
            return created

        return await self._call(start)

    async def list_background_children(self, parent_session_id: str) -> list[BackgroundChild]:
        """The background sub-agents of a session, oldest first."""
        return await self._call(lambda c: _subagents.list_background(c, parent_session_id), tx=False)

    async def stop_background_child(self, parent_session_id: str, child_session_id: str) -> bool:
        """Mark a running background sub-agent stopped (not resumed, its answer not delivered)."""
        return await self._call(lambda c: _subagents.stop_background(c, parent_session_id, child_session_id))

    async def orphan_subagents(self, *, limit: int = 100) -> list[str]:
        """Background sub-agents still running that no process runs (their process died)."""
        return await self._call(lambda c: _subagents.orphan_children(c, limit=limit), tx=False)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (for diagnostics and tests)."""
        return await self._call(lambda c: [tuple(r) for r in c.execute(sql, params).fetchall()], tx=False)


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


_EXIT_CLOSE_WAIT_S = 5.0  # how long closing from sync code or at exit waits for the worker


def _worker_thread(db: aiosqlite.Connection) -> threading.Thread:
    """The thread that runs ``db``'s operations."""
    worker = getattr(db, "_thread", db)  # aiosqlite < 0.22: the connection is the thread
    assert isinstance(worker, threading.Thread)
    return worker


def _stop_worker(db: aiosqlite.Connection, worker: threading.Thread, wait_s: float) -> None:
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


def _submit(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
    """Queue ``fn(connection)`` on ``db``'s worker thread; the future its result lands in.

    What ``Connection._execute`` does, without the coroutine and the task around it (one store
    call per transaction, on every step of every run): the same ``(future, function)`` item
    on the same queue, so the worker reports exactly as it does for aiosqlite's own calls.
    """
    if not db._running or db._connection is None:
        raise ValueError("Connection closed")
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    db._tx.put_nowait((future, partial(fn, db._connection)))
    return future


async def _in_worker(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    """Run ``fn(connection)`` on aiosqlite's worker thread and await its result.

    aiosqlite's public methods each run one statement per hop; its worker queue (what
    ``Connection._execute`` feeds, the same across the aiosqlite releases pinned in
    pyproject.toml) takes any function, which is what lets a whole transaction run in one hop.

    A caller cancelled while ``fn`` is queued or running waits for it before the cancellation
    goes on: the transaction cannot be taken back, and ``asyncio.run`` closes the event loop
    right after cancelling the remaining tasks (a timer runner nobody stopped, a send still
    going); a worker that then reports into the closed loop prints a traceback and dies.
    """
    job = _submit(db, fn)
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        while not job.done():
            with suppress(asyncio.CancelledError):
                await asyncio.wait((job,))
        if not job.cancelled():
            job.exception()  # the caller is cancelled: its outcome is not reported
        raise


def _schema_less(conn: sqlite3.Connection) -> bool:
    """Whether the file behind ``conn`` has no schema (it can be removed without loss)."""
    try:
        return schema_version(conn) == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.Error:
        return True  # a file this opening created and cannot even read holds nothing


def _connection_file(conn: sqlite3.Connection) -> str:
    """The file of an ``sqlite3.Connection``'s main database (0.11's ``SessionStore(conn, path)``)."""
    for _, name, file in conn.execute("PRAGMA database_list").fetchall():
        if name == "main" and file:
            return str(file)
    raise StoreError("SessionStore(conn) needs a connection to a database file, not an in-memory database")


def _config_json(config: Mapping[str, Any] | None) -> str | None:
    if not config:
        return None
    try:
        return json.dumps(dict(config))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config must be a JSON-serialisable dict: {exc}") from exc


# The 0.11 stable name for the store class.
SessionStore = SQLiteSessionStore
