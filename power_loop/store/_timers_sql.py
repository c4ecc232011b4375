"""The rules of durable timers, written once over a
:class:`~power_loop.store.protocols.Tx` and run inside a transaction by the caller, like
:mod:`power_loop.store._sql`.

Exactly-once delivery rests on one rule: a timer's wake-up message enters the session's
inbox in the same transaction that marks the timer fired (or re-arms the next occurrence),
and that transaction only proceeds while the deliverer still holds the timer's claim.

No database-wide write lock is assumed: a claim is an ``UPDATE ... WHERE claim_seq = ?``
(the value read) whose row count says whether this runner won it, and every change to a
claimed timer matches ``status = 'claimed' AND owner = ? AND claim_seq = ?``; a change that
matches no row means the claim was lost and is rolled back.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ControlSignal
from ._history_sql import has_open_calls
from ._inbox_sql import inbox_body
from ._leases import live_lease
from ._sessions_sql import now_ms, session_ref, text
from ._timer_calendar import MISFIRE_RULES, check_schedule, ends_series, following_due
from ._timer_rows import MAX_DELAY_S, MAX_DUE_AT_MS, MAX_TIMER_ID, ClaimedTimer, Delivery, TimerBudgetExceeded
from ._timers_batch import claim_locked, deliver_batch
from .protocols import Tx
from .rows import TimerRow

log = logging.getLogger("power_loop.store")

__all__ = [
    "MAX_DELAY_S",
    "MAX_DUE_AT_MS",
    "MAX_TIMER_ID",
    "ClaimedTimer",
    "TimerBudgetExceeded",
    "Delivery",
    "cancel_timer",
    "claim_due",
    "deliver",
    "deliver_many",
    "list_timers",
    "next_due_at",
    "orphan_inboxes",
    "release_claims",
    "renew_claims",
    "retry_later",
    "schedule_timer",
]

COLUMNS = (
    "timer_id, due_at, note, status, every_ms, remaining, until_at, fire_count, last_outcome, "
    "created_at, fired_at, updated_at, cron, tz, misfire"
)


def timer_row(session_id: str, r: Any) -> TimerRow:
    """A :class:`TimerRow` from a row holding :data:`COLUMNS`."""
    return TimerRow(
        session_id=session_id,
        timer_id=int(r["timer_id"]),
        due_at=int(r["due_at"]),
        note=r["note"],
        status=r["status"],
        every_s=None if r["every_ms"] is None else r["every_ms"] / 1000,
        remaining=r["remaining"],
        until_at=r["until_at"],
        fire_count=int(r["fire_count"]),
        last_outcome=r["last_outcome"],
        created_at=int(r["created_at"]),
        fired_at=r["fired_at"],
        updated_at=int(r["updated_at"]),
        cron=r["cron"],
        tz=r["tz"],
        misfire=r["misfire"],
    )


class _ClaimLost(ControlSignal):
    """A change to a claimed timer matched no row: the claim was lost meanwhile."""


def schedule_timer(
    tx: Tx,
    session_id: str,
    *,
    due_at: int,
    note: str,
    every_ms: int | None,
    count: int | None,
    until_at: int | None,
    max_live: int | None = None,
    origin: str | None = None,
    cron: str | None = None,
    tz: str | None = None,
    misfire: str | None = None,
) -> TimerRow:
    """Arm a timer (ids count from 1 per session).

    With ``origin`` (e.g. a tool call's idempotency key) scheduling is idempotent: a timer
    armed earlier with the same origin is returned instead of arming another. With ``cron``
    it is a calendar timer: ``due_at`` is its first occurrence, and each firing re-arms the
    next one of ``cron`` in zone ``tz`` (default ``UTC``); ``misfire`` (``once``, the default,
    or ``skip``) says what a firing after a downtime does with the missed occurrences.

    Raises:
        SessionNotFoundError: Unknown session.
        TimerBudgetExceeded: ``max_live`` armed timers exist already.
        ValueError: A calendar schedule that is not valid (the message names the field), or
            combined with ``every_ms``.
    """
    now = now_ms()
    if cron is not None:
        if every_ms is not None:
            raise ValueError("cron cannot be combined with every_s: a timer recurs on one schedule")
        cron, tz = check_schedule(cron, "UTC" if tz is None else tz, now_ms=now)
        misfire = "once" if misfire is None else misfire
        if misfire not in MISFIRE_RULES:
            raise ValueError(f"misfire must be 'once' or 'skip', not {misfire!r}")
    elif tz is not None or misfire is not None:
        raise ValueError("tz and misfire apply to calendar timers: pass cron as well")
    key = session_ref(tx, session_id).key
    if origin is not None:
        row = tx.execute("SELECT timer_id FROM timers WHERE session = ? AND origin = ?", (key, origin)).fetchone()
        if row is not None:
            return _get(tx, key, session_id, int(row["timer_id"]))
    if max_live is not None:
        live = tx.execute(
            "SELECT COUNT(*) AS n FROM timers WHERE session = ? AND status IN ('armed', 'claimed')", (key,)
        ).fetchone()["n"]
        if live >= max_live:
            raise TimerBudgetExceeded(int(live))
    # Ids come from the session row's counter (incremented in this transaction), never from
    # MAX(timer_id) + 1, which two writers without a database-wide lock could both read.
    row = tx.execute(
        "UPDATE sessions SET last_timer_id = last_timer_id + 1 WHERE id = ? RETURNING last_timer_id", (key,)
    ).fetchone()
    timer_id = int(row["last_timer_id"])
    tx.execute(
        "INSERT INTO timers (session, timer_id, due_at, note, every_ms, remaining, until_at, created_at, "
        "updated_at, origin, cron, tz, misfire) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (key, timer_id, due_at, text(note), every_ms, count, until_at, now, now, text(origin), cron, tz, misfire),
    )
    return _get(tx, key, session_id, timer_id)


def _get(tx: Tx, key: int, session_id: str, timer_id: int) -> TimerRow:
    row = tx.execute(f"SELECT {COLUMNS} FROM timers WHERE session = ? AND timer_id = ?", (key, timer_id)).fetchone()
    if row is None:
        raise KeyError(timer_id)
    return timer_row(session_id, row)


def get_timer(tx: Tx, session_id: str, timer_id: int) -> TimerRow:
    """One timer.

    Raises:
        KeyError: No such timer (or no such session).
    """
    row = tx.execute(
        f"SELECT {COLUMNS} FROM timers WHERE session = (SELECT id FROM sessions WHERE session_id = ?) AND timer_id = ?",
        (session_id, timer_id),
    ).fetchone()
    if row is None:
        raise KeyError(timer_id)
    return timer_row(session_id, row)


def cancel_timer(tx: Tx, session_id: str, timer_id: int) -> bool:
    """Cancel an armed or in-flight timer; False when it is unknown, fired or cancelled.

    Raises:
        SessionNotFoundError: Unknown session.
    """
    key = session_ref(tx, session_id).key
    if not 0 < timer_id <= MAX_TIMER_ID:
        return False
    cursor = tx.execute(
        "UPDATE timers SET status = 'cancelled', owner = NULL, updated_at = ?, last_outcome = 'cancelled' "
        "WHERE session = ? AND timer_id = ? AND status IN ('armed', 'claimed')",
        (now_ms(), key, timer_id),
    )
    return cursor.rowcount == 1


def list_timers(tx: Tx, session_id: str, statuses: tuple[str, ...] = ("armed", "claimed")) -> list[TimerRow]:
    """Timers of a session in ``statuses`` (default: armed and in flight), soonest first.

    Raises:
        SessionNotFoundError: Unknown session.
    """
    key = session_ref(tx, session_id).key
    if not statuses:
        return []
    rows = tx.execute(
        f"SELECT {COLUMNS} FROM timers WHERE session = ? AND status IN ({','.join('?' * len(statuses))}) "
        "ORDER BY due_at, timer_id",
        (key, *statuses),
    ).fetchall()
    return [timer_row(session_id, r) for r in rows]


def claim_due(
    tx: Tx, owner: str, *, lease_ms: int, limit: int, due_by: int | None = None, now: int | None = None
) -> list[ClaimedTimer]:
    """Claim up to ``limit`` timers due by ``due_by`` (default: now): armed ones, and claims
    whose lease expired (their runner died or stalled). Each claim increments the timer's
    ``claim_seq``, so a deliverer holding an older claim is refused later. Each claim is
    conditional on the ``claim_seq`` read, so two runners never both claim one timer: the
    loser's update matches no row and the timer is left out of its list. ``now`` (epoch ms,
    default the wall clock) is the runner's clock."""
    now = now_ms() if now is None else now
    cutoff = now if due_by is None else min(now, due_by)
    columns = (
        "session, timer_id, due_at, note, every_ms, remaining, until_at, claim_seq, cron, tz, misfire, "
        "status, updated_at"
    )
    if tx.dialect == "postgresql":
        # Rows another runner is claiming right now are skipped, not waited for.
        picked = (
            "t.session, t.timer_id, t.due_at, t.note, t.every_ms, t.remaining, t.until_at, t.claim_seq, "
            "t.cron, t.tz, t.misfire, t.status, t.updated_at"
        )
        rows = [
            *tx.execute(
                f"SELECT s.session_id, {picked} FROM timers t JOIN sessions s ON s.id = t.session "
                "WHERE t.status = 'claimed' AND t.lease_expires_at < ? LIMIT ? FOR UPDATE OF t SKIP LOCKED",
                (now, limit),
            ).fetchall(),
            *tx.execute(
                f"SELECT s.session_id, {picked} FROM timers t JOIN sessions s ON s.id = t.session "
                "WHERE t.status = 'armed' AND t.due_at <= ? ORDER BY t.due_at LIMIT ? FOR UPDATE OF t SKIP LOCKED",
                (cutoff, limit),
            ).fetchall(),
        ][:limit]
        # The rows are locked by this transaction: one statement claims them all.
        seqs = claim_locked(tx, owner, rows, now=now, lease_ms=lease_ms)
        return [_claimed(r, seqs[key]) for r in rows if (key := (int(r["session"]), int(r["timer_id"]))) in seqs]
    rows = tx.execute(
        "SELECT s.session_id, due.* FROM ("
        f"SELECT {columns} FROM timers WHERE status = 'claimed' AND lease_expires_at < ? "
        f"UNION ALL SELECT * FROM (SELECT {columns} FROM timers WHERE status = 'armed' AND due_at <= ? "
        "ORDER BY due_at LIMIT ?) AS armed) AS due JOIN sessions s ON s.id = due.session",
        (now, cutoff, limit),
    ).fetchall()[:limit]
    claimed: list[ClaimedTimer] = []
    for r in rows:
        timer = _claimed(r, int(r["claim_seq"]) + 1)
        won = tx.execute(
            "UPDATE timers SET status = 'claimed', owner = ?, lease_expires_at = ?, updated_at = ?, claim_seq = ? "
            "WHERE session = ? AND timer_id = ? AND claim_seq = ? AND status IN ('armed', 'claimed')",
            (owner, now + lease_ms, now, timer.claim_seq, timer.session_key, timer.timer_id, timer.claim_seq - 1),
        ).rowcount
        if won == 1:
            claimed.append(timer)
    return claimed


