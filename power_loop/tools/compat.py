"""0.11's tool helpers: handler protocols, the result envelope, the catalog and the defaults.

* :class:`ToolHandler` and :class:`ToolArgsValidator` name the callables a registry holds and
  a host-side argument check; :class:`ToolHandlerResult` is an optional result envelope.
* :func:`build_registry` binds definitions to handlers by name; :func:`format_tool_catalog`
  renders the "available tools" section of a system prompt.
* :func:`get_tool_definitions` and :func:`validate_tool_args` work on the *default tools*:
  the tools this version ships for an agent to use without writing them (today the wake-up
  tools, ``schedule_wakeup``, ``list_wakeups``, ``cancel_wakeup`` and ``current_time``).
  The other 0.11 default tools (files, shell, notes, skills, ...) are not in this version:
  asking for one by name raises a ``ValueError`` that says so, and the presets list only
  what is available.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .definition import ToolDefinition
from .registry import ToolRegistry, validation_message

__all__ = [
    "ToolArgsValidator",
    "ToolHandler",
    "ToolHandlerResult",
    "build_registry",
    "format_tool_catalog",
    "get_tool_definitions",
    "validate_tool_args",
]


@dataclass
class ToolHandlerResult:
    """A handler's result with an explicit success flag (0.11's envelope).

    Attributes:
        ok: Whether the tool did what was asked.
        content: The text for the model.
        data: Structured data for the host (not shown to the model by itself).
    """

    ok: bool
    content: str
    data: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class ToolHandler(Protocol):
    """A tool's implementation: called with the arguments dict, returns a
    :class:`ToolHandlerResult`, a dict or a string (or an awaitable of one).

    Handlers registered with ``ToolRegistry.register(definition, handler)`` are called with
    keyword arguments instead; :func:`build_registry` accepts either kind.
    """

    def __call__(
        self, args: dict[str, Any]
    ) -> ToolHandlerResult | dict[str, Any] | str | Awaitable[ToolHandlerResult | dict[str, Any] | str]:
        """Run the tool."""
        ...


@runtime_checkable
class ToolArgsValidator(Protocol):
    """A host-side argument check: ``(tool_name, args)`` → the message for the model when the
    arguments are unacceptable, or None (sync or async)."""

    def __call__(self, tool_name: str, args: dict[str, Any]) -> str | None | Awaitable[str | None]:
        """Check one call's arguments."""
        ...


def build_registry(definitions: Sequence[ToolDefinition], handlers: Mapping[str, Callable[..., Any]]) -> ToolRegistry:
    """A new registry with each definition bound to ``handlers[definition.name]``.

    Handlers without a definition are ignored.

    Raises:
        ValueError: A definition has no handler (the message names it), or two definitions
            share a name.
    """
    registry = ToolRegistry()
    for definition in definitions:
        registry.register(definition, handlers.get(definition.name))
    return registry


def format_tool_catalog(tools: Sequence[ToolDefinition] | ToolRegistry, *, header: str = "# Available Tools") -> str:
    """A system-prompt section listing each tool as ``- **name**: description``.

    Argument schemas are left out: the model already receives them with the request.

    Args:
        tools: A registry or a sequence of definitions, listed in their order.
        header: First line of the section.

    Returns:
        ``""`` when there are no tools; otherwise ``header``, a blank line and one line per tool.
    """
    definitions = tools.definitions() if isinstance(tools, ToolRegistry) else list(tools)
    if not definitions:
        return ""
    lines = [f"- **{d.name}**: {d.description}" for d in definitions]
    return f"{header}\n\n" + "\n".join(lines)


# The 0.11 presets, by tool name, in 0.11's order. Names missing from _available() are
# default tools this version does not ship yet.
_PRESETS: dict[str, tuple[str, ...]] = {
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


def _available() -> dict[str, ToolDefinition]:
    # Imported here: timers/ builds on tools/, not the other way round.
    from ..timers.tools import timer_tools

    return {t.definition.name: t.definition for t in timer_tools()}


def get_tool_definitions(
    *, preset: str | None = None, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[ToolDefinition]:
    """Definitions of the default tools, filtered.

    ``include`` wins over ``preset``, which wins over "all"; ``exclude`` is applied last.

    Args:
        preset: ``"core"``, ``"explore"`` or ``"full"``.
        include: Exactly these tools, in this order.
        exclude: Tools to leave out (unknown names are ignored).

    Raises:
        ValueError: An unknown preset, or an ``include`` name that is not a default tool
            (the message says when it is a 0.11 default tool this version does not ship).
    """
    available = _available()
    if include is not None:
        names = list(include)
        for name in names:
            if name in available:
                continue
            if name in _PRESETS["full"]:
                raise ValueError(
                    f"default tool {name!r} is not available in this version of power_loop "
                    f"(available: {', '.join(available)}); register your own tool under that "
                    "name, see docs/migration.md"
                )
            raise ValueError(f"unknown default tool {name!r}; default tools: {', '.join(available)}")
    elif preset is not None:
        if preset not in _PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(_PRESETS)}")
        names = [n for n in _PRESETS[preset] if n in available]
    else:
        names = [n for n in _PRESETS["full"] if n in available]
    dropped = set(exclude or ())
    return [available[n] for n in names if n not in dropped]


def validate_tool_args(tool_name: str, args: Mapping[str, Any]) -> str | None:
    """Check ``args`` against the default tool ``tool_name``'s schema.

    Returns:
        The message the model would get for invalid arguments (``"Error: missing required
        parameter(s): ..."`` and the like), or None when they are valid or the name is not
        a default tool of this version.
    """
    definition = _available().get(tool_name)
    if definition is None:
        return None
    return validation_message(definition, args)
