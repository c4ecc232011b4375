"""What each consumer of the store needs, as small ``typing.Protocol``s, and the transaction
interface the store's rules are written against.

Consumers see protocols, never a backend class:

* :class:`RunStore`: the engine (begin a run, write a step, renew and release the lease,
  load a history).
* :class:`TimerStore`: the timer runner and the timer tools (arm, list, cancel, claim,
  renew, deliver, orphaned inboxes).
* :class:`SessionAdmin`: the facade and the CLI (create, read, close sessions; stats;
  pending calls; follow-ups; the store's lifecycle).
* :class:`RuntimeStore`: the todo and background tools and the runtime projectors
  (per-session runtime state, background commands).
* :class:`EventLogStore`: the event log and the report of a session's latest run
  (``AgentLoopConfig.persist_events``, ``loop.iter_events``, ``loop.explain``).
* :class:`SessionStoreProtocol`: all five, what ``StatefulAgentLoop(store=...)`` accepts.
* :class:`InspectStore`: the read layer of the ``power-loop`` inspector commands and of
  session viewers (overviews, runs, transcripts, timers, health; prune, export, import).
  Both built-in stores implement it; it is not required of a store handed to a loop.

Below them, the rules (``_sql.py`` for runs, ``_sessions_sql.py``, ``_history_sql.py``,
``_inbox_sql.py``, ``_leases.py``, ``_timers_sql.py``, ``_runtime_sql.py``) run inside one transaction through
:class:`Tx`: ``execute(sql, params)`` returning a cursor with
``fetchone``/``fetchall``/``rowcount`` whose rows are read by column name. The rules' SQL is
portable (no ``MAX(a, b)``, ``IS NOT ?``, ``rowid`` or ``INSERT OR ...``; ``?`` marks a
parameter, which an adapter for a driver with another paramstyle rewrites), and they never
rely on a database-wide write lock: every lease, fence and claim change is a conditional
``UPDATE ... WHERE fence = ?`` (or ``claim_seq = ?``) whose row count is checked, and message
seqs come from a per-session counter row updated in the same transaction (read back with
``UPDATE ... RETURNING``, which an adapter emulates where its database lacks it). A backend is an
adapter: a connection, a ``Tx`` over it and its transaction boundaries.
"""

from __future__ import annotations

from collections.abc import Collection, Coroutine, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ..approvals import ApprovalRequest
from ._inspect_rows import (
    HealthReport,
    PruneReport,
    RunOverview,
    SessionOverview,
    TimersReport,
    TranscriptEntry,
)
from ._timer_rows import MAX_DELAY_S, MAX_DUE_AT_MS, ClaimedTimer, Delivery, TimerBudgetExceeded
from .rows import (
    ApprovalDecision,
    BackgroundChild,
    BackgroundTaskRow,
    BeginOutcome,
    BeginRun,
    BudgetHold,
    BudgetHoldOutcome,
    EventRecord,
    HeldBudget,
    LeaseClaim,
    LostCommand,
    PendingState,
    RunRecord,
    SessionRow,
    SessionStatsRow,
    StoredMessage,
    TimerRow,
    WriteOp,
    WriteOutcome,
)

__all__ = [
    "MAX_DELAY_S",
    "MAX_DUE_AT_MS",
    "ClaimedTimer",
    "Cursor",
    "Delivery",
    "EventLogStore",
    "InspectStore",
    "RunStore",
    "RuntimeStore",
    "SessionAdmin",
    "SessionStoreProtocol",
    "TimerBudgetExceeded",
    "TimerStore",
    "Tx",
]


# --------------------------------------------------------------------------- transaction


class Cursor(Protocol):
    """The result of one statement: rows readable by column name (``row["owner"]``)."""

    @property
    def rowcount(self) -> int:
        """Rows changed by an ``INSERT``/``UPDATE``/``DELETE``."""
        ...

    def fetchone(self) -> Any:
        """The next row, or None."""
        ...

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        ...


