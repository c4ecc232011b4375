"""The subscriber turning a loop's events into spans and metrics (see the package docstring)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import Histogram, MeterProvider, get_meter_provider
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TracerProvider

from ..._version import __version__
from ...events import (
    AgentErrorPayload,
    AgentEvent,
    AgentEventType,
    LlmDegradedPayload,
    LlmRetryAttemptedPayload,
    SessionEndedPayload,
    SessionStartedPayload,
    SubagentTaskStartPayload,
    TimerFiredPayload,
    ToolCallCompletedPayload,
    ToolCallFailedPayload,
    ToolCallStartedPayload,
    UsageUpdatedPayload,
)
from ...hooks import HookPoint, MessageAppendCtx
from ._parts import (
    EVENTS,
    MAX_REMEMBERED,
    SCOPE_NAME,
    SECONDS_BUCKETS,
    TOKEN_BUCKETS,
    RunSpans,
    ToolSpan,
    WakeUp,
    attach,
    detach,
    end,
    messages_json,
    now_ns,
    remember,
    trim,
)

if TYPE_CHECKING:
    from ...loop import StatefulAgentLoop

__all__ = ["OtelInstrumentation"]

log = logging.getLogger("power_loop.contrib.otel")


OTHER_TOOL = "_OTHER"
"""``gen_ai.tool.name`` of a call to a tool the run does not have (a name the model made up)."""

_INSTALLED: weakref.WeakKeyDictionary[StatefulAgentLoop, weakref.ref[OtelInstrumentation]] = weakref.WeakKeyDictionary()
"""The installed instrumentation of each loop, held weakly both ways (an instrumentation goes
with its loop). One at most: each makes a run's span current in the run's task and undoes
that at the run's end; two would undo each other's out of order and leave a run's span current
in the caller's task after ``send`` returned."""

_NOT_ERRORS = frozenset({"completed", "waiting_for_input", "awaiting_approval", "paused", "pending_tools"})
"""Run endings that are no failure: completed, or suspended until a person (or ``resume``)
continues the session."""


