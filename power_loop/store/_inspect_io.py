"""The writing half of the inspection layer, over :class:`~.protocols.Tx`: pruning (folded
message rows, ended ephemeral sub-agent sessions) and the export / import of a session in
the versioned record format (:data:`~._inspect_rows.EXPORT_FORMAT`).

Invariants:

* Each function runs inside the caller's transaction: an import and a prune are all or
  nothing; ``prune(dry_run=True)`` and :func:`export_session` only read.
* Import input is validated before anything is written (:func:`check_records`); a record
  the database refuses rolls the whole import back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import SessionNotFoundError
from ..messages import AssistantMessage, ToolResultMessage, message_from_dict
from . import _history_sql as _history
from . import _sessions_sql as _sessions
from ._inspect_rows import EXPORT_FORMAT, PruneReport
from ._leases import live_lease
from .protocols import Tx
from .rows import check_metadata

__all__ = ["check_records", "decode_metadata", "export_session", "import_session", "prune"]


def decode_metadata(raw: str | None) -> dict[str, Any]:
    """A session's stored metadata as a dict (a corrupt value is kept under ``_corrupt_metadata``)."""
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {"_corrupt_metadata": raw}
    return value if isinstance(value, dict) else {"_corrupt_metadata": raw}


# --------------------------------------------------------------------------- prune


def _ended_ephemeral(tx: Tx, now: int, older_than_ms: int | None) -> list[Any]:
    # Ended: its runs are over, nothing of it is unanswered, no background task of it is
    # running, it is not paused (loop.resume goes on with it), no timer or inbox item of it
    # waits to start another run, and its parent has no open call (a parent resumed after a
    # crash reads a finished child's stored answer: that child must stay until the parent has it).
    older = "" if older_than_ms is None else " AND s.updated_at < ?"
    rows = tx.execute(
        "SELECT s.id, s.session_id, s.lease_owner, s.lease_expires_at, s.holder_host, s.holder_pid, s.holder_start "
        "FROM sessions s WHERE s.kind = 'subagent' AND s.lifecycle = 'ephemeral' AND s.last_run > 0 "
        "AND s.paused_at IS NULL"
        f"{older} AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.session = s.id AND r.ended_at IS NULL) "
        "AND NOT EXISTS (SELECT 1 FROM tool_calls t WHERE t.session = s.id AND t.result_seq IS NULL) "
        "AND NOT EXISTS (SELECT 1 FROM subagent_tasks b WHERE b.session = s.id AND b.status = 'running') "
        "AND NOT EXISTS (SELECT 1 FROM timers w WHERE w.session = s.id AND w.status IN ('armed', 'claimed')) "
        "AND NOT EXISTS (SELECT 1 FROM inbox q WHERE q.session = s.id AND q.consumed_at IS NULL) "
        "AND NOT EXISTS (SELECT 1 FROM tool_calls t JOIN sessions p ON p.id = t.session "
        "WHERE p.session_id = s.parent_session_id AND t.result_seq IS NULL) ORDER BY s.session_id",
        () if older_than_ms is None else (older_than_ms,),
    ).fetchall()
    return [r for r in rows if live_lease(r, now)[0] is None]


def prune(tx: Tx, *, dry_run: bool, older_than_ms: int | None, now: int) -> PruneReport:
    """Remove folded message rows (the rule of ``prune_compacted``) and ended ephemeral
    sub-agent sessions; with ``dry_run`` only count them."""
    ended = _ended_ephemeral(tx, now, older_than_ms)
    sessions = [r["session_id"] for r in ended]
    if dry_run:  # the count the prune reports: folded rows of the sessions it keeps
        older = "" if older_than_ms is None else " AND created_at < ?"
        keys = [int(r["id"]) for r in ended]
        kept = f" AND session NOT IN ({','.join('?' * len(keys))})" if keys else ""
        row = tx.execute(
            f"SELECT COUNT(*) AS n FROM messages WHERE compacted = 1{older}{kept}",
            (*(() if older_than_ms is None else (older_than_ms,)), *keys),
        ).fetchone()
        return PruneReport(dry_run=True, folded_messages=int(row["n"]), sessions=sessions)
    for sid in sessions:
        _sessions.delete_session(tx, sid, cascade=True)
    folded = _history.prune_compacted(tx, None, older_than_ms=older_than_ms, keep_last=None)
    return PruneReport(dry_run=False, folded_messages=folded, sessions=sessions)


# --------------------------------------------------------------------------- export / import


