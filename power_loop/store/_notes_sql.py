"""The rules of agent-written notes, written once over a
:class:`~power_loop.store.protocols.Tx` and run inside a transaction by the caller.

Invariants:

* A policy's limits hold after every committed add: the count check, the eviction of the
  oldest unpinned note (``fifo``) and the insert are one transaction.
* Pinned notes are never evicted; a session whose notes are all pinned refuses new ones
  even under ``fifo``.
* ``note_id`` is the session's highest remaining id plus one, computed in the insert itself
  (so the id of a deleted newest note is given again; the schema keeps no note counter); a second
  writer racing for the same id (possible only on a backend without a database-wide write
  lock) fails on the primary key and changes nothing.
* Rows are read by column name; the SQL is portable (no ``INSERT OR ...``, no rowid).
"""

from __future__ import annotations

from typing import Any

from .._notes_types import NoteRow, NotesFullError, NotesPolicy
from ._sessions_sql import now_ms, session_ref
from .protocols import Tx

__all__ = ["add_note", "count_notes", "delete_note", "list_notes", "update_note"]

_COLUMNS = "note_id, content, pinned, created_at, updated_at"


def _row(session_id: str, row: Any) -> NoteRow:
    return NoteRow(
        session_id=session_id,
        note_id=int(row["note_id"]),
        content=str(row["content"]),
        pinned=bool(row["pinned"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


def check_content(content: object, policy: NotesPolicy | None) -> str:
    """The note's text, stripped; ValueError for an empty or (under ``policy``) too long one."""
    if not isinstance(content, str) or not content.strip():
        raise ValueError("a note needs non-empty text content")
    text = content.strip()
    if policy is not None and len(text) > policy.max_note_chars:
        raise ValueError(
            f"the note is {len(text)} characters long; notes are limited to {policy.max_note_chars}: "
            "shorten it or split it into several notes"
        )
    return text


def _make_room(tx: Tx, session_id: str, key: int, policy: NotesPolicy) -> None:
    """Evict (fifo) or refuse (reject) so one more note fits under ``policy.max_notes``."""
    count = int(tx.execute("SELECT COUNT(*) AS n FROM notes WHERE session = ?", (key,)).fetchone()["n"])
    if count < policy.max_notes:
        return
    if policy.eviction == "fifo":
        excess = count - policy.max_notes + 1
        victims = tx.execute(
            "SELECT note_id FROM notes WHERE session = ? AND pinned = 0 ORDER BY note_id LIMIT ?", (key, excess)
        ).fetchall()
        if len(victims) == excess:
            for victim in victims:
                tx.execute("DELETE FROM notes WHERE session = ? AND note_id = ?", (key, int(victim["note_id"])))
            return
        reason = f"all of them are pinned beyond what eviction may drop (limit {policy.max_notes})"
    else:
        reason = f"the limit is {policy.max_notes}"
    raise NotesFullError(
        f"session {session_id!r} already holds {count} notes and {reason}. Delete notes that are no longer "
        "needed, or merge several into one with note_update, then add the new note.",
        session_id=session_id,
        max_notes=policy.max_notes,
    )


def add_note(tx: Tx, session_id: str, content: str, *, pinned: bool, policy: NotesPolicy | None) -> NoteRow:
    """Add a note; with ``policy``, enforce its length and count limits first.

    Raises:
        SessionNotFoundError: Unknown session.
        NotesFullError: The session is full and the policy refuses (nothing written).
        ValueError: Empty or too long content.
    """
    text = check_content(content, policy)
    key = session_ref(tx, session_id).key
    if policy is not None:
        _make_room(tx, session_id, key, policy)
    now = now_ms()
    # No INSERT ... RETURNING: SQLite before 3.35 has none (only UPDATE's is emulated).
    row = tx.execute("SELECT COALESCE(MAX(note_id), 0) + 1 AS next FROM notes WHERE session = ?", (key,)).fetchone()
    note_id = int(row["next"])
    tx.execute(
        "INSERT INTO notes (session, note_id, content, pinned, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
        (key, note_id, text, 1 if pinned else 0, now, now),
    )
    return NoteRow(session_id, note_id, text, bool(pinned), now, now)


def update_note(
    tx: Tx,
    session_id: str,
    note_id: int,
    *,
    content: str | None,
    pinned: bool | None,
    policy: NotesPolicy | None,
) -> NoteRow | None:
    """Change a note's text and/or pin; None when the session has no such note.

    Raises:
        SessionNotFoundError: Unknown session.
        ValueError: Empty or too long content.
    """
    key = session_ref(tx, session_id).key
    text = check_content(content, policy) if content is not None else None
    row = tx.execute(
        "UPDATE notes SET content = COALESCE(?, content), pinned = COALESCE(?, pinned), updated_at = ? "
        f"WHERE session = ? AND note_id = ? RETURNING {_COLUMNS}",
        (text, None if pinned is None else (1 if pinned else 0), now_ms(), key, int(note_id)),
    ).fetchone()
    return None if row is None else _row(session_id, row)


def delete_note(tx: Tx, session_id: str, note_id: int) -> bool:
    """Delete a note; False when the session has no such note.

    Raises:
        SessionNotFoundError: Unknown session.
    """
    key = session_ref(tx, session_id).key
    gone = tx.execute("DELETE FROM notes WHERE session = ? AND note_id = ?", (key, int(note_id))).rowcount
    return gone == 1


def list_notes(tx: Tx, session_id: str) -> list[NoteRow]:
    """A session's notes, pinned first, then oldest first; [] for an unknown session."""
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM notes WHERE session = (SELECT id FROM sessions WHERE session_id = ?) "
        "ORDER BY pinned DESC, note_id",
        (session_id,),
    ).fetchall()
    return [_row(session_id, r) for r in rows]


def count_notes(tx: Tx, session_id: str) -> int:
    """How many notes a session holds (0 for an unknown session)."""
    row = tx.execute(
        "SELECT COUNT(*) AS n FROM notes WHERE session = (SELECT id FROM sessions WHERE session_id = ?)",
        (session_id,),
    ).fetchone()
    return int(row["n"])
