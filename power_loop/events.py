"""Typed events and the event bus.

Events observe; hooks decide. Every event carries a typed payload dataclass (``data``) from
which the 0.11 ``payload`` dict is derived on first access, plus ``session_id``,
``round_index``, a per-session monotonic ``seq`` and a timestamp ``ts``.

``AgentEventBus`` delivers events to subscribers in priority order (higher first, then
subscription order). ``publish_async`` awaits async subscribers in line; ``publish`` (used for
stream deltas from synchronous callbacks) runs sync subscribers and schedules async ones as
tasks the bus owns, so none is lost: :meth:`AgentEventBus.drain` awaits them and surfaces
their errors. With ``suppress_subscriber_errors=True`` a failing subscriber is logged and
never affects the run.

Event names are part of the public contract and never change.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Protocol, runtime_checkable

from ._util import is_async_callable

__all__ = [
    "AgentError",
    "AgentErrorPayload",
    "AgentEvent",
    "AgentEventBus",
    "AgentEventType",
    "AutoCompactStatusPayload",
    "BaseEventPayload",
    "BudgetExceededStatusPayload",
    "NoProgressStatusPayload",
    "PausedStatusPayload",
    "EventBusProtocol",
    "EventHandler",
    "HitRoundLimitStatusPayload",
    "LlmDegradedPayload",
    "LlmRetryAttemptedPayload",
    "LoopCancelledPayload",
    "MemoryFailedPayload",
    "MemoryRecalledPayload",
    "RoundCompletedPayload",
    "RoundStartedPayload",
    "RoundToolsPresentPayload",
    "RoundUsageStatusPayload",
    "SessionEndedPayload",
    "SessionStartedPayload",
    "StatusChangedPayload",
    "StreamCompletedPayload",
    "StreamDeltaPayload",
    "StreamStartedPayload",
    "SubagentCompletedPayload",
    "SubagentLimitPayload",
    "SubagentTaskStartPayload",
    "SubagentTextPayload",
    "SystemLogPayload",
    "TimerFiredPayload",
    "TodoUpdatedPayload",
    "ToolCallCompletedPayload",
    "ToolCallFailedPayload",
    "ToolCallStartedPayload",
    "UsageUpdatedPayload",
    "UserNotificationPayload",
    "payload_class",
]

log = logging.getLogger("power_loop.events")


class AgentEventType(str, Enum):
    """Every event the kernel publishes (values are the wire names)."""

    SESSION_STARTED = "session_started"
    SESSION_ENDED = "session_ended"
    ROUND_STARTED = "round_started"
    ROUND_COMPLETED = "round_completed"
    ROUND_TOOLS_PRESENT = "round_tools_present"
    LLM_RETRY_ATTEMPTED = "llm_retry_attempted"
    LLM_DEGRADED = "llm_degraded"
    LOOP_CANCELLED = "loop_cancelled"
    MEMORY_RECALLED = "memory_recalled"
    MEMORY_FAILED = "memory_failed"
    STREAM_STARTED = "stream_started"
    STREAM_DELTA = "stream_delta"
    STREAM_THINK_DELTA = "stream_think_delta"
    STREAM_COMPLETED = "stream_completed"
    TOOL_CALL_STARTED = "tool_call_started"
    TOOL_CALL_COMPLETED = "tool_call_completed"
    TOOL_CALL_FAILED = "tool_call_failed"
    STATUS_CHANGED = "status_changed"
    USAGE_UPDATED = "usage_updated"
    TIMER_FIRED = "timer_fired"
    TODO_UPDATED = "todo_updated"
    USER_NOTIFICATION = "user_notification"
    AGENT_ERROR = "agent_error"
    SYSTEM_LOG = "system_log"
    SUBAGENT_TASK_START = "subagent_task_start"
    SUBAGENT_TEXT = "subagent_text"
    SUBAGENT_LIMIT = "subagent_limit"
    SUBAGENT_COMPLETED = "subagent_completed"

    def __str__(self) -> str:
        return self.value


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class BaseEventPayload:
    """Base of every payload; ``to_dict()`` gives the 0.11 ``payload`` dict."""

    _field_names: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The payload as a plain dict (nested dataclasses included)."""
        cls = type(self)
        names = cls.__dict__.get("_field_names") or tuple(f.name for f in dataclasses.fields(self))
        if "_field_names" not in cls.__dict__:
            cls._field_names = names
        return {name: _plain(getattr(self, name)) for name in names}


