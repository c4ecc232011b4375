"""Lifecycle hooks: steer every step of a run.

A handler is registered for a :class:`HookPoint` and receives that point's context dataclass.
It may change the context's documented fields and return a :class:`HookDirective` (or None
for CONTINUE; setting ``ctx.directive`` works too). Handlers of one point run in ascending
``order``; the first one returning a directive other than CONTINUE ends the chain.

Each point honours exactly the directives listed in :data:`HONOURED_DIRECTIVES`; returning
another raises :class:`~power_loop.errors.HookError`, as does a handler that raises (the run
ends with that error, its store left consistent). SKIP and SHORT_CIRCUIT read their result
from ``ctx.output``.

==============================  ==========================================  ======================
point                           may change                                  directives honoured
==============================  ==========================================  ======================
SESSION_START ``session.start``   messages (what the model sees this run)     —
SESSION_END ``session.end``       read-only                                   —
ROUND_START ``round.start``       messages (this round)                       BREAK, SKIP
LLM_BEFORE ``llm.before``         messages, system_prompt, tools (a subset    SHORT_CIRCUIT, BREAK
                                  of the offered ones), max_tokens, temperature
LLM_AFTER ``llm.after``           output                                      BREAK (tool calls dropped)
ROUND_DECIDE ``round.decide``     output (the answer SKIP gives every call)    SKIP, BREAK
TOOLS_BATCH_BEFORE                output (the answer SKIP gives every call)    SKIP
TOOL_BEFORE ``tool.before``       tool_name, tool_args                        SKIP
TOOL_AFTER ``tool.after``         output, failed                              BREAK
TOOL_ERROR ``tool.error``         output                                      SKIP, SHORT_CIRCUIT
TOOLS_BATCH_AFTER, ROUND_END      read-only                                   —
COMPACT_BEFORE                    —                                           SKIP
COMPACT_AFTER                     read-only                                   —
MESSAGE_APPEND                    message (before it is stored)               —
MEMORY_RECALLED                   recalled                                    SKIP
TIMER_FIRE ``timer.fire``         message, postpone_s                         SKIP, BREAK
==============================  ==========================================  ======================

Hooks belong to one loop (``loop.hooks``) unless an ``AgentHooks`` is shared on purpose.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import HookError

__all__ = [
    "HONOURED_DIRECTIVES",
    "AgentHooks",
    "BaseHookCtx",
    "CompactAfterCtx",
    "CompactBeforeCtx",
    "HookDirective",
    "HookHandler",
    "HookPoint",
    "LlmAfterCtx",
    "LlmBeforeCtx",
    "MemoryRecalledCtx",
    "MessageAppendCtx",
    "RoundDecideCtx",
    "RoundEndCtx",
    "RoundStartCtx",
    "SessionEndCtx",
    "SessionStartCtx",
    "TimerFireCtx",
    "ToolAfterCtx",
    "ToolBeforeCtx",
    "ToolErrorCtx",
    "ToolsBatchAfterCtx",
    "ToolsBatchBeforeCtx",
]


class HookPoint(str, Enum):
    """Where in a run a hook fires."""

    SESSION_START = "session.start"
    SESSION_END = "session.end"
    ROUND_START = "round.start"
    LLM_BEFORE = "llm.before"
    LLM_AFTER = "llm.after"
    ROUND_DECIDE = "round.decide"
    TOOLS_BATCH_BEFORE = "tools.batch.before"
    TOOL_BEFORE = "tool.before"
    TOOL_AFTER = "tool.after"
    TOOL_ERROR = "tool.error"
    TOOLS_BATCH_AFTER = "tools.batch.after"
    ROUND_END = "round.end"
    COMPACT_BEFORE = "compact.before"
    COMPACT_AFTER = "compact.after"
    MESSAGE_APPEND = "message.append"
    MEMORY_RECALLED = "memory.recalled"
    TIMER_FIRE = "timer.fire"


class HookDirective(str, Enum):
    """What a hook asks the run to do."""

    CONTINUE = "continue"
    SKIP = "skip"
    BREAK = "break"
    SHORT_CIRCUIT = "short_circuit"


_D = HookDirective
HONOURED_DIRECTIVES: dict[HookPoint, frozenset[HookDirective]] = {
    HookPoint.SESSION_START: frozenset(),
    HookPoint.SESSION_END: frozenset(),
    HookPoint.ROUND_START: frozenset({_D.BREAK, _D.SKIP}),
    HookPoint.LLM_BEFORE: frozenset({_D.SHORT_CIRCUIT, _D.BREAK}),
    HookPoint.LLM_AFTER: frozenset({_D.BREAK}),
    HookPoint.ROUND_DECIDE: frozenset({_D.SKIP, _D.BREAK}),
    HookPoint.TOOLS_BATCH_BEFORE: frozenset({_D.SKIP}),
    HookPoint.TOOL_BEFORE: frozenset({_D.SKIP}),
    HookPoint.TOOL_AFTER: frozenset({_D.BREAK}),
    HookPoint.TOOL_ERROR: frozenset({_D.SKIP, _D.SHORT_CIRCUIT}),
    HookPoint.TOOLS_BATCH_AFTER: frozenset(),
    HookPoint.ROUND_END: frozenset(),
    HookPoint.COMPACT_BEFORE: frozenset({_D.SKIP}),
    HookPoint.COMPACT_AFTER: frozenset(),
    HookPoint.MESSAGE_APPEND: frozenset(),
    HookPoint.MEMORY_RECALLED: frozenset({_D.SKIP}),
    HookPoint.TIMER_FIRE: frozenset({_D.SKIP, _D.BREAK}),
}
"""The directives each hook point honours besides CONTINUE."""


# --------------------------------------------------------------------------- contexts


@dataclass
class BaseHookCtx:
    """Fields every context has.

    Attributes:
        round_index: The run's current round (0-based).
        directive: Set it (or return one) to steer the run.
        session_id: The session.
    """

    round_index: int = 0
    directive: HookDirective = HookDirective.CONTINUE
    session_id: str = ""


@dataclass
class SessionStartCtx(BaseHookCtx):
    """A run starts. ``messages`` (dict view) may be replaced to change what the model sees
    during this run; the stored history is not rewritten."""

    scope: str = "main"
    messages: list[dict[str, Any]] = field(default_factory=list)
    stop_event: Any = None


@dataclass
class SessionEndCtx(BaseHookCtx):
    """A run ended. ``reason`` is ``completed``, ``hit_round_limit``, ``budget_exceeded``,
    ``cancelled``, ``degraded``, ``pending_tools``, ``waiting_for_input``, ``hook_break`` or
    ``error``."""

    scope: str = "main"
    reason: str = "completed"
    messages: list[dict[str, Any]] = field(default_factory=list)
    final_text: str | None = None
    status: str = "completed"


@dataclass
class RoundStartCtx(BaseHookCtx):
    """A round starts. BREAK ends the run; SKIP skips this round's model call."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    stop_event: Any = None
    reason: str = ""


