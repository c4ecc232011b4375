"""0.11's tool helpers: handler protocols, the result envelope and the catalog.

* :class:`ToolHandler` and :class:`ToolArgsValidator` name the callables a registry holds and
  a host-side argument check; :class:`ToolHandlerResult` is an optional result envelope.
* :func:`build_registry` binds definitions to handlers by name; :func:`format_tool_catalog`
  renders the "available tools" section of a system prompt.

This module depends on definitions and the registry only. 0.11's helpers over the default
tools, ``get_tool_definitions`` and ``validate_tool_args``, live in
:mod:`power_loop.tools.default_catalog`, beside the default tools they read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from .definition import ToolDefinition
from .registry import ToolRegistry

__all__ = [
    "ToolArgsValidator",
    "ToolHandler",
    "ToolHandlerResult",
    "build_registry",
    "format_tool_catalog",
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