def _plain(value: Any) -> Any:
    if isinstance(value, BaseEventPayload):
        return value.to_dict()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class SessionStartedPayload(BaseEventPayload):
    """A run started. ``scope`` is ``main`` or ``subagent``; ``run_id`` identifies the run.

    ``run_kind`` says what started it (``send``, ``resume``, ``submit_input``, ``approve`` or
    ``wake``: a timer's or a background child's message read from the inbox). A sub-agent's run names its
    parent session and the tool call that spawned it; ``parent_run_id`` is the spawning run
    when that run started this one and waits for it (a foreground child), else empty.
    """

    scope: str = "main"
    run_id: str = ""
    run_kind: str = "send"
    parent_session_id: str = ""
    spawn_tool_call_id: str = ""
    parent_run_id: str = ""


@dataclass(frozen=True)
class SessionEndedPayload(BaseEventPayload):
    """A run ended (always after a ``session_started``)."""

    reason: str = "completed"
    status: str = "completed"
    final_text: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class RoundStartedPayload(BaseEventPayload):
    """A round (model call plus tools) started."""

    round_index: int = 0


@dataclass(frozen=True)
class RoundCompletedPayload(BaseEventPayload):
    """A round finished."""

    round_index: int = 0
    has_tools: bool = False
    used_todo: bool = False


@dataclass(frozen=True)
class RoundToolsPresentPayload(BaseEventPayload):
    """Whether the model asked for tools this round."""

    has_tools: bool = False
    count: int = 0


@dataclass(frozen=True)
class LlmRetryAttemptedPayload(BaseEventPayload):
    """A model call failed transiently and will be retried after ``next_sleep_seconds``."""

    attempt: int = 0
    max_attempts: int = 0
    error_type: str = ""
    error_message: str = ""
    next_sleep_seconds: float = 0.0


@dataclass(frozen=True)
class LlmDegradedPayload(BaseEventPayload):
    """The model could not be reached; the run ends ``degraded``. ``provider``,
    ``request_model`` and ``duration_ms`` (retries included) describe the failed call."""

    reason: str = ""
    attempts: int = 0
    error_type: str = ""
    error_message: str = ""
    provider: str = ""
    request_model: str = ""
    duration_ms: int = 0


@dataclass(frozen=True)
class LoopCancelledPayload(BaseEventPayload):
    """A stop_event stopped the run."""

    reason: str = "cancelled"
    round_index: int = 0


@dataclass(frozen=True)
class MemoryRecalledPayload(BaseEventPayload):
    """Memory recall result: how many items came back and how many were injected."""

    returned: int = 0
    injected: int = 0
    budget_tokens: int = 0


@dataclass(frozen=True)
class MemoryFailedPayload(BaseEventPayload):
    """A memory provider failed (the run continues without it)."""

    phase: str = ""
    error_type: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class StreamStartedPayload(BaseEventPayload):
    """A model response started streaming."""

    stream_id: str = "main"


@dataclass(frozen=True)
class StreamDeltaPayload(BaseEventPayload):
    """A piece of streamed text (``is_think`` for reasoning deltas)."""

    stream_id: str = "main"
    text: str = ""
    is_think: bool = False


@dataclass(frozen=True)
class StreamCompletedPayload(BaseEventPayload):
    """A model response finished streaming."""

    stream_id: str = "main"


@dataclass(frozen=True)
class ToolCallStartedPayload(BaseEventPayload):
    """A tool call is about to run."""

    name: str = ""
    tool_input: Mapping[str, Any] = field(default_factory=dict)
    tool_call_id: str = ""


@dataclass(frozen=True)
class ToolCallCompletedPayload(BaseEventPayload):
    """A tool call produced a result."""

    name: str = ""
    output: str = ""
    tool_input: Mapping[str, Any] = field(default_factory=dict)
    tool_call_id: str = ""
    failed: bool = False
    duration_ms: int = 0


