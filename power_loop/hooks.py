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
TOOL_BEFORE ``tool.before``       tool_name, tool_args                        SKIP, PAUSE (approval)
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
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, overload, runtime_checkable

from ._util import is_async_callable
from .errors import HookError

__all__ = [
    "HONOURED_DIRECTIVES",
    "AgentHooks",
    "BaseHookCtx",
    "CompactAfterCtx",
    "CompactBeforeCtx",
    "HookDirective",
    "HookContext",
    "HookHandler",
    "HookManagerProtocol",
    "HookPoint",
    "HookResult",
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
    PAUSE = "pause"


_D = HookDirective
HONOURED_DIRECTIVES: dict[HookPoint, frozenset[HookDirective]] = {
    HookPoint.SESSION_START: frozenset(),
    HookPoint.SESSION_END: frozenset(),
    HookPoint.ROUND_START: frozenset({_D.BREAK, _D.SKIP}),
    HookPoint.LLM_BEFORE: frozenset({_D.SHORT_CIRCUIT, _D.BREAK}),
    HookPoint.LLM_AFTER: frozenset({_D.BREAK}),
    HookPoint.ROUND_DECIDE: frozenset({_D.SKIP, _D.BREAK}),
    HookPoint.TOOLS_BATCH_BEFORE: frozenset({_D.SKIP}),
    HookPoint.TOOL_BEFORE: frozenset({_D.SKIP, _D.PAUSE}),
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
    """Before one tool call: change ``tool_name`` / ``tool_args``, SKIP with ``output`` as the
    result, or PAUSE to make the call wait for a human's approval (the run ends
    ``awaiting_approval``; see ``loop.approve``).

    ``approved`` is True when a human approved this call and it is about to run: a PAUSE is
    then ignored (the decision is made)."""

    tool_call: dict[str, Any] = field(default_factory=dict)
    tool_name: str = ""
    tool_args: dict[str, Any] = field(default_factory=dict)
    output: str = "[skipped by hook]"
    approved: bool = False


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


# --------------------------------------------------------------------------- 0.11 legacy API


@dataclass
class HookContext:
    """The untyped context of 0.11's legacy hook API: a ``values`` dict handlers read and change.

    :meth:`AgentHooks.run` / :meth:`AgentHooks.run_async` and ``@phase`` pipeline methods pass
    it; the engine itself passes the typed contexts above.

    Attributes:
        values: Whatever the caller and the handlers exchange.
    """

    values: dict[str, Any] = field(default_factory=dict)


@dataclass
class HookResult:
    """What :meth:`AgentHooks.run` returns, and what a legacy handler may return.

    Attributes:
        context: The context after the chain (a handler may have replaced it).
        directive: The directive the chain ended with.
    """

    context: HookContext = field(default_factory=HookContext)
    directive: HookDirective = HookDirective.CONTINUE


@runtime_checkable
class HookHandler(Protocol):
    """A hook handler: any callable taking the context, sync or async.

    With a typed context it changes the documented fields and returns a :class:`HookDirective`
    or None. With a :class:`HookContext` (legacy ``run``) it may return a ``HookContext``, a
    ``HookResult``, a ``dict`` (the new ``values``), a ``HookDirective`` or None.
    """

    def __call__(self, ctx: Any, /) -> Any:
        """Handle ``ctx``."""


@runtime_checkable
class HookManagerProtocol(Protocol):
    """What the engine and pipelines need from a hook registry (:class:`AgentHooks` is one)."""

    def register(self, hook_point: HookPoint | str, handler: HookHandler, *, order: int = 0) -> Any:
        """Run ``handler`` at ``hook_point``."""

    def clear(self, hook_point: HookPoint | str | None = None) -> None:
        """Remove handlers of ``hook_point`` (or of every point)."""

    def run(self, hook_point: HookPoint | str, context: HookContext) -> HookResult:
        """Run the chain on a legacy context."""

    async def run_async(self, hook_point: HookPoint | str, context: HookContext) -> HookResult:
        """Run the chain on a legacy context, awaiting async handlers."""

    def run_typed(self, hook_point: HookPoint | str, ctx: BaseHookCtx) -> Any:
        """Run the chain on a typed context (sync handlers only)."""

    async def run_typed_async(self, hook_point: HookPoint | str, ctx: BaseHookCtx) -> Any:
        """Run the chain on a typed context."""


def _as_point(value: HookPoint | str) -> HookPoint:
    if type(value) is HookPoint:
        return value
    try:
        return HookPoint(value)
    except ValueError:
        raise ValueError(
            f"unknown hook point {value!r}; use a HookPoint such as HookPoint.TOOL_BEFORE or its value 'tool.before'"
        ) from None


def _point_arg(hook_point: HookPoint | str | None, point: HookPoint | str | None, method: str) -> HookPoint | None:
    # ``point`` is this version's name, ``hook_point`` 0.11's; both are accepted by keyword.
    if hook_point is not None and point is not None and _as_point(hook_point) is not _as_point(point):
        raise TypeError(f"{method}() got both hook_point={hook_point!r} and point={point!r}; pass one")
    chosen = hook_point if hook_point is not None else point
    return None if chosen is None else _as_point(chosen)


def _handler_name(handler: HookHandler) -> str:
    return getattr(handler, "__qualname__", repr(handler))


@dataclass
class _Registration:
    handler: HookHandler
    order: int
    seq: int


class AgentHooks:
    """Hook handlers of one loop.

    The engine runs them with typed contexts (:meth:`run_typed_async`). 0.11's legacy API is
    kept: :meth:`run` / :meth:`run_async` with a :class:`HookContext`, returning a
    :class:`HookResult`.
    """

    def __init__(self) -> None:
        self._handlers: dict[HookPoint, list[_Registration]] = {}
        self._seq = 0

    def register(
        self,
        hook_point: HookPoint | str | None = None,
        handler: HookHandler | None = None,
        *,
        order: int = 0,
        point: HookPoint | str | None = None,
    ) -> HookHandler:
        """Run ``handler`` at ``hook_point`` (``point=`` is accepted too); lower ``order`` runs
        first, equal orders in registration order. Returns ``handler``.

        Raises:
            TypeError: No hook point, or ``handler`` is not callable.
            ValueError: Unknown hook point.
        """
        where = _point_arg(hook_point, point, "register")
        if where is None:
            raise TypeError("register() needs a hook point: register(HookPoint.TOOL_BEFORE, handler)")
        if handler is None or not callable(handler):
            raise TypeError(f"hook handler for {where.value} must be callable, not {type(handler).__name__}")
        self._seq += 1
        regs = self._handlers.setdefault(where, [])
        regs.append(_Registration(handler, order, self._seq))
        regs.sort(key=lambda r: (r.order, r.seq))
        return handler

    def unregister(self, point: HookPoint | str, handler: HookHandler) -> bool:
        """Remove ``handler`` from ``point``; returns whether it was registered."""
        where = _as_point(point)
        regs = self._handlers.get(where, [])
        kept = [r for r in regs if r.handler != handler]  # == so bound methods match
        self._handlers[where] = kept
        return len(kept) != len(regs)

    def clear(self, hook_point: HookPoint | str | None = None, *, point: HookPoint | str | None = None) -> None:
        """Remove every handler of ``hook_point`` (``point=`` is accepted too), or of all points."""
        where = _point_arg(hook_point, point, "clear")
        if where is None:
            self._handlers.clear()
        else:
            self._handlers.pop(where, None)

    def has(self, point: HookPoint | str) -> bool:
        """True when ``point`` has handlers (lets the engine skip building its context)."""
        return bool(self._handlers.get(_as_point(point)))

    def has_async(self, point: HookPoint | str) -> bool:
        """True when a handler of ``point`` is async (a coroutine function, a partial of one, or
        an object with an async ``__call__``).

        :meth:`run_typed` refuses such a chain, so a sync caller checks first instead of
        finding out after the sync handlers before it have run.
        """
        return any(is_async_callable(reg.handler) for reg in self._handlers.get(_as_point(point), ()))

    # ----------------------------------------------------------------- typed contexts

    def _typed_directive(self, point: HookPoint, reg: _Registration, ctx: BaseHookCtx, outcome: Any) -> HookDirective:
        try:
            directive = HookDirective(outcome) if outcome is not None else HookDirective(ctx.directive)
        except ValueError:
            raise HookError(f"{point.value} hook returned {outcome!r}; return a HookDirective or None") from None
        if directive is not HookDirective.CONTINUE and directive not in HONOURED_DIRECTIVES[point]:
            allowed = ", ".join(sorted(d.name for d in HONOURED_DIRECTIVES[point])) or "only CONTINUE"
            raise HookError(
                f"{point.value} hook {_handler_name(reg.handler)} returned {directive.name}, which this point "
                f"does not honour (it honours: {allowed}); return None or HookDirective.CONTINUE instead"
            )
        return directive

    @staticmethod
    def _raised(point: HookPoint, reg: _Registration, exc: Exception) -> HookError:
        return HookError(f"{point.value} hook {_handler_name(reg.handler)} raised {type(exc).__name__}: {exc}")

    async def run_typed_async(self, hook_point: HookPoint | str, ctx: BaseHookCtx) -> HookDirective:
        """Run the handlers of ``hook_point`` on the typed ``ctx``; return the directive.

        Handlers run in order until one returns (or sets ``ctx.directive`` to) a directive
        other than CONTINUE; that directive is stored in ``ctx.directive`` and returned.

        Raises:
            HookError: A handler raised (its exception chained), or returned a directive
                ``hook_point`` does not honour.
        """
        point = _as_point(hook_point)
        for reg in list(self._handlers.get(point, ())):
            try:
                outcome = reg.handler(ctx)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
            except HookError:
                raise
            except Exception as exc:
                raise self._raised(point, reg, exc) from exc
            directive = self._typed_directive(point, reg, ctx, outcome)
            if directive is not HookDirective.CONTINUE:
                ctx.directive = directive
                return directive
        return HookDirective.CONTINUE

    def run_typed(self, hook_point: HookPoint | str, ctx: BaseHookCtx) -> HookDirective:
        """:meth:`run_typed_async` for sync handlers, without an event loop.

        Raises:
            HookError: As :meth:`run_typed_async`, or a handler is async (use
                ``await hooks.run_typed_async(...)``).
        """
        point = _as_point(hook_point)
        for reg in list(self._handlers.get(point, ())):
            try:
                outcome = reg.handler(ctx)
            except HookError:
                raise
            except Exception as exc:
                raise self._raised(point, reg, exc) from exc
            _refuse_awaitable(point, reg, outcome, "await hooks.run_typed_async(...)")
            directive = self._typed_directive(point, reg, ctx, outcome)
            if directive is not HookDirective.CONTINUE:
                ctx.directive = directive
                return directive
        return HookDirective.CONTINUE

    # ----------------------------------------------------------------- both kinds

    @overload
    def run(self, hook_point: HookPoint | str, context: HookContext) -> HookResult: ...

    @overload
    def run(self, hook_point: HookPoint | str, context: BaseHookCtx) -> Awaitable[HookDirective]: ...

    def run(self, hook_point: HookPoint | str, context: HookContext | BaseHookCtx) -> Any:
        """Run the handlers of ``hook_point`` on ``context``.

        With a :class:`HookContext` (0.11's legacy API) the chain runs synchronously and a
        :class:`HookResult` is returned (see :meth:`run_async`). With a typed context this
        returns the awaitable of :meth:`run_typed_async` (``await hooks.run(point, ctx)``).
        """
        if isinstance(context, BaseHookCtx):
            return self.run_typed_async(hook_point, context)
        point = _as_point(hook_point)
        ctx, directive = _check_legacy(context), HookDirective.CONTINUE
        for reg in list(self._handlers.get(point, ())):
            outcome = reg.handler(ctx)
            _refuse_awaitable(point, reg, outcome, "await hooks.run_async(...)")
            ctx, directive = _apply_legacy(point, reg, ctx, directive, outcome)
        return HookResult(context=ctx, directive=directive)

    async def run_async(self, hook_point: HookPoint | str, context: HookContext) -> HookResult:
        """Run the handlers of ``hook_point`` on a legacy :class:`HookContext`.

        Every handler runs, in order, and sees the context the previous one left. A handler
        may return None (keep), a ``HookContext`` (replaces it), a ``dict`` (becomes the new
        ``values``), a ``HookResult`` (context and directive) or a ``HookDirective``. The
        result carries the last directive set. A handler's exception propagates unchanged.

        Raises:
            HookError: A handler returned something else.
        """
        point = _as_point(hook_point)
        ctx, directive = _check_legacy(context), HookDirective.CONTINUE
        for reg in list(self._handlers.get(point, ())):
            outcome = reg.handler(ctx)
            if inspect.isawaitable(outcome):
                outcome = await outcome
            ctx, directive = _apply_legacy(point, reg, ctx, directive, outcome)
        return HookResult(context=ctx, directive=directive)


def _check_legacy(context: Any) -> HookContext:
    if not isinstance(context, HookContext):
        raise TypeError(
            f"run() takes a HookContext or a typed context such as RoundStartCtx, not {type(context).__name__}"
        )
    return context


def _refuse_awaitable(point: HookPoint, reg: _Registration, outcome: Any, instead: str) -> None:
    if inspect.isawaitable(outcome):
        if inspect.iscoroutine(outcome):
            outcome.close()  # never awaited: close it so Python does not warn about it later
        raise HookError(f"{point.value} hook {_handler_name(reg.handler)} is async; call {instead} instead")


def _apply_legacy(
    point: HookPoint, reg: _Registration, ctx: HookContext, directive: HookDirective, outcome: Any
) -> tuple[HookContext, HookDirective]:
    if outcome is None:
        return ctx, directive
    if isinstance(outcome, HookResult):
        return outcome.context, HookDirective(outcome.directive)
    if isinstance(outcome, HookContext):
        return outcome, directive
    if isinstance(outcome, HookDirective):
        return ctx, outcome
    if isinstance(outcome, Mapping):
        return HookContext(values=dict(outcome)), directive
    raise HookError(
        f"{point.value} hook {_handler_name(reg.handler)} returned {outcome!r}; return a HookContext, "
        "HookResult, dict, HookDirective or None"
    )
