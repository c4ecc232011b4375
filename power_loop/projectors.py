"""Runtime projectors: per-round views of a session's runtime state for the model.

A projector turns state kept beside the conversation (the todo list, background commands'
updates) into a short text block for the current round. The protocol is power-loop 0.11's:
``project(*, store, session_id, round_index, context) -> str | None`` (None: nothing to
show this round).

Invariants:

* A projector reads the store through the methods it names (``get_runtime_state``,
  ``list_unseen_background_updates``, ``mark_background_seen``); a store without them
  projects nothing rather than failing.
* ``project`` is synchronous, as in 0.11, and calls the store's blocking methods: call it
  from a worker thread (``asyncio.to_thread``), never on the event loop of a busy server.
* :class:`BackgroundRuntimeProjector` with ``mark_seen`` shows each update once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "BackgroundRuntimeProjector",
    "RuntimeProjector",
    "TodoRuntimeProjector",
    "default_runtime_projectors",
    "render_todo",
]

_MARKS = {"completed": "[x]", "done": "[x]", "in_progress": "[>]", "active": "[>]"}


@runtime_checkable
class RuntimeProjector(Protocol):
    """Something that shows the model a view of the session's runtime state each round."""

    def project(self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]) -> str | None:
        """The block to show this round, or None."""
        ...


def _todo_items(value: Any) -> list[Mapping[str, Any]]:
    if isinstance(value, Mapping):
        value = value.get("items", value.get("todos", []))
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        return []
    return [item if isinstance(item, Mapping) else {"content": str(item)} for item in value]


def render_todo(value: Any) -> str:
    """A todo list (items with ``content``/``text`` and ``status``) as checkbox lines under
    ``# Todo``; "" when there is nothing to show."""
    lines = []
    for item in _todo_items(value):
        text = str(item.get("content") or item.get("text") or item.get("title") or "").strip()
        if text:
            lines.append(f"{_MARKS.get(str(item.get('status', 'pending')), '[ ]')} {text}")
    return "# Todo\n" + "\n".join(lines) if lines else ""


@dataclass(frozen=True)
class TodoRuntimeProjector:
    """Shows the session's todo list (runtime state under ``state_key``) every round.

    Attributes:
        state_key: The runtime-state key the todo tool writes.
    """

    state_key: str = "todo"

    def project(self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]) -> str | None:
        """The todo list, or None when the store has none (or keeps no runtime state)."""
        getter = getattr(store, "get_runtime_state", None)
        if getter is None:
            return None
        return render_todo(getter(session_id, self.state_key)) or None


@dataclass(frozen=True)
class BackgroundRuntimeProjector:
    """Shows updates of background commands that the model has not seen yet.

    Attributes:
        mark_seen: Mark the shown updates seen, so each is shown once.
    """

    mark_seen: bool = True

    def project(self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]) -> str | None:
        """One line per unseen update, or None."""
        lister = getattr(store, "list_unseen_background_updates", None)
        if lister is None:
            return None
        updates = list(lister(session_id) or [])
        if not updates:
            return None
        lines, ids = [], []
        for update in updates:
            get = update.get if isinstance(update, Mapping) else lambda k, d=None, u=update: getattr(u, k, d)
            task_id = get("task_id")
            ids.append(task_id)
            tail = str(get("output_tail") or "").strip()
            line = f"- {task_id} ({get('status', '?')}): {get('command', '')}"
            lines.append(line + (f"\n  last output: {tail[-500:]}" if tail else ""))
        marker = getattr(store, "mark_background_seen", None)
        if self.mark_seen and marker is not None:
            marker(session_id, ids)
        return "# Background commands\n" + "\n".join(lines)


def default_runtime_projectors() -> tuple[RuntimeProjector, ...]:
    """The todo and background projectors, in that order."""
    return (TodoRuntimeProjector(), BackgroundRuntimeProjector())
