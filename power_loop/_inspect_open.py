"""Opening a store for the operators' commands, and ``power-loop migrate``.

The inspector commands and the viewer read a store as it is: before opening one (which
would create a missing SQLite file, create a PostgreSQL schema's tables, or migrate an older
schema) they check it here, in a worker thread, and refuse with one actionable line.
``power-loop migrate`` is the one command that upgrades a store in place: an older schema
version, or a power-loop 0.11 file (after a backup copy beside it, as a loop does).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import re
import shlex
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from .errors import PowerLoopError
from .store.factory import DB_URL_ENV, open_store
from .store.postgres import PostgresSessionStore, redact_url
from .store.schema import LATEST_VERSION
from .store.sqlite import SQLiteSessionStore

__all__ = [
    "InspectError",
    "MigrateReport",
    "check_postgres",
    "check_sqlite",
    "hide_passwords",
    "is_postgres",
    "migrate_store",
    "opened",
]

Store = SQLiteSessionStore | PostgresSessionStore

_PASSWORD = re.compile(r"(?i)(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)")


class InspectError(PowerLoopError):
    """A problem the user can fix (printed as one line, exit status 2)."""


def hide_passwords(text: str) -> str:
    """``text`` with the password of a connection string (``password=...`` as a key or a URL
    parameter) replaced; :func:`~power_loop.store.postgres.redact_url` also hides the one in a
    URL's user part."""
    return _PASSWORD.sub(r"\1***", text)


def is_postgres(db: str) -> bool:
    """Whether ``db`` names a PostgreSQL store (a URL or a libpq ``key=value`` string)."""
    return db.startswith(("postgresql://", "postgres://")) or ("://" not in db and "dbname=" in db)


def _migrate_hint(where: str) -> str:
    return f"open it once with this power_loop to migrate, or run: power-loop migrate --db {shlex.quote(where)}"


# --------------------------------------------------------------------------- SQLite


@dataclass(frozen=True)
class _SQLiteFile:
    version: int  # PRAGMA user_version
    is_011: bool  # a power-loop 0.11 file (version 0 with 0.11's tables)
    tables: list[str]  # the tables of a file at version 0


