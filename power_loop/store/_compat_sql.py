"""The SQL behind the 0.11 store methods (``store/_compat.py``), as plain functions over a
``Tx`` run inside the caller's transaction, like :mod:`._sql`.

Writers that touch a session's history take the same checks as the engine's own writes, in
the same transaction: no live run may hold the session (its lease), and the tool-call
invariant holds (an assistant message's calls are answered by tool results, in order,
before anything else is appended). Every history write bumps the session's ``version``, so
a loop's cached history reloads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import SessionBusyError, SessionError, SessionPendingError
from ..messages import ToolResultMessage, Usage, message_from_dict
from . import _history_sql as _history
from . import _sessions_sql as _sessions
from . import _sql
from . import _timers_sql as _timers
from ._leases import lease_is_live
from .protocols import Tx
from .rows import (
    Append,
    Compact,
    CompactionRow,
    MessageRow,
    MessageState,
    PendingState,
    RunTotals,
    SessionRow,
    SessionStateRow,
    SessionStatus,
    TimerRow,
)

# The 0.11-only session columns, keyed by the session's integer key (schema version 7).
COMPAT_TABLE = "legacy011_sessions"
_COMPAT_COLUMNS = frozenset({"model", "config_json", "status", "spawn_tool_call_id"})

# 0.11's timer statuses → this version's ("firing" is a claim held by a timer runner).
_TIMER_STATUS = {"armed": "armed", "firing": "claimed", "fired": "fired", "cancelled": "cancelled"}


class UnsupportedStoreCallError(SessionError):
    """A 0.11 store method that would break a session's invariants if run raw.

    The message names the supported replacement (``loop.schedule_timer``,
    ``loop.cancel_timer``, ``loop.abort_pending``, ...). Nothing was written.
    """


# --------------------------------------------------------------------------- sessions


def with_compat_fields(conn: Tx, rows: list[SessionRow]) -> list[SessionRow]:
    """``rows`` with their 0.11-only fields (model, config, status, spawn call) filled in."""
    if not rows:
        return rows
    ids = [r.session_id for r in rows]
    found = {
        r["session_id"]: (r["model"], r["config_json"], r["status"], r["spawn_tool_call_id"])
        for r in conn.execute(
            f"SELECT s.session_id, c.model, c.config_json, c.status, c.spawn_tool_call_id FROM {COMPAT_TABLE} c "
            f"JOIN sessions s ON s.id = c.session WHERE s.session_id IN ({','.join('?' * len(ids))})",
            ids,
        ).fetchall()
    }
    out = []
    for row in rows:
        extra = found.get(row.session_id)
        if extra is None:
            out.append(row)
            continue
        model, config_json, status, spawn = extra
        try:
            config = json.loads(config_json) if config_json else {}
        except ValueError:
            config = {"_corrupt_config": config_json}
        try:
            status_value: str = SessionStatus(status) if status else SessionStatus.ACTIVE
        except ValueError:
            status_value = str(status)
        out.append(
            dataclasses.replace(
                row, model=model, config=config if isinstance(config, dict) else {}, status=status_value,
                spawn_tool_call_id=spawn,
            )
        )  # fmt: skip
    return out


def get_session(conn: Tx, session_id: str) -> SessionRow | None:
    """The session row with its 0.11-only fields, or None."""
    row = _sql.get_session(conn, session_id)
    return None if row is None else with_compat_fields(conn, [row])[0]


def set_compat_fields(conn: Tx, session_id: str, **fields: Any) -> None:
    """Set some of a session's 0.11-only fields (``model``, ``config_json``, ``status``,
    ``spawn_tool_call_id``), keeping the others."""
    key = _sessions.session_ref(conn, session_id).key
    conn.execute(f"INSERT INTO {COMPAT_TABLE} (session) VALUES (?) ON CONFLICT (session) DO NOTHING", (key,))
    for column, value in fields.items():
        if column not in _COMPAT_COLUMNS:  # never a column name from elsewhere in the SQL
            raise ValueError(f"unknown 0.11 session field {column!r}")
        conn.execute(f"UPDATE {COMPAT_TABLE} SET {column} = ? WHERE session = ?", (value, key))


def list_children(conn: Tx, parent_session_id: str) -> list[SessionRow]:
    """Direct sub-agent sessions of a session, oldest first."""
    rows = conn.execute(
        f"SELECT {_sessions.SESSION_COLUMNS} FROM sessions WHERE parent_session_id = ? ORDER BY created_at, id",
        (parent_session_id,),
    ).fetchall()
    return with_compat_fields(conn, [_sessions.session_row(r) for r in rows])


def require_session(conn: Tx, session_id: str) -> int:
    """The session's key; SessionNotFoundError for an unknown session."""
    return _sessions.session_ref(conn, session_id).key


