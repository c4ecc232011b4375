"""The store's operations, written once for every backend.

Each operation takes the public parameters and runs one transaction of the rules (the
``_*_sql`` modules) through the backend's ``_call`` (awaitable: on the backend's worker
threads) or ``_call_sync`` (blocking: in the calling thread). A backend is a class that
provides those two methods over its connections and mixes this class in
(:class:`~power_loop.store.SQLiteSessionStore`,
:class:`~power_loop.store.postgres.PostgresSessionStore`).

Guarantees:

* Each operation with a blocking twin is declared once (:mod:`._twins`): one method gives
  ``await store.x(...)`` and ``store.x_sync(...)`` (or 0.11's sync ``x`` and ``x_async``),
  with the same parameters, the same transaction and the same checks.
* Nothing here names a backend: the rules speak :class:`~.protocols.Tx` only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from ..approvals import ApprovalRequest
from . import _approvals_sql as _approvals
from . import _budgets_sql as _budgets
from . import _compat_sql, _events_sql, _leases, _sql
from . import _sessions_sql as _sessions
from . import _subagents_sql as _subagents
from . import _timers_sql as _timers
from ._compat import Store011Methods
from ._runtime import RuntimeStateMethods
from ._twins import TxFn, store_op
from .protocols import Tx
from .rows import (
    ApprovalDecision,
    BackgroundChild,
    BeginOutcome,
    BeginRun,
    BudgetHold,
    BudgetHoldOutcome,
    EventRecord,
    HeldBudget,
    LeaseClaim,
    PendingState,
    RunRecord,
    SessionKind,
    SessionRow,
    SessionStatsRow,
    StoredMessage,
    TimerRow,
    WriteOp,
    WriteOutcome,
    check_metadata,
)

__all__ = ["StoreOperations"]

T = TypeVar("T")


class StoreOperations(Store011Methods, RuntimeStateMethods):
    """Every store operation, over the backend's ``_call`` / ``_call_sync``."""

    if TYPE_CHECKING:

        def _call_sync(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

        async def _call(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

    # ------------------------------------------------------------------ sessions

    @overload
    def create_session(
        self,
        sid: str,
        /,
        *,
        metadata: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        parent_session_id: str | None = None,
        kind: str = "main",
        lifecycle: str | None = None,
        depth: int = 0,
        spawn_tool_call_id: str | None = None,
    ) -> Coroutine[Any, Any, None]: ...

    @overload
    def create_session(
        self,
        /,
        *,
        system_prompt: str | None = None,
        model: str | None = None,
        config: Mapping[str, Any] | None = None,
        parent_session_id: str | None = None,
        spawn_tool_call_id: str | None = None,
        kind: str = SessionKind.ROOT,
        lifecycle: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_id: str | None = None,
    ) -> str: ...

    def create_session(
        self,
        sid: str | None = None,
        /,
        *,
        system_prompt: str | None = None,
        model: str | None = None,
        config: Mapping[str, Any] | None = None,
        parent_session_id: str | None = None,
        spawn_tool_call_id: str | None = None,
        kind: str = SessionKind.ROOT,
        lifecycle: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        depth: int = 0,
    ) -> Coroutine[Any, Any, None] | str:
        """Create a session row, in one of two forms.

        * ``await store.create_session(sid, metadata=..., system_prompt=..., ...)``: the id
          comes first, positionally; a coroutine.
        * 0.11's form, keywords only: ``store.create_session(system_prompt=..., model=...,
          config=..., session_id=None, ...)`` runs synchronously and returns the id (a new
          ``"sess_" + 24 hex`` id unless ``session_id`` is given); a sub-agent's depth follows
          its parent. ``model``, ``config`` and ``spawn_tool_call_id`` are kept and read back
          on the :class:`SessionRow`.

        ``kind`` is ``SessionKind.ROOT`` (also spelled ``"root"`` or ``"main"``) or
        ``SessionKind.SUBAGENT``.

        Raises:
            ValueError: The id exists already or the metadata is not JSON-serialisable.
            SessionNotFoundError: ``parent_session_id`` does not exist.
        """
        if sid is None:
            return self._create_session_011(
                system_prompt=system_prompt,
                model=model,
                config=config,
                parent_session_id=parent_session_id,
                spawn_tool_call_id=spawn_tool_call_id,
                kind=kind,
                lifecycle=lifecycle,
                metadata=metadata,
                session_id=session_id,
            )
        if session_id is not None and session_id != sid:
            raise TypeError(f"create_session got two session ids: {sid!r} and session_id={session_id!r}")
        meta = check_metadata(metadata)
        extra = {"model": model, "config_json": _config_json(config), "spawn_tool_call_id": spawn_tool_call_id}
        return self._call(_creator(sid, meta, system_prompt, parent_session_id, kind, lifecycle, depth, extra))

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
        """Blocking twin of :meth:`create_session` (its id-first form), in the calling thread."""
        # Not a store_op twin: create_session also carries 0.11's keyword form. Both forms
        # build the same transaction (_creator).
        meta = check_metadata(metadata)
        self._call_sync(_creator(session_id, meta, system_prompt, parent_session_id, kind, lifecycle, depth, None))

    @store_op(tx=False)
    def get_session_async(self, session_id: str) -> TxFn[SessionRow | None]:
        """The session row, or None."""
        return lambda c: _compat_sql.get_session(c, session_id)

    get_session = get_session_async.blocking()  # 0.11's blocking name

    @store_op()
    def delete_session(self, session_id: str, *, cascade: bool = True) -> TxFn[int]:
        """Delete a session (with its sub-agent sessions when ``cascade``); return the count."""
        return lambda c: _sql.delete_session(c, session_id, cascade=cascade)

    delete_session_sync = delete_session.blocking()

    # ------------------------------------------------------------------ history

    @store_op(tx=False)
    def load_messages(self, session_id: str, *, include_compacted: bool = False) -> TxFn[list[StoredMessage]]:
        """The session's messages with seqs (folded rows only with ``include_compacted``)."""
        return lambda c: _sql.load_history(c, session_id, include_compacted=include_compacted)

    load_messages_sync = load_messages.blocking()

    async def prune_compacted(
        self, session_id: str | None = None, *, older_than_ms: int | None = None, keep_last: int | None = None
    ) -> int:
        """Delete folded (compacted) message rows; see :meth:`StatefulAgentLoop.prune_compacted`."""
        return await self._call(
            lambda c: _sql.prune_compacted(c, session_id, older_than_ms=older_than_ms, keep_last=keep_last)
        )

    @store_op(tx=False)
    def get_pending(self, session_id: str) -> TxFn[PendingState | None]:
        """Unanswered tool calls, or None."""
        return lambda c: _sql.pending_state(c, session_id)

    get_pending_sync = get_pending.blocking()

    @store_op()
    def abort_pending(self, session_id: str, reason: str) -> TxFn[int]:
        """Answer every unresolved call with ``<aborted: reason>`` (finished calls keep their
        stored result); return how many calls were answered."""
        return lambda c: _sql.abort_pending(c, session_id, reason)

    abort_pending_sync = abort_pending.blocking()

    async def answer_interaction(self, session_id: str, interaction_id: str, value: str) -> list[dict[str, Any]]:
        """Record the answer to a ``request_user_input`` question; return those still open.

        Raises:
            ValueError: No open interaction has that id in the session.
        """
        return await self._call(lambda c: _sql.answer_interaction(c, session_id, interaction_id, value))

    # ------------------------------------------------------------------ approvals

    async def decide_approval(
        self, session_id: str, token: str, *, approved: bool, note: str | None = None
    ) -> ApprovalDecision:
        """Decide an approval request once (approved, denied, or expired when it is too late).

        Raises:
            ApprovalError: No request has that token in the session, or it was decided already.
            SessionBusyError: A run holds the session.
            SessionNotFoundError: Unknown session.
        """
        return await self._call(lambda c: _approvals.decide(c, session_id, token, approved=approved, note=note))

    @store_op(tx=False)
    def list_approvals(self, session_id: str | None = None) -> TxFn[list[ApprovalRequest]]:
        """Undecided approval requests (expired ones included), oldest first; of one session
        or of every session."""
        return lambda c: _approvals.list_pending(c, session_id)

    list_approvals_sync = list_approvals.blocking()

    # ------------------------------------------------------------------ runs

    async def begin_run(self, begin: BeginRun) -> BeginOutcome:
        """Start a run (lease, pending check, inbox, input) in one transaction."""
        return await self._call(lambda c: _sql.begin_run(c, begin))

    async def write(
        self,
        session_id: str,
        ops: Sequence[WriteOp],
        *,
        lease: LeaseClaim | None = None,
        event_seq: int | None = None,
    ) -> WriteOutcome:
        """Apply a run step's operations in one transaction (checking the run's lease)."""
        return await self._call(lambda c: _sql.write(c, session_id, ops, lease=lease, event_seq=event_seq))

    async def renew_lease(self, session_id: str, lease: LeaseClaim) -> None:
        """Extend a run's lease; raises ``LeaseLostError`` when another run took it."""
        await self._call(lambda c: _leases.renew_lease(c, session_id, lease))

    async def release_lease(self, session_id: str, owner: str) -> None:
        """Release a lease held by ``owner``."""
        await self._call(lambda c: _leases.release_lease_of(c, session_id, owner))

    async def enqueue(
        self,
        session_id: str,
        content: Any,
        *,
        kind: str = "follow_up",
        ref: str | None = None,
        only_if_busy: bool = False,
    ) -> int | None:
        """Queue an inbox item; with ``only_if_busy``, only while a run holds the session.

        Returns:
            The queue depth, or None when ``only_if_busy`` and the session is idle.
        """
        return await self._call(
            lambda c: _sql.enqueue(c, session_id, kind=kind, content=content, ref=ref, only_if_busy=only_if_busy)
        )

    async def hold_budget(self, request: BudgetHold) -> BudgetHoldOutcome:
        """Take a model call's holds on the shared budgets covering it (one transaction), or
        say which budget cannot fit it."""
        return await self._call(lambda c: _budgets.hold(c, request, _sessions.now_ms()))

    async def hold_budgets(self, requests: Sequence[BudgetHold]) -> list[BudgetHoldOutcome]:
        """:meth:`hold_budget` for several calls in one transaction, in order."""
        return await self._call(lambda c: _budgets.hold_many(c, requests, _sessions.now_ms()))

    async def settle_budget(self, holds: Sequence[HeldBudget], tokens: int, cost_nano: int) -> None:
        """Settle holds on their own (a call that failed or was cancelled): its usage counts,
        the holds go."""
        if holds:
            await self._call(lambda c: _budgets.settle(c, holds, tokens, cost_nano, _sessions.now_ms()))

    async def budget_spent(self, key: str, window_start: int) -> tuple[int, float]:
        """(tokens, US dollars) a shared budget window has spent, holds not included."""
        rows = await self.execute_fetchall(
            "SELECT tokens, cost_nano FROM budget_ledger WHERE key = ? AND window_start = ?", (key, window_start)
        )
        return (int(rows[0][0]), int(rows[0][1]) / 1e9) if rows else (0, 0.0)

    async def pause_session(self, session_id: str) -> bool:
        """Pause a session (``loop.pause``): its run stops at its next round boundary and
        nothing but ``resume`` runs it again. Whether a run holds it now."""
        return await self._call(lambda c: _sessions.pause_session(c, session_id, _sessions.now_ms()))

    async def inbox_depth(self, session_id: str) -> int:
        """Items waiting in a session's inbox."""
        return await self._call(lambda c: _sql.inbox_depth(c, session_id), tx=False)

    # ------------------------------------------------------------------ timers

    @store_op()
    def schedule_timer(
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
    ) -> TxFn[TimerRow]:
        """Arm a timer (see ``StatefulAgentLoop.schedule_timer``); with ``origin``, return the
        timer armed earlier with the same origin instead of arming another. With ``cron``
        (and ``tz``, ``misfire``) a calendar timer whose first occurrence is ``due_at``."""
        return lambda c: _timers.schedule_timer(
            c,
            session_id,
            due_at=due_at,
            note=note,
            every_ms=every_ms,
            count=count,
            until_at=until_at,
            max_live=max_live,
            origin=origin,
            cron=cron,
            tz=tz,
            misfire=misfire,
        )

    schedule_timer_sync = schedule_timer.blocking()

    @store_op()
    def cancel_timer(self, session_id: str, timer_id: int) -> TxFn[bool]:
        """Cancel an armed or in-flight timer."""
        return lambda c: _timers.cancel_timer(c, session_id, timer_id)

    cancel_timer_sync = cancel_timer.blocking()

    @store_op(tx=False)
    def list_timers(self, session_id: str, *, statuses: Sequence[str] = ("armed", "firing")) -> TxFn[list[TimerRow]]:
        """Timers of a session in ``statuses``, soonest first (default: armed and in flight).

        Statuses are ``armed``, ``claimed`` (0.11: ``firing``), ``fired`` and ``cancelled``.
        """
        wanted = _compat_sql.timer_statuses(statuses)
        return lambda c: _timers.list_timers(c, session_id, wanted)

    list_timers_sync = list_timers.blocking()

    async def claim_due_timers(
        self, owner: str, *, lease_ms: int, limit: int, due_by: int | None = None, now: int | None = None
    ) -> list[_timers.ClaimedTimer]:
        """Claim timers due by ``due_by`` (default now), and stale claims, for ``owner``;
        ``now`` (epoch ms) is the runner's clock (default: the wall clock)."""
        return await self._call(
            lambda c: _timers.claim_due(c, owner, lease_ms=lease_ms, limit=limit, due_by=due_by, now=now)
        )

    async def renew_timer_claims(self, owner: str, *, lease_ms: int, now: int | None = None) -> int:
        """Extend ``owner``'s claims."""
        return await self._call(lambda c: _timers.renew_claims(c, owner, lease_ms=lease_ms, now=now))

    async def release_timer_claims(self, owner: str) -> int:
        """Give back ``owner``'s claims."""
        return await self._call(lambda c: _timers.release_claims(c, owner))

    async def deliver_timers(
        self, owner: str, deliveries: list[_timers.Delivery], *, now: int | None = None
    ) -> list[tuple[str | None, int]]:
        """Apply claimed timers' outcomes in one transaction; per timer the outcome (None when
        its claim was lost, ``error`` when its write failed) and the event seq reserved for it.
        A recurring timer's next occurrence is armed in the same transaction."""
        return await self._call(lambda c: _timers.deliver_many(c, owner, deliveries, now=now))

    async def retry_timer_later(
        self, timer: _timers.ClaimedTimer, owner: str, *, delay_ms: int, now: int | None = None
    ) -> bool:
        """Give back a claim whose delivery failed; the timer is due again ``delay_ms`` later."""
        return await self._call(lambda c: _timers.retry_later(c, timer, owner, delay_ms=delay_ms, now=now))

    async def next_timer_due_at(self, owner: str | None = None) -> int | None:
        """When a runner next has work: the earliest armed due time, or the expiry of a claim
        held by another owner."""
        return await self._call(lambda c: _timers.next_due_at(c, owner), tx=False)

    async def orphan_inboxes(self, *, limit: int = 100) -> list[str]:
        """Sessions whose inbox waits with no run to drain it."""
        return await self._call(lambda c: _timers.orphan_inboxes(c, limit=limit), tx=False)

    # ------------------------------------------------------------------ stats

    @store_op(tx=False)
    def get_stats(self, session_id: str) -> TxFn[SessionStatsRow | None]:
        """Stats of a session, or None before its first finished run."""
        return lambda c: _sql.get_stats(c, session_id)

    get_stats_sync = get_stats.blocking()

    @store_op(tx=False)
    def list_stats(self) -> TxFn[list[SessionStatsRow]]:
        """Stats of every session, most recently active first."""
        return _sql.list_stats

    list_stats_sync = list_stats.blocking()

    # ------------------------------------------------------------------ background sub-agents

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
        """Create a background sub-agent with its task waiting in its inbox (one transaction);
        False when it exists already."""
        meta = check_metadata(metadata)

        def start(c: Tx) -> bool:
            created = _subagents.start_background(
                c,
                child_session_id,
                parent_session_id=parent_session_id,
                task=task,
                metadata=meta,
                system_prompt=system_prompt,
                lifecycle=lifecycle,
                depth=depth,
            )
            if created and spawn_tool_call_id is not None:
                _compat_sql.set_compat_fields(c, child_session_id, spawn_tool_call_id=spawn_tool_call_id)
            return created

        return await self._call(start)

    async def list_background_children(self, parent_session_id: str) -> list[BackgroundChild]:
        """The background sub-agents of a session, oldest first."""
        return await self._call(lambda c: _subagents.list_background(c, parent_session_id), tx=False)

    async def stop_background_child(self, parent_session_id: str, child_session_id: str) -> bool:
        """Mark a running background sub-agent stopped (not resumed, its answer not delivered)."""
        return await self._call(lambda c: _subagents.stop_background(c, parent_session_id, child_session_id))

    async def orphan_subagents(self, *, limit: int = 100) -> list[str]:
        """Background sub-agents still running that no process runs (their process died)."""
        return await self._call(lambda c: _subagents.orphan_children(c, limit=limit), tx=False)

    # ------------------------------------------------------------------ event log

    async def append_events(self, batches: Mapping[str, Sequence[EventRecord]]) -> int:
        """Store events of several sessions (text id → records) in one transaction; a seq
        stored already is skipped, a session that no longer exists is skipped. Returns how
        many records were offered for existing sessions."""
        return await self._call(lambda c: _events_sql.append_events(c, batches))

    async def read_events(
        self, session_id: str, *, after_seq: int = 0, limit: int = 500, run_id: str | None = None
    ) -> list[EventRecord]:
        """Up to ``limit`` stored events of the session after ``after_seq``, in seq order
        (only those of ``run_id`` when given).

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return await self._call(
            lambda c: _events_sql.read_events(c, session_id, after_seq=after_seq, limit=limit, run_id=run_id),
            tx=False,
        )

    async def last_run(self, session_id: str) -> RunRecord | None:
        """The session's latest run (status, rounds, usage, tool calls, last message) and its
        pending calls; None before its first run.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return await self._call(lambda c: _events_sql.last_run(c, session_id), tx=False)

    async def execute_fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query (for diagnostics and tests)."""
        return await self._call(lambda c: [tuple(r) for r in c.execute(sql, params).fetchall()], tx=False)


def _creator(
    sid: str,
    metadata: Mapping[str, Any],
    system_prompt: str | None,
    parent_session_id: str | None,
    kind: str,
    lifecycle: str | None,
    depth: int,
    extra: Mapping[str, Any] | None,
) -> TxFn[None]:
    """The transaction that creates a session row (and keeps 0.11's ``extra`` fields)."""

    def create(c: Tx) -> None:
        _sql.create_session(
            c,
            sid,
            metadata=metadata,
            system_prompt=system_prompt,
            parent_session_id=parent_session_id,
            kind=kind,
            lifecycle=lifecycle,
            depth=depth,
        )
        if extra is not None and any(v is not None for v in extra.values()):
            _compat_sql.set_compat_fields(c, sid, **extra)

    return create


def _config_json(config: Mapping[str, Any] | None) -> str | None:
    if not config:
        return None
    try:
        return json.dumps(dict(config))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config must be a JSON-serialisable dict: {exc}") from exc
