"""The ``todo`` tool: the model keeps a short task list for the session.

The model sends the whole list each time; it is stored as the session's runtime state under
``"todo"`` (so it survives restarts and compaction), shown back to the model at every round
by :class:`~power_loop.projectors.TodoRuntimeProjector`, and published as a ``todo_updated``
event.

Invariants:

* A list is checked in full before anything is stored: at most :data:`MAX_TODO_ITEMS` items
  of non-empty text up to :data:`MAX_TODO_CHARS` characters, statuses ``pending``,
  ``in_progress`` or ``completed``, at most one ``in_progress``. A bad list is refused with a
  message the model can act on, and the stored list stays as it was.
* Outside a run of a ``StatefulAgentLoop`` the tool answers with an error message, never an
  exception.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from ..events import AgentEventType, TodoUpdatedPayload
from .context import current_tool_context
from .definition import FunctionTool, ToolDefinition

__all__ = [
    "MAX_TODO_CHARS",
    "MAX_TODO_ITEMS",
    "TODO_DEFINITION",
    "TODO_STATE_KEY",
    "TODO_STATUSES",
    "todo",
    "todo_tool",
]

TODO_STATE_KEY = "todo"
"""The runtime-state key the list is stored under (what ``TodoRuntimeProjector`` reads)."""
TODO_STATUSES = ("pending", "in_progress", "completed")
"""The statuses of a todo item."""
MAX_TODO_ITEMS = 50
"""The longest list accepted."""
MAX_TODO_CHARS = 500
"""The longest item text accepted."""

_MARKS = {"pending": "[ ]", "in_progress": "[>]", "completed": "[x]"}

TODO_DEFINITION = ToolDefinition(
    name="todo",
    description=(
        "Keep your task list for this session. Send the WHOLE list each time (it replaces the "
        "previous one): items with 'content' and 'status' (pending, in_progress or completed; at "
        "most one in_progress). The list is shown to you at every round until you change it."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "description": "The complete task list, in order.",
                "maxItems": MAX_TODO_ITEMS,
                "items": {
                    "type": "object",
                    "properties": {
                        "content": {"type": "string", "description": "What to do."},
                        "status": {"type": "string", "enum": list(TODO_STATUSES)},
                    },
                    "required": ["content", "status"],
                },
            }
        },
        "required": ["items"],
    },
    required_params=("items",),
)
"""The ``todo`` tool's definition."""


def _check(items: Any) -> list[dict[str, str]] | str:
    """The list as stored, or the refusal the model reads."""
    if not isinstance(items, list):
        return "Error: items must be a list of {content, status} objects (the whole list)."
    if len(items) > MAX_TODO_ITEMS:
        return f"Error: the list has {len(items)} items; keep it to {MAX_TODO_ITEMS} (merge or drop finished ones)."
    checked: list[dict[str, str]] = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, Mapping):
            return f"Error: item {i} must be an object with 'content' and 'status'."
        content = item.get("content")
        status = item.get("status", "pending")
        if not isinstance(content, str) or not content.strip():
            return f"Error: item {i} needs non-empty 'content' text."
        if len(content.strip()) > MAX_TODO_CHARS:
            return f"Error: item {i} is {len(content.strip())} characters long; keep items under {MAX_TODO_CHARS}."
        if status not in TODO_STATUSES:
            return f"Error: item {i} has status {status!r}; use one of: {', '.join(TODO_STATUSES)}."
        checked.append({"content": content.strip(), "status": str(status)})
    active = sum(1 for item in checked if item["status"] == "in_progress")
    if active > 1:
        return f"Error: {active} items are in_progress; mark only the one you are working on now."
    return checked


def render(items: list[dict[str, str]]) -> str:
    """The list as checkbox lines (``[ ]``, ``[>]``, ``[x]``)."""
    if not items:
        return "(the todo list is empty)"
    return "\n".join(f"{_MARKS[item['status']]} {item['content']}" for item in items)


async def todo(items: list[dict[str, str]]) -> str:
    """Replace the session's todo list with ``items`` and return it rendered.

    Args:
        items: The whole list: objects with ``content`` and ``status``.
    """
    ctx = current_tool_context()
    if ctx is None or ctx.capabilities is None:
        return "Error: the todo tool only works inside an agent session run by StatefulAgentLoop."
    checked = _check(items)
    if isinstance(checked, str):
        return checked
    await ctx.state.set(TODO_STATE_KEY, {"items": checked})
    rendered = render(checked)
    counts = dict(Counter(item["status"] for item in checked))
    events = ctx.events
    if events is not None:
        payload = TodoUpdatedPayload(items=tuple(checked), counts=counts, rendered=rendered, text=rendered)
        await events.publish(AgentEventType.TODO_UPDATED, payload)
    done = counts.get("completed", 0)
    return f"Todo list updated ({done}/{len(checked)} completed):\n{rendered}"


def todo_tool() -> FunctionTool:
    """The ``todo`` tool, ready to register."""
    return FunctionTool(TODO_DEFINITION, todo)