def update_prompt(conn: Tx, session_id: str, system_prompt: str | None) -> None:
    """Set the per-session system prompt (the next run reads it at its start)."""
    key = require_session(conn, session_id)
    conn.execute(
        "UPDATE sessions SET system_prompt = ?, updated_at = ? WHERE id = ?",
        (_sql.text(system_prompt), _sql.now_ms(), key),
    )


# --------------------------------------------------------------------------- messages


def _message_row(session_id: str, seq: int, body: str, compacted: int, created_at: int) -> MessageRow:
    try:
        data = json.loads(body)
    except ValueError:
        _sql.decode_message(session_id, seq, body)  # raises CorruptRecordError naming the row
        raise
    calls = data.get("tool_calls")
    return MessageRow(
        session_id=session_id,
        seq=seq,
        role=str(data.get("role")),
        name=data.get("name"),
        content=data.get("content"),
        tool_calls=list(calls) if calls else None,
        tool_call_id=data.get("tool_call_id"),
        round_index=None,
        state=MessageState.COMPACTED_OUT if compacted else MessageState.ACTIVE,
        meta={},
        created_at=int(created_at),
    )


_MESSAGE_COLUMNS = "seq, body, compacted, created_at"


def get_message(conn: Tx, session_id: str, seq: int) -> MessageRow | None:
    """One stored message, or None."""
    row = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session = (SELECT id FROM sessions WHERE session_id = ?) "
        "AND seq = ?",
        (session_id, seq),
    ).fetchone()
    return None if row is None else _message_row(session_id, *row)


def load_all_messages(conn: Tx, session_id: str) -> list[MessageRow]:
    """Every stored message of a session, folded ones included, by seq."""
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session = (SELECT id FROM sessions WHERE session_id = ?) "
        "ORDER BY seq",
        (session_id,),
    ).fetchall()
    return [_message_row(session_id, *r) for r in rows]


def load_active_messages(conn: Tx, session_id: str) -> list[MessageRow]:
    """The context a run loads: the latest compaction summary (a ``system`` row named
    ``compact_note`` at its ``to_seq``), then the messages not folded, by seq."""
    out: list[MessageRow] = []
    found = conn.execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if found is None:
        return out
    key = int(found[0])
    latest = conn.execute(
        "SELECT summary, through_seq, before_tokens, after_tokens, created_at FROM compactions "
        "WHERE session = ? ORDER BY id DESC LIMIT 1",
        (key,),
    ).fetchone()
    through = 0
    if latest is not None:
        summary, through, before, after, created = latest
        out.append(
            MessageRow(
                session_id=session_id,
                seq=int(through),
                role="system",
                name="compact_note",
                content=summary,
                tool_calls=None,
                tool_call_id=None,
                round_index=None,
                state=MessageState.ACTIVE,
                meta={"to_seq": int(through), "original_tokens": before, "summary_tokens": after},
                created_at=int(created),
            )
        )
    rows = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE session = ? AND seq > ? AND compacted = 0 ORDER BY seq",
        (key, through),
    ).fetchall()
    return out + [_message_row(session_id, *r) for r in rows]