class Tx(Protocol):
    """One open transaction: the only thing the store's rules touch.

    Rows support ``row["column"]``; ``?`` marks a parameter. The adapter opens and ends the
    transaction around the rule (``BEGIN``/``COMMIT``, ``ROLLBACK`` on an error); the rules
    use ``SAVEPOINT name`` / ``ROLLBACK TO SAVEPOINT name`` / ``RELEASE SAVEPOINT name`` for
    partial rollback.
    """

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``: for the few statements a rule words per database
        (``FOR UPDATE SKIP LOCKED`` where it exists)."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        """Run one statement with its parameters."""
        ...


# --------------------------------------------------------------------------- consumers


@runtime_checkable
class RunStore(Protocol):
    """What the round engine needs: each call is one transaction."""

    async def begin_run(self, begin: BeginRun) -> BeginOutcome:
        """Start a run (lease, pending check, inbox, input) in one transaction."""
        ...

    async def write(
        self,
        session_id: str,
        ops: Sequence[WriteOp],
        *,
        lease: LeaseClaim | None = None,
        event_seq: int | None = None,
    ) -> WriteOutcome:
        """Apply a step's operations in one transaction, checking the run's lease."""
        ...

    async def hold_budget(self, request: BudgetHold) -> BudgetHoldOutcome:
        """Take a model call's holds on the shared budgets covering it, or refuse it."""
        ...

    async def hold_budgets(self, requests: Sequence[BudgetHold]) -> list[BudgetHoldOutcome]:
        """Take several calls' holds in one transaction, in order (each sees those before)."""
        ...

    async def settle_budget(self, holds: Sequence[HeldBudget], tokens: int, cost_nano: int) -> None:
        """Settle holds of a call that recorded no usage through a write (failed, cancelled)."""
        ...

    async def renew_lease(self, session_id: str, lease: LeaseClaim) -> None:
        """Extend a run's lease; ``LeaseLostError`` when another run took it."""
        ...

    async def release_lease(self, session_id: str, owner: str) -> None:
        """Release a lease held by ``owner``."""
        ...

    async def load_messages(self, session_id: str, *, include_compacted: bool = False) -> list[StoredMessage]:
        """The session's loadable history (or every row with ``include_compacted``)."""
        ...

    async def start_background_child(
        self,
        child_session_id: str,
        *,
        parent_session_id: str,
        task: str,
        metadata: Mapping[str, Any],
        system_prompt: str | None,
        lifecycle: str,
        depth: int,
        spawn_tool_call_id: str | None = None,
    ) -> bool:
        """Create a background sub-agent, its task row and its task in its inbox, in one
        transaction; False (and nothing changed) when the child exists already."""
        ...

    async def list_background_children(self, parent_session_id: str) -> list[BackgroundChild]:
        """The background sub-agents of a session, oldest first."""
        ...

    async def stop_background_child(self, parent_session_id: str, child_session_id: str) -> bool:
        """Mark a running background sub-agent of the session stopped; False when it is not one."""
        ...


@runtime_checkable
class TimerStore(Protocol):
    """What the timer runner and the timer tools need."""

    async def schedule_timer(
        self,
        session_id: str,
        *,
        due_at: int,
        note: str,
        every_ms: int | None = None,
        count: int | None = None,
        until_at: int | None = None,
        max_live: int | None = None,
        origin: str | None = None,
        cron: str | None = None,
        tz: str | None = None,
        misfire: str | None = None,
    ) -> TimerRow:
        """Arm a timer (idempotent per ``origin``); with ``cron``, a calendar timer."""
        ...

    async def cancel_timer(self, session_id: str, timer_id: int) -> bool:
        """Cancel an armed or in-flight timer."""
        ...

    async def list_timers(self, session_id: str, *, statuses: Sequence[str] = ("armed", "firing")) -> list[TimerRow]:
        """Timers of a session in ``statuses``, soonest first."""
        ...

    async def claim_due_timers(
        self, owner: str, *, lease_ms: int, limit: int, due_by: int | None = None, now: int | None = None
    ) -> list[ClaimedTimer]:
        """Claim due timers (and stale claims) for ``owner``; ``now``: the runner's clock."""
        ...

    async def renew_timer_claims(self, owner: str, *, lease_ms: int, now: int | None = None) -> int:
        """Extend ``owner``'s claims."""
        ...

    async def release_timer_claims(self, owner: str) -> int:
        """Give back ``owner``'s claims."""
        ...

    async def deliver_timers(
        self, owner: str, deliveries: list[Delivery], *, now: int | None = None
    ) -> list[tuple[str | None, int]]:
        """Apply claimed timers' outcomes (each exactly once) in one transaction."""
        ...

    async def retry_timer_later(
        self, timer: ClaimedTimer, owner: str, *, delay_ms: int, now: int | None = None
    ) -> bool:
        """Give back a claim whose delivery failed, due again ``delay_ms`` later."""
        ...

    async def next_timer_due_at(self, owner: str | None = None) -> int | None:
        """When a runner next has work, or None."""
        ...

    async def orphan_inboxes(self, *, limit: int = 100) -> list[str]:
        """Sessions whose wake-up waits with no run to drain it."""
        ...

    async def orphan_subagents(self, *, limit: int = 100) -> list[str]:
        """Background sub-agents still running that no process runs."""
        ...


