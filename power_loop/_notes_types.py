"""The vocabulary of agent-written notes: the policy, the row, the "full" error.

Imports nothing but :mod:`power_loop.errors`, so the store's rules (``store/_notes_sql.py``)
and the notes feature (``notes.py``) share these types without a cycle. A policy is frozen and
checked on creation; an invalid one never reaches the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from .errors import PowerLoopError

__all__ = ["DEFAULT_NOTES_POLICY", "NoteEviction", "NoteRow", "NotesFullError", "NotesPolicy"]

NoteEviction = Literal["reject", "fifo"]
"""What adding a note to a full session does: refuse it, or drop the oldest unpinned note."""


class NotesFullError(PowerLoopError):
    """A session holds ``max_notes`` notes and the policy refuses a new one.

    The message tells the model what to do: delete or merge notes, then add again.

    Attributes:
        session_id: The session.
        max_notes: The limit that was reached.
    """

    def __init__(self, message: str, *, session_id: str = "", max_notes: int = 0) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.max_notes = max_notes


@dataclass(frozen=True)
class NotesPolicy:
    """Limits of a session's notes.

    Attributes:
        max_notes: Notes a session may hold.
        max_note_chars: Longest note, in characters; a longer one is refused.
        inject_max_chars: Size limit of the notes block shown to the model each run; when
            the notes do not fit, the oldest unpinned ones are left out and the block says
            how many.
        eviction: ``"reject"`` (default: a full session refuses new notes with
            :class:`NotesFullError`, so nothing is forgotten silently) or ``"fifo"`` (the
            oldest unpinned note is dropped to make room; pinned notes are never dropped).
    """

    max_notes: int = 50
    max_note_chars: int = 1000
    inject_max_chars: int = 8000
    eviction: NoteEviction = "reject"

    def __post_init__(self) -> None:
        for name in ("max_notes", "max_note_chars", "inject_max_chars"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"NotesPolicy.{name} must be an integer >= 1, got {value!r}")
        if self.eviction not in get_args(NoteEviction):
            raise ValueError(f"NotesPolicy.eviction must be one of {get_args(NoteEviction)}, got {self.eviction!r}")


DEFAULT_NOTES_POLICY = NotesPolicy()
"""The policy used when none is given: 50 notes of up to 1,000 characters, 8,000 shown, reject."""


@dataclass(frozen=True)
class NoteRow:
    """One stored note.

    Attributes:
        session_id: The session owning it.
        note_id: Its number in the session (from 1).
        content: The text.
        pinned: Pinned notes are shown first and never evicted.
        created_at: Creation time, epoch ms.
        updated_at: Last change, epoch ms.
    """

    session_id: str
    note_id: int
    content: str
    pinned: bool = False
    created_at: int = 0
    updated_at: int = 0