def _refuse_if_running(conn: Tx, key: int, session_id: str, what: str, instead: str) -> None:
    owner, _ = lease_is_live(conn, key, _sql.now_ms())
    if owner is not None:
        raise SessionBusyError(
            f"session {session_id!r} has a run in progress ({owner}); {what} would write into the middle of its "
            f"round, so nothing was written. {instead}",
            session_id=session_id,
        )


def _pending_error(session_id: str, pending: PendingState) -> SessionPendingError:
    calls = [{**c.to_dict(), "name": c.name, "arguments": c.arguments, "status": c.status} for c in pending.calls]
    return SessionPendingError(session_id, assistant_seq=pending.assistant_seq, pending_tool_calls=calls)


def append_message(conn: Tx, session_id: str, data: Mapping[str, Any]) -> int:
    """Append one message through the engine's write path; return its seq.

    Raises:
        SessionNotFoundError: Unknown session.
        SessionBusyError: A run holds the session (use ``loop.follow_up``).
        SessionPendingError: The session has unanswered tool calls and the message is not
            the result of one of them.
        ValueError: The message is not valid, or is a tool result no unanswered call expects.
    """
    key = require_session(conn, session_id)
    message = message_from_dict(data)
    _refuse_if_running(
        conn,
        key,
        session_id,
        "store.append_message",
        "Use `loop.follow_up(session_id, text)` to add a message to a running session, or wait for the run to end.",
    )
    pending = _history.pending_state(conn, key, session_id)
    if isinstance(message, ToolResultMessage):
        open_ids = {c.tool_call_id for c in pending.calls} if pending is not None else set()
        if message.tool_call_id not in open_ids:
            raise ValueError(
                f"no unanswered tool call of session {session_id!r} has id {message.tool_call_id!r}; a tool "
                "message must answer a call of the session's latest assistant message. Nothing was written."
            )
    elif pending is not None:
        raise _pending_error(session_id, pending)
    outcome = _sql.write(conn, session_id, [Append([message])], lease=None, event_seq=None)
    return outcome.seqs[0]


# --------------------------------------------------------------------------- compaction


def list_compactions(conn: Tx, session_id: str) -> list[CompactionRow]:
    """The session's compactions, oldest first (pruned older summaries are gone)."""
    rows = conn.execute(
        "SELECT through_seq, summary, before_tokens, after_tokens, created_at FROM compactions "
        "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY id",
        (session_id,),
    ).fetchall()
    out = []
    previous = 0
    for n, (through, summary, before, after, created) in enumerate(rows, start=1):
        out.append(
            CompactionRow(
                session_id=session_id,
                compact_seq=n,
                note_seq=int(through),
                from_seq=previous + 1,
                to_seq=int(through),
                before_tokens=before,
                after_tokens=after,
                round_index=None,
                created_at=int(created),
                summary=summary,
            )
        )
        previous = int(through)
    return out


def record_compaction(
    conn: Tx,
    session_id: str,
    *,
    from_seq: int,
    to_seq: int,
    summary: str,
    before_tokens: int | None,
    after_tokens: int | None,
) -> tuple[int, int]:
    """Fold the messages up to ``to_seq`` into ``summary`` through the engine's compaction
    write; return ``(compact_seq, note_seq)``.

    Raises:
        SessionBusyError: A run holds the session.
        ValueError: The range is not a prefix of the unfolded history, or it would separate
            tool calls from their results.
    """
    key = require_session(conn, session_id)
    _refuse_if_running(
        conn,
        key,
        session_id,
        "store.record_compaction",
        "Compaction runs inside a run (AgentLoopConfig's compaction settings); wait for the run to end.",
    )
    first = conn.execute(
        "SELECT MIN(seq), MAX(seq) FROM messages WHERE session = ? AND compacted = 0", (key,)
    ).fetchone()
    if first[0] is None or not (from_seq <= int(first[0]) <= to_seq <= int(first[1])):
        raise ValueError(
            f"cannot fold seqs {from_seq}..{to_seq} of session {session_id!r}: this version folds a prefix of the "
            f"unfolded history, so from_seq must be at most its first seq and to_seq between that and its last "
            f"({first[0]}..{first[1]}). Nothing was written."
        )
    split = conn.execute(
        "SELECT tool_call_id FROM tool_calls WHERE session = ? AND assistant_seq <= ? "
        "AND (result_seq IS NULL OR result_seq > ?) LIMIT 1",
        (key, to_seq, to_seq),
    ).fetchone()
    if split is not None:
        raise ValueError(
            f"cannot fold up to seq {to_seq} of session {session_id!r}: tool call {split[0]!r} before it is answered "
            "after it (or not yet), and a provider refuses a tool result without its call. End the range after "
            "the results. Nothing was written."
        )
    op = Compact(through_seq=to_seq, summary=summary, before_tokens=before_tokens or 0, after_tokens=after_tokens or 0)
    _sql.write(conn, session_id, [op], lease=None, event_seq=None)
    count = conn.execute("SELECT COUNT(*) AS n FROM compactions WHERE session = ?", (key,)).fetchone()["n"]
    return int(count), to_seq


