"""Store faults: the one translation of ``sqlite3`` errors, and the check that the database
path still names the file the store opened.

Both run on whichever thread owns the connection (aiosqlite's worker thread, or the caller's
thread for the sync conveniences), never on the event loop.
"""

from __future__ import annotations

import errno
import os
import sqlite3

from ..errors import (
    StoreCorruptError,
    StoreError,
    StoreFileGoneError,
    StoreFullError,
    StoreIOError,
    StoreLockedError,
    StoreReadOnlyError,
)

__all__ = ["FileId", "file_id", "gone_error", "path_changed", "store_error", "surrogate_error"]

FileId = tuple[int, int]
"""(st_dev, st_ino) of the database file: what makes it *this* file, whatever its path."""

# SQLite primary result codes (the low byte of an extended code).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26

# Python 3.10 has no ``sqlite_errorcode``: recognise SQLite's fixed English messages instead.
_BY_MESSAGE = (
    ("readonly database", _READONLY),
    ("disk is full", _FULL),
    ("not a database", _NOTADB),
    ("malformed", _CORRUPT),
    ("disk i/o error", _IOERR),
    ("unable to open database file", _CANTOPEN),
    ("database is locked", _BUSY),
    ("database table is locked", _LOCKED),
)


def file_id(path: str) -> FileId | None:
    """The identity of the file at ``path``, or None when nothing is there."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_dev, st.st_ino)


def path_changed(path: str, opened: FileId) -> str | None:
    """How ``path`` stopped naming the file opened as ``opened``, or None while it still does.

    One ``stat`` call: cheap enough to run in every transaction. A path that cannot be
    examined for another reason (a permission denied) is not reported as changed.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "no longer exists"
    except OSError:
        return None
    if (st.st_dev, st.st_ino) != opened:
        return "now names a different file"
    return None


def gone_error(path: str, how: str) -> StoreFileGoneError:
    """The error for a database path that no longer names the open file."""
    return StoreFileGoneError(
        f"the session store file {path} {how}: it was deleted, moved or replaced (or its directory "
        "was removed) while the store had it open. Writes since then went to the old file, which is "
        "not reachable at that path, so this operation is not durably stored and was reported as "
        "failed. Put the file back (or restore it from a backup) and retry, or open a new store on "
        "a new file; until then every store operation fails with this error.",
        path=path,
    )


_BY_ERRNO = {
    errno.EROFS: _READONLY,
    errno.EACCES: _READONLY,
    errno.EPERM: _READONLY,
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EFBIG: _FULL,
}


def _primary_code(exc: sqlite3.Error | OSError) -> int | None:
    if isinstance(exc, OSError):  # creating the directory or the file
        return _BY_ERRNO.get(exc.errno or 0, _IOERR)
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()
    for fragment, primary in _BY_MESSAGE:
        if fragment in text:
            return primary
    return None


def store_error(exc: sqlite3.Error | OSError, path: str) -> StoreError:
    """Translate an ``sqlite3`` exception (or the ``OSError`` of creating the store's
    directory) into the :class:`StoreError` family.

    This is the only place SQLite faults are mapped; callers raise the result ``from exc``.
    The message names the file, what happened and what to do; a failed transaction has been
    rolled back by then, so nothing of it is stored.
    """
    detail = f"{type(exc).__name__}: {exc}"
    name = getattr(exc, "sqlite_errorname", None)
    if name:
        detail += f" [{name}]"
    code = _primary_code(exc)
    if code == _READONLY:
        return StoreReadOnlyError(
            f"the session store {path} cannot be written ({detail}). This process needs write access "
            "to the file, to its -wal and -shm files and to their directory (check permissions, "
            "immutable flags and read-only mounts), or point db_path at a writable location. Nothing "
            "of the failed operation was stored.",
            path=path,
        )
    if code == _FULL:
        return StoreFullError(
            f"the session store {path} could not grow ({detail}): the disk, a quota or a size limit "
            "on the file is full. Free space (or raise the limit) and retry; the failed transaction "
            "was rolled back, nothing of it was stored.",
            path=path,
        )
    if code in (_NOTADB, _CORRUPT):
        return StoreCorruptError(
            f"{path} is not a usable session store ({detail}): it is not an SQLite database, or its "
            "pages are damaged. Check that db_path names the right file; restore a damaged file from "
            "a backup (the sqlite3 shell's .recover can salvage what is left), or use a new path.",
            path=path,
        )
    if code in (_IOERR, _CANTOPEN):
        return StoreIOError(
            f"the session store {path} could not be opened, read or written ({detail}). Check that "
            "the file and its directory exist and are accessible and that the disk and file system "
            "are healthy, then retry; the failed transaction was rolled back.",
            path=path,
        )
    if code in (_BUSY, _LOCKED):
        return StoreLockedError(
            f"the session store {path} stayed locked by another connection for longer than "
            f"busy_timeout_s ({detail}). Retry, raise SQLiteSessionStore(busy_timeout_s=...), or find "
            "the process holding a long transaction on the file.",
            path=path,
        )
    return StoreError(
        f"the session store {path} failed ({detail}); the failed transaction was rolled back.",
        path=path,
    )


def surrogate_error(exc: UnicodeEncodeError, where: str) -> ValueError:
    """The error for a value that cannot be encoded as UTF-8 (its transaction rolled back).

    Free text is scrubbed before it is bound (``_sessions_sql.text``); what is left is a key
    (a session id, say) that holds a lone surrogate and cannot be changed silently.
    """
    text = exc.object if isinstance(exc.object, str) else str(exc.object)
    return ValueError(
        f"cannot store {text[max(0, exc.start - 20) : exc.end + 20]!r} in {where}: it "
        "holds a lone surrogate (a half of a UTF-16 pair, e.g. from os.fsdecode of non-UTF-8 bytes), "
        "which is not valid UTF-8. Use an id or key made of valid text; nothing was stored."
    )
