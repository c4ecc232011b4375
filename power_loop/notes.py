"""Agent-written notes: durable, per-session memory the model manages with tools.

The model adds, changes and deletes its own notes (``note_add``, ``note_update``,
``note_delete``); :class:`SQLiteNoteMemory`, a memory provider, shows them to the model at
the start of every run. Notes live in the session store's ``notes`` table and are deleted
with their session.

Invariants:

* :class:`NotesPolicy` limits hold at every commit: the count check, a ``fifo`` eviction and
  the insert are one transaction (``store/_notes_sql.py``). Pinned notes are never evicted.
* The default policy refuses a new note when the session is full (:class:`NotesFullError`,
  whose message tells the model to delete or merge), so nothing is forgotten silently.
* What the model is shown fits ``inject_max_chars`` (and the run's memory budget): the
  oldest unpinned notes are left out first and the block says how many are not shown.
* Note tools act on the session whose run calls them; outside a run they answer with an
  error message the model can read, never an exception.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ._notes_types import DEFAULT_NOTES_POLICY, NoteRow, NotesFullError, NotesPolicy
from .memory import MemorySnapshot
from .tools.context import current_tool_context
from .tools.definition import FunctionTool, ToolDefinition
from .tools.registry import ToolRegistry

__all__ = [
    "DEFAULT_NOTES_POLICY",
    "NOTE_TOOL_NAMES",
    "NoteRow",
    "NotesFullError",
    "NotesPolicy",
    "NotesStore",
    "SQLiteNoteMemory",
    "note_tools",
    "register_note_tools",
    "render_notes",
]

NOTE_TOOL_NAMES = ("note_add", "note_update", "note_delete")
"""The names of the note tools, in the order :func:`note_tools` returns them."""

_HEADER = "# Your notes\nNotes you wrote to yourself (note_add, note_update, note_delete); pinned notes first."


@runtime_checkable
class NotesStore(Protocol):
    """What notes need from a session store (``SQLiteSessionStore`` implements it)."""

    async def add_note_async(
        self, session_id: str, content: str, *, pinned: bool = False, policy: NotesPolicy | None = None
    ) -> NoteRow:
        """Add a note under ``policy``."""
        ...

    async def update_note_async(
        self,
        session_id: str,
        note_id: int,
        *,
        content: str | None = None,
        pinned: bool | None = None,
        policy: NotesPolicy | None = None,
    ) -> NoteRow | None:
        """Change a note; None for an unknown one."""
        ...

    async def delete_note_async(self, session_id: str, note_id: int) -> bool:
        """Delete a note; False for an unknown one."""
        ...

    async def list_notes_async(self, session_id: str) -> list[NoteRow]:
        """The session's notes, pinned first, then oldest first."""
        ...


def _fields(note: NoteRow | Mapping[str, Any]) -> tuple[int, str, bool]:
    if isinstance(note, NoteRow):
        return note.note_id, note.content, note.pinned
    return int(note.get("note_id", 0)), str(note.get("content", "")), bool(note.get("pinned", False))


def render_notes(notes: Sequence[NoteRow | Mapping[str, Any]], *, policy: NotesPolicy = DEFAULT_NOTES_POLICY) -> str:
    """The notes block shown to the model, at most ``policy.inject_max_chars`` long.

    Pinned notes come first, then the others oldest first. When the block would be too long,
    the oldest unpinned notes are left out first (then the oldest pinned ones) and a last
    line says how many are not shown. No notes: an empty string.

    Args:
        notes: :class:`NoteRow` objects, or dicts with ``note_id``, ``content``, ``pinned``.
        policy: Supplies ``inject_max_chars``.
    """
    items = sorted((_fields(n) for n in notes), key=lambda f: (not f[2], f[0]))
    if not items:
        return ""
    lines = {nid: f"[#{nid}{', pinned' if pinned else ''}] {text}" for nid, text, pinned in items}
    # Leave-out order: unpinned oldest first, then pinned oldest first.
    drop_order = [f for f in items if not f[2]] + [f for f in items if f[2]]
    shown = [f[0] for f in items]
    hidden = 0
    while True:
        footer = f"\n({hidden} older note(s) not shown: no room for them.)" if hidden else ""
        body = "\n".join(lines[nid] for nid in shown)
        text = f"{_HEADER}\n{body}{footer}" if shown else f"{_HEADER}{footer}"
        if len(text) <= policy.inject_max_chars or not shown:
            return text[: policy.inject_max_chars]
        shown.remove(drop_order[hidden][0])
        hidden += 1


