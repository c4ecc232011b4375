"""Rows returned by the session store and the write operations it accepts.

Write operations are small frozen dataclasses applied, in order, inside one transaction by
:meth:`SessionStore.write`. A step of the engine (a model turn, a tool result, the end of a
run) is one list of operations, hence one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ..messages import Message, Usage

__all__ = [
    "AnswerPending",
    "Append",
    "BeginOutcome",
    "BeginRun",
    "Compact",
    "DrainInbox",
    "FinishRun",
    "LeaseClaim",
    "LoadedHistory",
    "OpenInteraction",
    "PendingCall",
    "PendingState",
    "RecordLLMCall",
    "RunTotals",
    "SessionRow",
    "SessionStatsRow",
    "StoredMessage",
    "TimerRow",
    "ToolStatus",
    "UpdateToolCall",
    "WriteOp",
    "WriteOutcome",
]

ToolStatus = Literal["pending", "running", "done", "failed", "aborted", "cancelled", "skipped", "waiting_input"]
RESOLVED_STATUSES: frozenset[str] = frozenset({"done", "failed", "aborted", "cancelled", "skipped"})


@dataclass(frozen=True)
class SessionRow:
    """A session as stored (``loop.store.get_session(sid)``).

    Attributes:
        session_id: The id.
        metadata: Host metadata given at creation.
        system_prompt: The per-session system prompt, or None.
        parent_session_id: The parent of a sub-agent session, or None.
        kind: ``"main"`` or ``"subagent"``.
        lifecycle: Sub-agent lifecycle (``ephemeral``, ``linked``, ``detached``) or None.
        depth: Sub-agent nesting depth (0 for main sessions).
        created_at: Creation time, epoch ms.
        updated_at: Last write, epoch ms.
    """

    session_id: str
    metadata: Mapping[str, Any]
    system_prompt: str | None
    parent_session_id: str | None
    kind: str
    lifecycle: str | None = None
    depth: int = 0
    created_at: int = 0
    updated_at: int = 0


@dataclass(frozen=True)
class SessionStatsRow:
    """Per-session aggregates, updated when a run ends. Times are epoch ms."""

    session_id: str
    sends: int
    rounds: int
    llm_calls: int
    tool_calls: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    first_send_at: int | None
    last_send_at: int | None
    updated_at: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0


@dataclass(frozen=True)
class TimerRow:
    """A durable timer. Times are epoch ms.

    Attributes:
        session_id: The session it wakes.
        timer_id: Its id within the session (from 1).
        due_at: When it is (next) due.
        note: What the agent wrote to its future self.
        status: ``armed``, ``claimed`` (being delivered), ``fired`` or ``cancelled``.
        every_s: Period of a recurring timer (fixed delay after each firing), else None.
        remaining: Firings left of a counted series (None: unlimited or one-shot).
        until_at: Last time a recurring timer may fire.
        fire_count: How many times it fired.
        last_outcome: Outcome of its last firing (``delivered``, ``queued``, ``skipped``, ...).
        created_at: When it was scheduled.
        fired_at: When it last fired.
    """

    session_id: str
    timer_id: int
    due_at: int
    note: str
    status: str
    every_s: float | None = None
    remaining: int | None = None
    until_at: int | None = None
    fire_count: int = 0
    last_outcome: str | None = None
    created_at: int = 0
    fired_at: int | None = None


@dataclass(frozen=True)
class StoredMessage:
    """A message with its store sequence number."""

    seq: int
    message: Message
    compacted: bool = False


@dataclass(frozen=True)
class LoadedHistory:
    """A session's loadable history as two parallel lists (cheaper than one object a row).

    Attributes:
        seqs: Store seqs, ascending.
        messages: The messages, in the same order.
    """

    seqs: list[int]
    messages: list[Message]


@dataclass(frozen=True)
class PendingCall:
    """A tool call of the latest assistant message that has no result message yet.

    Attributes:
        tool_call_id: The call id.
        name: Tool name.
        arguments: Raw JSON arguments.
        status: Lifecycle status (``pending`` never started, ``running`` started with an
            unknown outcome, ``done``/``failed`` finished with a stored ``result``).
        result: The stored result of a finished call, else None.
        is_error: Whether the stored result is an error.
        position: Index of the call in the assistant message.
    """

    tool_call_id: str
    name: str
    arguments: str
    status: str
    result: str | None = None
    is_error: bool = False
    position: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls[]`` dict of the call."""
        return {
            "id": self.tool_call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class PendingState:
    """Unanswered tool calls of a session (see ``SessionPendingError``)."""

    assistant_seq: int
    calls: tuple[PendingCall, ...]
    interactions: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class LeaseClaim:
    """A run's claim on a session: who, the fencing number, and how long a renewal lasts."""

    owner: str
    ttl_ms: int
    fence: int = 0


@dataclass(frozen=True)
class RunTotals:
    """What a run adds to the session stats."""

    rounds: int = 0
    llm_calls: int = 0
    tool_calls: int = 0
    usage: Usage = field(default_factory=Usage)
    count_send: bool = True


# --------------------------------------------------------------------------- write operations


@dataclass(frozen=True)
class Append:
    """Append messages. Assistant tool calls open ``tool_calls`` rows; tool results close them.

    Attributes:
        messages: Messages to append, in order.
        statuses: Final status per answered ``tool_call_id`` (default ``done``, or ``failed``
            for error results).
        run_id: The run appending them.
    """

    messages: Sequence[Message]
    statuses: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None


@dataclass(frozen=True)
class UpdateToolCall:
    """Record a tool call's progress (``running``) or its finished result (not yet appended)."""

    tool_call_id: str
    status: str
    result: str | None = None
    is_error: bool = False


@dataclass(frozen=True)
class RecordLLMCall:
    """Record one model call's usage."""

    run_id: str
    round_index: int
    usage: Usage
    model: str | None = None
    purpose: str = "round"
    duration_ms: int = 0


@dataclass(frozen=True)
class DrainInbox:
    """Move every waiting inbox item into the history as user messages (exactly once)."""

    run_id: str | None = None


@dataclass(frozen=True)
class FinishRun:
    """End a run: drain the inbox first; if anything arrived, keep the run going instead.

    Attributes:
        run_id: The run.
        status: Its final status.
        totals: What it adds to the session stats.
        error: Error text for a failed run.
        drain_inbox: Check the inbox first (False for runs ending by error or cancellation).
        release_lease: Release the run's session lease.
        started_at: When the run started (epoch ms; looked up when None).
    """

    run_id: str
    status: str
    totals: RunTotals = field(default_factory=RunTotals)
    error: str | None = None
    drain_inbox: bool = True
    release_lease: bool = True
    started_at: int | None = None


@dataclass(frozen=True)
class Compact:
    """Fold every message up to ``through_seq`` into ``summary``: the new load base.

    Attributes:
        through_seq: Last folded seq.
        summary: The summary text (it replaces the previous summary, which it includes).
        before_tokens: Estimated context tokens before.
        after_tokens: Estimated context tokens after.
        run_id: The run that compacted.
    """

    through_seq: int
    summary: str
    before_tokens: int = 0
    after_tokens: int = 0
    run_id: str | None = None


@dataclass(frozen=True)
class AnswerPending:
    """Answer every unresolved tool call (stored results where a call finished, ``text``
    otherwise): a failing run leaves no call unanswered."""

    text: str
    run_id: str | None = None


@dataclass(frozen=True)
class OpenInteraction:
    """Record a ``request_user_input`` question (``body`` is its pending_interactions entry)."""

    body: Mapping[str, Any]


WriteOp = Union[Append, UpdateToolCall, RecordLLMCall, DrainInbox, FinishRun, OpenInteraction, AnswerPending, Compact]


@dataclass(frozen=True)
class WriteOutcome:
    """What a write did.

    Attributes:
        version: The session's history version after the write.
        seqs: Seqs of messages appended by ``Append`` operations, in order.
        drained: Messages the store composed itself (inbox items, answers to pending calls).
        finished: Whether a ``FinishRun`` ended the run (False: the inbox had items).
    """

    version: int
    seqs: tuple[int, ...] = ()
    drained: tuple[StoredMessage, ...] = ()
    finished: bool = False


# --------------------------------------------------------------------------- run start


@dataclass(frozen=True)
class BeginRun:
    """Start a run on a session in one transaction.

    Attributes:
        session_id: The session.
        run_id: New run id.
        kind: ``send``, ``resume``, ``submit_input``, ``wake``.
        lease: The run's lease claim (owner and ttl).
        messages: New messages to append (the user input), after any drained inbox items.
        heal_pending: Answer unresolved tool calls first (stored results where a call
            finished, ``heal_text`` otherwise).
        heal_text: Result text for calls that never finished.
        allow_pending: Start even with unresolved calls (resume, submit_input).
        cached_version: Version of the caller's cached history; the history is returned only
            when the stored version differs.
    """

    session_id: str
    run_id: str
    lease: LeaseClaim
    kind: str = "send"
    messages: Sequence[Message] = ()
    heal_pending: bool = False
    heal_text: str = "<aborted: auto-healed by send(heal_pending=True)>"
    allow_pending: bool = False
    cached_version: int | None = None


@dataclass(frozen=True)
class BeginOutcome:
    """The result of :class:`BeginRun`.

    Attributes:
        status: ``ok``; ``busy`` (another live run holds the lease); ``pending`` (unresolved
            tool calls and neither healing nor allowed); ``not_found``.
        session: The session row (None when not found).
        fence: The run's fencing number.
        version: History version after the begin transaction.
        history: The loadable history (after the compaction base) when the caller's cache
            was stale, else None.
        appended: Messages appended by this transaction (healed results, inbox, input).
        pending: Unresolved calls (for ``pending`` status, or for ``resume``).
        lease_owner / lease_expires_at: Holder of the lease when ``busy``.
        event_seq: The session's event sequence high-water mark.
    """

    status: Literal["ok", "busy", "pending", "not_found"]
    session: SessionRow | None = None
    fence: int = 0
    version: int = 0
    history: LoadedHistory | None = None
    appended: tuple[StoredMessage, ...] = ()
    pending: PendingState | None = None
    lease_owner: str | None = None
    lease_expires_at: int = 0
    event_seq: int = 0
