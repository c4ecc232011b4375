"""Runtime projectors: per-round views of a session's runtime state for the model.

A projector turns state kept beside the conversation (the todo list, background commands'
updates) into a short text block for the current round; the engine appends the blocks to the
end of that round's system prompt (never to the stored history). The protocol is power-loop
0.11's: ``project(*, store, session_id, round_index, context) -> str | None`` (None: nothing
to show this round). ``AgentLoopConfig.runtime_projectors`` defaults to
:func:`default_runtime_projectors`.

Invariants:

* ``project`` is synchronous, as in 0.11, and may call the store's blocking methods: the
  engine runs it in a worker thread, never on the event loop. A projector may also define
  ``async def aproject(...)`` (same keywords); the engine then awaits that instead (the
  built-in projectors do, through the store's ``*_async`` methods).
* A projector whose ``reads_runtime_state`` is true (the built-ins) is skipped for sessions
  that never wrote runtime state or started a background command: a run of such a session
  costs nothing more per round.
* A projector reads the store through the methods it names (``get_runtime_state``,
  ``list_unseen_background_updates``, ``mark_background_seen``); a store without them
  projects nothing rather than failing.
* :class:`BackgroundRuntimeProjector` with ``mark_seen`` shows each update until a model
  answer to it is stored (the engine then calls its ``acknowledge``): a failed or cancelled
  model call, or a crash, does not lose it. A command whose process ended before it finished
  is shown as ``lost``.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "BackgroundRuntimeProjector",
    "RuntimeProjector",
    "TodoRuntimeProjector",
    "default_runtime_projectors",
    "render_background_updates",
    "render_todo",
]

_MARKS = {"completed": "[x]", "done": "[x]", "in_progress": "[>]", "active": "[>]"}
_SHOWN = "power_loop.background_shown"  # the context key of the updates shown this round


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
    reads_runtime_state: ClassVar[bool] = True

    def project(self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]) -> str | None:
        """The todo list, or None when the store has none (or keeps no runtime state)."""
        getter = getattr(store, "get_runtime_state", None)
        if getter is None:
            return None
        return render_todo(getter(session_id, self.state_key)) or None

    async def aproject(
        self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]
    ) -> str | None:
        """:meth:`project` through the store's async methods (what the engine calls)."""
        getter = getattr(store, "get_runtime_state_async", None)
        if getter is None:
            return None
        return render_todo(await getter(session_id, self.state_key)) or None


@dataclass(frozen=True)
class BackgroundRuntimeProjector:
    """Shows updates of background commands that the model has not seen yet.

    Attributes:
        mark_seen: Mark the shown updates seen, so each is shown once.
    """

    mark_seen: bool = True
    reads_runtime_state: ClassVar[bool] = True

    def project(self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]) -> str | None:
        """One line per unseen update, or None."""
        reaper = getattr(store, "reap_lost_background", None)
        if reaper is not None:
            reaper(session_id)
        lister = getattr(store, "list_unseen_background_updates", None)
        if lister is None:
            return None
        updates = list(lister(session_id) or [])
        if not updates:
            return None
        marker = getattr(store, "mark_background_seen", None)
        if self.mark_seen and marker is not None:
            marker(session_id, [_field(u, "task_id") for u in updates])
        return render_background_updates(updates)

    async def aproject(
        self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]
    ) -> str | None:
        """The unseen updates, read in one store transaction (what the engine calls). They are
        marked seen by :meth:`acknowledge`, once the model's answer to them is stored."""
        fetch = getattr(store, "background_updates_async", None)
        if fetch is None:
            return None
        updates = await fetch(session_id)
        if self.mark_seen and updates and isinstance(context, MutableMapping):
            context[_SHOWN] = updates
        return render_background_updates(updates)

    async def acknowledge(self, *, store: Any, session_id: str, context: Mapping[str, Any]) -> None:
        """Mark the updates :meth:`aproject` showed as seen (those that did not change since)."""
        shown = context.get(_SHOWN)
        marker = getattr(store, "mark_background_seen_async", None)
        if not shown or marker is None:
            return
        statuses = {u.task_id: u.status for u in shown}
        await marker(session_id, list(statuses), statuses=statuses)


def _field(update: Any, name: str) -> Any:
    return update.get(name) if isinstance(update, Mapping) else getattr(update, name, None)


def render_background_updates(updates: Sequence[Any]) -> str | None:
    """Background-command updates (rows or dicts) as a ``# Background commands`` block: one
    line per command with its status and exit code, and the end of its output; None for no
    updates."""
    if not updates:
        return None
    lines = []
    for update in updates:
        status = _field(update, "status") or "?"
        code = _field(update, "return_code")
        state = f"{status}, exit code {code}" if code is not None and status != "running" else status
        line = f"- {_field(update, 'task_id')} ({state}): {_field(update, 'command') or ''}"
        tail = str(_field(update, "output_tail") or "").strip()
        lines.append(line + (f"\n  last output: {tail[-500:]}" if tail else ""))
    return "# Background commands\n" + "\n".join(lines)


def default_runtime_projectors() -> tuple[RuntimeProjector, ...]:
    """The todo and background projectors, in that order."""
    return (TodoRuntimeProjector(), BackgroundRuntimeProjector())