class SQLiteNoteMemory:
    """A memory provider that shows a session's notes to the model at the start of each run.

    ``recall`` returns one system message named ``memory_notes`` (nothing when the session
    has no notes); ``remember`` does nothing, because the note tools write as the model
    calls them. Pass it as ``AgentLoopConfig(memory=SQLiteNoteMemory(store))`` with the
    store the loop uses.

    Args:
        store: The session store holding the notes (a ``SQLiteSessionStore``).
        policy: Limits; ``inject_max_chars`` bounds what is shown.
    """

    def __init__(self, store: NotesStore, *, policy: NotesPolicy = DEFAULT_NOTES_POLICY) -> None:
        self.store = store
        self.policy = policy

    async def recall(
        self, *, messages: Sequence[Mapping[str, Any]], session_id: str, budget_tokens: int = 1500
    ) -> list[dict[str, Any]]:
        """The session's notes as one ``memory_notes`` system message, within both
        ``policy.inject_max_chars`` and ``budget_tokens`` (about four characters a token)."""
        notes = await self.store.list_notes_async(session_id)
        limit = max(1, min(self.policy.inject_max_chars, max(0, budget_tokens) * 4))
        text = render_notes(notes, policy=_with_inject_limit(self.policy, limit))
        if not text:
            return []
        return [{"role": "system", "name": "memory_notes", "content": text}]

    async def remember(self, *, snapshot: MemorySnapshot, session_id: str | None = None) -> None:
        """Nothing to do: notes are written by the note tools as the model calls them."""
        return None


def _with_inject_limit(policy: NotesPolicy, limit: int) -> NotesPolicy:
    if limit == policy.inject_max_chars:
        return policy
    return NotesPolicy(policy.max_notes, policy.max_note_chars, limit, policy.eviction)


def _resolve(store: NotesStore | None, policy: NotesPolicy | None) -> tuple[str, NotesStore, NotesPolicy] | str:
    """The calling session, its notes store and policy; or the refusal the model reads."""
    ctx = current_tool_context()
    if ctx is None:
        return "Error: note tools only work inside an agent session run by StatefulAgentLoop."
    loop = ctx.loop
    found = store if store is not None else getattr(loop, "store", None)
    if not isinstance(found, NotesStore):
        return "Error: notes are not available: this loop's session store does not keep notes."
    if policy is None:
        configured = getattr(getattr(loop, "config", None), "notes_policy", None)
        policy = configured if isinstance(configured, NotesPolicy) else DEFAULT_NOTES_POLICY
    return ctx.session_id, found, policy


def note_tools(store: NotesStore | None = None, *, policy: NotesPolicy | None = None) -> list[FunctionTool]:
    """The note tools (``note_add``, ``note_update``, ``note_delete``).

    Args:
        store: Where notes live; None uses the store of the loop running the call.
        policy: Limits; None uses the loop's ``config.notes_policy``, else
            :data:`DEFAULT_NOTES_POLICY`.
    """

    async def note_add(content: str, pinned: bool = False) -> str:
        where = _resolve(store, policy)
        if isinstance(where, str):
            return where
        sid, notes, pol = where
        try:
            row = await notes.add_note_async(sid, content, pinned=bool(pinned), policy=pol)
        except (NotesFullError, ValueError) as exc:
            return f"Error: {exc}"
        return f"Note #{row.note_id} saved{' (pinned)' if row.pinned else ''}."

    async def note_update(note_id: int, content: str | None = None, pinned: bool | None = None) -> str:
        where = _resolve(store, policy)
        if isinstance(where, str):
            return where
        sid, notes, pol = where
        if content is None and pinned is None:
            return "Error: give the new content, or pinned, or both."
        try:
            row = await notes.update_note_async(sid, int(note_id), content=content, pinned=pinned, policy=pol)
        except ValueError as exc:
            return f"Error: {exc}"
        return f"Note #{note_id} updated." if row is not None else f"Error: note #{note_id} not found."

    async def note_delete(note_id: int) -> str:
        where = _resolve(store, policy)
        if isinstance(where, str):
            return where
        sid, notes, _ = where
        if await notes.delete_note_async(sid, int(note_id)):
            return f"Note #{note_id} deleted."
        return f"Error: note #{note_id} not found."

    content_schema = {"type": "string", "description": "The note's text: one fact, decision or reminder."}
    pinned_schema = {"type": "boolean", "description": "Pinned notes are shown first and never dropped."}
    id_schema = {"type": "integer", "description": "The note's number, as shown in your notes."}
    return [
        FunctionTool(
            ToolDefinition(
                "note_add",
                "Save a durable note to yourself. Your notes are shown to you at the start of every "
                "later turn of this session. Keep each note short; when notes are full, delete or "
                "merge old ones first.",
                {
                    "type": "object",
                    "properties": {"content": content_schema, "pinned": pinned_schema},
                    "required": ["content"],
                },
            ),
            note_add,
        ),
        FunctionTool(
            ToolDefinition(
                "note_update",
                "Change one of your notes: its text, whether it is pinned, or both.",
                {
                    "type": "object",
                    "properties": {"note_id": id_schema, "content": content_schema, "pinned": pinned_schema},
                    "required": ["note_id"],
                },
            ),
            note_update,
        ),
        FunctionTool(
            ToolDefinition(
                "note_delete",
                "Delete one of your notes that is no longer true or needed.",
                {"type": "object", "properties": {"note_id": id_schema}, "required": ["note_id"]},
            ),
            note_delete,
        ),
    ]


def register_note_tools(
    registry: ToolRegistry,
    store: NotesStore | None = None,
    *,
    policy: NotesPolicy | None = None,
    overwrite: bool = False,
) -> ToolRegistry:
    """Register :func:`note_tools` in ``registry`` and return it."""
    for fn_tool in note_tools(store, policy=policy):
        registry.register(fn_tool, overwrite=overwrite)
    return registry
