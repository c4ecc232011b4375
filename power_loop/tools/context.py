"""The context of the tool call being executed, and what a tool may do through it.

A handler reads it with :func:`current_tool_context` or by declaring a parameter annotated
``ToolContext`` (injected, never shown to the model). The context travels in a
``contextvars.ContextVar``, so it is visible in async handlers and in sync handlers running
in worker threads alike.

Invariants:

* What a tool may do to the loop is a typed capability bound to the tool's own session
  (:class:`SessionTimers`, :class:`SessionInbox`, :class:`SessionReader`,
  :class:`SessionRuntimeState`, :class:`SessionBackground`, :class:`SessionEvents`), never a private
  attribute of the loop. The engine builds them per call; a context built by hand with
  ``loop=`` gets them from :meth:`AgentLoopHandle.tool_capabilities`.
* This module declares the capabilities as protocols and implements none of them, so the
  tools layer imports no engine, store backend or facade module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..errors import ToolError
from ..events import AgentEventType, BaseEventPayload
from ..messages import Message
from ..results import FollowUpQueued, StatefulResult, SubagentReceipt, SubagentResult
from ..store.rows import BackgroundChild, BackgroundTaskRow, TimerRow
from .shell import ShellBackend

__all__ = [
    "AgentLoopHandle",
    "SessionBackground",
    "SessionEvents",
    "SessionInbox",
    "SessionReader",
    "SessionRuntimeState",
    "SessionTimers",
    "SubagentSpawner",
    "ToolCapabilities",
    "ToolContext",
    "current_tool_context",
]


class SessionTimers(Protocol):
    """The wake-ups of the tool's session (``ctx.timers``)."""

    async def schedule(
        self,
        *,
        delay_s: float | None = None,
        note: str,
        max_live: int | None = None,
        cron: str | None = None,
        tz: str | None = None,
    ) -> TimerRow:
        """Arm a one-shot wake-up ``delay_s`` seconds from now, or a calendar series at the
        occurrences of ``cron`` in zone ``tz`` (default ``UTC``); the session receives ``note``.

        Keyed by the call's idempotency key: the same call run again by ``resume`` gets the
        wake-up it scheduled the first time, not a second one. A ``TimerRunner`` of the loop
        is told at once.

        Raises:
            ValueError: Neither or both of ``delay_s`` and ``cron``, ``delay_s`` is not a
                number of seconds from 0 to 100 years, the schedule or the zone is not valid,
                or the note is empty.
            TimerBudgetExceeded: ``max_live`` wake-ups of the session are armed already.
        """
        ...

    async def armed(self) -> list[TimerRow]:
        """The session's armed (and in-flight) wake-ups, soonest first."""
        ...

    async def cancel(self, timer_id: int) -> bool:
        """Cancel a wake-up of the session; False when it is unknown, fired or cancelled."""
        ...


class SessionInbox(Protocol):
    """The inbox of the tool's session (``ctx.inbox``)."""

    async def enqueue(self, text: str) -> int:
        """Queue ``text`` as a follow-up for the session; return the inbox depth.

        The running run reads it right after this round's tool results (merged with other
        follow-ups into one ``<follow_up>`` message). Not keyed: a call run again by
        ``resume`` queues it again.
        """
        ...


class SessionReader(Protocol):
    """Read access to the tool's session (``ctx.session``)."""

    async def messages(self) -> list[Message]:
        """The session's context as stored: the compaction summary (if any) and the
        messages after it, up to the assistant message that made this call."""
        ...

    async def metadata(self) -> Mapping[str, object]:
        """The metadata the session was created with."""
        ...


class SessionRuntimeState(Protocol):
    """The runtime state of the tool's session (``ctx.state``): values by key, kept beside
    the conversation (the todo list lives under ``"todo"``). Runtime projectors show them
    to the model each round (``AgentLoopConfig.runtime_projectors``)."""

    async def get(self, key: str, default: object = None) -> object:
        """The value under ``key`` (decoded JSON), or ``default``."""
        ...

    async def set(self, key: str, value: object) -> None:
        """Store ``value`` under ``key``.

        Raises:
            TypeError: JSON cannot encode ``value``; nothing is written.
        """
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; False when it was not set."""
        ...


class SessionBackground(Protocol):
    """Background commands of the tool's session (``ctx.background``).

    A command runs in this process, outside the run that started it; its row in the session
    store says what became of it. One whose process ended before it finished (a crash, a
    restart) is reported ``lost``.
    """

    async def start(
        self,
        command: str,
        *,
        workspace_dir: str,
        backend: ShellBackend | None = None,
        timeout_s: float = 1800.0,
        max_running: int = 8,
    ) -> BackgroundTaskRow | list[BackgroundTaskRow]:
        """Start ``command`` in ``workspace_dir`` through ``backend`` and return its row at
        once; or, when the session already runs ``max_running`` commands, start nothing and
        return those.

        The command's process group is killed when ``timeout_s`` passes or the loop closes.
        Its end (exit code, the tail of its output) is an unseen update the model is shown
        at its next round.

        Raises:
            ValueError: An empty command, one with a NUL character, or a bad ``timeout_s``.
            RuntimeError: Called inside a ``*_sync`` call, whose event loop ends with it.
        """
        ...

    async def tasks(self) -> list[BackgroundTaskRow]:
        """The session's background commands, oldest first (lost ones marked so)."""
        ...

    async def get(self, task_id: str) -> BackgroundTaskRow | None:
        """One background command of the session, or None."""
        ...

    async def mark_seen(self, rows: Sequence[BackgroundTaskRow]) -> int:
        """Mark these rows' change as shown to the model (the runtime projector will not show
        it again), unless the command changed since they were read; how many changed."""
        ...