def _claimed(r: Any, claim_seq: int) -> ClaimedTimer:
    return ClaimedTimer(
        session_id=r["session_id"],
        timer_id=int(r["timer_id"]),
        due_at=int(r["due_at"]),
        note=r["note"],
        every_ms=r["every_ms"],
        remaining=r["remaining"],
        until_at=r["until_at"],
        claim_seq=claim_seq,
        session_key=int(r["session"]),
        cron=r["cron"],
        tz=r["tz"],
        misfire=r["misfire"],
        # A claim is the last change to a claimed timer (renewals only move its lease).
        claimed_at=int(r["updated_at"]) if r["status"] == "claimed" else None,
    )


_HELD = "status = 'claimed' AND owner = ? AND claim_seq = ?"


def _change_claimed(tx: Tx, timer: ClaimedTimer, owner: str, assignments: str, params: tuple[Any, ...]) -> None:
    """``UPDATE timers SET <assignments>`` on ``timer`` while ``owner`` holds this claim.

    Raises:
        _ClaimLost: The claim was cancelled or taken over meanwhile.
    """
    cursor = tx.execute(
        f"UPDATE timers SET {assignments} WHERE session = ? AND timer_id = ? AND {_HELD}",
        (*params, timer.session_key, timer.timer_id, owner, timer.claim_seq),
    )
    if cursor.rowcount != 1:
        raise _ClaimLost


