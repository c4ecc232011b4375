"""Rows returned by the session store and the write operations it accepts.

Write operations are small frozen dataclasses applied, in order, inside one transaction by
:meth:`SessionStore.write`. A step of the engine (a model turn, a tool result, the end of a
run) is one list of operations, hence one transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Union

from ..approvals import ApprovalRequest
from ..messages import Message, Usage
from ._budget_rows import BudgetClaim, BudgetHold, BudgetHoldOutcome, HeldBudget
from ._event_rows import EventRecord, RecordEvents

__all__ = [
    "BudgetClaim",
    "BudgetHold",
    "BudgetHoldOutcome",
    "HeldBudget",
    "AnswerPending",
    "Append",
    "ApprovalDecision",
    "BackgroundChild",
    "BackgroundStatus",
    "BackgroundTaskRow",
    "BeginOutcome",
    "BeginRun",
    "Compact",
    "CompactionRow",
    "DrainInbox",
    "EventRecord",
    "FinishRun",
    "LeaseClaim",
    "LostCommand",
    "LoadedHistory",
    "MessageRow",
    "MessageState",
    "OpenApproval",
    "OpenInteraction",
    "PendingCall",
    "PendingState",
    "RecordEvents",
    "RecordLLMCall",
    "RunRecord",
    "RunTotals",
    "SessionKind",
    "SessionRow",
    "SessionStateRow",
    "SessionStatsRow",
    "SessionStatus",
    "StoredMessage",
    "TimerRow",
    "ToolStatus",
    "UpdateToolCall",
    "WriteOp",
    "WriteOutcome",
]

ToolStatus = Literal[
    "pending", "running", "done", "failed", "aborted", "cancelled", "skipped", "waiting_input", "awaiting_approval"
]
RESOLVED_STATUSES: frozenset[str] = frozenset({"done", "failed", "aborted", "cancelled", "skipped"})


class SessionKind(str, Enum):
    """What a session is (0.11 name). Compares equal to its value: ``SessionKind.ROOT == "root"``.

    A top-level session is stored as ``"main"`` (this version's name) and read back as
    :attr:`ROOT`; either spelling is accepted where a kind is written.
    """

    ROOT = "root"
    SUBAGENT = "subagent"

    @classmethod
    def _missing_(cls, value: object) -> SessionKind | None:
        # "main" is how this version stores a top-level session.
        return cls.ROOT if value == "main" else None


class SessionStatus(str, Enum):
    """Whether a session is in use or archived (0.11 name; ``store.archive_session``)."""

    ACTIVE = "active"
    ARCHIVED = "archived"


class MessageState(str, Enum):
    """Whether a stored message is in the context or folded into a compaction summary."""

    ACTIVE = "active"
    COMPACTED_OUT = "compacted_out"


def session_kind(stored: str) -> SessionKind | str:
    """The kind of a stored session row as :class:`SessionKind` (an unknown kind stays a string)."""
    try:
        return SessionKind(stored)
    except ValueError:
        return stored


def stored_kind(kind: str) -> str:
    """The kind to store: ``"root"`` (0.11's name, or :attr:`SessionKind.ROOT`) is stored as ``"main"``."""
    value = kind.value if isinstance(kind, Enum) else kind
    return "main" if value in ("root", "main") else str(value)


@dataclass(frozen=True)
class SessionRow:
    """A session as stored (``loop.store.get_session(sid)``).

    Attributes:
        session_id: The id.
        metadata: Host metadata given at creation.
        system_prompt: The per-session system prompt, or None.
        parent_session_id: The parent of a sub-agent session, or None.
        kind: :class:`SessionKind` (``ROOT`` for a top-level session, ``SUBAGENT``); a
            ``str`` enum, so ``row.kind == "root"`` holds too.
        lifecycle: Sub-agent lifecycle (``ephemeral``, ``linked``, ``detached``) or None.
        depth: Sub-agent nesting depth (0 for main sessions).
        created_at: Creation time, epoch ms.
        updated_at: Last write, epoch ms.
        model: 0.11's per-session model label, as given to ``store.create_session`` (else None).
        config: 0.11's per-session config dict, as given to ``store.create_session`` (else ``{}``).
        status: :class:`SessionStatus`: ``ACTIVE``, or ``ARCHIVED`` after
            ``store.archive_session`` (a closed session has no row at all).
        spawn_tool_call_id: 0.11's id of the spawning tool call, as given to
            ``store.create_session`` (else None).
        spawn_depth: 0.11's name of ``depth`` (the same value).
    """

    session_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    parent_session_id: str | None = None
    kind: str = SessionKind.ROOT
    lifecycle: str | None = None
    depth: int = 0
    created_at: int = 0
    updated_at: int = 0
    model: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    status: str = SessionStatus.ACTIVE
    spawn_tool_call_id: str | None = None
    spawn_depth: int = -1

    def __post_init__(self) -> None:
        # spawn_depth and depth are one value under two names (0.11's and this version's);
        # -1 means "not given". Frozen, hence object.__setattr__.
        if self.spawn_depth < 0:
            object.__setattr__(self, "spawn_depth", self.depth)
        elif self.depth == 0:
            object.__setattr__(self, "depth", self.spawn_depth)


@dataclass(frozen=True)
class MessageRow:
    """One stored message in 0.11's row shape (``store.get_message``, ``load_all_messages``).

    Attributes:
        session_id: The session.
        seq: Its sequence number in the session (from 1).
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        name: The message's ``name`` (``compact_note`` for the compaction summary), or None.
        content: The text (a list of parts for a message with images).
        tool_calls: An assistant message's calls as OpenAI ``tool_calls[]`` dicts, or None.
        tool_call_id: The call a tool message answers, or None.
        round_index: 0.11's round of the message; this version does not keep it (None), except
            on the compaction summary row.
        state: :class:`MessageState`: ``ACTIVE``, or ``COMPACTED_OUT`` once folded.
        meta: Extra data; this version keeps none for ordinary messages (``{}``).
        created_at: When it was stored, epoch ms.
    """

    session_id: str
    seq: int
    role: str
    name: str | None
    content: Any
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    round_index: int | None
    state: MessageState
    meta: dict[str, Any]
    created_at: int


@dataclass(frozen=True)
class SessionStateRow:
    """A session's run state in 0.11's shape (``store.get_state``).

    Attributes:
        session_id: The session.
        next_seq: The seq the next stored message gets.
        round_index: The round of the session's latest model call (0 before any).
        last_compact_seq: How many compactions the session has had.
        pending: The unanswered tool calls as ``loop.get_pending`` returns them, or None.
    """

    session_id: str
    next_seq: int
    round_index: int
    last_compact_seq: int
    pending: dict[str, Any] | None


@dataclass(frozen=True)
class CompactionRow:
    """One compaction of a session (``store.list_compactions``), in 0.11's shape.

    Attributes:
        session_id: The session.
        compact_seq: Its number in the session (from 1).
        note_seq: The seq the summary stands at in the loaded context (its ``to_seq``).
        from_seq: First seq folded by this compaction.
        to_seq: Last seq folded.
        before_tokens: Estimated context tokens before.
        after_tokens: Estimated context tokens after.
        round_index: Not kept by this version (None).
        created_at: When it was recorded, epoch ms.
        summary: The summary text.
    """

    session_id: str
    compact_seq: int
    note_seq: int
    from_seq: int
    to_seq: int
    before_tokens: int | None
    after_tokens: int | None
    round_index: int | None
    created_at: int
    summary: str = ""


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
class BackgroundChild:
    """A sub-agent started in the background, as its parent sees it. Times are epoch ms.

    Attributes:
        session_id: The child session.
        name: The child's label (``subagent`` unless the spawn named it).
        status: ``running``, ``delivered`` (its answer is in the parent's inbox) or
            ``stopped``.
        created_at: When it was started.
        ended_at: When it was delivered or stopped.
    """

    session_id: str
    name: str
    status: str
    created_at: int
    ended_at: int | None = None


BackgroundStatus = Literal["running", "completed", "failed", "timed_out", "killed", "lost"]
"""What became of a background command: still ``running``; ended with exit code 0
(``completed``) or another (``failed``); killed at its time limit (``timed_out``); killed
because its loop closed or it was cancelled (``killed``); or ``lost``, its process having ended
(a crash or a restart) before the command finished."""

BACKGROUND_ENDED: frozenset[str] = frozenset({"completed", "failed", "timed_out", "killed", "lost"})
"""The statuses of a background command that has ended."""


@dataclass(frozen=True)
class BackgroundTaskRow:
    """A background command of a session (``background_run``). Times are epoch ms.

    Attributes:
        session_id: The session that started it.
        task_id: Its id in the session.
        command: The command line.
        status: See :data:`BackgroundStatus` (0.11 files may hold other words).
        return_code: Its exit status once ended (negative: killed by that signal).
        output_tail: The end of its output, bounded.
        output_path: A file holding its full output, when one was kept.
        seen: The model has been shown its latest change.
        created_at: When it was started.
        updated_at: Its latest change.
    """

    session_id: str
    task_id: str
    command: str
    status: str
    return_code: int | None = None
    output_tail: str | None = None
    output_path: str | None = None
    seen: bool = False
    created_at: int = 0
    updated_at: int = 0

    def __getitem__(self, name: str) -> Any:
        """Field access by name, for 0.11 code that read these rows as dicts."""
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name: str, default: Any = None) -> Any:
        """A field by name, or ``default``."""
        return getattr(self, name, default)


@dataclass(frozen=True)
class LostCommand:
    """A command marked ``lost``, with the process it had started (to stop it on this machine).

    Attributes:
        task_id: The command.
        host: The machine of the process that ran it (see ``_holder``).
        child_pid: The command's process (its process group leader), if recorded.
        child_start: That process's start time, to tell a reused pid apart.
    """

    task_id: str
    host: str | None
    child_pid: int | None
    child_start: int | None


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
        fired_at: When it last fired (also :attr:`last_fired_at`).
        updated_at: When the row last changed (scheduled, claimed, fired, cancelled, re-armed).
        cron: A calendar timer's schedule (a cron expression), else None; ``due_at`` is then
            its next occurrence.
        tz: The IANA zone the schedule is read in (``Europe/Paris``), else None.
        misfire: A calendar timer's rule for occurrences missed during a downtime: ``once``
            (one wake-up for all of them) or ``skip``; else None.
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
    updated_at: int = 0
    cron: str | None = None
    tz: str | None = None
    misfire: str | None = None

    @property
    def last_fired_at(self) -> int | None:
        """When it last fired (epoch ms), None before its first firing."""
        return self.fired_at


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
    """Unanswered tool calls of a session (see ``SessionPendingError``).

    Attributes:
        assistant_seq: Seq of the assistant message that made the calls.
        calls: The unanswered calls, in message order.
        interactions: Open ``request_user_input`` questions.
        round_index: The round (0-based, within its run) of the model turn that made the calls.
        approvals: Undecided approval requests of these calls (expired ones included).
        approved: Ids of calls a human approved that have not run to an answer yet: they
            run without asking again (their tool's ``precheck`` first).
        expired: Ids of calls answered as expired by a late approval.
    """

    assistant_seq: int
    calls: tuple[PendingCall, ...]
    interactions: tuple[Mapping[str, Any], ...] = ()
    round_index: int = 0
    approvals: tuple[ApprovalRequest, ...] = ()
    approved: frozenset[str] = frozenset()
    expired: frozenset[str] = frozenset()


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
    """Record one model call's usage (and settle the shared-budget holds it took, with its
    cost in nano-dollars)."""

    run_id: str
    round_index: int
    usage: Usage
    model: str | None = None
    purpose: str = "round"
    duration_ms: int = 0
    holds: tuple[HeldBudget, ...] = ()
    cost_nano: int = 0


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
        final_text: The run's answer. When the session is a background sub-agent whose
            result is not delivered yet, it goes into the parent's inbox in this transaction.
        deliver: False for an end that is no answer (the run's task was cancelled: the child
            is resumed later instead).
    """

    run_id: str
    status: str
    totals: RunTotals = field(default_factory=RunTotals)
    error: str | None = None
    drain_inbox: bool = True
    release_lease: bool = True
    started_at: int | None = None
    final_text: str | None = None
    deliver: bool = True


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


@dataclass(frozen=True)
class OpenApproval:
    """Record an approval request. An earlier request of the same call that is still
    undecided or approved (a ``precheck`` found the world changed) is superseded: its token
    stops working."""

    request: ApprovalRequest


WriteOp = Union[
    Append,
    UpdateToolCall,
    RecordLLMCall,
    DrainInbox,
    FinishRun,
    OpenInteraction,
    OpenApproval,
    AnswerPending,
    Compact,
    RecordEvents,
]


@dataclass(frozen=True)
class ApprovalDecision:
    """What deciding an approval did (``store.decide_approval``).

    Attributes:
        outcome: ``approved``, ``denied``, or ``expired`` (approving came too late: the call
            was answered as expired, whatever the decision).
        request: The request decided.
        remaining: The session's approval requests still undecided.
    """

    outcome: Literal["approved", "denied", "expired"]
    request: ApprovalRequest
    remaining: tuple[ApprovalRequest, ...] = ()


@dataclass(frozen=True)
class RunRecord:
    """A session's latest run as the store knows it (what ``loop.explain`` reports).

    Attributes:
        run_id: The run's id.
        number: The run's number in its session (1 for the first).
        kind: What started it (``send``, ``resume``, ``submit_input``, ``wake``).
        status: Its run-row status: a ``RunStatus`` once ended, else ``running``, ``failed``
            or ``interrupted``.
        rounds: Rounds it ran (recorded when it ended).
        started_at: When it started (epoch ms).
        ended_at: When it ended (epoch ms), or None.
        error: The error of a failed or cancelled run, or None.
        usage: Token usage of its model calls (``calls``, ``prompt_tokens``,
            ``completion_tokens``, ``cache_read_tokens``, ``reasoning_tokens``,
            ``total_tokens``).
        tool_calls: Its tool calls by status (``done``, ``failed``, ``pending``, ...).
        last_message: The text of the last message it stored (its answer or the marker of
            its ending), or None.
        pending: The session's unanswered calls and open questions, or None.
        events_stored: How many of its events the event log holds.
    """

    run_id: str
    number: int
    kind: str
    status: str
    rounds: int
    started_at: int
    ended_at: int | None
    error: str | None
    usage: Mapping[str, int] = field(default_factory=dict)
    tool_calls: Mapping[str, int] = field(default_factory=dict)
    last_message: str | None = None
    pending: PendingState | None = None
    events_stored: int = 0


@dataclass(frozen=True)
class WriteOutcome:
    """What a write did.

    Attributes:
        version: The session's history version after the write.
        seqs: Seqs of messages appended by ``Append`` operations, in order.
        drained: Messages the store composed itself (inbox items, answers to pending calls).
        finished: Whether a ``FinishRun`` ended the run (False: the inbox had items).
        delivered_to: The parent session whose inbox received this background sub-agent's
            answer in this write, else None.
        paused: The session was paused (``loop.pause``, from any process) when the run wrote:
            the run stops at its next round boundary.
    """

    version: int
    seqs: tuple[int, ...] = ()
    drained: tuple[StoredMessage, ...] = ()
    finished: bool = False
    delivered_to: str | None = None
    paused: bool = False


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
        lift_pause: A ``resume`` on a paused session lifts the pause (False: refused as
            ``paused`` like any other kind).
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
    lift_pause: bool = True


@dataclass(frozen=True)
class BeginOutcome:
    """The result of :class:`BeginRun`.

    Attributes:
        status: ``ok``; ``busy`` (another live run holds the lease); ``pending`` (unresolved
            tool calls and neither healing nor allowed); ``not_found``; ``paused`` (the
            session is paused and the run is no ``resume``: nothing was written).
        session: The session row (None when not found).
        fence: The run's fencing number.
        version: History version after the begin transaction.
        history: The loadable history (after the compaction base) when the caller's cache
            was stale, else None.
        appended: Messages appended by this transaction (healed results, inbox, input).
        pending: Unresolved calls (for ``pending`` status, or for ``resume``).
        lease_owner / lease_expires_at: Holder of the lease when ``busy``.
        event_seq: The session's event sequence high-water mark.
        runtime: The session keeps runtime state or background commands (the todo list, a
            ``background_run``): the run shows their projection to the model each round.
        wall_carried_ms: Wall-clock the earlier parts of this run took, when it continues one
            (``resume``, ``submit_input``, ``approve``): what ``max_wall_s_per_run`` counts
            before this part's own time. 0 for a new ``send``.
        paused_at: When the session was paused (``paused`` status).
    """

    status: Literal["ok", "busy", "pending", "not_found", "paused"]
    session: SessionRow | None = None
    fence: int = 0
    version: int = 0
    history: LoadedHistory | None = None
    appended: tuple[StoredMessage, ...] = ()
    pending: PendingState | None = None
    lease_owner: str | None = None
    lease_expires_at: int = 0
    event_seq: int = 0
    runtime: bool = False
    wall_carried_ms: int = 0
    paused_at: int | None = None


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """``metadata`` as a plain dict; ``TypeError``/``ValueError`` if it is not a JSON-able mapping."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    try:
        json.dumps(dict(metadata))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    return dict(metadata)