@runtime_checkable
class SessionAdmin(Protocol):
    """What the facade and the CLI need besides runs and timers: sessions, reading, stats,
    follow-ups, the sync twins of the 0.11 API, and the store's lifecycle."""

    @property
    def path(self) -> str:
        """Where the store keeps its data, for messages: a file path, or a URL without its password."""
        ...

    async def open(self) -> Any:
        """Open the store (idempotent)."""
        ...

    def close(self) -> Coroutine[Any, Any, None]:
        """Close the store: ``await store.close()``."""
        ...

    async def pause_session(self, session_id: str) -> bool:
        """Pause a session durably; whether a run holds it now."""
        ...

    def close_nowait(self) -> None:
        """Close from synchronous code."""
        ...

    def create_session_sync(
        self,
        session_id: str,
        *,
        metadata: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        parent_session_id: str | None = None,
        kind: str = "main",
        lifecycle: str | None = None,
        depth: int = 0,
    ) -> None:
        """Create a session row (blocking)."""
        ...

    def create_session(
        self,
        sid: str,
        /,
        *,
        metadata: Mapping[str, Any] | None = ...,
        system_prompt: str | None = ...,
        parent_session_id: str | None = ...,
        kind: str = ...,
        lifecycle: str | None = ...,
        depth: int = ...,
        spawn_tool_call_id: str | None = ...,
    ) -> Coroutine[Any, Any, None]:
        """``await store.create_session(sid, ...)``; a sub-agent's session names its parent,
        its kind (``subagent``), lifecycle, depth and the spawning tool call."""
        ...

    def get_session(self, session_id: str) -> SessionRow | None:
        """The session row, or None (blocking)."""
        ...

    async def get_session_async(self, session_id: str) -> SessionRow | None:
        """The session row, or None."""
        ...

    async def delete_session(self, session_id: str, *, cascade: bool = True) -> int:
        """Delete a session (and its sub-agent sessions); return the count."""
        ...

    def delete_session_sync(self, session_id: str, *, cascade: bool = True) -> int:
        """Blocking twin of :meth:`delete_session`."""
        ...

    def load_messages_sync(self, session_id: str, *, include_compacted: bool = False) -> list[StoredMessage]:
        """Blocking twin of ``load_messages``."""
        ...

    async def prune_compacted(
        self, session_id: str | None = None, *, older_than_ms: int | None = None, keep_last: int | None = None
    ) -> int:
        """Delete folded message rows; return how many."""
        ...

    async def get_pending(self, session_id: str) -> PendingState | None:
        """Unanswered tool calls, or None."""
        ...

    def get_pending_sync(self, session_id: str) -> PendingState | None:
        """Blocking twin of :meth:`get_pending`."""
        ...

    async def abort_pending(self, session_id: str, reason: str) -> int:
        """Answer every unresolved call; return how many."""
        ...

    def abort_pending_sync(self, session_id: str, reason: str) -> int:
        """Blocking twin of :meth:`abort_pending`."""
        ...

    async def answer_interaction(self, session_id: str, interaction_id: str, value: str) -> list[dict[str, Any]]:
        """Record an answer to a ``request_user_input`` question; return those still open."""
        ...

    async def enqueue(
        self,
        session_id: str,
        content: Any,
        *,
        kind: str = "follow_up",
        ref: str | None = None,
        only_if_busy: bool = False,
    ) -> int | None:
        """Queue an inbox item; the depth, or None when ``only_if_busy`` and idle."""
        ...

    async def decide_approval(
        self, session_id: str, token: str, *, approved: bool, note: str | None = None
    ) -> ApprovalDecision:
        """Decide an approval request once; ``ApprovalError`` for an unknown or used token,
        ``SessionBusyError`` while a run holds the session."""
        ...

    async def list_approvals(self, session_id: str | None = None) -> list[ApprovalRequest]:
        """Undecided approval requests (expired ones included), oldest first."""
        ...

    def list_approvals_sync(self, session_id: str | None = None) -> list[ApprovalRequest]:
        """Blocking twin of :meth:`list_approvals`."""
        ...

    async def get_stats(self, session_id: str) -> SessionStatsRow | None:
        """Stats of a session, or None."""
        ...

    def get_stats_sync(self, session_id: str) -> SessionStatsRow | None:
        """Blocking twin of :meth:`get_stats`."""
        ...

    async def list_stats(self) -> list[SessionStatsRow]:
        """Stats of every session, most recently active first."""
        ...

    def list_stats_sync(self) -> list[SessionStatsRow]:
        """Blocking twin of :meth:`list_stats`."""
        ...

    def schedule_timer_sync(
        self,
        session_id: str,
        *,
        due_at: int,
        note: str,
        every_ms: int | None = None,
        count: int | None = None,
        until_at: int | None = None,
        cron: str | None = None,
        tz: str | None = None,
        misfire: str | None = None,
    ) -> TimerRow:
        """Blocking twin of ``schedule_timer``."""
        ...

    def cancel_timer_sync(self, session_id: str, timer_id: int) -> bool:
        """Blocking twin of ``cancel_timer``."""
        ...

    def list_timers_sync(self, session_id: str, *, statuses: Sequence[str] = ("armed", "firing")) -> list[TimerRow]:
        """Blocking twin of ``list_timers``."""
        ...


