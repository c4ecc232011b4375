"""``ToolRegistry``: the tools a loop can offer, with their handlers.

Handlers are called ``handler(**args)`` exactly once per call (never retried on a
``TypeError``). Sync handlers run in a worker thread (inside a run: the loop's own
:class:`~power_loop.tools.threads.ToolThreads`), async ones on the event loop. A handler
parameter annotated :class:`~power_loop.tools.context.ToolContext` receives the call's
context instead of a model argument.

Arguments are validated against the tool's full JSON schema (types, required, enums, nested
objects), not just key presence. The wording of the messages the model sees for bad calls
follows 0.11: ``Unknown tool: X``, ``Error: missing required parameter(s): a, b``, and
``Error: <message>`` for a handler exception.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._util import call_in_thread, is_async_callable
from ..errors import ToolNotFound, ToolValidationError
from ..messages import scrub_surrogates
from .context import ToolContext
from .definition import FunctionTool, ToolDefinition
from .schema import coerce_arguments
from .validation import validate_against_schema

__all__ = [
    "MAX_RESULT_CHARS",
    "AsyncToolInSyncContext",
    "RegisteredTool",
    "ToolRegistry",
    "format_tool_result",
    "truncate_result",
]

MAX_RESULT_CHARS = 50_000


class AsyncToolInSyncContext(TypeError):
    """``ToolRegistry.invoke`` was asked to run an async handler; use ``invoke_async``."""


@dataclass(frozen=True)
class RegisteredTool:
    """A definition with its handler.

    Attributes:
        definition: What the model sees.
        handler: The callable.
        is_async: The handler is a coroutine function.
        timeout_s: Per-call time limit (None: the loop's default).
        context_params: Names of parameters that receive the :class:`ToolContext`.
        coerce: Convert JSON arguments to the handler's annotated types (``@tool`` tools).
    """

    definition: ToolDefinition
    handler: Callable[..., Any]
    is_async: bool = False
    timeout_s: float | None = None
    context_params: tuple[str, ...] = ()
    coerce: bool = False
    _signature_ok: bool = field(default=True, repr=False)

    @property
    def name(self) -> str:
        """The tool name."""
        return self.definition.name


def _context_params(handler: Callable[..., Any]) -> tuple[str, ...]:
    """Parameters annotated ``ToolContext`` (resolved the same way the schema resolves them)."""
    try:
        params = inspect.signature(handler).parameters
    except (TypeError, ValueError):
        return ()
    try:
        hints = typing.get_type_hints(handler)
    except Exception:  # unresolvable annotations: fall back to what the signature says
        hints = {}
    return tuple(
        name
        for name, param in params.items()
        if hints.get(name, param.annotation) is ToolContext or param.annotation == "ToolContext"
    )


def truncate_result(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """Cut ``text`` to at most ``limit`` characters, ending with a marker giving the original
    length (for limits too small to hold the marker, a plain cut)."""
    if len(text) <= limit:
        return text
    marker = f"\n... (truncated, {len(text)} total chars)"
    keep = limit - len(marker)
    if keep <= 0:
        return text[:limit]
    return text[:keep] + marker


def format_tool_result(value: Any, limit: int = MAX_RESULT_CHARS) -> str:
    """A handler's return value as the text the model sees (non-strings JSON-encoded).

    Lone surrogates (``os.listdir`` of a non-UTF-8 file name yields them) become U+FFFD: the
    text must be storable and sendable as UTF-8.
    """
    if isinstance(value, str):
        text = value
    elif isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
    else:
        try:
            text = json.dumps(value, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(value)
    return truncate_result(scrub_surrogates(text), limit)


class ToolRegistry:
    """A name → (definition, handler) map.

    Register with ``register(definition, handler)`` (0.11), ``register(fn_tool)`` for a
    :func:`~power_loop.tools.definition.tool`-decorated function, or ``register(fn)`` for a plain
    function (its schema is derived from the type hints).
    """

    def __init__(self, tools: Iterable[FunctionTool | RegisteredTool] = ()) -> None:
        self._tools: dict[str, RegisteredTool] = {}
        for item in tools:
            if isinstance(item, RegisteredTool):
                self._tools[item.name] = item
            else:
                self.register(item)

    def __repr__(self) -> str:
        return f"ToolRegistry({self.names()!r})"

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tools))

    def register(
        self,
        definition: ToolDefinition | FunctionTool | Callable[..., Any],
        handler: Callable[..., Any] | None = None,
        *,
        overwrite: bool = False,
        timeout_s: float | None = None,
    ) -> RegisteredTool:
        """Add a tool.

        Args:
            definition: A :class:`ToolDefinition` (then ``handler`` is required), a
                ``@tool`` function, or a plain function.
            handler: The callable for a ``ToolDefinition``.
            overwrite: Replace a tool of the same name instead of failing.
            timeout_s: Per-call time limit for this tool.

        Raises:
            ValueError: The name is taken (and not ``overwrite``), or a handler is missing.
        """
        coerce = False
        if isinstance(definition, FunctionTool):
            handler = handler or definition.handler
            timeout_s = timeout_s if timeout_s is not None else definition.timeout_s
            definition, coerce = definition.definition, True
        elif not isinstance(definition, ToolDefinition):
            if not callable(definition):
                raise TypeError(f"cannot register {definition!r} as a tool")
            handler = handler or definition
            definition, coerce = ToolDefinition.from_function(definition), True
        if handler is None or not callable(handler):
            raise ValueError(f"Missing handler for tool definition: {definition.name}")
        if definition.name in self._tools and not overwrite:
            raise ValueError(f"Tool already registered: {definition.name}")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"tool {definition.name!r}: timeout_s must be > 0")
        registered = RegisteredTool(
            definition=definition,
            handler=handler,
            is_async=is_async_callable(handler),
            timeout_s=timeout_s,
            context_params=_context_params(handler),
            coerce=coerce,
        )
        self._tools[definition.name] = registered
        return registered

    def unregister(self, name: str) -> bool:
        """Remove a tool; returns whether it was there."""
        return self._tools.pop(name, None) is not None

    def has(self, name: str) -> bool:
        """True when ``name`` is registered."""
        return name in self._tools

    def get(self, name: str) -> RegisteredTool | None:
        """The registered tool, or None."""
        return self._tools.get(name)

    def definitions(self) -> list[ToolDefinition]:
        """Definitions in registration order."""
        return [t.definition for t in self._tools.values()]

    def names(self) -> list[str]:
        """Names in registration order."""
        return list(self._tools)

    def subset(self, names: Iterable[str]) -> ToolRegistry:
        """A new registry with only ``names`` (unknown names are ignored)."""
        wanted = set(names)
        return ToolRegistry(t for n, t in self._tools.items() if n in wanted)

    def to_openai_tools(self) -> list[dict[str, Any]]:
        """Chat Completions ``tools`` entries."""
        return [d.to_openai_tool() for d in self.definitions()]

    def validate(self, name: str, args: Any) -> str | None:
        """Check a call; return the message the model should see, or None when valid."""
        tool = self._tools.get(name)
        if tool is None:
            return f"Unknown tool: {name}"
        return validation_message(tool.definition, args)

    def _check(self, name: str, args: Mapping[str, Any] | None) -> tuple[RegisteredTool, dict[str, Any]]:
        tool = self._tools.get(name)
        if tool is None:
            raise ToolNotFound(f"tool not found: {name}")
        values = {} if args is None else args
        problem = validation_message(tool.definition, values)
        if problem is not None:
            text = problem.removeprefix("Error: ")
            raise ToolValidationError(text if repr(name) in text else f"tool {name!r}: {text}")
        return tool, dict(values)

    def invoke(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """Validate and call a sync tool in this thread; return the handler's value.

        Raises:
            ToolNotFound: Unknown tool.
            ToolValidationError: Invalid arguments.
            AsyncToolInSyncContext: The handler is async.
        """
        tool, values = self._check(name, args)
        if tool.is_async:
            raise AsyncToolInSyncContext(f"Tool {name!r} has an async handler; call invoke_async() instead.")
        return call_handler_sync(tool, values, None)

    async def invoke_async(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """Validate and call a tool (sync handlers in a worker thread); return its value.

        Raises:
            ToolNotFound: Unknown tool.
            ToolValidationError: Invalid arguments.
        """
        tool, values = self._check(name, args)
        return await call_handler(tool, values, None)


def validation_message(definition: ToolDefinition, args: Any) -> str | None:
    """The model-facing message for invalid ``args``, or None."""
    if not isinstance(args, Mapping):
        return f"Error: arguments for tool '{definition.name}' must be a JSON object, got {type(args).__name__}"
    errors = validate_against_schema(args, definition.parameters)
    if not errors:
        return None
    missing = [e for e in errors if e.startswith("missing required parameter(s):")]
    other = [e for e in errors if e not in missing]
    parts = [f"Error: {missing[0]}"] if missing else []
    if other:
        lead = "" if parts else "Error: "
        parts.append(f"{lead}invalid arguments for tool '{definition.name}': " + "; ".join(other))
    return ". ".join(parts)


def _prepare_args(tool: RegisteredTool, values: dict[str, Any], context: ToolContext | None) -> dict[str, Any]:
    args = coerce_arguments(tool.handler, values) if tool.coerce else dict(values)
    for name in tool.context_params:
        args[name] = context
    return args


def bind_handler(tool: RegisteredTool, values: dict[str, Any], context: ToolContext | None) -> Callable[[], Any]:
    """The handler bound to its (coerced) arguments and context, ready to be called once."""
    return functools.partial(tool.handler, **_prepare_args(tool, values, context))


def call_handler_sync(tool: RegisteredTool, values: dict[str, Any], context: ToolContext | None) -> Any:
    """Call a sync handler in the current thread."""
    return tool.handler(**_prepare_args(tool, values, context))


async def call_handler(tool: RegisteredTool, values: dict[str, Any], context: ToolContext | None) -> Any:
    """Call a handler once: async ones awaited here, sync ones in a worker thread."""
    args = _prepare_args(tool, values, context)
    if tool.is_async:
        return await tool.handler(**args)
    result = await asyncio.to_thread(call_in_thread, "the tool handler", tool.handler, **args)
    if inspect.isawaitable(result):  # a sync callable that returned a coroutine
        return await result
    return result
