"""The store's rules for runs: the begin-run state machine, fenced writes of a run's steps,
the end of a run, and answering pending calls from outside a run; with the entry points the
adapter calls by text session id. The rules for session rows, history and the inbox live in
:mod:`._sessions_sql`, :mod:`._history_sql` and :mod:`._inbox_sql`; leases in
:mod:`._leases`; timers in :mod:`._timers_sql`.

Every function runs inside a transaction opened by its caller (the backend adapter), on
whichever thread owns the connection. Nothing here touches the event loop. The SQL is
portable (no ``MAX(a, b)``, ``IS NOT ?`` or ``rowid``; rows read by name) and does not rely
on a database-wide write lock:

* message seqs come from the session row's ``last_seq`` counter, incremented in the same
  transaction as the insert (``UPDATE`` locks the row on a server database); run numbers
  likewise from ``last_run``, written only by the transaction that won the lease;
* the lease is taken with ``UPDATE ... WHERE fence = ?`` and checked with
  ``UPDATE ... WHERE lease_owner = ? AND fence = ?``, each with a row-count check
  (``_leases.py``);
* inbox items are marked consumed with ``... AND consumed_at IS NULL`` and the row count
  must match what was read, so an item enters the history at most once.

Each entry point turns the text session id into the session's integer key with the first
statement it runs anyway, so no statement after it searches by text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from ..errors import SessionBusyError, SessionNotFoundError
from . import _history_sql as _history
from ._approvals_sql import open_approval
from ._events_sql import insert_events
from ._history_sql import (
    RunNumbers,
    answer_pending,
    append_messages,
    apply_compaction,
    decode_message,
    encode_message,
    open_interactions,
    prune_compacted,
    record_llm_call,
    update_tool_call,
)
from ._inbox_sql import drain_inbox, enqueue, inbox_depth, merge_follow_ups
from ._leases import acquire_lease, lease_is_live, lease_lost
from ._sessions_sql import (
    add_stats,
    create_session,
    delete_session,
    get_session,
    get_stats,
    list_stats,
    now_ms,
    refuse_if_paused,
    session_ref,
    session_state,
    text,
    touch,
)
from ._subagents_sql import deliver
from .protocols import Tx
from .rows import (
    AnswerPending,
    Append,
    BeginOutcome,
    BeginRun,
    Compact,
    DrainInbox,
    FinishRun,
    LeaseClaim,
    LoadedHistory,
    OpenApproval,
    OpenInteraction,
    PendingState,
    RecordEvents,
    RecordLLMCall,
    StoredMessage,
    UpdateToolCall,
    WriteOp,
    WriteOutcome,
)

__all__ = [
    "abort_pending",
    "add_stats",
    "answer_interaction",
    "begin_run",
    "create_session",
    "decode_message",
    "delete_session",
    "encode_message",
    "enqueue",
    "get_session",
    "get_stats",
    "inbox_depth",
    "list_stats",
    "load_history",
    "load_transcript",
    "merge_follow_ups",
    "now_ms",
    "pending_state",
    "prune_compacted",
    "text",
    "write",
]


# --------------------------------------------------------------------------- by text id


def load_history(tx: Tx, session_id: str, *, include_compacted: bool = False) -> list[StoredMessage]:
    """The session's context, or every stored row (see :func:`._history_sql.load_history`);
    empty for an unknown session."""
    row = tx.execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:
        return []
    return _history.load_history(tx, int(row["id"]), session_id, include_compacted=include_compacted)


def load_transcript(tx: Tx, session_id: str) -> LoadedHistory:
    """The loadable history as parallel lists (see :func:`._history_sql.load_transcript`)."""
    return _history.load_transcript(tx, session_ref(tx, session_id).key, session_id)


def pending_state(tx: Tx, session_id: str) -> PendingState | None:
    """Unanswered calls of the session, or None (also for an unknown session)."""
    row = tx.execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return None if row is None else _history.pending_state(tx, int(row["id"]), session_id)


# --------------------------------------------------------------------------- outside a run


def answer_interaction(tx: Tx, session_id: str, interaction_id: str, value: str) -> list[dict[str, object]]:
    """Store ``value`` as the result of the interaction's tool call; return the interactions
    still open.

    Raises:
        ValueError: No open interaction has that id in this session.
        SessionBusyError: A run holds the session.
        SessionPausedError: The session is paused (nothing is stored).
    """
    key = session_ref(tx, session_id).key
    refuse_if_paused(tx, key, session_id)
    owner = lease_is_live(tx, key, now_ms())[0]
    if owner is not None:
        raise SessionBusyError(
            f"session {session_id!r} has a run in progress ({owner}); answer its question once that run has "
            "ended (it ends with status waiting_for_input)",
            session_id=session_id,
        )
    row = tx.execute(
        "SELECT tool_call_id FROM interactions WHERE session = ? AND interaction_id = ? AND status = 'open'",
        (key, interaction_id),
    ).fetchone()
    if row is None:
        raise ValueError(f"pending interaction not found: {interaction_id}")
    now = now_ms()
    tx.execute(
        "UPDATE tool_calls SET status = 'done', result = ?, is_error = 0, updated_at = ? "
        "WHERE session = ? AND tool_call_id = ? AND result_seq IS NULL",
        (text(value), now, key, row["tool_call_id"]),
    )
    tx.execute(
        "UPDATE interactions SET status = 'answered', answered_at = ? WHERE session = ? AND interaction_id = ?",
        (now, key, interaction_id),
    )
    return open_interactions(tx, key, session_id)


def abort_pending(tx: Tx, session_id: str, reason: str) -> int:
    """Answer every unresolved call (stored results where a call finished); return how many.

    Raises:
        SessionBusyError: A run holds the session (its calls may still be running).
    """
    key = session_ref(tx, session_id).key
    now = now_ms()
    owner, expires_at = lease_is_live(tx, key, now)
    if owner is not None:
        raise SessionBusyError(
            f"session {session_id!r} is held by a run ({owner}) for another {(expires_at - now) / 1000:.1f}s at "
            "least; abort_pending would answer calls that may still be running. Stop that run first "
            "(stop_event); if its process died, the hold ends when its lease expires",
            session_id=session_id,
        )
    answered = answer_pending(tx, key, session_id, f"<aborted: {reason}>", run=None, now=now)
    if answered:
        touch(tx, key, bump=True, event_seq=None, now=now)
    return len(answered)


# --------------------------------------------------------------------------- runs


def _first_run_id(ops: Sequence[WriteOp]) -> str | None:
    for op in ops:
        run_id = getattr(op, "run_id", None)
        if run_id is not None:
            return str(run_id)
    return None


def _finish_run(tx: Tx, key: int, session_id: str, op: FinishRun, run: int | None, now: int) -> tuple[str | None, int]:
    """Close the run row (and deliver a background sub-agent's answer); return the parent
    delivered to and the run's start, for the session row's own end-of-run update."""
    totals = op.totals
    tx.execute(
        "UPDATE runs SET status = ?, rounds = ?, ended_at = ?, error = ? WHERE session = ? AND run = ?",
        (op.status, totals.rounds, now, text(op.error), key, run),
    )
    started = op.started_at
    if started is None:
        row = tx.execute("SELECT started_at FROM runs WHERE session = ? AND run = ?", (key, run)).fetchone()
        started = int(row["started_at"]) if row else now
    delivered = None
    if op.deliver and op.final_text is not None:
        delivered = deliver(tx, key, session_id, status=op.status, final_text=op.final_text, now=now)
    return delivered, started


def write(
    tx: Tx,
    session_id: str,
    ops: Sequence[WriteOp],
    *,
    lease: LeaseClaim | None,
    event_seq: int | None,
) -> WriteOutcome:
    """Apply ``ops`` for a run (inside the caller's transaction)."""
    now = now_ms()
    run_id = _first_run_id(ops)
    # The session's key, its version and the number of the run writing in one statement; with
    # a lease, that statement is also the fence check (and the renewal). The run is nearly
    # always the session's latest, found first.
    run_number = (
        "(SELECT r.run FROM runs r WHERE r.session = sessions.id AND r.run_id = ? ORDER BY r.run DESC LIMIT 1) AS run"
    )
    next_seq: int | None = None  # with a lease: the first seq allocated for this write's appends
    if lease is None:
        row = tx.execute(
            f"SELECT id, version, {run_number} FROM sessions WHERE session_id = ?", (run_id, session_id)
        ).fetchone()
        if row is None:
            raise SessionNotFoundError(session_id)
    else:
        releasing = any(isinstance(op, FinishRun) and op.release_lease for op in ops)
        expires, renewal = ("lease_expires_at", ()) if releasing else ("?", (now + lease.ttl_ms,))
        # The seqs of the appended messages are allocated here too, unless a step that takes
        # seqs of its own (an inbox drain, pending answers, a finish that drains) comes first.
        count = sum(len(op.messages) for op in ops if isinstance(op, Append))
        appends_at = [i for i, op in enumerate(ops) if isinstance(op, Append)]
        if appends_at and any(
            isinstance(op, (DrainInbox, AnswerPending)) or (isinstance(op, FinishRun) and op.drain_inbox)
            for op in ops[: appends_at[-1]]
        ):
            count = 0
        # A finish that drains learns here whether anything waits: usually nothing does, and
        # its inbox read is skipped. (Whoever queues an item locks this row first, so nothing
        # arrives between this statement and the commit.)
        waiting = (
            ", EXISTS (SELECT 1 FROM inbox i WHERE i.session = sessions.id AND i.consumed_at IS NULL) AS waiting"
            if any(isinstance(op, FinishRun) and op.drain_inbox for op in ops)
            else ""
        )
        row = tx.execute(
            f"UPDATE sessions SET lease_expires_at = {expires}, last_seq = last_seq + ? "
            f"WHERE session_id = ? AND lease_owner = ? AND fence = ? "
            f"RETURNING id, version, last_seq, paused_at, {run_number}{waiting}",
            (*renewal, count, session_id, lease.owner, lease.fence, run_id),
        ).fetchone()
        if row is None:
            held = tx.execute("SELECT lease_owner, fence FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
            if held is None:
                raise SessionNotFoundError(session_id)
            raise lease_lost(session_id, lease, held["lease_owner"], int(held["fence"]))
        next_seq = int(row["last_seq"]) - count + 1 if count else None
    key, version = int(row["id"]), int(row["version"])
    runs = RunNumbers(tx, key, {} if run_id is None else {run_id: row["run"]})
    seqs: list[int] = []
    drained: list[StoredMessage] = []
    finished: FinishRun | None = None
    started = now
    compacted = False
    delivered_to: str | None = None
    for op in ops:
        if isinstance(op, Append):
            first = next_seq
            if next_seq is not None:
                next_seq += len(op.messages)
            seqs += [s.seq for s in append_messages(tx, key, op, now, run=runs(op.run_id), first_seq=first)]
        elif isinstance(op, UpdateToolCall):
            update_tool_call(tx, key, op, now)
        elif isinstance(op, RecordLLMCall):
            record_llm_call(tx, key, op, now, run=runs(op.run_id))
        elif isinstance(op, DrainInbox):
            drained += drain_inbox(tx, key, session_id, now, run=runs(op.run_id))
        elif isinstance(op, Compact):
            apply_compaction(tx, key, op, now, run=runs(op.run_id))
            compacted = True
        elif isinstance(op, AnswerPending):
            drained += answer_pending(tx, key, session_id, op.text, run=runs(op.run_id), now=now)
        elif isinstance(op, RecordEvents):
            insert_events(tx, key, op.events)
        elif isinstance(op, OpenInteraction):
            tx.execute(
                "INSERT INTO interactions (session, interaction_id, tool_call_id, body, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, op.body["interaction_id"], op.body["tool_call_id"], json.dumps(dict(op.body)), now),
            )
        elif isinstance(op, OpenApproval):
            open_approval(tx, key, op.request, now)
        elif isinstance(op, FinishRun):
            run = runs(op.run_id)
            inbox_waits = op.drain_inbox and (lease is None or bool(row["waiting"]))
            more = drain_inbox(tx, key, session_id, now, run=run) if inbox_waits else []
            if more:
                drained += more
            else:
                delivered_to, started = _finish_run(tx, key, session_id, op, run, now)
                finished = op
        else:  # pragma: no cover - guarded by the WriteOp union
            raise TypeError(f"unknown write operation {op!r}")
    bump = bool(seqs or drained or compacted)
    if finished is not None:
        # The session row's end of run in one statement: stats, lease release, version.
        owner = lease.owner if finished.release_lease and lease is not None else None
        add_stats(tx, key, finished.totals, started=started, now=now, release_owner=owner, touched=(bump, event_seq))
    else:
        touch(tx, key, bump=bump, event_seq=event_seq, now=now)
    return WriteOutcome(
        version=version + bump,
        seqs=tuple(seqs),
        drained=tuple(drained),
        finished=finished is not None,
        delivered_to=delivered_to,
        paused=lease is not None and row["paused_at"] is not None,
    )


CONTINUING_KINDS = ("resume", "submit_input", "approve")
"""Run kinds that continue the session's last run: its wall-clock budget goes on."""


def begin_run(tx: Tx, b: BeginRun) -> BeginOutcome:
    """Start a run (inside the caller's transaction); see :class:`BeginRun`."""
    now = now_ms()
    try:
        state = session_state(tx, b.session_id)
    except SessionNotFoundError:
        return BeginOutcome(status="not_found")
    key = state.key
    session = state.session()
    if state.row["paused_at"] is not None and not (b.kind == "resume" and b.lift_pause):  # only resume lifts it
        return BeginOutcome(status="paused", session=session, paused_at=int(state.row["paused_at"]))
    owner = state.live_owner(now)
    if owner is not None and owner != b.lease.owner:
        return BeginOutcome(status="busy", session=session, lease_owner=owner, lease_expires_at=state.expires_at)
    version_before, event_seq = state.version, state.event_seq
    pending = _history.pending_state(tx, key, b.session_id)
    if pending is not None and not (b.heal_pending or b.allow_pending):
        return BeginOutcome(status="pending", session=session, pending=pending, version=version_before)
    fence = acquire_lease(tx, key, b.lease, now, state.fence)
    if fence is None:
        # Another transaction took the lease since it was read (only possible without a
        # database-wide write lock): busy, the caller retries.
        owner, expires_at = lease_is_live(tx, key, now)
        return BeginOutcome(status="busy", session=session, lease_owner=owner, lease_expires_at=expires_at)
    # The lease was won at the fence read with the counter, so the run number is this run's alone.
    run = state.last_run + 1
    appended: list[StoredMessage] = []
    if pending is not None and b.heal_pending:
        appended += answer_pending(tx, key, b.session_id, b.heal_text, run=run, now=now, pending=pending)
        pending = None
    if pending is None:
        appended += drain_inbox(tx, key, b.session_id, now, run=run)
        if b.messages:
            appended += append_messages(tx, key, Append(b.messages), now, run=run)
    if state.owner is not None and state.owner != b.lease.owner:
        # The previous holder's lease expired (or its process was found dead) without a
        # release: its process died or hung.
        # Its run cannot write any more (fencing); record it as interrupted for the audit trail.
        tx.execute(
            "UPDATE runs SET status = 'interrupted', ended_at = ? WHERE session = ? AND ended_at IS NULL", (now, key)
        )
    tx.execute(
        "INSERT INTO runs (session, run, run_id, kind, status, started_at) VALUES (?, ?, ?, ?, 'running', ?)",
        (key, run, b.run_id, b.kind, now),
    )
    continuing = b.kind in CONTINUING_KINDS
    touch(
        tx,
        key,
        bump=bool(appended),
        event_seq=None,
        now=now,
        last_run=run,
        unpause=state.row["paused_at"] is not None,
        reset_wall=not continuing,
    )
    version = version_before + bool(appended)
    history = None
    if b.cached_version is None or b.cached_version != version_before:
        history = _history.load_transcript(tx, key, b.session_id)
    return BeginOutcome(
        status="ok",
        session=session,
        fence=fence,
        version=version,
        history=history,
        appended=tuple(appended),
        pending=pending,
        event_seq=event_seq,
        runtime=int(state.row["runtime_rev"]) > 0,
        wall_carried_ms=int(state.row["chain_wall_ms"]) if continuing else 0,
    )