def retry_later(tx: Tx, timer: ClaimedTimer, owner: str, *, delay_ms: int, now: int | None = None) -> bool:
    """Give a claim back after a failed delivery, due again ``delay_ms`` from now; False when
    the claim was lost meanwhile (cancelled, or taken over)."""
    now = now_ms() if now is None else now
    try:
        _change_claimed(
            tx,
            timer,
            owner,
            "status = 'armed', owner = NULL, lease_expires_at = 0, due_at = ?, updated_at = ?, last_outcome = 'error'",
            (now + delay_ms, now),
        )
    except _ClaimLost:
        return False
    return True


def renew_claims(tx: Tx, owner: str, *, lease_ms: int, now: int | None = None) -> int:
    """Extend every claim held by ``owner``."""
    now = now_ms() if now is None else now
    cursor = tx.execute(
        "UPDATE timers SET lease_expires_at = ? WHERE status = 'claimed' AND owner = ?", (now + lease_ms, owner)
    )
    return cursor.rowcount


def release_claims(tx: Tx, owner: str) -> int:
    """Give back every claim held by ``owner`` (a runner stopping cleanly)."""
    cursor = tx.execute(
        "UPDATE timers SET status = 'armed', owner = NULL, lease_expires_at = 0 WHERE status = 'claimed' AND owner = ?",
        (owner,),
    )
    return cursor.rowcount