class RuntimeStore(Protocol):
    """Per-session runtime state and background commands (the todo and background tools,
    the runtime projectors). Every method raises ``SessionNotFoundError`` for an unknown
    session."""

    async def get_runtime_state_async(self, session_id: str, key: str, default: Any = None) -> Any:
        """The value under ``key`` (decoded JSON), or ``default``."""
        ...

    async def set_runtime_state_async(self, session_id: str, key: str, value: Any) -> None:
        """Store ``value`` (JSON-encodable) under ``key``; ``TypeError`` otherwise."""
        ...

    async def delete_runtime_state_async(self, session_id: str, key: str) -> bool:
        """Remove ``key``; False when it was not set."""
        ...

    async def upsert_background_task_async(
        self,
        session_id: str,
        *,
        task_id: str,
        command: str,
        status: str,
        return_code: int | None = None,
        output_tail: str | None = None,
        output_path: str | None = None,
        seen: bool = False,
    ) -> BackgroundTaskRow:
        """Create or update a background command; a ``running`` one records this process."""
        ...

    async def get_background_task_async(self, session_id: str, task_id: str) -> BackgroundTaskRow | None:
        """One background command, or None."""
        ...

    async def list_background_tasks_async(self, session_id: str) -> list[BackgroundTaskRow]:
        """The session's background commands, oldest first."""
        ...

    async def list_unseen_background_updates_async(self, session_id: str) -> list[BackgroundTaskRow]:
        """Background commands whose latest change the model has not been shown."""
        ...

    async def mark_background_seen_async(
        self, session_id: str, task_ids: Iterable[str], *, statuses: Mapping[str, str] | None = None
    ) -> int:
        """Mark these commands' latest change shown (only where the status is still the one
        in ``statuses``, when given); how many changed."""
        ...

    async def start_background_task_async(
        self, session_id: str, *, task_id: str, command: str, deadline_at: int, max_running: int
    ) -> BackgroundTaskRow | list[BackgroundTaskRow]:
        """Record a command starting in this process, or return the running ones at the limit."""
        ...

    async def set_background_child_async(self, session_id: str, task_id: str, pid: int, start: int | None) -> None:
        """Record the process a running command started."""
        ...

    async def reap_lost_background_async(
        self, session_id: str, *, alive: Collection[str] | None = None
    ) -> list[LostCommand]:
        """Mark ``lost`` the running commands no process runs any more; return them."""
        ...

    async def background_updates_async(
        self, session_id: str, *, alive: Collection[str] | None = None
    ) -> list[BackgroundTaskRow]:
        """Reap lost commands, then the unseen updates (not marked seen)."""
        ...