@dataclass(frozen=True)
class ToolCallFailedPayload(BaseEventPayload):
    """A tool call failed (bad arguments, unknown tool, exception, timeout)."""

    name: str = ""
    output: str = ""
    tool_input: Mapping[str, Any] = field(default_factory=dict)
    tool_call_id: str = ""
    failed: bool = True
    duration_ms: int = 0


@dataclass(frozen=True)
class StatusChangedPayload(BaseEventPayload):
    """Base of ``status_changed`` payloads; ``kind`` says which."""

    kind: str = ""


@dataclass(frozen=True)
class RoundUsageStatusPayload(StatusChangedPayload):
    """Usage of one model call (``status_changed`` kind ``round_usage``)."""

    kind: str = "round_usage"
    time_iso: str = ""
    round_index: int = 0
    round_number: int = 0
    max_rounds: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class HitRoundLimitStatusPayload(StatusChangedPayload):
    """The run used ``max_rounds`` rounds (kind ``hit_round_limit``)."""

    kind: str = "hit_round_limit"
    max_rounds: int = 0


@dataclass(frozen=True)
class BudgetExceededStatusPayload(StatusChangedPayload):
    """The run reached ``max_tokens_per_run`` (kind ``budget_exceeded``)."""

    kind: str = "budget_exceeded"
    budget_tokens: int = 0
    spent_tokens: int = 0
    rounds: int = 0


@dataclass(frozen=True)
class PausedStatusPayload(StatusChangedPayload):
    """The run stopped at a round boundary because the session was paused (kind ``paused``)."""

    kind: str = "paused"
    rounds: int = 0


@dataclass(frozen=True)
class NoProgressStatusPayload(StatusChangedPayload):
    """The run repeated itself (kind ``no_progress``): ``reason`` is ``repeated_call`` or
    ``invalid_arguments``; ``action`` is ``nudge`` (the model was told) or ``stop``."""

    kind: str = "no_progress"
    reason: str = ""
    tool_name: str = ""
    repeats: int = 0
    action: str = "stop"


@dataclass(frozen=True)
class AutoCompactStatusPayload(StatusChangedPayload):
    """Context compaction (kind ``auto_compact``); ``phase`` is ``done``, ``skipped`` or ``failed``."""

    kind: str = "auto_compact"
    phase: str = "done"
    round_index: int = 0
    trigger: str = ""
    before_tokens: int = 0
    after_tokens: int = 0


_USAGE_ALIASES = (
    ("input", "prompt_tokens"),
    ("output", "completion_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("reasoning", "reasoning_tokens"),
)


def _with_usage_aliases(usage: Mapping[str, int]) -> dict[str, int]:
    """``usage`` plus the short keys 0.11 also reported: ``input``, ``output``, ``cache_read``
    and ``reasoning`` (equal to ``prompt_tokens``, ``completion_tokens``, ``cache_read_tokens``
    and ``reasoning_tokens``). An empty mapping stays empty."""
    out = dict(usage)
    for short, long in _USAGE_ALIASES:
        if long in out:
            out[short] = out[long]
    return out


@dataclass(frozen=True)
class UsageUpdatedPayload(BaseEventPayload):
    """Usage after one model call: ``usage`` for the call, ``run_usage`` summed over the run.

    Both dicts carry ``calls, prompt_tokens, completion_tokens, cache_read_tokens,
    reasoning_tokens, total_tokens`` and 0.11's aliases ``input``, ``output``, ``cache_read``
    and ``reasoning`` (added on construction). ``provider`` and ``request_model`` name the
    service and the model asked, ``response_model`` the model that answered (when reported),
    ``duration_ms`` the call's time, retries included.
    """

    usage: Mapping[str, int] = field(default_factory=dict)
    run_usage: Mapping[str, int] = field(default_factory=dict)
    purpose: str = "round"
    provider: str = ""
    request_model: str = ""
    response_model: str = ""
    duration_ms: int = 0

    def __post_init__(self) -> None:
        # 0.11 programs and log readers use the short keys; the dataclass is frozen, hence
        # object.__setattr__.
        object.__setattr__(self, "usage", _with_usage_aliases(self.usage))
        object.__setattr__(self, "run_usage", _with_usage_aliases(self.run_usage))


@dataclass(frozen=True)
class TimerFiredPayload(BaseEventPayload):
    """A timer fired; ``outcome`` is delivered, queued, skipped, cancelled, postponed or error."""

    timer_id: int = 0
    note: str = ""
    due_at: int = 0
    outcome: str = "delivered"


@dataclass(frozen=True)
class TodoUpdatedPayload(BaseEventPayload):
    """A todo list snapshot."""

    kind: str = "todo_snapshot"
    items: tuple[Any, ...] = ()
    counts: Mapping[str, int] = field(default_factory=dict)
    rendered: str = ""
    text: str = ""


@dataclass(frozen=True)
class UserNotificationPayload(BaseEventPayload):
    """A message meant for the end user."""

    message: str = ""


@dataclass(frozen=True)
class AgentErrorPayload(BaseEventPayload):
    """A run failed with an exception (the exception is raised to the caller too)."""

    error: str = ""
    error_type: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)