def next_due_at(tx: Tx, owner: str | None = None) -> int | None:
    """When a runner next has something to do: the earliest due time of an armed timer, or
    the expiry of a claim held by another runner (it is taken over then), or None."""
    due = tx.execute("SELECT MIN(due_at) AS t FROM timers WHERE status = 'armed'").fetchone()["t"]
    others = "" if owner is None else " AND owner <> ?"
    expiry = tx.execute(
        f"SELECT MIN(lease_expires_at) AS t FROM timers WHERE status = 'claimed' AND owner IS NOT NULL{others}",
        () if owner is None else (owner,),
    ).fetchone()["t"]
    found = [int(v) for v in (due, expiry) if v is not None]
    return min(found) if found else None


def deliver(
    tx: Tx,
    timer: ClaimedTimer,
    owner: str,
    *,
    action: str,
    message: str,
    postpone_ms: int,
    now: int | None = None,
    covered_until: int | None = None,
) -> tuple[str | None, int]:
    """Apply a claimed timer's outcome; return the outcome and the event seq reserved for its
    ``timer_fired`` event, or (None, 0) when the claim was lost (cancelled meanwhile, or taken
    over after the lease expired).

    Runs under a savepoint of its own: a lost claim, or any failure, leaves nothing written.
    ``action`` is ``deliver`` (into the session's inbox), ``skip``, ``cancel`` or ``postpone``.
    Outcomes: ``delivered`` (the session is idle: the caller should wake it), ``queued`` (a
    run holds the session, or it has unanswered tool calls: the inbox waits for the next run),
    ``skipped`` (also for an occurrence that comes due after the series' ``until_at``),
    ``cancelled``, ``postponed``. A recurring timer is re-armed in the same savepoint: a
    calendar timer at its schedule's first occurrence after ``covered_until`` (default: now).
    ``now`` (epoch ms, default the wall clock) is the runner's clock.
    """
    tx.execute("SAVEPOINT timer_delivery")
    result: tuple[str | None, int]
    try:
        result = _apply(
            tx,
            timer,
            owner,
            action=action,
            message=message,
            postpone_ms=postpone_ms,
            now=now_ms() if now is None else now,
            covered_until=covered_until,
        )
    except _ClaimLost:
        result = (None, 0)
        tx.execute("ROLLBACK TO SAVEPOINT timer_delivery")
    except BaseException:
        tx.execute("ROLLBACK TO SAVEPOINT timer_delivery")
        tx.execute("RELEASE SAVEPOINT timer_delivery")
        raise
    tx.execute("RELEASE SAVEPOINT timer_delivery")
    return result