@dataclass
class RoundEndCtx(BaseHookCtx):
    """A round ended (read-only)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    has_tools: bool = False
    response_text: str = ""
    used_todo: bool = False


@dataclass
class LlmBeforeCtx(BaseHookCtx):
    """Before a model call: change the request, or SHORT_CIRCUIT with ``output`` (an
    ``LLMResponse``, an ``AssistantMessage`` or a string) instead of calling the model."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    system_prompt: str | None = None
    tools: list[Any] = field(default_factory=list)
    max_tokens: int = 8000
    temperature: float = 0.0
    output: Any = None


@dataclass
class LlmAfterCtx(BaseHookCtx):
    """After a model call: ``output`` (the ``LLMResponse``) may be replaced; BREAK ends the
    run and drops the tool calls."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    output: Any = None


@dataclass
class RoundDecideCtx(BaseHookCtx):
    """The model asked for tools. SKIP answers every call with ``output``; BREAK ends the run
    (every call answered ``[skipped: ...]``)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    assistant_text: str = ""
    output: str = "[skipped by round_decide hook]"


@dataclass
class ToolsBatchBeforeCtx(BaseHookCtx):
    """Before a batch of tool calls. SKIP answers every call with ``output``."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    output: str = "[skipped by batch hook]"


@dataclass
class ToolsBatchAfterCtx(BaseHookCtx):
    """After a batch of tool calls (read-only)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    used_todo: bool = False


@dataclass
class ToolBeforeCtx(BaseHookCtx):
    """Before one tool call: change ``tool_name`` / ``tool_args``, or SKIP with ``output``
    as the result (an approval gate)."""

    tool_call: dict[str, Any] = field(default_factory=dict)
    tool_name: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)
    output: str = "[skipped by hook]"


@dataclass
class ToolAfterCtx(BaseHookCtx):
    """After one tool call: change ``output`` / ``failed``; BREAK stops the rest of the batch."""

    tool_call: dict[str, Any] = field(default_factory=dict)
    tool_name: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)
    output: str = ""
    failed: bool = False