@runtime_checkable
class EventLogStore(Protocol):
    """The event log and the report of a session's latest run."""

    async def append_events(self, batches: Mapping[str, Sequence[EventRecord]]) -> int:
        """Store events of several sessions (text id → records) in one transaction; seqs
        stored already and sessions that no longer exist are skipped."""
        ...

    async def read_events(
        self, session_id: str, *, after_seq: int = 0, limit: int = 500, run_id: str | None = None
    ) -> list[EventRecord]:
        """Stored events of the session after ``after_seq``, in seq order, at most ``limit``."""
        ...

    async def last_run(self, session_id: str) -> RunRecord | None:
        """The session's latest run and its pending calls; None before its first run."""
        ...


@runtime_checkable
class SessionStoreProtocol(RunStore, TimerStore, SessionAdmin, RuntimeStore, EventLogStore, Protocol):
    """Everything a loop uses: what ``StatefulAgentLoop(store=...)`` accepts."""


@runtime_checkable
class InspectStore(Protocol):
    """What the inspector commands (``power-loop sessions``, ``show``, ``timers``, ``doctor``,
    ``prune``, ``export``, ``import``) and session viewers read through. Every method but
    :meth:`prune` and :meth:`import_session` only reads. Times are epoch milliseconds."""

    async def list_sessions(
        self,
        *,
        kind: str | None = None,
        metadata: Mapping[str, str] | None = None,
        active_since_ms: int | None = None,
        search: str | None = None,
        order: str = "last_active",
        limit: int = 50,
        offset: int = 0,
    ) -> list[SessionOverview]:
        """Every session matching the filters, one page; ``order`` is ``last_active``,
        ``created``, ``id`` or ``tokens`` (``ValueError`` otherwise)."""
        ...

    async def count_sessions(
        self,
        *,
        kind: str | None = None,
        metadata: Mapping[str, str] | None = None,
        active_since_ms: int | None = None,
        search: str | None = None,
    ) -> int:
        """How many sessions :meth:`list_sessions` finds with these filters."""
        ...

    async def list_runs(self, session_id: str, *, limit: int = 100) -> list[RunOverview]:
        """The session's latest ``limit`` runs, oldest first."""
        ...

    async def read_transcript(
        self, session_id: str, *, after_seq: int = 0, limit: int = 1000, include_compacted: bool = True
    ) -> list[TranscriptEntry]:
        """Message rows after ``after_seq`` (compaction summaries marked), in seq order."""
        ...

    async def list_all_timers(
        self,
        session_id: str | None = None,
        *,
        statuses: Sequence[str] = ("armed", "firing", "claimed"),
        recent: int = 20,
    ) -> TimersReport:
        """Active timers soonest first and the latest fired or cancelled ones."""
        ...

    async def health_report(
        self, *, now_ms: int | None = None, overdue_ms: int = 300_000, db: str | None = None
    ) -> HealthReport:
        """Schema version, integrity and the problems found, each with its fix."""
        ...

    async def prune(self, *, dry_run: bool, older_than_ms: int | None = None) -> PruneReport:
        """Remove folded message rows and ended ephemeral sub-agent sessions."""
        ...

    async def export_session(self, session_id: str) -> list[dict[str, Any]]:
        """The session as versioned JSON-ready records (header first)."""
        ...

    async def import_session(self, records: Iterable[Mapping[str, Any]], *, session_id: str) -> int:
        """Store exported records as a new session; all or nothing."""
        ...