# --------------------------------------------------------------------------- state, usage, stats


def pending_dict(pending: PendingState | None) -> dict[str, Any] | None:
    """Unanswered calls in the dict shape ``loop.get_pending`` returns (0.11's keys first)."""
    if pending is None:
        return None
    return {
        "assistant_seq": pending.assistant_seq,
        "round_index": pending.round_index,
        "tool_call_ids": [c.tool_call_id for c in pending.calls],
        "tool_calls": [c.to_dict() for c in pending.calls],
        "statuses": {c.tool_call_id: c.status for c in pending.calls},
        "pending_interactions": [dict(i) for i in pending.interactions],
    }


def get_state(conn: Tx, session_id: str) -> SessionStateRow | None:
    """The session's run state in 0.11's shape, or None for an unknown session."""
    found = conn.execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if found is None:
        return None
    key = int(found[0])
    last_round = conn.execute(
        "SELECT round_index FROM llm_calls WHERE session = ? ORDER BY id DESC LIMIT 1", (key,)
    ).fetchone()
    compactions = conn.execute("SELECT COUNT(*) FROM compactions WHERE session = ?", (key,)).fetchone()
    return SessionStateRow(
        session_id=session_id,
        next_seq=_history.next_seq(conn, key),
        round_index=int(last_round[0]) if last_round else 0,
        last_compact_seq=int(compactions[0]),
        pending=pending_dict(_history.pending_state(conn, key, session_id)),
    )


def _tokens(value: Any) -> int:
    return int(value or 0)


def record_usage(
    conn: Tx,
    session_id: str,
    *,
    round_index: int,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    total_tokens: int | None,
    model: str | None,
) -> None:
    """Add a usage row for one model call made outside a run (it does not change the stats)."""
    key = require_session(conn, session_id)
    p, c = _tokens(prompt_tokens), _tokens(completion_tokens)
    conn.execute(
        "INSERT INTO llm_calls (session, run, round_index, purpose, model, prompt_tokens, completion_tokens, "
        "total_tokens, created_at) VALUES (?, NULL, ?, 'recorded', ?, ?, ?, ?, ?)",
        (key, int(round_index), _sql.text(model), p, c, p + c if total_tokens is None else int(total_tokens),
         _sql.now_ms()),
    )  # fmt: skip


def bump_stats(conn: Tx, session_id: str, usage: Mapping[str, Any] | Usage, *, rounds: int, tool_calls: int) -> None:
    """Count one send with ``usage``, ``rounds`` and ``tool_calls`` in the session's stats."""
    key = require_session(conn, session_id)
    if isinstance(usage, Usage):
        u = usage
    else:
        get = usage.get
        u = Usage(
            calls=_tokens(get("calls")),
            prompt_tokens=_tokens(get("prompt_tokens")),
            completion_tokens=_tokens(get("completion_tokens")),
            cache_read_tokens=_tokens(get("cache_read_tokens")),
            reasoning_tokens=_tokens(get("reasoning_tokens")),
            total_tokens=_tokens(get("total_tokens")),
        )
    now = _sql.now_ms()
    totals = RunTotals(rounds=int(rounds), llm_calls=u.calls, tool_calls=int(tool_calls), usage=u)
    _sql.add_stats(conn, key, totals, started=now, now=now)