AgentError = AgentErrorPayload


@dataclass(frozen=True)
class SystemLogPayload(BaseEventPayload):
    """A diagnostic message."""

    message: str = ""
    level: str = "info"


@dataclass(frozen=True)
class SubagentTaskStartPayload(BaseEventPayload):
    """A sub-agent started."""

    task: str = ""
    preset: str = "core"
    sub_session_id: str = ""
    depth: int = 0


@dataclass(frozen=True)
class SubagentTextPayload(BaseEventPayload):
    """Text produced by a sub-agent (``status``, ``rounds`` and ``final_text`` as in 0.11)."""

    sub_session_id: str = ""
    text: str = ""
    status: str = ""
    rounds: int = 0
    final_text: str = ""


@dataclass(frozen=True)
class SubagentLimitPayload(BaseEventPayload):
    """A sub-agent hit its round limit."""

    sub_session_id: str = ""
    max_rounds: int = 0


@dataclass(frozen=True)
class SubagentCompletedPayload(BaseEventPayload):
    """A sub-agent finished."""

    sub_session_id: str = ""
    status: str = ""
    rounds: int = 0
    final_text: str = ""


_PAYLOAD_CLASSES: dict[AgentEventType, type[BaseEventPayload]] = {
    AgentEventType.SESSION_STARTED: SessionStartedPayload,
    AgentEventType.SESSION_ENDED: SessionEndedPayload,
    AgentEventType.ROUND_STARTED: RoundStartedPayload,
    AgentEventType.ROUND_COMPLETED: RoundCompletedPayload,
    AgentEventType.ROUND_TOOLS_PRESENT: RoundToolsPresentPayload,
    AgentEventType.LLM_RETRY_ATTEMPTED: LlmRetryAttemptedPayload,
    AgentEventType.LLM_DEGRADED: LlmDegradedPayload,
    AgentEventType.LOOP_CANCELLED: LoopCancelledPayload,
    AgentEventType.MEMORY_RECALLED: MemoryRecalledPayload,
    AgentEventType.MEMORY_FAILED: MemoryFailedPayload,
    AgentEventType.STREAM_STARTED: StreamStartedPayload,
    AgentEventType.STREAM_DELTA: StreamDeltaPayload,
    AgentEventType.STREAM_THINK_DELTA: StreamDeltaPayload,
    AgentEventType.STREAM_COMPLETED: StreamCompletedPayload,
    AgentEventType.TOOL_CALL_STARTED: ToolCallStartedPayload,
    AgentEventType.TOOL_CALL_COMPLETED: ToolCallCompletedPayload,
    AgentEventType.TOOL_CALL_FAILED: ToolCallFailedPayload,
    AgentEventType.STATUS_CHANGED: StatusChangedPayload,
    AgentEventType.USAGE_UPDATED: UsageUpdatedPayload,
    AgentEventType.TIMER_FIRED: TimerFiredPayload,
    AgentEventType.TODO_UPDATED: TodoUpdatedPayload,
    AgentEventType.USER_NOTIFICATION: UserNotificationPayload,
    AgentEventType.AGENT_ERROR: AgentErrorPayload,
    AgentEventType.SYSTEM_LOG: SystemLogPayload,
    AgentEventType.SUBAGENT_TASK_START: SubagentTaskStartPayload,
    AgentEventType.SUBAGENT_TEXT: SubagentTextPayload,
    AgentEventType.SUBAGENT_LIMIT: SubagentLimitPayload,
    AgentEventType.SUBAGENT_COMPLETED: SubagentCompletedPayload,
}