def _probe_sqlite(path: str) -> _SQLiteFile:
    """What the file at ``path`` is, read through a read-only connection (runs in a worker
    thread); InspectError when it is missing, a directory, empty, locked or no database."""
    from .store._legacy import is_011

    if not os.path.exists(path):
        raise InspectError(f"no such database file: {path} (nothing was created)")
    if os.path.isdir(path):
        raise InspectError(f"{path} is a directory, not an SQLite database file")
    if os.path.getsize(path) == 0:
        raise InspectError(f"{path} is not a power_loop SQLite database (it is empty)")
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            old = version == 0 and is_011(conn)
            tables = [] if version else [str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise InspectError(f"the database {path} is locked by another connection; retry later") from None
        raise InspectError(f"{path} is not a power_loop SQLite database ({exc})") from None
    return _SQLiteFile(version, old, tables)


def _foreign(path: str, tables: list[str]) -> InspectError:
    shown = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
    held = f"it holds other tables: {shown}" if tables else "it holds no tables"
    return InspectError(f"{path} is not a power_loop SQLite database ({held})")


def check_sqlite(path: str, create: bool) -> None:
    """Refuse what opening would create or migrate (runs in a worker thread); ``create``
    (import) accepts a missing or empty file."""
    if create and (not os.path.exists(path) or os.path.getsize(path) == 0):
        return  # import: a new file is what was asked for
    state = _probe_sqlite(path)
    if state.is_011:  # migrating writes the file (after a backup): not an inspector's job
        raise InspectError(
            f"{path} is a power-loop 0.11 database: migrate it first (it is upgraded in place and a "
            f"backup is kept), then inspect it: power-loop migrate --db {shlex.quote(path)}"
        )
    if state.version == 0 and not (create and not state.tables):
        raise _foreign(path, state.tables)
    if state.version:
        _refuse_version(path, state.version, path)


def _refuse_version(where: str, version: int, db: str) -> None:
    if version != LATEST_VERSION:
        hint = "upgrade power_loop" if version > LATEST_VERSION else _migrate_hint(db)
        raise InspectError(f"{where} has schema version {version}, this power_loop reads {LATEST_VERSION}: {hint}")


# --------------------------------------------------------------------------- PostgreSQL


def _pg_version(store: PostgresSessionStore) -> int | None:
    """The schema version of the store's PostgreSQL schema, or None when it holds no
    power_loop store (runs in a worker thread)."""
    try:
        import psycopg
    except ImportError:
        raise InspectError('PostgreSQL stores need psycopg 3: pip install "power-loop[postgres]"') from None
    where = hide_passwords(redact_url(store.url))
    try:
        with psycopg.connect(store.url, connect_timeout=max(1, int(store.connect_timeout_s))) as conn:
            found = conn.execute(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = %s AND table_name = 'power_loop_schema'",
                (store.schema,),
            ).fetchone()
            if found is None:
                return None
            row = conn.execute(f'SELECT MAX(version) FROM "{store.schema}".power_loop_schema').fetchone()
    except psycopg.Error as exc:
        detail = hide_passwords(" ".join(str(exc).split())) or type(exc).__name__
        raise InspectError(f"cannot connect to PostgreSQL at {where}: {detail}") from None
    return int(row[0] or 0) if row else 0


def _no_pg_store(store: PostgresSessionStore) -> InspectError:
    where = hide_passwords(redact_url(store.url))
    return InspectError(f"PostgreSQL schema {store.schema!r} at {where} holds no power_loop store")


def check_postgres(store: PostgresSessionStore, create: bool = False) -> None:
    """The server answers and the schema holds power_loop's tables at this version (runs in a
    worker thread); ``create`` (import) accepts a schema without them."""
    version = _pg_version(store)
    if version is None:
        if create:
            return  # import: a new store is what was asked for
        raise _no_pg_store(store)
    # Opening a store of another version would migrate it (or fail halfway): refuse first.
    _refuse_version(f"PostgreSQL schema {store.schema!r}", version, hide_passwords(redact_url(store.url)))


# --------------------------------------------------------------------------- opening


def _store(db: str, busy_timeout_s: float) -> Store:
    try:
        store = (
            open_store(db, busy_timeout_s=busy_timeout_s)
            if not is_postgres(db)
            else open_store(db, connect_timeout_s=5)
        )
    except ValueError as exc:
        raise InspectError(str(exc)) from None
    assert isinstance(store, (SQLiteSessionStore, PostgresSessionStore))
    return store


def _db(args: argparse.Namespace) -> str:
    db: str | None = args.db or os.environ.get(DB_URL_ENV)
    if not db:
        raise InspectError(f"no database: pass --db PATH|URL or set {DB_URL_ENV}")
    return db


@asynccontextmanager
async def opened(args: argparse.Namespace, *, create: bool = False) -> AsyncIterator[tuple[Store, str]]:
    """The store named by ``--db`` (or ``$POWER_LOOP_DB_URL``), checked, opened and closed."""
    db = _db(args)
    store = _store(db, args.busy_timeout)
    if isinstance(store, PostgresSessionStore):
        await asyncio.to_thread(check_postgres, store, create)
    else:
        await asyncio.to_thread(check_sqlite, store.path, create)
    try:
        await store.open()
        yield store, db
    finally:
        await store.close()


# --------------------------------------------------------------------------- migrate


@dataclass(frozen=True)
class MigrateReport:
    """What ``power-loop migrate`` did.

    Attributes:
        db: The store (a path, or a URL without its password).
        from_version: The schema version found (``"0.11"`` for a power-loop 0.11 file).
        to_version: The schema version now.
        backup: The copy of a 0.11 file kept beside it, else None.
    """

    db: str
    from_version: int | str
    to_version: int
    backup: str | None = None

    @property
    def migrated(self) -> bool:
        """False when the store was at this power_loop's version already."""
        return self.from_version != self.to_version

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "db": self.db,
            "from": self.from_version,
            "to": self.to_version,
            "migrated": self.migrated,
            "backup": self.backup,
        }


async def migrate_store(db: str, *, busy_timeout_s: float = 5.0) -> MigrateReport:
    """Upgrade the store at ``db`` in place to this power_loop's schema version; never create
    one (a missing file, an empty or foreign file and a PostgreSQL schema without power_loop's
    tables are refused with InspectError, as is a store written by a newer power_loop)."""
    store = _store(db, busy_timeout_s)
    found: int | str
    if isinstance(store, PostgresSessionStore):
        shown = hide_passwords(redact_url(db))
        version = await asyncio.to_thread(_pg_version, store)
        if version is None:
            raise _no_pg_store(store)
        found = version
    else:
        shown = store.path
        state = await asyncio.to_thread(_probe_sqlite, store.path)
        if state.version == 0 and not state.is_011:
            raise _foreign(store.path, state.tables)
        found = "0.11" if state.is_011 else state.version
    if isinstance(found, int) and found > LATEST_VERSION:
        raise InspectError(
            f"{shown} has schema version {found}, newer than this power_loop's {LATEST_VERSION}: upgrade power_loop"
        )
    if found == LATEST_VERSION:
        return MigrateReport(shown, found, LATEST_VERSION)
    try:
        await store.open()  # migrates, in one transaction per step (a 0.11 file: after its backup)
    finally:
        await store.close()
    backup = None
    if found == "0.11":
        from .store._legacy import BACKUP_SUFFIX

        copies = glob.glob(glob.escape(store.path + BACKUP_SUFFIX) + "*")
        backup = max(copies, key=os.path.getmtime) if copies else None
    return MigrateReport(shown, found, LATEST_VERSION, backup)
