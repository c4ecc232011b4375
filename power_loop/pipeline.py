"""0.11's phase pipeline: ``@phase``, ``PhaseContext``, ``PhaseResult`` and ``AgentPipeline``.

A *phase* is an async method ``async def step(self, ctx: PhaseContext)`` of an object that has
``hooks`` (an :class:`~power_loop.hooks.AgentHooks`) and ``bus`` (an
:class:`~power_loop.events.AgentEventBus`). Decorating it with :func:`phase` wraps it with a
before hook, a start event, an end event, an after hook and an error hook, and always returns a
:class:`PhaseResult`. Hooks here use the legacy :class:`~power_loop.hooks.HookContext` API
(``values`` dicts); events carry a :class:`PhaseEventPayload`.

:class:`AgentPipeline` is the base such objects were built on in 0.11. It keeps 0.11's
constructor; :meth:`AgentPipeline.call_llm` and :meth:`AgentPipeline.execute_tool` work on this
version's providers and tools. Running whole conversations belongs to
:class:`~power_loop.StatefulAgentLoop` here, so :meth:`AgentPipeline.run` and
:meth:`AgentPipeline.prepare_round` raise :class:`NotImplementedError` naming it.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .cancellation import CancellationLike, StopSignal
from .config import AgentLoopConfig
from .errors import CancellationRequested
from .events import (
    AgentEvent,
    AgentEventBus,
    AgentEventType,
    BaseEventPayload,
    LlmRetryAttemptedPayload,
    StreamCompletedPayload,
    StreamDeltaPayload,
    StreamStartedPayload,
    _plain,
)
from .hooks import AgentHooks, HookContext, HookDirective, HookPoint
from .messages import Message, message_from_dict
from .providers.base import LLMRequest, LLMResponse, LLMService, StreamCallbacks
from .providers.retry import RetryNotice, complete_with_retry
from .tools.definition import ToolDefinition
from .tools.registry import ToolRegistry, format_tool_result

__all__ = ["AgentPipeline", "PhaseContext", "PhaseEventPayload", "PhaseResult", "phase"]


@dataclass(frozen=True)
class PhaseEventPayload(BaseEventPayload):
    """Payload of the events a ``@phase`` method publishes; ``values`` holds ``phase`` (the
    method's name). ``to_dict()`` returns ``values`` itself, as in 0.11."""

    values: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The values as a plain dict."""
        return {k: _plain(v) for k, v in self.values.items()}


@dataclass
class PhaseContext:
    """What a phase method receives: ``values`` (merged with what the before hook returned),
    the round and the session."""

    values: dict[str, Any] = field(default_factory=dict)
    round_index: int = 0
    session_id: str | None = None


@dataclass
class PhaseResult:
    """What a ``@phase`` method returns: its ``output``, the hooks' ``directive`` and ``values``."""

    output: Any = None
    directive: HookDirective = HookDirective.CONTINUE
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def should_break(self) -> bool:
        """A hook asked to end the run (BREAK)."""
        return self.directive is HookDirective.BREAK

    @property
    def should_skip(self) -> bool:
        """The before hook skipped the phase (SKIP); ``output`` is its stand-in."""
        return self.directive is HookDirective.SKIP

    @property
    def is_short_circuit(self) -> bool:
        """The before hook answered for the phase (SHORT_CIRCUIT); ``output`` is its answer."""
        return self.directive is HookDirective.SHORT_CIRCUIT


PhaseMethod = Callable[[Any, PhaseContext], Awaitable[Any]]


def phase(
    *,
    before: HookPoint | None = None,
    after: HookPoint | None = None,
    error: HookPoint | None = None,
    start_event: AgentEventType | None = None,
    end_event: AgentEventType | None = None,
) -> Callable[[PhaseMethod], Callable[[Any, PhaseContext | None], Awaitable[PhaseResult]]]:
    """Wrap ``async def method(self, ctx: PhaseContext)`` with hooks and events.

    1. ``before`` hook (a ``HookContext`` with a copy of ``ctx.values``): SKIP, SHORT_CIRCUIT
       or BREAK return at once with that directive and ``output = values["output"]``; otherwise
       the values it returns are merged into ``ctx.values``.
    2. ``start_event`` is published, the method runs, ``end_event`` is published.
    3. ``after`` hook (values plus ``"output"``): its directive becomes the result's (BREAK
       ends the caller's run); it may replace ``values["output"]``.

    If the method raises and there is no ``error`` hook point, the exception propagates. With
    one, the ``error`` hook gets the values plus ``error`` and ``error_message``: SKIP uses its
    ``values["output"]`` as the output (steps 2–3 go on); SHORT_CIRCUIT runs the method once
    more; anything else returns
    ``PhaseResult(output="Error: <message>", values={..., "error": exc, "failed": True})``.
    :class:`~power_loop.errors.CancellationRequested` always propagates.
    """

    def decorate(method: PhaseMethod) -> Callable[[Any, PhaseContext | None], Awaitable[PhaseResult]]:
        @functools.wraps(method)
        async def wrapper(self: Any, ctx: PhaseContext | None = None) -> PhaseResult:
            ctx = ctx if ctx is not None else PhaseContext()
            hooks = self.hooks
            if before is not None:
                res = await hooks.run_async(before, HookContext(values=dict(ctx.values)))
                if res.directive in (HookDirective.SKIP, HookDirective.SHORT_CIRCUIT, HookDirective.BREAK):
                    values = dict(res.context.values)
                    return PhaseResult(output=values.get("output"), directive=res.directive, values=values)
                ctx.values.update(res.context.values)
            await _publish(self, ctx, start_event, method.__name__)
            try:
                output = await method(self, ctx)
            except CancellationRequested:
                raise
            except Exception as exc:
                if error is None:
                    raise  # no error hook point: the caller sees the method's own exception (0.11)
                recovered = await _recover(self, method, ctx, error, exc)
                if isinstance(recovered, PhaseResult):
                    return recovered
                output = recovered[0]
            await _publish(self, ctx, end_event, method.__name__)
            values = dict(ctx.values)
            directive = HookDirective.CONTINUE
            if after is not None:
                res = await hooks.run_async(after, HookContext(values={**values, "output": output}))
                values = dict(res.context.values)
                output = values.get("output", output)
                directive = res.directive
            return PhaseResult(output=output, directive=directive, values=values)

        return wrapper

    return decorate


async def _recover(
    owner: Any, method: PhaseMethod, ctx: PhaseContext, error: HookPoint, exc: Exception
) -> PhaseResult | tuple[Any]:
    """The error path of a phase: a 1-tuple with the output to go on with, or the final result."""
    failed = PhaseResult(output=f"Error: {exc}", values={**ctx.values, "error": exc, "failed": True})
    res = await owner.hooks.run_async(
        error, HookContext(values={**ctx.values, "error": exc, "error_message": str(exc)})
    )
    if res.directive is HookDirective.SKIP:
        ctx.values.update(res.context.values)
        return (ctx.values.get("output"),)
    if res.directive is HookDirective.SHORT_CIRCUIT:
        try:
            return (await method(owner, ctx),)
        except CancellationRequested:
            raise
        except Exception as again:
            return PhaseResult(output=f"Error: {again}", values={**ctx.values, "error": again, "failed": True})
    return failed


async def _publish(owner: Any, ctx: PhaseContext, event_type: AgentEventType | None, name: str) -> None:
    bus = getattr(owner, "bus", None)
    if event_type is None or bus is None:
        return
    event = AgentEvent(
        event_type,
        data=PhaseEventPayload(values={"phase": name}),
        session_id=ctx.session_id if ctx.session_id is not None else getattr(owner, "session_id", None),
        round_index=ctx.round_index,
        source="pipeline",
    )
    await bus.publish_async(event)


class AgentPipeline:
    """0.11's pipeline base: the pieces a custom ``@phase`` pipeline calls.

    Args:
        llm: The provider.
        config: Loop settings (``retry_policy`` governs :meth:`call_llm`); None uses defaults.
        tool_registry: Tools :meth:`execute_tool` runs.
        hooks: Hook registry ``@phase`` methods run (a new one when None).
        bus: Event bus ``@phase`` methods and :meth:`call_llm` publish to (a new one when None).
        ctx: Per-run state of your own (0.11 passed its internal context manager); kept as is.
        session_id: Session id put on events.
        stop_event: Cancellation source (token, event or callable) :meth:`call_llm` honours.
        sink, store, drain_follow_ups: Accepted and kept for 0.11 signatures; only 0.11's
            :meth:`run` used them.
    """

    def __init__(
        self,
        *,
        llm: LLMService,
        config: AgentLoopConfig | None = None,
        tool_registry: ToolRegistry | None = None,
        hooks: AgentHooks | None = None,
        bus: AgentEventBus | None = None,
        ctx: Any = None,
        session_id: str | None = None,
        stop_event: CancellationLike = None,
        sink: Any | None = None,
        store: Any | None = None,
        drain_follow_ups: Any | None = None,
    ) -> None:
        self.llm = llm
        self.config = config if config is not None else AgentLoopConfig()
        self.tool_registry = tool_registry
        self.hooks = hooks if hooks is not None else AgentHooks()
        self.bus = bus if bus is not None else AgentEventBus()
        self.ctx = ctx
        self.session_id = session_id
        self.stop_event = stop_event
        self.sink = sink
        self.store = store
        self.drain_follow_ups = drain_follow_ups

    async def call_llm(
        self,
        round_index: int,
        *,
        messages: Sequence[Message | Mapping[str, Any]],
        system_prompt: str | None,
        tools: Sequence[ToolDefinition | Mapping[str, Any]] | None,
        max_tokens: int | None,
        temperature: float | None,
    ) -> LLMResponse:
        """Make one model call and return its :class:`~power_loop.LLMResponse`.

        ``messages`` may be messages or 0.11 dicts; ``tools`` may be ``ToolDefinition`` objects
        or Chat Completions tool dicts. Transient failures retry under ``config.retry_policy``
        (``llm_retry_attempted`` events); streaming publishes ``stream_*`` events.

        Raises:
            LLMRetryExhausted, LLMTimeout: Retries ran out.
            LLMError: A non-retryable failure.
            CancellationRequested: ``stop_event`` fired.
        """
        request = LLMRequest(
            messages=[m if not isinstance(m, Mapping) else message_from_dict(m) for m in messages],
            system_prompt=system_prompt,
            tools=[_tool_definition(t) for t in tools or ()],
            max_tokens=max_tokens,
            temperature=temperature,
        )

        def emit(event_type: AgentEventType, data: BaseEventPayload) -> None:
            self.bus.publish(
                AgentEvent(event_type, data=data, session_id=self.session_id, round_index=round_index, stream_id="main")
            )

        async def on_retry(notice: RetryNotice) -> None:
            payload = LlmRetryAttemptedPayload(
                attempt=notice.attempt,
                max_attempts=notice.max_attempts,
                error_type=type(notice.error).__name__,
                error_message=str(notice.error),
                next_sleep_seconds=notice.delay_s,
            )
            event = AgentEvent(
                AgentEventType.LLM_RETRY_ATTEMPTED, data=payload, session_id=self.session_id, round_index=round_index
            )
            await self.bus.publish_async(event)

        callbacks = StreamCallbacks(
            on_stream_start=lambda: emit(AgentEventType.STREAM_STARTED, StreamStartedPayload()),
            on_text_delta=lambda text: emit(AgentEventType.STREAM_DELTA, StreamDeltaPayload(text=text)),
            on_reasoning_delta=lambda text: emit(
                AgentEventType.STREAM_THINK_DELTA, StreamDeltaPayload(text=text, is_think=True)
            ),
            on_stream_end=lambda: emit(AgentEventType.STREAM_COMPLETED, StreamCompletedPayload()),
        )
        return await complete_with_retry(
            self.llm,
            request,
            policy=self.config.retry_policy,
            callbacks=callbacks,
            stop=StopSignal(self.stop_event),
            on_retry=on_retry,
        )

    async def execute_tool(self, tool_name: str, tool_args: Mapping[str, Any]) -> tuple[str, bool]:
        """Run one tool; return ``(output, failed)``.

        An unknown tool gives ``("Unknown tool: <name>", True)``, invalid arguments the
        validation message with ``True``; a result is formatted as the model would see it
        (non-strings JSON-encoded, long ones truncated). No hooks run; the handler's own
        exception propagates (as in 0.11).
        """
        registry = self.tool_registry
        if registry is None or not registry.has(tool_name):
            return f"Unknown tool: {tool_name}", True
        problem = registry.validate(tool_name, tool_args)
        if problem is not None:
            return problem, True
        value = await registry.invoke_async(tool_name, tool_args)
        return format_tool_result(value), False

    async def prepare_round(self, round_index: int) -> None:
        """Not available: compaction and reminders run per session inside
        :class:`~power_loop.StatefulAgentLoop`.

        Raises:
            NotImplementedError: Always, naming the replacement.
        """
        raise NotImplementedError(
            "AgentPipeline.prepare_round is not available in this version: compaction runs inside "
            "StatefulAgentLoop.send (configure it with AgentLoopConfig(compactor=...))"
        )

    async def run(self, messages: Sequence[Message | Mapping[str, Any]]) -> Any:
        """Not available: whole runs belong to :class:`~power_loop.StatefulAgentLoop`.

        Raises:
            NotImplementedError: Always, naming the replacement.
        """
        raise NotImplementedError(
            "AgentPipeline.run is not available in this version: run conversations with "
            "StatefulAgentLoop(llm=..., db_path=...).send(text, session_id=sid) (same hooks, events "
            "and tools); a custom pipeline can still use @phase, call_llm and execute_tool"
        )


def _tool_definition(tool: ToolDefinition | Mapping[str, Any]) -> ToolDefinition:
    if isinstance(tool, ToolDefinition):
        return tool
    spec = tool.get("function", tool)
    return ToolDefinition(
        name=str(spec["name"]),
        description=str(spec.get("description", "")),
        input_schema=dict(spec.get("parameters") or spec.get("input_schema") or {"type": "object", "properties": {}}),
    )
