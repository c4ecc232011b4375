"""0.11's helpers over the default tools: :func:`get_tool_definitions` and :func:`validate_tool_args`.

Both read the default tools from :mod:`power_loop.tools.defaults` (``default_tools()``,
``TOOL_PRESETS`` and the selection rules of ``create_default_tool_registry``), so they cover
every default tool this version ships, and only those.

Invariants:

* Selection is the default registry's: the same names for the same ``preset`` / ``include``
  / ``exclude``, and the same ``ValueError`` for an unknown preset or for an ``include``
  name that is not a default tool (saying so when it is a 0.11 default tool this version
  does not ship).
* Order is 0.11's: a preset, and "every default tool", list their tools in the order 0.11
  listed them (a default tool 0.11 did not have comes last); ``include`` keeps the caller's
  order, without duplicates.
* Every call builds fresh definitions: nothing is cached or shared between callers.

This module sits beside ``defaults.py``, above the rest of ``tools/``: ``compat.py`` and
``prompts.py`` do not import it, so they stay free of what the default tools import
(timers, notes, skills).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .defaults import _select, default_tools
from .definition import ToolDefinition
from .registry import validation_message

__all__ = ["get_tool_definitions", "validate_tool_args"]

# How 0.11 ordered each preset (and "every default tool", its "full" list). Membership comes
# from TOOL_PRESETS; this table only orders.
_ORDER_0_11: dict[str, tuple[str, ...]] = {
    "core": (
        "bash", "read_file", "write_file", "edit_file", "apply_patch", "glob", "grep", "load_skill",
        "request_user_input",
    ),
    "explore": ("bash", "read_file", "glob", "grep", "load_skill", "request_user_input"),
    "full": (
        "write_file", "read_file", "edit_file", "apply_patch", "bash", "glob", "grep", "load_skill", "todo",
        "note_add", "note_update", "note_delete", "schedule_wakeup", "list_wakeups", "cancel_wakeup",
        "current_time", "background_run", "check_background", "request_user_input",
    ),
}  # fmt: skip


def get_tool_definitions(
    *, preset: str | None = None, include: Sequence[str] | None = None, exclude: Iterable[str] | None = None
) -> list[ToolDefinition]:
    """Definitions of the default tools, filtered as ``create_default_tool_registry`` filters.

    ``include`` wins over ``preset``, which wins over "every default tool"; ``exclude`` is
    applied last.

    Args:
        preset: ``"core"``, ``"explore"`` or ``"full"`` (see ``TOOL_PRESETS``).
        include: Exactly these tools, in this order.
        exclude: Tools to leave out (unknown names are ignored).

    Returns:
        The definitions, in 0.11's order for a preset or for every tool, in the order of
        ``include`` otherwise.

    Raises:
        ValueError: An unknown preset, or an ``include`` name that is not a default tool
            (the message says when it is a 0.11 default tool this version does not ship).
    """
    available = default_tools()
    names = _select(available, preset, include, exclude)
    if include is None:
        order = _ORDER_0_11.get(preset if preset is not None else "full", ())
        rank = {name: index for index, name in enumerate(order)}
        names.sort(key=lambda name: rank.get(name, len(order)))  # stable: newer tools keep their order
    return [available[name].definition for name in names]


def validate_tool_args(tool_name: str, args: Mapping[str, Any]) -> str | None:
    """Check ``args`` against the schema of the default tool ``tool_name``.

    Returns:
        The message the model would get for invalid arguments (``"Error: missing required
        parameter(s): ..."`` and the like), or None when they are valid or ``tool_name`` is
        not a default tool.
    """
    found = default_tools().get(tool_name)
    if found is None:
        return None
    return validation_message(found.definition, args)
