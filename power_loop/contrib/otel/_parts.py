"""The pieces the instrumentation keeps per run and tool call, and small helpers.

A span made current (:func:`attach`) is undone (:func:`detach`) only in the task that made it
current, the only place its context token is valid.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanContext

from ...events import AgentEventType

log = logging.getLogger("power_loop.contrib.otel")

SCOPE_NAME = "power_loop"
DEFAULT_AGENT_NAME = "power_loop"
MAX_REMEMBERED = 4096
"""Entries kept per table of things remembered for later runs (ended tool spans, timers and
answers waiting for a wake-up run, ...); the oldest are forgotten first."""

EVENTS = (
    AgentEventType.SESSION_STARTED,
    AgentEventType.SESSION_ENDED,
    AgentEventType.ROUND_STARTED,
    AgentEventType.ROUND_COMPLETED,
    AgentEventType.USAGE_UPDATED,
    AgentEventType.LLM_RETRY_ATTEMPTED,
    AgentEventType.LLM_DEGRADED,
    AgentEventType.TOOL_CALL_STARTED,
    AgentEventType.TOOL_CALL_COMPLETED,
    AgentEventType.TOOL_CALL_FAILED,
    AgentEventType.AGENT_ERROR,
    AgentEventType.SUBAGENT_TASK_START,
    AgentEventType.TIMER_FIRED,
)

# GenAI histogram buckets recommended by the semantic conventions.
TOKEN_BUCKETS = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864]
SECONDS_BUCKETS = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92]


@dataclass
class Attached:
    """A span made current in a task, to be undone in that same task."""

    token: object
    task: asyncio.Task[Any] | None


@dataclass
class ToolSpan:
    """A tool call's open span, current in the task running the call."""

    span: Span
    attached: Attached | None


@dataclass
class RunSpans:
    """A run's open spans (the run, its round, its tool calls) and what its end needs."""

    run_id: str
    span: Span
    started: float
    kind: str
    scope: str
    agent: str
    attached: Attached | None
    round: Span | None = None
    round_attached: Attached | None = None
    tools: dict[str, ToolSpan] = field(default_factory=dict)
    retries: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    error_type: str | None = None
    inputs: list[str] = field(default_factory=list)
    answers_to: str = ""  # a background child's parent session, woken by its answer


@dataclass
class WakeUp:
    """A delivered timer waiting for the wake-up run that reads it; ``scheduled_by`` is the
    run that scheduled a timer of the session last, when known."""

    timer_id: int
    due_at: int
    note: str
    scheduled_by: SpanContext | None


def now_ns() -> int:
    """Now, in nanoseconds since the epoch (span timestamps)."""
    return time.time_ns()


def attach(span: Span) -> Attached:
    """Make ``span`` the current span of the running task (or thread)."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    return Attached(token, task)


def detach(attached: Attached | None) -> None:
    """Undo :func:`attach`, when called in the same task (elsewhere the token is not valid)."""
    if attached is None:
        return
    try:
        task = asyncio.current_task()
    except RuntimeError:
        task = None
    if task is attached.task:  # a token is only valid in the context that made it
        otel_context.detach(attached.token)  # type: ignore[arg-type]


def end(span: Span, end_time: int | None = None) -> None:
    """End ``span``; an error of a span processor (the host's code, called by ``end``) is
    logged, so it never keeps the instrumentation from ending the other spans."""
    try:
        span.end(end_time=end_time)
    except Exception:
        log.exception("a span processor failed on the end of a span")


def remember(table: dict[str, list[Any]], key: str, value: Any) -> None:
    """Append ``value`` under ``key``, forgetting the oldest keys past :data:`MAX_REMEMBERED`
    (what a run in another process would have taken)."""
    table.setdefault(key, []).append(value)
    trim(table)


def trim(table: dict[str, Any]) -> None:
    """Forget the oldest keys past :data:`MAX_REMEMBERED`."""
    while len(table) > MAX_REMEMBERED:
        del table[next(iter(table))]


def messages_json(role: str, texts: list[str], finish_reason: str | None = None) -> str:
    """``texts`` as GenAI semantic-convention messages of ``role`` (a JSON string)."""
    out: list[dict[str, Any]] = []
    for text in texts:
        message: dict[str, Any] = {"role": role, "parts": [{"type": "text", "content": text}]}
        if finish_reason is not None:
            message["finish_reason"] = finish_reason
        out.append(message)
    return json.dumps(out, ensure_ascii=False)