class OtelInstrumentation:
    """What :func:`instrument` installs on a loop; :meth:`uninstrument` removes it."""

    def __init__(
        self,
        loop: StatefulAgentLoop,
        *,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        capture_content: bool,
        agent_name: str,
    ) -> None:
        held = _INSTALLED.get(loop)
        installed = held() if held is not None else None
        if installed is not None and installed.installed:
            raise RuntimeError("this loop is instrumented already: call uninstrument() on its instrumentation first")
        self.loop = loop
        self.capture_content = capture_content
        self.agent_name = agent_name
        self._tracer = trace.get_tracer(SCOPE_NAME, __version__, tracer_provider=tracer_provider)
        meter = (meter_provider or get_meter_provider()).get_meter(SCOPE_NAME, __version__)
        self._token_usage: Histogram = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens used by a model call, by gen_ai.token.type (input, output).",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._call_duration: Histogram = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of a model call, retries included.",
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
        self._run_duration: Histogram = meter.create_histogram(
            "power_loop.run.duration", unit="s", description="Duration of a run, by its status."
        )
        self._tool_duration: Histogram = meter.create_histogram(
            "power_loop.tool.duration", unit="s", description="Duration of a tool call."
        )
        self._runs: dict[str, RunSpans] = {}
        self._tool_spans: OrderedDict[tuple[str, str], SpanContext] = OrderedDict()
        self._live_tools: dict[int, tuple[str, SpanContext]] = {}
        self._agent_names: dict[str, str] = {}
        self._scheduled_by: dict[str, SpanContext] = {}
        self._wake_ups: dict[str, list[WakeUp]] = {}
        self._answers: dict[str, list[SpanContext]] = {}
        # (session, text) of the input of a send whose run has not started, by the task
        # running it: one at most per task, gone with the task.
        self._pending_inputs: weakref.WeakKeyDictionary[asyncio.Task[Any], tuple[str, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._unwinding: dict[str, RunSpans] = {}
        self._lock = threading.Lock()
        self._installed = True
        _INSTALLED[loop] = weakref.ref(self)
        for event_type in EVENTS:
            loop.event_bus.subscribe(event_type, self._on_event, priority=1000)
        loop.add_timer_listener(self._on_timer_scheduled)
        if capture_content:
            loop.hooks.register(HookPoint.MESSAGE_APPEND, self._on_append)

    # ------------------------------------------------------------------ lifecycle

    @property
    def installed(self) -> bool:
        """False once :meth:`uninstrument` ran."""
        return self._installed

    def uninstrument(self) -> None:
        """Stop producing spans and metrics (idempotent). Spans still open are ended."""
        if not self._installed:
            return
        self._installed = False
        self.loop.event_bus.unsubscribe(self._on_event)
        self.loop.remove_timer_listener(self._on_timer_scheduled)
        if self.capture_content:
            self.loop.hooks.unregister(HookPoint.MESSAGE_APPEND, self._on_append)
        held = _INSTALLED.get(self.loop)
        if held is not None and held() is self:
            del _INSTALLED[self.loop]
        runs, self._runs = self._runs, {}
        for run in runs.values():
            try:
                for tool in run.tools.values():
                    end(tool.span)
                if run.round is not None:
                    end(run.round)
                end(run.span)
            except Exception:
                log.exception("could not end the spans of run %s", run.run_id)
        if runs:
            # Their spans are still current in the tasks running them: each run's end, in its
            # own task, is the one place that can undo it.
            self._unwinding = runs
            self.loop.event_bus.subscribe(AgentEventType.SESSION_ENDED, self._unwind, priority=1000)

    def _unwind(self, event: AgentEvent) -> None:
        """After :meth:`uninstrument`: a run that was going on ended; the task that ran it
        gets back the context it had before the run."""
        try:
            run = self._unwinding.get(event.session_id or "")
            data = event.data
            if run is None or not isinstance(data, SessionEndedPayload) or data.run_id != run.run_id:
                return
            del self._unwinding[event.session_id or ""]
            detach(run.attached)  # back to the context before the run, the inner spans' too
            if not self._unwinding:
                self.loop.event_bus.unsubscribe(AgentEventType.SESSION_ENDED, self._unwind)
        except Exception:
            log.exception("OpenTelemetry instrumentation failed on %s", event.type.value)

    # ------------------------------------------------------------------ entry points

    def _on_event(self, event: AgentEvent) -> None:
        if not self._installed or event.session_id is None:
            return
        try:
            self._dispatch(event, event.session_id)
        except Exception:  # observing must never break the run observed
            log.exception("OpenTelemetry instrumentation failed on %s", event.type.value)

    def _on_timer_scheduled(self) -> None:
        # Called in the task (or thread) that scheduled the timer: a tool's, when its span is
        # current there.
        try:
            current = trace.get_current_span().get_span_context()
            found = self._live_tools.get(current.span_id) if current.is_valid else None
            if found is not None:
                session_id, run_context = found
                with self._lock:
                    self._scheduled_by[session_id] = run_context
                    trim(self._scheduled_by)
        except Exception:
            log.exception("OpenTelemetry instrumentation failed on a scheduled timer")

    def _on_append(self, ctx: MessageAppendCtx) -> None:
        try:
            message = ctx.message
            if message.get("role") != "user" or not isinstance(message.get("content"), str):
                return
            run = self._runs.get(ctx.session_id or "")
            if run is not None:
                run.inputs.append(message["content"])
            elif ctx.session_id:
                # A send's input, stored before its run starts, in this task, or the send is
                # refused (busy, paused): only a send's run started in this task takes it.
                task = asyncio.current_task()
                if task is not None:
                    self._pending_inputs[task] = (ctx.session_id, message["content"])
        except Exception:
            log.exception("OpenTelemetry instrumentation failed on a stored message")

    # ------------------------------------------------------------------ events

    def _dispatch(self, event: AgentEvent, sid: str) -> None:
        data = event.data
        kind = event.type
        if kind is AgentEventType.SESSION_STARTED and isinstance(data, SessionStartedPayload):
            self._run_started(sid, data)
        elif kind is AgentEventType.SESSION_ENDED and isinstance(data, SessionEndedPayload):
            self._run_ended(sid, data)
        elif kind is AgentEventType.ROUND_STARTED:
            self._round_started(sid, event.round_index)
        elif kind is AgentEventType.ROUND_COMPLETED:
            self._round_ended(sid)
        elif kind is AgentEventType.USAGE_UPDATED and isinstance(data, UsageUpdatedPayload):
            self._model_call(sid, event.round_index, data)
        elif kind is AgentEventType.LLM_RETRY_ATTEMPTED and isinstance(data, LlmRetryAttemptedPayload):
            run = self._runs.get(sid)
            if run is not None:
                attrs = {"power_loop.llm.attempt": data.attempt, "error.type": data.error_type}
                run.retries.append((now_ns(), attrs))
        elif kind is AgentEventType.LLM_DEGRADED and isinstance(data, LlmDegradedPayload):
            self._model_call_failed(sid, event.round_index, data)
        elif kind is AgentEventType.TOOL_CALL_STARTED and isinstance(data, ToolCallStartedPayload):
            self._tool_started(sid, event.round_index, data)
        elif isinstance(data, (ToolCallCompletedPayload, ToolCallFailedPayload)):
            self._tool_ended(sid, event.round_index, data)
        elif kind is AgentEventType.AGENT_ERROR and isinstance(data, AgentErrorPayload):
            run = self._runs.get(sid)
            if run is not None:
                run.error_type = data.error_type or None
        elif kind is AgentEventType.SUBAGENT_TASK_START and isinstance(data, SubagentTaskStartPayload):
            self._agent_names[data.sub_session_id] = data.preset
            trim(self._agent_names)
        elif isinstance(data, TimerFiredPayload):
            self._timer_fired(sid, data)

    def _timer_fired(self, sid: str, data: TimerFiredPayload) -> None:
        if data.outcome == "delivered":  # an idle session: the runner starts a wake-up run
            with self._lock:
                scheduled_by = self._scheduled_by.get(sid)
            remember(self._wake_ups, sid, WakeUp(data.timer_id, data.due_at, data.note, scheduled_by))
        elif data.outcome == "queued" and sid in self._runs:  # the run going on reads it
            self._runs[sid].span.add_event("power_loop.timer.queued", {"power_loop.timer.id": data.timer_id})

    # ------------------------------------------------------------------ runs and rounds

    def _run_started(self, sid: str, data: SessionStartedPayload) -> None:
        agent = self._agent_names.pop(sid, None) or ("subagent" if data.scope == "subagent" else self.agent_name)
        parent = otel_context.get_current()
        links: list[Link] = []
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "gen_ai.conversation.id": sid,
            "power_loop.run.id": data.run_id,
            "power_loop.run.kind": data.run_kind,
            "power_loop.session.scope": data.scope,
        }
        if data.parent_session_id:
            attrs["power_loop.parent_session.id"] = data.parent_session_id
        if data.spawn_tool_call_id:
            attrs["power_loop.spawn.tool_call_id"] = data.spawn_tool_call_id
            spawner = self._tool_spans.get((data.parent_session_id, data.spawn_tool_call_id))
            if data.parent_run_id:  # a foreground child: under the call that waits for it
                if spawner is not None:
                    parent = trace.set_span_in_context(trace.NonRecordingSpan(spawner))
            else:  # a background child (or one resumed later): its own trace, linked
                parent = otel_context.Context()
                if spawner is not None:
                    links.append(Link(spawner, {"power_loop.link": "spawned_by"}))
        # Every run reads the session's inbox: the answers and timers waiting there are this
        # run's, whatever its kind (a send may read them before the wake-up run starts).
        answers = self._answers.pop(sid, [])
        wake_ups = self._wake_ups.pop(sid, [])
        if data.run_kind == "wake":
            # Nobody waits for a wake-up run: it starts a trace of its own, whatever context
            # the task that started it had, linked to what caused it when that is known.
            parent = otel_context.Context()
            for answer in answers:
                links.append(Link(answer, {"power_loop.link": "subagent_answer"}))
            if wake_ups:
                attrs["power_loop.timer.id"] = wake_ups[0].timer_id
                attrs["power_loop.timer.ids"] = [w.timer_id for w in wake_ups]
                attrs["power_loop.timer.due_at"] = wake_ups[0].due_at
                if self.capture_content:
                    attrs["power_loop.timer.note"] = wake_ups[0].note
            seen: set[int] = set()
            for wake in wake_ups:
                origin = wake.scheduled_by
                if origin is not None and origin.span_id not in seen:
                    seen.add(origin.span_id)
                    links.append(Link(origin, {"power_loop.link": "timer", "power_loop.timer.id": wake.timer_id}))
        stale = self._runs.pop(sid, None)
        if stale is not None:  # a run whose end was never published (its task was killed)
            end(stale.span)
        span = self._tracer.start_span(
            f"invoke_agent {agent}", context=parent, kind=SpanKind.INTERNAL, attributes=attrs, links=links
        )
        run = RunSpans(
            run_id=data.run_id,
            span=span,
            started=time.monotonic(),
            kind=data.run_kind,
            scope=data.scope,
            agent=agent,
            attached=attach(span),
        )
        if data.spawn_tool_call_id and not data.parent_run_id:
            run.answers_to = data.parent_session_id
        task = asyncio.current_task()
        pending = self._pending_inputs.pop(task, None) if task is not None else None
        if pending is not None and pending[0] == sid and data.run_kind == "send":  # the kind with an input
            run.inputs.append(pending[1])
        self._runs[sid] = run

    def _run_ended(self, sid: str, data: SessionEndedPayload) -> None:
        run = self._runs.pop(sid, None)
        if run is None:
            return
        failed = data.status not in _NOT_ERRORS
        error_type = (run.error_type or data.status) if failed else None
        try:
            self._close_run(run, data, error_type)
        finally:
            # Whatever failed above, the task that ran the run gets its context back.
            detach(run.round_attached)
            detach(run.attached)
            run.round_attached = run.attached = None
        span = run.span
        if run.answers_to:
            remember(self._answers, run.answers_to, span.get_span_context())
        attrs = {
            "power_loop.run.status": data.status,
            "power_loop.run.kind": run.kind,
            "power_loop.session.scope": run.scope,
            "gen_ai.agent.name": run.agent,
        }
        self._run_duration.record(time.monotonic() - run.started, attrs)

    def _close_run(self, run: RunSpans, data: SessionEndedPayload, error_type: str | None) -> None:
        """End the run's open tool calls, its round and its span, with what its end says."""
        for call_id, tool in list(run.tools.items()):
            # A call the run ends without (cancelled, failed) is an error; one that asked the
            # user (request_user_input) waits with its run, which is no error.
            self._end_tool_span(run, call_id, tool, error_type)
        if run.round is not None:
            self._end_round(run, error_type)
        span = run.span
        span.set_attribute("power_loop.run.status", data.status)
        span.set_attribute("power_loop.run.reason", data.reason)
        if self.capture_content:
            if run.inputs:
                span.set_attribute("gen_ai.input.messages", messages_json("user", run.inputs))
            if data.final_text:
                span.set_attribute("gen_ai.output.messages", messages_json("assistant", [data.final_text], data.reason))
        if error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(Status(StatusCode.ERROR, f"run ended {data.status} ({data.reason})"))
        end(span)

    def _round_started(self, sid: str, index: int | None) -> None:
        run = self._runs.get(sid)
        if run is None:
            return
        if run.round is not None:
            self._end_round(run, None)
        label = index if index is not None else "?"
        attrs: dict[str, Any] = {"power_loop.run.id": run.run_id}
        if index is not None:
            attrs["power_loop.round.index"] = index
        run.round = self._tracer.start_span(
            f"round {label}", context=trace.set_span_in_context(run.span), attributes=attrs
        )
        run.round_attached = attach(run.round)

    def _round_ended(self, sid: str) -> None:
        run = self._runs.get(sid)
        if run is not None and run.round is not None:
            self._end_round(run, None)

    def _end_round(self, run: RunSpans, error_type: str | None) -> None:
        assert run.round is not None
        if error_type is not None:
            run.round.set_attribute("error.type", error_type)
            run.round.set_status(Status(StatusCode.ERROR))
        detach(run.round_attached)
        round_span, run.round, run.round_attached = run.round, None, None
        end(round_span)

    def _parent_of_step(self, run: RunSpans) -> otel_context.Context:
        return trace.set_span_in_context(run.round if run.round is not None else run.span)

    # ------------------------------------------------------------------ model calls

    def _model_call(self, sid: str, round_index: int | None, data: UsageUpdatedPayload) -> None:
        run = self._runs.get(sid)
        usage = data.usage
        input_tokens = int(usage.get("prompt_tokens", 0))
        output_tokens = int(usage.get("completion_tokens", 0))
        common = self._model_attrs(data.provider, data.request_model, data.response_model)
        if run is not None:
            attrs = dict(common)
            attrs.update(self._step_attrs(sid, run, round_index))
            attrs["gen_ai.usage.input_tokens"] = input_tokens
            attrs["gen_ai.usage.output_tokens"] = output_tokens
            attrs["power_loop.model_call.purpose"] = data.purpose
            if usage.get("cache_read_tokens"):
                attrs["gen_ai.usage.cache_read.input_tokens"] = int(usage["cache_read_tokens"])
            if usage.get("reasoning_tokens"):
                attrs["power_loop.usage.reasoning_tokens"] = int(usage["reasoning_tokens"])
            self._call_span(run, data.request_model, data.duration_ms, attrs, None)
        self._token_usage.record(input_tokens, {**common, "gen_ai.token.type": "input"})
        self._token_usage.record(output_tokens, {**common, "gen_ai.token.type": "output"})
        self._call_duration.record(data.duration_ms / 1000, common)

    def _model_call_failed(self, sid: str, round_index: int | None, data: LlmDegradedPayload) -> None:
        if data.reason == "invalid_output":
            return  # the calls answered (their spans exist); only the run failed, and its span says so
        run = self._runs.get(sid)
        common = self._model_attrs(data.provider, data.request_model, "")
        error_type = data.error_type or "degraded"
        if run is not None:
            attrs = dict(common)
            attrs.update(self._step_attrs(sid, run, round_index))
            attrs["power_loop.llm.attempts"] = data.attempts
            attrs["power_loop.llm.failure"] = data.reason
            message = data.error_message if self.capture_content else data.reason
            self._call_span(run, data.request_model, data.duration_ms, attrs, (error_type, message))
        self._call_duration.record(data.duration_ms / 1000, {**common, "error.type": error_type})

    def _model_attrs(self, provider: str, request_model: str, response_model: str) -> dict[str, Any]:
        attrs: dict[str, Any] = {"gen_ai.operation.name": "chat"}
        if provider:
            attrs["gen_ai.provider.name"] = provider
            attrs["gen_ai.system"] = provider
        if request_model:
            attrs["gen_ai.request.model"] = request_model
        if response_model:
            attrs["gen_ai.response.model"] = response_model
        return attrs

    def _step_attrs(self, sid: str, run: RunSpans, round_index: int | None) -> dict[str, Any]:
        attrs: dict[str, Any] = {"gen_ai.conversation.id": sid, "power_loop.run.id": run.run_id}
        if round_index is not None:
            attrs["power_loop.round.index"] = round_index
        return attrs

    def _call_span(
        self,
        run: RunSpans,
        model: str,
        duration_ms: int,
        attrs: dict[str, Any],
        error: tuple[str, str] | None,
    ) -> None:
        finished = now_ns()
        start = finished - max(0, duration_ms) * 1_000_000
        name = f"chat {model}" if model else "chat"
        span = self._tracer.start_span(
            name, context=self._parent_of_step(run), kind=SpanKind.CLIENT, attributes=attrs, start_time=start
        )
        retries, run.retries = run.retries, []
        for at, retry_attrs in retries:
            span.add_event("power_loop.llm.retry", retry_attrs, timestamp=max(start, at))
        if error is not None:
            span.set_attribute("error.type", error[0])
            span.set_status(Status(StatusCode.ERROR, error[1]))
        end(span, end_time=finished)

    # ------------------------------------------------------------------ tool calls

    def _tool_attrs(self, sid: str, run: RunSpans, round_index: int | None, name: str, call_id: str) -> dict[str, Any]:
        attrs = self._step_attrs(sid, run, round_index)
        attrs.update(
            {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call_id,
                "gen_ai.tool.type": "function",
            }
        )
        return attrs

    def _tool_started(self, sid: str, round_index: int | None, data: ToolCallStartedPayload) -> None:
        run = self._runs.get(sid)
        if run is None:
            return
        attrs = self._tool_attrs(sid, run, round_index, data.name, data.tool_call_id)
        if self.capture_content:
            attrs["gen_ai.tool.call.arguments"] = json.dumps(dict(data.tool_input), ensure_ascii=False, default=str)
        span = self._tracer.start_span(
            f"execute_tool {data.name}", context=self._parent_of_step(run), kind=SpanKind.INTERNAL, attributes=attrs
        )
        self._remember_tool(sid, data.tool_call_id, span, run)
        run.tools[data.tool_call_id] = ToolSpan(span, attach(span))

    def _remember_tool(self, sid: str, call_id: str, span: Span, run: RunSpans) -> None:
        context = span.get_span_context()
        self._tool_spans[(sid, call_id)] = context
        self._tool_spans.move_to_end((sid, call_id))
        while len(self._tool_spans) > MAX_REMEMBERED:
            self._tool_spans.popitem(last=False)
        self._live_tools[context.span_id] = (sid, run.span.get_span_context())

    def _tool_ended(
        self, sid: str, round_index: int | None, data: ToolCallCompletedPayload | ToolCallFailedPayload
    ) -> None:
        failed = isinstance(data, ToolCallFailedPayload) or data.failed
        run = self._runs.get(sid)
        # A name the model made up is model output: no metric series, no span name of its own
        # (unless content is captured).
        unknown = failed and data.output.startswith(f"Unknown tool: {data.name} (")
        metric_attrs: dict[str, Any] = {"gen_ai.tool.name": OTHER_TOOL if unknown else data.name}
        if failed:
            metric_attrs["error.type"] = "tool_error"
        self._tool_duration.record(data.duration_ms / 1000, metric_attrs)
        if run is None:
            return
        tool = run.tools.pop(data.tool_call_id, None)
        if tool is None:  # failed before it started (unknown tool, invalid arguments)
            attrs = self._tool_attrs(sid, run, round_index, data.name, data.tool_call_id)
            finished = now_ns()
            span = self._tracer.start_span(
                f"execute_tool {data.name}",
                context=self._parent_of_step(run),
                kind=SpanKind.INTERNAL,
                attributes=attrs,
                start_time=finished - max(0, data.duration_ms) * 1_000_000,
            )
            self._remember_tool(sid, data.tool_call_id, span, run)
            if self.capture_content:
                span.set_attribute(
                    "gen_ai.tool.call.arguments", json.dumps(dict(data.tool_input), ensure_ascii=False, default=str)
                )
            tool = ToolSpan(span, None)
        span = tool.span
        if unknown and not self.capture_content:
            span.update_name("execute_tool")
            span.set_attribute("gen_ai.tool.name", OTHER_TOOL)
        if self.capture_content:
            span.set_attribute("gen_ai.tool.call.result", data.output)
        if failed:
            span.set_attribute("error.type", "tool_error")
            span.set_status(Status(StatusCode.ERROR, data.output if self.capture_content else "tool call failed"))
        detach(tool.attached)
        self._live_tools.pop(span.get_span_context().span_id, None)
        end(span)

    def _end_tool_span(self, run: RunSpans, call_id: str, tool: ToolSpan, error_type: str | None) -> None:
        run.tools.pop(call_id, None)
        if error_type is not None:
            tool.span.set_attribute("error.type", error_type)
            tool.span.set_status(Status(StatusCode.ERROR, "the run ended before the tool call did"))
        detach(tool.attached)
        self._live_tools.pop(tool.span.get_span_context().span_id, None)
        end(tool.span)
