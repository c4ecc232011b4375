"""The SQL of durable timers (plain functions over a ``sqlite3.Connection``, run inside a
transaction by the caller, like :mod:`power_loop.store._sql`).

Exactly-once delivery rests on one rule: a timer's wake-up message enters the session's
inbox in the same transaction that marks the timer fired (or re-arms the next occurrence),
and that transaction only proceeds while the deliverer still holds the timer's claim.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from ._leases import lease_is_live
from ._sql import _version, now_ms, pending_state, text
from .rows import TimerRow

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

_COLUMNS = (
    "session_id, timer_id, due_at, note, status, every_ms, remaining, until_at, fire_count, last_outcome, "
    "created_at, fired_at, updated_at"
)


def _row(r: Any) -> TimerRow:
    return TimerRow(
        session_id=r[0],
        timer_id=int(r[1]),
        due_at=int(r[2]),
        note=r[3],
        status=r[4],
        every_s=None if r[5] is None else r[5] / 1000,
        remaining=r[6],
        until_at=r[7],
        fire_count=int(r[8]),
        last_outcome=r[9],
        created_at=int(r[10]),
        fired_at=r[11],
        updated_at=int(r[12]),
    )


MAX_TIMER_ID = 2**63 - 1
MAX_DELAY_S = 100 * 365 * 86400.0
"""The longest delay or period a timer accepts (100 years)."""
MAX_DUE_AT_MS = 253_402_300_799_999
"""The latest due time a timer accepts (the end of year 9999, epoch ms)."""


class TimerBudgetExceeded(Exception):
    """``max_live`` timers are armed already (``live`` says how many)."""

    def __init__(self, live: int) -> None:
        super().__init__(f"{live} timers armed")
        self.live = live


def schedule_timer(
    conn: sqlite3.Connection,
    session_id: str,
    *,
    due_at: int,
    note: str,
    every_ms: int | None,
    count: int | None,
    until_at: int | None,
    max_live: int | None = None,
    origin: str | None = None,
) -> TimerRow:
    """Arm a timer (ids count from 1 per session).

    With ``origin`` (e.g. a tool call's idempotency key) scheduling is idempotent: a timer
    armed earlier with the same origin is returned instead of arming another.

    Raises:
        SessionNotFoundError: Unknown session.
        TimerBudgetExceeded: ``max_live`` armed timers exist already.
    """
    _version(conn, session_id)
    if origin is not None:
        row = conn.execute(
            "SELECT timer_id FROM timers WHERE session_id = ? AND origin = ?", (session_id, origin)
        ).fetchone()
        if row is not None:
            return get_timer(conn, session_id, int(row[0]))
    if max_live is not None:
        live = conn.execute(
            "SELECT COUNT(*) FROM timers WHERE session_id = ? AND status IN ('armed', 'claimed')", (session_id,)
        ).fetchone()[0]
        if live >= max_live:
            raise TimerBudgetExceeded(int(live))
    next_id = conn.execute("SELECT COALESCE(MAX(timer_id), 0) + 1 FROM timers WHERE session_id = ?", (session_id,))
    timer_id = int(next_id.fetchone()[0])
    now = now_ms()
    conn.execute(
        "INSERT INTO timers (session_id, timer_id, due_at, note, every_ms, remaining, until_at, created_at, "
        "updated_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (session_id, timer_id, due_at, text(note), every_ms, count, until_at, now, now, text(origin)),
    )
    return get_timer(conn, session_id, timer_id)


def get_timer(conn: sqlite3.Connection, session_id: str, timer_id: int) -> TimerRow:
    """One timer."""
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM timers WHERE session_id = ? AND timer_id = ?", (session_id, timer_id)
    ).fetchone()
    if row is None:
        raise KeyError(timer_id)
    return _row(row)


def cancel_timer(conn: sqlite3.Connection, session_id: str, timer_id: int) -> bool:
    """Cancel an armed or in-flight timer; False when it is unknown, fired or cancelled.

    Raises:
        SessionNotFoundError: Unknown session.
    """
    _version(conn, session_id)
    if not 0 < timer_id <= MAX_TIMER_ID:
        return False
    cursor = conn.execute(
        "UPDATE timers SET status = 'cancelled', owner = NULL, updated_at = ?, last_outcome = 'cancelled' "
        "WHERE session_id = ? AND timer_id = ? AND status IN ('armed', 'claimed')",
        (now_ms(), session_id, timer_id),
    )
    return cursor.rowcount == 1


def list_timers(
    conn: sqlite3.Connection, session_id: str, statuses: tuple[str, ...] = ("armed", "claimed")
) -> list[TimerRow]:
    """Timers of a session in ``statuses`` (default: armed and in flight), soonest first.

    Raises:
        SessionNotFoundError: Unknown session.
    """
    _version(conn, session_id)
    if not statuses:
        return []
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM timers WHERE session_id = ? AND status IN ({','.join('?' * len(statuses))}) "
        "ORDER BY due_at, timer_id",
        (session_id, *statuses),
    ).fetchall()
    return [_row(r) for r in rows]


@dataclass(frozen=True)
class ClaimedTimer:
    """A due timer claimed by a runner; ``claim_seq`` identifies this claim."""

    session_id: str
    timer_id: int
    due_at: int
    note: str
    every_ms: int | None
    remaining: int | None
    until_at: int | None
    claim_seq: int = 0


def claim_due(
    conn: sqlite3.Connection, owner: str, *, lease_ms: int, limit: int, due_by: int | None = None
) -> list[ClaimedTimer]:
    """Claim up to ``limit`` timers due by ``due_by`` (default: now): armed ones, and claims
    whose lease expired (their runner died or stalled). Each claim increments the timer's
    ``claim_seq``, so a deliverer holding an older claim is refused later. The caller's
    transaction holds the write lock, so no two runners claim the same timer."""
    now = now_ms()
    cutoff = now if due_by is None else min(now, due_by)
    columns = "session_id, timer_id, due_at, note, every_ms, remaining, until_at, claim_seq"
    rows = conn.execute(
        f"SELECT {columns} FROM timers WHERE status = 'claimed' AND lease_expires_at < ? "
        f"UNION ALL SELECT * FROM (SELECT {columns} FROM timers WHERE status = 'armed' AND due_at <= ? "
        "ORDER BY due_at LIMIT ?)",
        (now, cutoff, limit),
    ).fetchall()[:limit]
    claimed = [
        ClaimedTimer(
            session_id=r[0],
            timer_id=int(r[1]),
            due_at=int(r[2]),
            note=r[3],
            every_ms=r[4],
            remaining=r[5],
            until_at=r[6],
            claim_seq=int(r[7]) + 1,
        )
        for r in rows
    ]
    conn.executemany(
        "UPDATE timers SET status = 'claimed', owner = ?, lease_expires_at = ?, updated_at = ?, claim_seq = ? "
        "WHERE session_id = ? AND timer_id = ?",
        [(owner, now + lease_ms, now, t.claim_seq, t.session_id, t.timer_id) for t in claimed],
    )
    return claimed


def _holds(conn: sqlite3.Connection, timer: ClaimedTimer, owner: str) -> bool:
    row = conn.execute(
        "SELECT status, owner, claim_seq FROM timers WHERE session_id = ? AND timer_id = ?",
        (timer.session_id, timer.timer_id),
    ).fetchone()
    return row is not None and row[0] == "claimed" and row[1] == owner and int(row[2]) == timer.claim_seq


def retry_later(conn: sqlite3.Connection, timer: ClaimedTimer, owner: str, *, delay_ms: int) -> bool:
    """Give a claim back after a failed delivery, due again ``delay_ms`` from now; False when
    the claim was lost meanwhile (cancelled, or taken over)."""
    if not _holds(conn, timer, owner):
        return False
    now = now_ms()
    conn.execute(
        "UPDATE timers SET status = 'armed', owner = NULL, lease_expires_at = 0, due_at = ?, updated_at = ?, "
        "last_outcome = 'error' WHERE session_id = ? AND timer_id = ?",
        (now + delay_ms, now, timer.session_id, timer.timer_id),
    )
    return True


def renew_claims(conn: sqlite3.Connection, owner: str, *, lease_ms: int) -> int:
    """Extend every claim held by ``owner``."""
    now = now_ms()
    cursor = conn.execute(
        "UPDATE timers SET lease_expires_at = ? WHERE owner = ? AND status = 'claimed'", (now + lease_ms, owner)
    )
    return cursor.rowcount


def release_claims(conn: sqlite3.Connection, owner: str) -> int:
    """Give back every claim held by ``owner`` (a runner stopping cleanly)."""
    cursor = conn.execute(
        "UPDATE timers SET status = 'armed', owner = NULL, lease_expires_at = 0 WHERE owner = ? AND status = 'claimed'",
        (owner,),
    )
    return cursor.rowcount


def next_due_at(conn: sqlite3.Connection, owner: str | None = None) -> int | None:
    """When a runner next has something to do: the earliest due time of an armed timer, or
    the expiry of a claim held by another runner (it is taken over then), or None."""
    due = conn.execute("SELECT MIN(due_at) FROM timers WHERE status = 'armed'").fetchone()[0]
    expiry = conn.execute(
        "SELECT MIN(lease_expires_at) FROM timers WHERE status = 'claimed' AND owner IS NOT ?", (owner,)
    ).fetchone()[0]
    found = [int(v) for v in (due, expiry) if v is not None]
    return min(found) if found else None


def deliver(
    conn: sqlite3.Connection,
    timer: ClaimedTimer,
    owner: str,
    *,
    action: str,
    message: str,
    postpone_ms: int,
) -> str | None:
    """Apply a claimed timer's outcome in one transaction; return the outcome, or None when
    the claim was lost (cancelled meanwhile, or taken over after the lease expired).

    ``action`` is ``deliver`` (into the session's inbox), ``skip``, ``cancel`` or ``postpone``.
    Outcomes: ``delivered`` (the session is idle: the caller should wake it), ``queued`` (a
    run holds the session, or it has unanswered tool calls: the inbox waits for the next run),
    ``skipped`` (also for an occurrence that comes due after the series' ``until_at``),
    ``cancelled``, ``postponed``.
    """
    if not _holds(conn, timer, owner):
        return None
    now = now_ms()
    if action == "postpone":
        conn.execute(
            "UPDATE timers SET status = 'armed', owner = NULL, due_at = ?, updated_at = ?, last_outcome = 'postponed' "
            "WHERE session_id = ? AND timer_id = ?",
            (now + postpone_ms, now, timer.session_id, timer.timer_id),
        )
        return "postponed"
    if action == "cancel":
        conn.execute(
            "UPDATE timers SET status = 'cancelled', owner = NULL, updated_at = ?, last_outcome = 'cancelled' "
            "WHERE session_id = ? AND timer_id = ?",
            (now, timer.session_id, timer.timer_id),
        )
        return "cancelled"
    outcome = "skipped"
    expired = timer.until_at is not None and now > timer.until_at
    if action == "deliver" and not expired:
        conn.execute(
            "INSERT INTO inbox (session_id, source, body, ref, created_at) VALUES (?, 'timer', ?, ?, ?)",
            (
                timer.session_id,
                json.dumps({"kind": "timer", "content": message}, ensure_ascii=False),
                f"timer:{timer.timer_id}",
                now,
            ),
        )
        busy = lease_is_live(conn, timer.session_id, now)[0] is not None
        outcome = "queued" if busy or pending_state(conn, timer.session_id) is not None else "delivered"
    _advance(conn, timer, now, outcome, end=expired)
    return outcome


@dataclass(frozen=True)
class Delivery:
    """What to do with one claimed timer (see :func:`deliver`)."""

    timer: ClaimedTimer
    action: str
    message: str
    postpone_ms: int = 0


def deliver_many(conn: sqlite3.Connection, owner: str, deliveries: list[Delivery]) -> list[tuple[str | None, int]]:
    """:func:`deliver` for several timers in one transaction (group commit); per timer the
    outcome and the event seq reserved for its ``timer_fired`` event (0 when none).

    Each timer is applied under its own savepoint: one that fails, for whatever reason,
    reports ``error`` (the caller hands its claim back) without undoing the others."""
    outcomes: list[tuple[str | None, int]] = []
    for d in deliveries:
        conn.execute("SAVEPOINT timer_delivery")
        seq = 0
        try:
            outcome = deliver(conn, d.timer, owner, action=d.action, message=d.message, postpone_ms=d.postpone_ms)
            if outcome is not None:
                conn.execute(
                    "UPDATE sessions SET event_seq = event_seq + 1 WHERE session_id = ?", (d.timer.session_id,)
                )
                seq = int(_version(conn, d.timer.session_id)[1])
        except Exception:
            conn.execute("ROLLBACK TO timer_delivery")
            outcome = "error"
        conn.execute("RELEASE timer_delivery")
        outcomes.append((outcome, seq))
    return outcomes


def _advance(conn: sqlite3.Connection, timer: ClaimedTimer, now: int, outcome: str, *, end: bool = False) -> None:
    """Mark a fired timer done, or re-arm the next occurrence of a recurring one."""
    remaining = None if timer.remaining is None else timer.remaining - 1
    next_due = now + timer.every_ms if timer.every_ms and not end else None
    again = (
        next_due is not None
        and (remaining is None or remaining > 0)
        and (timer.until_at is None or next_due <= timer.until_at)
    )
    conn.execute(
        "UPDATE timers SET status = ?, owner = NULL, lease_expires_at = 0, due_at = COALESCE(?, due_at), "
        "remaining = ?, fire_count = fire_count + 1, fired_at = ?, updated_at = ?, last_outcome = ? "
        "WHERE session_id = ? AND timer_id = ?",
        (
            "armed" if again else "fired",
            next_due if again else None,
            remaining,
            now,
            now,
            outcome,
            timer.session_id,
            timer.timer_id,
        ),
    )


def orphan_inboxes(conn: sqlite3.Connection, *, limit: int) -> list[str]:
    """Sessions with a waiting wake-up, no live run and no unanswered calls: a process died
    between delivering a wake-up and running the session, or the run that was to read it ended
    early (cancelled, a limit, waiting for input). Sessions with only waiting follow-ups are
    left to their next run."""
    now = now_ms()
    rows = conn.execute(
        "SELECT DISTINCT i.session_id FROM inbox i LEFT JOIN session_leases l ON l.session_id = i.session_id "
        "WHERE i.consumed_at IS NULL AND i.source = 'timer' AND (l.owner IS NULL OR l.expires_at <= ?) "
        "AND NOT EXISTS (SELECT 1 FROM tool_calls t WHERE t.session_id = i.session_id AND t.result_seq IS NULL) "
        "LIMIT ?",
        (now, limit),
    ).fetchall()
    return [r[0] for r in rows]