_STATUS_KINDS: dict[str, type[StatusChangedPayload]] = {
    "round_usage": RoundUsageStatusPayload,
    "hit_round_limit": HitRoundLimitStatusPayload,
    "budget_exceeded": BudgetExceededStatusPayload,
    "auto_compact": AutoCompactStatusPayload,
    "paused": PausedStatusPayload,
    "no_progress": NoProgressStatusPayload,
}


def payload_class(event_type: AgentEventType, kind: str | None = None) -> type[BaseEventPayload]:
    """The payload dataclass of an event type (and ``status_changed`` kind)."""
    if event_type is AgentEventType.STATUS_CHANGED and kind in _STATUS_KINDS:
        return _STATUS_KINDS[kind]
    return _PAYLOAD_CLASSES[event_type]


# --------------------------------------------------------------------------- the event


class AgentEvent:
    """One published event.

    Attributes:
        type: The event type.
        data: The typed payload.
        payload: The 0.11 dict view of ``data`` (computed on first access).
        session_id: The session, when the event belongs to one.
        round_index: The round (0-based) or None.
        stream_id: Stream of a delta (``main`` for the top-level agent).
        source: Who published it (``loop``, ``timer``, a sub-agent id, ...).
        seq: Per-session monotonic sequence number (0 for events outside a session).
        ts: Wall-clock time (seconds since the epoch).
    """

    __slots__ = ("_payload", "data", "round_index", "seq", "session_id", "source", "stream_id", "ts", "type")

    def __init__(
        self,
        type: AgentEventType | str,
        payload: Mapping[str, Any] | None = None,
        data: BaseEventPayload | None = None,
        session_id: str | None = None,
        round_index: int | None = None,
        stream_id: str | None = None,
        source: str | None = None,
        seq: int = 0,
        ts: float | None = None,
    ) -> None:
        self.type = AgentEventType(type)
        self.data = data
        self._payload: dict[str, Any] | None = dict(payload) if payload else None
        self.session_id = session_id
        self.round_index = round_index
        self.stream_id = stream_id
        self.source = source
        self.seq = seq
        self.ts = time.time() if ts is None else ts

    @property
    def payload(self) -> dict[str, Any]:
        """The payload as a dict (derived from ``data`` when not given)."""
        if self._payload is None:
            self._payload = self.data.to_dict() if self.data is not None else {}
        return self._payload

    @payload.setter
    def payload(self, value: Mapping[str, Any]) -> None:
        self._payload = dict(value)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole event (what the logging and JSONL sinks write).

        The event name is under ``"event"`` (0.11's key for a sink line) and, repeated, under
        ``"type"`` (the attribute's name, which the JSONL reader also accepts).
        """
        name = self.type.value
        return {
            "event": name,
            "type": name,
            "seq": self.seq,
            "ts": self.ts,
            "session_id": self.session_id,
            "round_index": self.round_index,
            "stream_id": self.stream_id,
            "source": self.source,
            "payload": self.payload,
        }

    def __repr__(self) -> str:
        return (
            f"AgentEvent(type={self.type.value!r}, session_id={self.session_id!r}, "
            f"round_index={self.round_index!r}, seq={self.seq}, payload={self.payload!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AgentEvent):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]


@runtime_checkable
class EventHandler(Protocol):
    """An event subscriber: any callable taking the :class:`AgentEvent`, sync or async; its
    return value is ignored (an awaitable one is awaited)."""

    def __call__(self, event: AgentEvent, /) -> Any:
        """Observe ``event``."""


@runtime_checkable
class EventBusProtocol(Protocol):
    """What the engine and pipelines need from an event bus (:class:`AgentEventBus` is one)."""

    def subscribe(self, event_type: AgentEventType | str | None, handler: EventHandler, *, priority: int = 0) -> Any:
        """Call ``handler`` for events of ``event_type`` (None: every event)."""

    def unsubscribe(self, handler: Any) -> Any:
        """Remove every subscription of ``handler``."""

    def publish(self, event: AgentEvent) -> None:
        """Deliver ``event`` from sync code."""

    async def publish_async(self, event: AgentEvent) -> None:
        """Deliver ``event``, awaiting async subscribers."""


@dataclass
class _Subscription:
    event_type: AgentEventType | None
    handler: EventHandler
    priority: int
    order: int
    is_async: bool


class AgentEventBus:
    """Delivers events to subscribers.

    Args:
        suppress_subscriber_errors: Log a failing subscriber instead of raising its error.
    """

    def __init__(self, *, suppress_subscriber_errors: bool = False) -> None:
        self.suppress_subscriber_errors = suppress_subscriber_errors
        self._subs: list[_Subscription] = []
        self._by_type: dict[AgentEventType, list[_Subscription]] = {}
        self._counter = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors: list[BaseException] = []

    def subscribe(
        self, event_type: AgentEventType | str | None, handler: EventHandler, *, priority: int = 0
    ) -> EventHandler:
        """Call ``handler`` for events of ``event_type`` (None: every event); returns ``handler``.

        Higher ``priority`` runs first; equal priorities run in subscription order.
        """
        kind = AgentEventType(event_type) if event_type is not None else None
        self._counter += 1
        is_async = is_async_callable(handler)
        self._subs.append(_Subscription(kind, handler, priority, self._counter, is_async))
        self._by_type.clear()
        return handler

    def unsubscribe(
        self, handler: EventHandler | AgentEventType | str | None, typed_handler: EventHandler | None = None
    ) -> bool:
        """Remove subscriptions; returns whether anything was removed.

        ``unsubscribe(handler)`` (0.11's form) removes every subscription of ``handler``;
        ``unsubscribe(event_type, handler)`` removes only its subscription to ``event_type``
        (``None``: only its catch-all one).
        """
        target: Any
        if typed_handler is None:
            target, kind, any_type = handler, None, True
        else:
            target = typed_handler
            kind = AgentEventType(handler) if isinstance(handler, (str, AgentEventType)) else None
            any_type = False
        before = len(self._subs)
        self._subs = [s for s in self._subs if not (s.handler == target and (any_type or s.event_type == kind))]
        self._by_type.clear()
        return len(self._subs) != before

    def _handlers(self, event_type: AgentEventType) -> list[_Subscription]:
        found = self._by_type.get(event_type)
        if found is None:
            found = sorted(
                (s for s in self._subs if s.event_type is None or s.event_type == event_type),
                key=lambda s: (-s.priority, s.order),
            )
            self._by_type[event_type] = found
        return found

    def wants(self, event_type: AgentEventType) -> bool:
        """True when a subscriber would receive ``event_type`` (lets publishers skip work)."""
        return bool(self._subs) and bool(self._handlers(event_type))

    def _failed(self, sub: _Subscription, event: AgentEvent, exc: BaseException) -> None:
        if self.suppress_subscriber_errors:
            log.error("event subscriber %r failed on %s", sub.handler, event.type.value, exc_info=exc)
            return
        raise exc

    def publish(self, event: AgentEvent) -> None:
        """Deliver ``event``; async subscribers are scheduled as tracked tasks (see :meth:`drain`)."""
        for sub in self._handlers(event.type):
            try:
                outcome = sub.handler(event)
            except Exception as exc:
                self._failed(sub, event, exc)
                continue
            if inspect.isawaitable(outcome):
                self._track(sub, event, outcome)

    def _track(self, sub: _Subscription, event: AgentEvent, outcome: Awaitable[Any]) -> None:
        async def run() -> None:
            try:
                await outcome
            except Exception as exc:
                if self.suppress_subscriber_errors:
                    log.error("event subscriber %r failed on %s", sub.handler, event.type.value, exc_info=exc)
                else:
                    self._errors.append(exc)

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # published from sync code with no loop: run the subscriber now
            asyncio.run(run())
            return
        task = loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def publish_async(self, event: AgentEvent) -> None:
        """Deliver ``event``, awaiting async subscribers in priority order."""
        for sub in self._handlers(event.type):
            try:
                outcome = sub.handler(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception as exc:
                self._failed(sub, event, exc)

    async def drain(self) -> None:
        """Wait for subscriber tasks scheduled by :meth:`publish`; raise the first error they
        raised (unless errors are suppressed)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._errors:
            errors, self._errors = self._errors, []
            raise errors[0]