class SessionEvents(Protocol):
    """Publish an event of the tool's session on the loop's bus (``ctx.events``)."""

    async def publish(self, event_type: AgentEventType, payload: BaseEventPayload) -> None:
        """Publish ``payload`` as an ``event_type`` event of the calling run."""
        ...


class SubagentSpawner(Protocol):
    """Hand a task to a sub-agent (``ctx.subagents``), bound to the calling run."""

    async def run(
        self,
        task: str,
        *,
        system_prompt: str | None = None,
        name: str = "subagent",
        tools: Sequence[str] | None = None,
        max_rounds: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model: str | None = None,
        lifecycle: str = "ephemeral",
        metadata: Mapping[str, object] | None = None,
    ) -> SubagentResult:
        """Run ``task`` in a new child session and return its answer.

        The child is a session of its own (``kind="subagent"``, its parent, the spawning
        call's id, its depth). It inherits the calling run's cancellation, hooks, event bus,
        retry policy and model service (``model`` names another model of the same provider,
        or a service registered in ``AgentLoopConfig.llm_services``); its tokens count in the
        calling run's usage and budget, and its calls are clamped to what the budget has left.
        It is offered only tools the calling round was offered, narrowed to ``tools``.

        Raises:
            SubagentRefused: The depth limit is reached, or ``tools`` names a tool the calling
                round was not offered (the message tells the model what to do instead).
        """
        ...

    async def start(
        self,
        task: str,
        *,
        system_prompt: str | None = None,
        name: str = "subagent",
        tools: Sequence[str] | None = None,
        max_rounds: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model: str | None = None,
        lifecycle: str = "linked",
        metadata: Mapping[str, object] | None = None,
    ) -> SubagentReceipt:
        """Start ``task`` in a new child session in the background and return at once.

        The child runs on its own (in this process; after a restart, resumed by the
        ``TimerRunner`` of any process on the store). Its answer is delivered exactly once
        into the calling session's inbox, as ``<subagent session=... status=...>``: the
        running run reads it at its next round, an idle session is woken to read it. The
        child takes the calling run's tools (narrowed to ``tools``), model and what its
        budget has left when it starts; it is not stopped with the calling run.

        Raises:
            SubagentRefused: As for :meth:`run`.
        """
        ...

    async def background(self) -> list[BackgroundChild]:
        """The calling session's background sub-agents, oldest first."""
        ...

    async def stop(self, session_id: str) -> bool:
        """Stop a running background sub-agent of the calling session: it is not resumed and
        its answer is not delivered. False when it is no running child of the session."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCapabilities:
    """What a tool call may do, each bound to the calling session.

    Attributes:
        timers: Schedule, list and cancel the session's wake-ups.
        inbox: Queue a follow-up for the session.
        session: Read the session.
        state: The session's runtime state (the todo list).
        background: The session's background commands.
        subagents: Run sub-agents as children of the calling run (None outside a run).
        events: Publish events of the calling run (None outside a run).
    """

    timers: SessionTimers
    inbox: SessionInbox
    session: SessionReader
    state: SessionRuntimeState
    background: SessionBackground
    subagents: SubagentSpawner | None = None
    events: SessionEvents | None = None


class AgentLoopHandle(Protocol):
    """The part of :class:`~power_loop.StatefulAgentLoop` a tool can rely on (``ctx.loop``).

    The loop in ``ctx.loop`` is the real ``StatefulAgentLoop``; this protocol types the
    methods that make sense from inside a tool. Prefer the session-bound capabilities
    (``ctx.timers``, ``ctx.inbox``, ``ctx.session``); use the loop to act on other sessions.
    """

    async def send(self, user_input: str, session_id: str) -> StatefulResult:
        """Send a message to a session and run it (see ``StatefulAgentLoop.send``)."""
        ...

    async def follow_up(self, user_input: str, session_id: str) -> StatefulResult | FollowUpQueued:
        """Steer a running session or send to an idle one (see ``StatefulAgentLoop.follow_up``)."""
        ...

    async def new_session_async(self) -> str:
        """Create a session and return its id."""
        ...

    async def get_messages_async(self, session_id: str) -> Sequence[Mapping[str, object]]:
        """A session's context as OpenAI-shaped dicts."""
        ...

    def tool_capabilities(self, session_id: str, tool_call_id: str) -> ToolCapabilities:
        """The capabilities a call ``tool_call_id`` of ``session_id`` gets."""
        ...