@dataclass
class ToolErrorCtx(BaseHookCtx):
    """A tool raised. SKIP uses ``output`` as the result; SHORT_CIRCUIT retries the call once."""

    tool_call: dict[str, Any] = field(default_factory=dict)
    tool_name: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    error_message: str = ""
    output: str = ""


@dataclass
class CompactBeforeCtx(BaseHookCtx):
    """Compaction is about to run. SKIP skips it."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    before_tokens: int = 0


@dataclass
class CompactAfterCtx(BaseHookCtx):
    """Compaction finished (read-only)."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    messages_before_count: int = 0
    messages_after_count: int = 0
    before_tokens: int = 0
    after_tokens: int = 0
    summary: str = ""


@dataclass
class MessageAppendCtx(BaseHookCtx):
    """A message is about to be stored; ``message`` (dict view) may be rewritten."""

    message: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemoryRecalledCtx(BaseHookCtx):
    """Memory was recalled; change ``recalled`` or SKIP to inject nothing."""

    recalled: list[Any] = field(default_factory=list)
    budget_tokens: int = 1500


@dataclass
class TimerFireCtx(BaseHookCtx):
    """A timer is due. CONTINUE delivers ``message``; SKIP marks it fired without delivering;
    BREAK cancels it (and its series); ``postpone_s > 0`` re-arms it that much later."""

    timer_id: int = 0
    note: str = ""
    due_at: int = 0
    message: str = ""
    postpone_s: float = 0.0


HookHandler = Callable[[Any], HookDirective | None | Awaitable[HookDirective | None]]


@dataclass
class _Registration:
    handler: HookHandler
    order: int
    seq: int


class AgentHooks:
    """Hook handlers of one loop."""

    def __init__(self) -> None:
        self._handlers: dict[HookPoint, list[_Registration]] = {}
        self._seq = 0

    def register(self, point: HookPoint | str, handler: HookHandler, *, order: int = 0) -> HookHandler:
        """Run ``handler`` at ``point``; lower ``order`` runs first. Returns ``handler``."""
        point = HookPoint(point)
        if not callable(handler):
            raise TypeError(f"hook handler for {point.value} must be callable")
        self._seq += 1
        regs = self._handlers.setdefault(point, [])
        regs.append(_Registration(handler, order, self._seq))
        regs.sort(key=lambda r: (r.order, r.seq))
        return handler

    def unregister(self, point: HookPoint | str, handler: HookHandler) -> bool:
        """Remove ``handler`` from ``point``; returns whether it was registered."""
        point = HookPoint(point)
        regs = self._handlers.get(point, [])
        kept = [r for r in regs if r.handler != handler]  # == so bound methods match
        self._handlers[point] = kept
        return len(kept) != len(regs)

    def clear(self, point: HookPoint | str | None = None) -> None:
        """Remove every handler (of ``point``, or of all points)."""
        if point is None:
            self._handlers.clear()
        else:
            self._handlers.pop(HookPoint(point), None)

    def has(self, point: HookPoint) -> bool:
        """True when ``point`` has handlers (lets the engine skip building its context)."""
        return bool(self._handlers.get(point))

    async def run(self, point: HookPoint, ctx: BaseHookCtx) -> HookDirective:
        """Run the handlers of ``point`` on ``ctx``; return the resulting directive.

        Raises:
            HookError: A handler raised, or returned a directive ``point`` does not honour.
        """
        for reg in list(self._handlers.get(point, ())):
            try:
                outcome = reg.handler(ctx)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
            except HookError:
                raise
            except Exception as exc:
                name = getattr(reg.handler, "__qualname__", repr(reg.handler))
                raise HookError(f"{point.value} hook {name} raised {type(exc).__name__}: {exc}") from exc
            try:
                directive = HookDirective(outcome) if outcome is not None else HookDirective(ctx.directive)
            except ValueError:
                raise HookError(f"{point.value} hook returned {outcome!r}; return a HookDirective or None") from None
            if directive is HookDirective.CONTINUE:
                continue
            if directive not in HONOURED_DIRECTIVES[point]:
                allowed = ", ".join(sorted(d.name for d in HONOURED_DIRECTIVES[point])) or "only CONTINUE"
                raise HookError(
                    f"{point.value} hook returned {directive.name}, which this point does not honour "
                    f"(it honours: {allowed}); return None or HookDirective.CONTINUE instead"
                )
            ctx.directive = directive
            return directive
        return HookDirective.CONTINUE
