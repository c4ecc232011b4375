"""Tool definitions: a name, a description and a JSON schema for the arguments.

``ToolDefinition`` keeps the 0.11 constructor. :meth:`ToolDefinition.from_function` and the
:func:`tool` decorator derive the definition from a function's type hints and docstring
(see :mod:`power_loop.tools.schema`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, overload

from ..approvals import MAX_APPROVAL_TTL_S
from .schema import function_schema

if TYPE_CHECKING:
    from .context import ToolContext

__all__ = ["ApprovalCheck", "FunctionTool", "Precheck", "ToolDefinition", "tool"]

ApprovalCheck = Callable[[Mapping[str, Any], "ToolContext"], Any]
"""``requires_approval`` as a callable: ``(args, ctx) -> bool`` (or an awaitable of one)."""

Precheck = Callable[[Mapping[str, Any], "ToolContext"], Any]
"""``precheck(args, ctx) -> True | False | str`` (or an awaitable of one): run when an approved
call is about to run; ``True`` lets it run, ``False`` or a string (what changed) issues a fresh
approval request instead."""

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _empty_schema() -> dict[str, Any]:
    return {"type": "object", "properties": {}}


@dataclass(frozen=True)
class ToolDefinition:
    """What the model is told about a tool.

    Attributes:
        name: 1-64 characters of ``[A-Za-z0-9_-]`` (what every provider accepts).
        description: What the tool does and when to use it.
        input_schema: JSON schema of the arguments object.
        required_params: Extra required parameter names, merged into the schema's
            ``required`` list (0.11 compatibility).
        requires_approval: The call waits for a human's approval before it runs: ``True``,
            or a callable ``(args, ctx) -> bool`` deciding per call (sync or async; one that
            raises counts as ``True``). The run then ends ``awaiting_approval``.
        approval_ttl_s: How long this tool's approval requests stay valid (None: the loop's
            ``AgentLoopConfig.approval_ttl_s``).
        precheck: Re-validation when an approved call is about to run: ``(args, ctx)``
            returning ``True`` to run it, or ``False`` / a string saying what changed to issue
            a fresh approval request (new token, new expiry) instead.
    """

    name: str
    description: str
    input_schema: Mapping[str, Any] = field(default_factory=_empty_schema, hash=False)
    required_params: tuple[str, ...] = ()
    requires_approval: bool | ApprovalCheck = field(default=False, hash=False, compare=False)
    approval_ttl_s: float | None = None
    precheck: Precheck | None = field(default=None, hash=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"invalid tool name {self.name!r}: use 1-64 letters, digits, '_' or '-'")
        if not isinstance(self.input_schema, Mapping):
            raise ValueError(f"tool {self.name!r}: input_schema must be a JSON schema object")
        kind = self.input_schema.get("type", "object")
        if kind != "object":
            raise ValueError(f"tool {self.name!r}: input_schema must have type 'object', not {kind!r}")
        if not isinstance(self.required_params, tuple):
            object.__setattr__(self, "required_params", tuple(self.required_params))
        if not isinstance(self.requires_approval, bool) and not callable(self.requires_approval):
            raise ValueError(f"tool {self.name!r}: requires_approval must be a bool or a callable (args, ctx) -> bool")
        if self.approval_ttl_s is not None and (
            isinstance(self.approval_ttl_s, bool)
            or not isinstance(self.approval_ttl_s, (int, float))
            or not 0 < self.approval_ttl_s <= MAX_APPROVAL_TTL_S
        ):
            raise ValueError(
                f"tool {self.name!r}: approval_ttl_s must be > 0 and at most 100 years, got {self.approval_ttl_s!r}"
            )
        if self.precheck is not None and not callable(self.precheck):
            raise ValueError(f"tool {self.name!r}: precheck must be a callable (args, ctx) -> bool | str")

    @property
    def parameters(self) -> dict[str, Any]:
        """The effective arguments schema (``required_params`` merged in)."""
        cached = self.__dict__.get("_parameters")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        schema = copy.deepcopy(dict(self.input_schema))
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        required = list(schema.get("required", ()))
        for name in self.required_params:
            if name not in required:
                required.append(name)
        if required:
            schema["required"] = required
        self.__dict__["_parameters"] = schema
        return schema

    def to_openai_tool(self) -> dict[str, Any]:
        """The Chat Completions ``tools[]`` entry."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    @classmethod
    def from_function(
        cls, fn: Callable[..., Any], *, name: str | None = None, description: str | None = None
    ) -> ToolDefinition:
        """Derive a definition from ``fn``'s signature, type hints and docstring."""
        doc_description, schema = function_schema(fn, skip=_is_injected)
        return cls(
            name=name or fn.__name__,
            description=description if description is not None else doc_description,
            input_schema=schema,
        )


def _is_injected(annotation: Any) -> bool:
    # Parameters annotated with ToolContext receive the call context instead of model input.
    from .context import ToolContext

    return annotation is ToolContext


@dataclass(frozen=True)
class FunctionTool:
    """A function together with the definition derived from it (see :func:`tool`).

    Calling the object calls the function, so decorated functions stay usable as such.
    """

    definition: ToolDefinition
    handler: Callable[..., Any]
    timeout_s: float | None = None

    @property
    def name(self) -> str:
        """The tool name."""
        return self.definition.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.handler(*args, **kwargs)


@overload
def tool(fn: Callable[..., Any], /) -> FunctionTool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    requires_approval: bool | ApprovalCheck = False,
    approval_ttl_s: float | None = None,
    precheck: Precheck | None = None,
) -> Callable[[Callable[..., Any]], FunctionTool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    requires_approval: bool | ApprovalCheck = False,
    approval_ttl_s: float | None = None,
    precheck: Precheck | None = None,
) -> FunctionTool | Callable[[Callable[..., Any]], FunctionTool]:
    """Turn a function into a tool; the schema comes from its type hints and docstring.

    Use bare (``@tool``) or with options (``@tool(name="lookup", timeout_s=5)``). Register the
    result with ``ToolRegistry.register(fn_tool)``.

    Args:
        fn: The function (sync functions run in a worker thread, async ones on the loop).
        name: Tool name; defaults to the function name.
        description: Tool description; defaults to the docstring's first paragraph.
        timeout_s: Per-call time limit; a call that exceeds it gets an error result.
        requires_approval: ``True``, or ``(args, ctx) -> bool``: calls wait for a human's
            approval (see :class:`ToolDefinition`).
        approval_ttl_s: How long its approval requests stay valid (None: the loop's).
        precheck: ``(args, ctx) -> True | False | str``, run when an approved call is about to
            run; anything but ``True`` issues a fresh approval request instead.
    """

    def wrap(func: Callable[..., Any]) -> FunctionTool:
        definition = ToolDefinition.from_function(func, name=name, description=description)
        if requires_approval is not False or approval_ttl_s is not None or precheck is not None:
            definition = replace(
                definition, requires_approval=requires_approval, approval_ttl_s=approval_ttl_s, precheck=precheck
            )
        return FunctionTool(definition=definition, handler=func, timeout_s=timeout_s)

    return wrap(fn) if fn is not None else wrap