def export_session(tx: Tx, session_id: str, *, now: int) -> list[dict[str, Any]]:
    """The session as records: a ``session`` header, then its ``message`` rows in seq order,
    then its ``compaction`` summaries."""
    row = tx.execute(
        "SELECT id, session_id, kind, lifecycle, parent_session_id, depth, metadata, system_prompt, created_at "
        "FROM sessions WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        raise SessionNotFoundError(session_id)
    key = int(row["id"])
    records: list[dict[str, Any]] = [
        {
            "type": "session",
            "format": EXPORT_FORMAT,
            "session_id": session_id,
            "kind": row["kind"],
            "lifecycle": row["lifecycle"],
            "parent_session_id": row["parent_session_id"],
            "depth": int(row["depth"]),
            "metadata": decode_metadata(row["metadata"]),
            "system_prompt": row["system_prompt"],
            "created_at": int(row["created_at"]),
            "exported_at": now,
        }
    ]
    # One statement, so one snapshot on both databases: a compaction committing meanwhile is
    # in the export with the rows it marks folded, or not at all.
    rows = tx.execute(
        "SELECT 0 AS part, m.seq AS n, m.body AS text, m.compacted AS folded, m.created_at AS created, "
        "r.run_id AS run_id, 0 AS before_tokens, 0 AS after_tokens FROM messages m "
        "LEFT JOIN runs r ON r.session = m.session AND r.run = m.run WHERE m.session = ? "
        "UNION ALL SELECT 1, c.id, c.summary, c.through_seq, c.created_at, NULL, c.before_tokens, c.after_tokens "
        "FROM compactions c WHERE c.session = ? ORDER BY part, n",
        (key, key),
    ).fetchall()
    for r in rows:
        if int(r["part"]) == 1:
            records.append(
                {
                    "type": "compaction",
                    "through_seq": int(r["folded"]),
                    "summary": r["text"],
                    "before_tokens": int(r["before_tokens"]),
                    "after_tokens": int(r["after_tokens"]),
                    "created_at": int(r["created"]),
                }
            )
            continue
        try:
            message = json.loads(r["text"])
        except ValueError:
            _history.decode_message(session_id, int(r["n"]), r["text"])
            raise
        records.append(
            {
                "type": "message",
                "seq": int(r["n"]),
                "message": message,
                "compacted": bool(r["folded"]),
                "run_id": r["run_id"],
                "created_at": int(r["created"]),
            }
        )
    return records


_MAX_INT = 2**63 - 1  # the largest integer both databases store


def _bad(line: int, why: str) -> ValueError:
    return ValueError(f"line {line}: {why}; nothing was imported")


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= _MAX_INT


def _check_head(head: Any, line: int) -> None:
    if not isinstance(head, Mapping) or head.get("type") != "session":
        raise _bad(line, 'the first record must be {"type": "session", ...}')
    if not _is_int(head.get("format")) or head["format"] != EXPORT_FORMAT:
        raise _bad(line, f"unknown format {head.get('format')!r} (this power_loop reads format {EXPORT_FORMAT})")
    try:
        check_metadata(head.get("metadata"))
    except (TypeError, ValueError):
        raise _bad(line, "'metadata' must be an object of JSON values") from None
    if head.get("system_prompt") is not None and not isinstance(head["system_prompt"], str):
        raise _bad(line, "'system_prompt' must be text or null")


def _check_compaction(rec: Mapping[str, Any], line: int, last_through: int) -> int:
    through: Any = rec.get("through_seq")
    if not _is_int(through, 1) or not isinstance(rec.get("summary"), str):
        raise _bad(line, "a compaction needs 'through_seq' (an integer >= 1) and 'summary' (text)")
    if through <= last_through:
        raise _bad(line, f"a compaction must fold more than the one before it (through seq {last_through})")
    for key in ("before_tokens", "after_tokens", "created_at"):
        if rec.get(key) is not None and not _is_int(rec[key]):
            raise _bad(line, f"{key!r} must be a whole number >= 0")
    return int(through)


def _check_message(rec: Mapping[str, Any], line: int, last_seq: int) -> Any:
    seq: Any = rec.get("seq")
    if not _is_int(seq) or seq <= last_seq:
        raise _bad(line, f"'seq' must be an integer greater than the previous one ({last_seq}), not {seq!r}")
    if not isinstance(rec.get("compacted", False), bool):
        raise _bad(line, "'compacted' must be true or false")
    if rec.get("created_at") is not None and not _is_int(rec["created_at"]):
        raise _bad(line, "'created_at' must be a whole number >= 0 (epoch ms)")
    try:
        return message_from_dict(rec.get("message") or {})
    except (ValueError, TypeError, AttributeError) as exc:
        raise _bad(line, f"not a valid message ({exc})") from None


def check_records(
    records: Sequence[Mapping[str, Any]], *, lines: Sequence[int] | None = None
) -> tuple[Mapping[str, Any], list[tuple[int, Any]]]:
    """The header and the messages (line number, message), validated; ValueError naming the
    first bad line (``lines``: each record's line in its file; default: records count from 1).

    Beyond each record's shape: seqs increase, every tool result answers an open call of an
    earlier message, no call id is used twice, compactions fold ever further, and exactly the
    messages up to the last compaction are marked folded (the rows a session loads are never
    marked, so pruning folded rows cannot remove them)."""
    where = list(lines) if lines is not None else list(range(1, len(records) + 1))
    if not records:
        raise _bad(1, "empty input: expected a session record first")
    head = records[0]
    _check_head(head, where[0])
    messages: list[tuple[int, Any]] = []
    open_calls: set[str] = set()
    seen_calls: set[str] = set()
    last_seq = last_through = 0
    for line, rec in zip(where[1:], records[1:], strict=True):
        if not isinstance(rec, Mapping) or rec.get("type") not in ("message", "compaction"):
            raise _bad(line, "expected a record of type 'message' or 'compaction'")
        if rec["type"] == "compaction":
            last_through = _check_compaction(rec, line, last_through)
            continue
        message = _check_message(rec, line, last_seq)
        last_seq = int(rec["seq"])
        if isinstance(message, ToolResultMessage):
            if message.tool_call_id not in open_calls:
                raise _bad(line, f"tool result for call {message.tool_call_id!r}, which no earlier message made")
            open_calls.discard(message.tool_call_id)
        elif isinstance(message, AssistantMessage):
            for call in message.tool_calls:
                if call.id in seen_calls:
                    raise _bad(line, f"tool call id {call.id!r} is used twice")
                seen_calls.add(call.id)
                open_calls.add(call.id)
        messages.append((line, rec))
    if last_through > last_seq:
        line = next(n for n, r in zip(where, records, strict=True) if r.get("through_seq") == last_through)
        raise _bad(line, "a compaction folds messages the file does not hold")
    for line, rec in messages:
        seq, folded = int(rec["seq"]), bool(rec.get("compacted"))
        if folded and seq > last_through:
            raise _bad(line, f"message {seq} is marked folded, but no compaction folds it")
        if not folded and seq <= last_through:
            raise _bad(line, f"message {seq} is folded by a compaction (through seq {last_through}), but not marked")
    return head, messages


def import_session(tx: Tx, records: Sequence[Mapping[str, Any]], *, session_id: str, now: int) -> int:
    """Create ``session_id`` from exported records (a top-level session with the header's
    metadata and system prompt) and store its messages, tool-call rows and compaction
    summaries; return the number of messages. All or nothing (the caller's transaction).

    Raises:
        ValueError: The records are invalid (the message names the line), or the id exists.
    """
    head, messages = check_records(records)
    meta = check_metadata(head.get("metadata") or {})
    prompt = head.get("system_prompt")
    _sessions.create_session(
        tx,
        session_id,
        metadata=meta,
        system_prompt=prompt if isinstance(prompt, str) else None,
        parent_session_id=None,
        kind="main",
        lifecycle=None,
        depth=0,
    )
    key = _sessions.session_ref(tx, session_id).key
    answered: dict[str, tuple[int, bool]] = {}
    for _, rec in messages:
        message = message_from_dict(rec["message"])
        if isinstance(message, ToolResultMessage):
            answered[message.tool_call_id] = (int(rec["seq"]), message.is_error)
    for _, rec in messages:
        seq = int(rec["seq"])
        message = message_from_dict(rec["message"])
        created = now if rec.get("created_at") is None else int(rec["created_at"])
        tx.execute(
            "INSERT INTO messages (session, seq, body, run, created_at, compacted) VALUES (?, ?, ?, NULL, ?, ?)",
            (key, seq, _history.encode_message(message), created, int(bool(rec.get("compacted")))),
        )
        if isinstance(message, AssistantMessage):
            for i, call in enumerate(message.tool_calls):
                result = answered.get(call.id)
                status = "pending" if result is None else ("failed" if result[1] else "done")
                tx.execute(
                    "INSERT INTO tool_calls (session, assistant_seq, tool_call_id, position, status, is_error, "
                    "result_seq, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key, seq, call.id, i, status, int(bool(result and result[1])), result and result[0], created),
                )
    last = int(messages[-1][1]["seq"]) if messages else 0
    for rec in records[1:]:
        if rec.get("type") == "compaction":
            tx.execute(
                "INSERT INTO compactions (session, through_seq, summary, before_tokens, after_tokens, run, created_at) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?)",
                (
                    key,
                    int(rec["through_seq"]),
                    _sessions.text(str(rec["summary"])),
                    int(rec.get("before_tokens") or 0),
                    int(rec.get("after_tokens") or 0),
                    int(rec.get("created_at") or now),
                ),
            )
    tx.execute("UPDATE sessions SET last_seq = ?, version = version + 1, updated_at = ? WHERE id = ?", (last, now, key))
    return len(messages)