def _apply(
    tx: Tx,
    timer: ClaimedTimer,
    owner: str,
    *,
    action: str,
    message: str,
    postpone_ms: int,
    now: int,
    covered_until: int | None,
) -> tuple[str, int]:
    # One statement reserves the event seq and reads the lease; the claim is checked by the
    # timer's own conditional update below (a lost claim rolls this back).
    session = tx.execute(
        "UPDATE sessions SET event_seq = event_seq + 1 WHERE id = ? "
        "RETURNING event_seq, lease_owner, lease_expires_at, holder_host, holder_pid, holder_start",
        (timer.session_key,),
    ).fetchone()
    if session is None:
        raise _ClaimLost  # the session was deleted, and its timers with it
    seq = int(session["event_seq"])
    if action == "postpone":
        _change_claimed(
            tx,
            timer,
            owner,
            "status = 'armed', owner = NULL, due_at = ?, updated_at = ?, last_outcome = 'postponed'",
            (now + postpone_ms, now),
        )
        return "postponed", seq
    if action == "cancel":
        _change_claimed(
            tx, timer, owner, "status = 'cancelled', owner = NULL, updated_at = ?, last_outcome = 'cancelled'", (now,)
        )
        return "cancelled", seq
    outcome = "skipped"
    expired = ends_series(timer, now=now)
    delivering = action == "deliver" and not expired
    if delivering:
        # Session leases are written by runs on the wall clock, whatever the runner's clock.
        busy = live_lease(session, now_ms())[0] is not None
        outcome = "queued" if busy or has_open_calls(tx, timer.session_key) else "delivered"
    _advance(tx, timer, owner, now, outcome, end=expired, covered_until=covered_until)
    if delivering:
        tx.execute(
            "INSERT INTO inbox (session, source, body, ref, created_at) VALUES (?, 'timer', ?, ?, ?)",
            (timer.session_key, inbox_body("timer", message), f"timer:{timer.timer_id}", now),
        )
    return outcome, seq


def deliver_many(
    tx: Tx, owner: str, deliveries: list[Delivery], *, now: int | None = None
) -> list[tuple[str | None, int]]:
    """:func:`deliver` for several timers in one transaction (group commit); per timer the
    outcome and the event seq reserved for its ``timer_fired`` event (0 when none).

    Each timer is applied under its own savepoint: one that fails, for whatever reason,
    reports ``error`` (the caller hands its claim back) without undoing the others. On
    PostgreSQL a batch is first applied set-based (:mod:`._timers_batch`), a few statements
    for the whole batch; when that fails it is undone and applied timer by timer."""
    if tx.dialect == "postgresql" and len(deliveries) > 1:
        tx.execute("SAVEPOINT timer_batch")
        try:
            outcomes = deliver_batch(tx, owner, deliveries, now_ms() if now is None else now)
        except Exception as exc:  # one of them fails: apply them one by one, isolating the failure
            log.warning("a batch of %d timer deliveries failed (%s); applying them one by one", len(deliveries), exc)
            tx.execute("ROLLBACK TO SAVEPOINT timer_batch")
        else:
            tx.execute("RELEASE SAVEPOINT timer_batch")
            return outcomes
    outcomes = []
    for d in deliveries:
        try:
            outcomes.append(
                deliver(
                    tx,
                    d.timer,
                    owner,
                    action=d.action,
                    message=d.message,
                    postpone_ms=d.postpone_ms,
                    now=now,
                    covered_until=d.covered_until,
                )
            )
        except Exception:
            outcomes.append(("error", 0))
    return outcomes


def _advance(
    tx: Tx, timer: ClaimedTimer, owner: str, now: int, outcome: str, *, end: bool, covered_until: int | None
) -> None:
    """Mark a fired timer done, or re-arm the next occurrence of a recurring one."""
    remaining = None if timer.remaining is None else timer.remaining - 1
    next_due = None if end else following_due(timer, now=now, covered_until=covered_until)
    again = (
        next_due is not None
        and (remaining is None or remaining > 0)
        and (timer.until_at is None or next_due <= timer.until_at)
    )
    _change_claimed(
        tx,
        timer,
        owner,
        "status = ?, owner = NULL, lease_expires_at = 0, due_at = ?, remaining = ?, fire_count = fire_count + 1, "
        "fired_at = ?, updated_at = ?, last_outcome = ?",
        ("armed" if again else "fired", next_due if again else timer.due_at, remaining, now, now, outcome),
    )


def orphan_inboxes(tx: Tx, *, limit: int) -> list[str]:
    """Sessions with a waiting wake-up (a timer's, a background sub-agent's task, or its answer
    to its parent), no live run and no unanswered calls: a process died between delivering a
    wake-up and running the session, or the run that was to read it ended early (cancelled, a
    limit, waiting for input). Sessions with only waiting follow-ups are left to their next
    run."""
    now = now_ms()
    rows = tx.execute(
        "SELECT DISTINCT s.session_id FROM inbox i JOIN sessions s ON s.id = i.session "
        "WHERE i.consumed_at IS NULL AND i.source IN ('timer', 'task', 'subagent') "
        "AND (s.lease_owner IS NULL OR s.lease_expires_at <= ?) AND s.paused_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM tool_calls t WHERE t.session = i.session AND t.result_seq IS NULL) "
        "LIMIT ?",
        (now, limit),
    ).fetchall()
    return [r["session_id"] for r in rows]