# --------------------------------------------------------------------------- timers


def timer_statuses(statuses: Sequence[str]) -> tuple[str, ...]:
    """0.11 timer status names (``firing``) → this version's (``claimed``); ours pass through."""
    if isinstance(statuses, str):
        statuses = (statuses,)
    return tuple(dict.fromkeys(_TIMER_STATUS.get(s, s) for s in statuses))


def get_timer(conn: Tx, session_id: str, timer_id: int) -> TimerRow | None:
    """One timer, or None."""
    if not 0 < timer_id <= _timers.MAX_TIMER_ID:
        return None
    try:
        return _timers.get_timer(conn, session_id, timer_id)
    except KeyError:
        return None


def due_timers(conn: Tx, *, now: int | None, limit: int) -> list[TimerRow]:
    """Armed timers due by ``now`` (default: the current time), oldest first."""
    cutoff = _sql.now_ms() if now is None else int(now)
    columns = ", ".join(f"t.{c}" for c in _timers.COLUMNS.split(", "))
    rows = conn.execute(
        f"SELECT s.session_id, {columns} FROM timers t JOIN sessions s ON s.id = t.session "
        "WHERE t.status = 'armed' AND t.due_at <= ? ORDER BY t.due_at, s.session_id, t.timer_id LIMIT ?",
        (cutoff, int(limit)),
    ).fetchall()
    return [_timers.timer_row(r["session_id"], r) for r in rows]


def transition_timer(
    conn: Tx, session_id: str, timer_id: int, *, from_status: str, to_status: str, due_at: int | None
) -> bool:
    """The transitions a program may make safely, compare-and-set: cancel (``armed`` or
    ``firing`` → ``cancelled``) and postpone (``armed`` → ``armed`` with ``due_at``).

    Raises:
        UnsupportedStoreCallError: Claiming or firing a timer by hand (the timer runner's job).
    """
    src, dst = _TIMER_STATUS.get(from_status, from_status), _TIMER_STATUS.get(to_status, to_status)
    if not (dst == "cancelled" and src in ("armed", "claimed")) and not (src == dst == "armed" and due_at is not None):
        raise UnsupportedStoreCallError(
            f"store.transition_timer({from_status!r} → {to_status!r}) is not supported: timers are claimed, fired "
            "and re-armed by the timer runner (a `TimerRunner(loop)` or the `power-loop worker` process) in the same "
            "transaction that delivers the wake-up, so none is lost or doubled. Use `loop.cancel_timer(session_id, "
            "timer_id)` to cancel, `loop.schedule_timer(...)` to arm, or transition_timer(from_status='armed', "
            "to_status='armed', due_at=...) to postpone. Nothing was written.",
            session_id=session_id,
        )
    key = require_session(conn, session_id)
    timer = get_timer(conn, session_id, timer_id)
    if timer is None or timer.status != src:
        return False
    if dst == "cancelled":
        return _timers.cancel_timer(conn, session_id, timer_id)
    cursor = conn.execute(
        "UPDATE timers SET due_at = ?, updated_at = ? WHERE session = ? AND timer_id = ? AND status = 'armed'",
        (int(due_at or 0), _sql.now_ms(), key, timer_id),
    )
    return cursor.rowcount == 1


def recover_stale_claims(conn: Tx, *, older_than_ms: int) -> int:
    """Re-arm timers whose claim expired (their runner died) and that were last touched more
    than ``older_than_ms`` ago; a live runner's claim is never taken. Returns the count."""
    now = _sql.now_ms()
    cursor = conn.execute(
        "UPDATE timers SET status = 'armed', owner = NULL, lease_expires_at = 0, updated_at = ? "
        "WHERE status = 'claimed' AND lease_expires_at < ? AND updated_at <= ?",
        (now, now, now - int(older_than_ms)),
    )
    return cursor.rowcount
