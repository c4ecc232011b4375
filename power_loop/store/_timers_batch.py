"""Set-based timer claiming and delivery for PostgreSQL.

The same rules as :mod:`power_loop.store._timers_sql`, worded as a few array statements per
batch instead of a few statements per timer: on a server every statement is a round trip, and
a burst of due timers would otherwise spend its time on the wire. SQLite runs in-process, where
a statement costs microseconds, and keeps the per-timer wording.

Outcomes are exactly those of the per-timer rules: a timer whose claim was lost (cancelled,
taken over, its session deleted) is left untouched and reported ``(None, 0)``; the others are
applied, each delivery's wake-up message written in the same transaction that marks its timer
fired or re-arms it. Session rows are locked in key order, so two runners' batches that share
sessions wait for each other instead of deadlocking. A calendar timer's next occurrence is
computed here too (in Python, by the rule the per-timer path uses) and written by the same
set-based update that marks this one fired.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ._inbox_sql import inbox_body
from ._leases import live_lease
from ._sessions_sql import now_ms
from ._timer_calendar import ends_series, following_due
from ._timer_rows import ClaimedTimer, Delivery
from .protocols import Tx

__all__ = ["claim_locked", "deliver_batch"]


def claim_locked(tx: Tx, owner: str, rows: list[Any], *, now: int, lease_ms: int) -> dict[tuple[int, int], int]:
    """Claim timers whose rows this transaction holds locked (``FOR UPDATE``): one statement.
    Returns the new ``claim_seq`` of each claimed ``(session, timer_id)``."""
    if not rows:
        return {}
    won = tx.execute(
        "UPDATE timers t SET status = 'claimed', owner = ?, lease_expires_at = ?, updated_at = ?, "
        "claim_seq = t.claim_seq + 1 FROM unnest(?::bigint[], ?::bigint[]) AS v(session, timer_id) "
        "WHERE t.session = v.session AND t.timer_id = v.timer_id AND t.status IN ('armed', 'claimed') "
        "RETURNING t.session, t.timer_id, t.claim_seq",
        (owner, now + lease_ms, now, [int(r["session"]) for r in rows], [int(r["timer_id"]) for r in rows]),
    ).fetchall()
    return {(int(r["session"]), int(r["timer_id"])): int(r["claim_seq"]) for r in won}


def deliver_batch(tx: Tx, owner: str, deliveries: list[Delivery], now: int) -> list[tuple[str | None, int]]:
    """Apply a batch of claimed timers' outcomes (see :func:`~._timers_sql.deliver`): per
    delivery its outcome and the event seq reserved for its ``timer_fired`` event."""
    counts = Counter(d.timer.session_key for d in deliveries)
    keys = sorted(counts)
    tx.execute("SELECT id FROM sessions WHERE id = ANY(?::bigint[]) ORDER BY id FOR UPDATE", (keys,)).fetchall()
    sessions = {
        int(r["id"]): r
        for r in tx.execute(
            "UPDATE sessions s SET event_seq = s.event_seq + v.n FROM unnest(?::bigint[], ?::bigint[]) AS v(id, n) "
            "WHERE s.id = v.id RETURNING s.id, s.event_seq, s.lease_owner, s.lease_expires_at, s.holder_host, "
            "s.holder_pid, s.holder_start, "
            "EXISTS (SELECT 1 FROM tool_calls c WHERE c.session = s.id AND c.result_seq IS NULL) AS open_calls",
            (keys, [counts[k] for k in keys]),
        ).fetchall()
    }
    next_seq = {k: int(r["event_seq"]) - counts[k] + 1 for k, r in sessions.items()}
    wall = now_ms()  # session leases are written by runs on the wall clock, whatever ``now`` is
    planned: list[tuple[Delivery, str, int, bool] | None] = []  # (delivery, outcome, seq, writes a message)
    columns: list[list[Any]] = [[] for _ in range(8)]
    for d in deliveries:
        t = d.timer
        session = sessions.get(t.session_key)
        if session is None:
            planned.append(None)  # the session was deleted, and its timers with it
            continue
        seq = next_seq[t.session_key]
        next_seq[t.session_key] = seq + 1
        outcome, status, due_at, remaining, fired, message = _plan(t, d, session, now, wall)
        planned.append((d, outcome, seq, message))
        for column, value in zip(
            columns, (t.session_key, t.timer_id, t.claim_seq, status, due_at, remaining, fired, outcome), strict=True
        ):
            column.append(value)
    held: set[tuple[int, int]] = set()
    if columns[0]:
        held = {
            (int(r["session"]), int(r["timer_id"]))
            for r in tx.execute(
                "UPDATE timers t SET status = v.status, owner = NULL, "
                "lease_expires_at = CASE WHEN v.fired = 1 THEN 0 ELSE t.lease_expires_at END, "
                "due_at = v.due_at, remaining = v.remaining, fire_count = t.fire_count + v.fired, "
                "fired_at = CASE WHEN v.fired = 1 THEN ? ELSE t.fired_at END, updated_at = ?, last_outcome = v.outcome "
                "FROM unnest(?::bigint[], ?::bigint[], ?::bigint[], ?::text[], ?::bigint[], ?::bigint[], ?::bigint[], "
                "?::text[]) AS v(session, timer_id, claim_seq, status, due_at, remaining, fired, outcome) "
                "WHERE t.session = v.session AND t.timer_id = v.timer_id AND t.status = 'claimed' AND t.owner = ? "
                "AND t.claim_seq = v.claim_seq RETURNING t.session, t.timer_id",
                (now, now, *columns, owner),
            ).fetchall()
        }
    outcomes: list[tuple[str | None, int]] = []
    inbox: list[list[Any]] = [[], [], []]
    for plan in planned:
        if plan is None or (plan[0].timer.session_key, plan[0].timer.timer_id) not in held:
            outcomes.append((None, 0))  # the claim was lost: nothing of it is written
            continue
        d, outcome, seq, message = plan
        outcomes.append((outcome, seq))
        if message:
            inbox[0].append(d.timer.session_key)
            inbox[1].append(inbox_body("timer", d.message))
            inbox[2].append(f"timer:{d.timer.timer_id}")
    if inbox[0]:
        tx.execute(
            "INSERT INTO inbox (session, source, body, ref, created_at) SELECT v.session, 'timer', v.body, v.ref, ? "
            "FROM unnest(?::bigint[], ?::text[], ?::text[]) WITH ORDINALITY AS v(session, body, ref, n) ORDER BY v.n",
            (now, *inbox),
        )
    return outcomes


def _plan(
    t: ClaimedTimer, d: Delivery, session: Any, now: int, wall: int
) -> tuple[str, str, int, int | None, int, bool]:
    """(outcome, new status, due_at, remaining, fired 0/1, writes a message) of one delivery,
    as :func:`~._timers_sql._apply` and :func:`~._timers_sql._advance` decide them."""
    if d.action == "postpone":
        return "postponed", "armed", now + d.postpone_ms, t.remaining, 0, False
    if d.action == "cancel":
        return "cancelled", "cancelled", t.due_at, t.remaining, 0, False
    expired = ends_series(t, now=now)
    delivering = d.action == "deliver" and not expired
    outcome = "skipped"
    if delivering:
        busy = live_lease(session, wall)[0] is not None
        outcome = "queued" if busy or session["open_calls"] else "delivered"
    remaining = None if t.remaining is None else t.remaining - 1
    next_due = None if expired else following_due(t, now=now, covered_until=d.covered_until)
    if next_due is not None and (remaining is None or remaining > 0) and (t.until_at is None or next_due <= t.until_at):
        return outcome, "armed", next_due, remaining, 1, delivering
    return outcome, "fired", t.due_at, remaining, 1, delivering
