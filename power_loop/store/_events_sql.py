"""The event log's rules: store events, read them back in pages, and a run's report.

Every function runs inside a transaction opened by its caller (the backend adapter), on the
store's thread. Guarantees:

* Events are keyed by ``(session, seq)``; storing a seq that is stored already does nothing
  (``ON CONFLICT DO NOTHING``), so a batch written twice, or by two writers, never fails.
* Storing events raises the session's ``event_seq`` high-water mark to at least the highest
  seq stored, so a loop opened later (in any process) numbers its events above every stored
  one.
* Events of a deleted session are deleted with it (foreign key cascade); events of a session
  deleted before they were flushed are dropped.
* Reads are paged by seq (``after_seq``, ``limit``): a long log is never loaded at once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._history_sql import decode_message, pending_state
from ._sessions_sql import session_ref, text
from .protocols import Tx
from .rows import EventRecord, RunRecord

__all__ = ["append_events", "insert_events", "last_run", "read_events"]

_COLUMNS = "session, seq, type, ts, round_index, stream_id, source, run_id, payload"
_CHUNK = 100  # rows per INSERT: 900 parameters, within every SQLite's limit


def _encode(payload: Mapping[str, Any]) -> str:
    # ASCII JSON: lone surrogates and NULs become escapes every backend's text accepts.
    return json.dumps(dict(payload), default=str)


def insert_events(tx: Tx, key: int, events: Sequence[EventRecord]) -> None:
    """Store ``events`` of the session ``key`` (a seq stored already is skipped) and raise its
    event high-water mark to their highest seq."""
    if not events:
        return
    for start in range(0, len(events), _CHUNK):
        chunk = events[start : start + _CHUNK]
        params: list[Any] = []
        for e in chunk:
            params += [key, e.seq, e.type, e.ts, e.round_index, text(e.stream_id), text(e.source), e.run_id]
            params.append(_encode(e.payload))
        values = ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk))
        tx.execute(f"INSERT INTO events ({_COLUMNS}) VALUES {values} ON CONFLICT (session, seq) DO NOTHING", params)
    top = max(e.seq for e in events)
    tx.execute(
        "UPDATE sessions SET event_seq = CASE WHEN event_seq < ? THEN ? ELSE event_seq END WHERE id = ?",
        (top, top, key),
    )


def append_events(tx: Tx, batches: Mapping[str, Sequence[EventRecord]]) -> int:
    """Store events of several sessions (by text id) in the caller's transaction; events of a
    session that no longer exists are dropped. Returns how many events were offered for
    sessions that exist."""
    stored = 0
    for session_id in sorted(batches):  # sessions in key order: two flushers never deadlock
        row = tx.execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        if row is None:
            continue
        insert_events(tx, int(row["id"]), batches[session_id])
        stored += len(batches[session_id])
    return stored


def read_events(tx: Tx, session_id: str, *, after_seq: int, limit: int, run_id: str | None = None) -> list[EventRecord]:
    """Up to ``limit`` stored events of the session with a seq above ``after_seq``, in seq
    order (only those of ``run_id`` when given).

    Raises:
        SessionNotFoundError: Unknown session.
    """
    key = session_ref(tx, session_id).key
    where = "session = ? AND seq > ?"
    params: list[Any] = [key, after_seq]
    if run_id is not None:
        where += " AND run_id = ?"
        params.append(run_id)
    rows = tx.execute(
        f"SELECT seq, type, ts, round_index, stream_id, source, run_id, payload FROM events "
        f"WHERE {where} ORDER BY seq LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [
        EventRecord(
            seq=int(r["seq"]),
            type=r["type"],
            ts=float(r["ts"]),
            payload=json.loads(r["payload"]),
            round_index=None if r["round_index"] is None else int(r["round_index"]),
            stream_id=r["stream_id"],
            source=r["source"],
            run_id=r["run_id"],
        )
        for r in rows
    ]


def last_run(tx: Tx, session_id: str) -> RunRecord | None:
    """The session's latest run with its usage, tool calls, last message and the session's
    pending calls; None when the session has had no run.

    Raises:
        SessionNotFoundError: Unknown session.
    """
    key = session_ref(tx, session_id).key
    run = tx.execute(
        "SELECT run, run_id, kind, status, rounds, started_at, ended_at, error FROM runs "
        "WHERE session = ? ORDER BY run DESC LIMIT 1",
        (key,),
    ).fetchone()
    if run is None:
        return None
    number = int(run["run"])
    usage = tx.execute(
        "SELECT COUNT(*) AS calls, COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
        "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
        "COALESCE(SUM(cache_read_tokens), 0) AS cache_read_tokens, "
        "COALESCE(SUM(reasoning_tokens), 0) AS reasoning_tokens, COALESCE(SUM(total_tokens), 0) AS total_tokens "
        "FROM llm_calls WHERE session = ? AND run = ?",
        (key, number),
    ).fetchone()
    names = ("calls", "prompt_tokens", "completion_tokens", "cache_read_tokens", "reasoning_tokens", "total_tokens")
    calls = tx.execute(
        "SELECT t.status, COUNT(*) AS n FROM tool_calls t JOIN messages m "
        "ON m.session = t.session AND m.seq = t.assistant_seq "
        "WHERE t.session = ? AND m.run = ? GROUP BY t.status ORDER BY t.status",
        (key, number),
    ).fetchall()
    last = tx.execute(
        "SELECT seq, body FROM messages WHERE session = ? AND run = ? ORDER BY seq DESC LIMIT 1", (key, number)
    ).fetchone()
    events = tx.execute("SELECT COUNT(*) AS n FROM events WHERE session = ? AND run_id = ?", (key, run["run_id"]))
    return RunRecord(
        run_id=run["run_id"],
        number=number,
        kind=run["kind"],
        status=run["status"],
        rounds=int(run["rounds"]),
        started_at=int(run["started_at"]),
        ended_at=None if run["ended_at"] is None else int(run["ended_at"]),
        error=run["error"],
        usage={name: int(usage[name]) for name in names},
        tool_calls={r["status"]: int(r["n"]) for r in calls},
        last_message=None if last is None else _text_of(session_id, int(last["seq"]), last["body"]),
        pending=pending_state(tx, key, session_id),
        events_stored=int(events.fetchone()["n"]),
    )


def _text_of(session_id: str, seq: int, body: str) -> str:
    message = decode_message(session_id, seq, body)
    return str(getattr(message, "text", ""))