@runtime_checkable
class _GivesCapabilities(Protocol):
    def tool_capabilities(self, session_id: str, tool_call_id: str) -> ToolCapabilities: ...


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """Where and why a tool runs, and what it may do.

    Attributes:
        session_id: The session whose run called the tool.
        tool_call_id: The model's id for this call.
        tool_name: The tool's name.
        run_id: The run (one ``send``) that made the call.
        round_index: The round of the run, from 0.
        loop: The ``StatefulAgentLoop`` running the call (None when a registry is invoked
            directly), typed as :class:`AgentLoopHandle`.
        capabilities: What the call may do (:attr:`timers`, :attr:`inbox`, :attr:`session`).
            Filled in from ``loop`` when only the loop is given; None outside a loop.
    """

    session_id: str
    tool_call_id: str
    tool_name: str
    run_id: str = ""
    round_index: int = 0
    loop: AgentLoopHandle | None = field(default=None, repr=False, compare=False)
    capabilities: ToolCapabilities | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.capabilities is None and self.loop is not None and isinstance(self.loop, _GivesCapabilities):
            # A context built by hand (tests, a registry invoked directly) with a loop gets the
            # same capabilities a run would hand the call. (Another object given as the loop
            # is kept as it is, as before.)
            object.__setattr__(self, "capabilities", self.loop.tool_capabilities(self.session_id, self.tool_call_id))

    @property
    def idempotency_key(self) -> str:
        """A key stable across retries and resumes of this call: ``"<session>:<call id>"``.

        A tool with side effects can record it to avoid doing the work twice when a crashed
        run's call is executed again by ``resume``.
        """
        return f"{self.session_id}:{self.tool_call_id}"

    @property
    def timers(self) -> SessionTimers:
        """The session's wake-ups (raises ``ToolError`` outside a loop)."""
        return self._capabilities().timers

    @property
    def inbox(self) -> SessionInbox:
        """The session's inbox (raises ``ToolError`` outside a loop)."""
        return self._capabilities().inbox

    @property
    def session(self) -> SessionReader:
        """Read access to the session (raises ``ToolError`` outside a loop)."""
        return self._capabilities().session

    @property
    def state(self) -> SessionRuntimeState:
        """The session's runtime state (raises ``ToolError`` outside a loop)."""
        return self._capabilities().state

    @property
    def background(self) -> SessionBackground:
        """The session's background commands (raises ``ToolError`` outside a loop)."""
        return self._capabilities().background

    @property
    def events(self) -> SessionEvents | None:
        """Publish events of the calling run; None outside a run (nothing to publish to)."""
        caps = self.capabilities
        return caps.events if caps is not None else None

    @property
    def subagents(self) -> SubagentSpawner:
        """Run sub-agents as children of the calling run (raises ``ToolError`` outside a run)."""
        spawner = self._capabilities().subagents
        if spawner is None:
            raise ToolError(
                f"tool {self.tool_name!r} cannot start sub-agents: it was called outside a run of a "
                "StatefulAgentLoop (sub-agents are children of the run that calls the tool)"
            )
        return spawner

    def _capabilities(self) -> ToolCapabilities:
        if self.capabilities is None:
            raise ToolError(
                f"tool {self.tool_name!r} has no loop capabilities: it was called outside a run of "
                "StatefulAgentLoop (build the ToolContext with loop=... to give it some)"
            )
        return self.capabilities


_CURRENT: ContextVar[ToolContext | None] = ContextVar("power_loop_tool_context", default=None)


def current_tool_context() -> ToolContext | None:
    """The context of the tool call running in this task or thread, or None outside one."""
    return _CURRENT.get()


def _set_context(ctx: ToolContext | None) -> object:
    return _CURRENT.set(ctx)


def _reset_context(token: object) -> None:
    _CURRENT.reset(token)  # type: ignore[arg-type]
