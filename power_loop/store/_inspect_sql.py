"""The inspection read layer, written once over :class:`~.protocols.Tx` for every backend:
session overviews, runs, transcripts, timers across sessions, the health report, pruning,
and the export / import of a session.

Invariants:

* Everything but :func:`prune` (with ``dry_run=False``) and :func:`import_session` only
  reads; they run as one transaction each, and an import is all or nothing.
* The SQL is portable like the other rules (no JSON functions: the metadata filter narrows
  with ``LIKE`` and is decided in Python).
* :class:`InspectMethods` offers the rules as store methods (and ``*_sync`` twins) to a
  backend mixing it in, through its ``_call`` / ``_call_sync``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..messages import AssistantMessage, ToolResultMessage, content_text, message_from_dict
from . import _history_sql as _history
from . import _sessions_sql as _sessions
from ._compat_sql import timer_statuses
from ._inspect_rows import (
    EXPORT_FORMAT,
    HealthFinding,
    HealthReport,
    PruneReport,
    RunOverview,
    SessionOverview,
    TimersReport,
    TranscriptEntry,
)
from ._leases import live_lease
from ._timers_sql import COLUMNS as TIMER_COLUMNS
from ._timers_sql import timer_row
from ._twins import TxFn, store_op
from .protocols import Tx
from .rows import TimerRow, check_metadata

__all__ = ["ORDERS", "InspectMethods"]

T = TypeVar("T")

ORDERS = {
    "last_active": "o.active_at DESC, o.id DESC",
    "created": "o.created_at DESC, o.id DESC",
    "id": "o.session_id",
    "tokens": "o.input_tokens + o.output_tokens DESC, o.id DESC",
}
"""The orders :func:`list_sessions` accepts."""

_OVERVIEW = """
SELECT s.id, s.session_id, s.kind, s.lifecycle, s.parent_session_id, s.created_at, s.metadata, s.paused_at,
    CASE WHEN s.last_seq > 0 OR s.last_run > 0 THEN s.updated_at END AS last_active_at,
    CASE WHEN s.last_seq > 0 OR s.last_run > 0 THEN s.updated_at ELSE s.created_at END AS active_at,
    (SELECT COUNT(*) FROM messages m WHERE m.session = s.id AND m.compacted = 0) AS messages,
    (SELECT COUNT(*) FROM runs r WHERE r.session = s.id) AS runs,
    (SELECT r.status FROM runs r WHERE r.session = s.id ORDER BY r.run DESC LIMIT 1) AS last_status,
    (SELECT COUNT(*) FROM tool_calls t WHERE t.session = s.id AND t.result_seq IS NULL) AS pending_calls,
    (SELECT COUNT(*) FROM timers t WHERE t.session = s.id AND t.status = 'armed') AS armed_timers,
    (SELECT COALESCE(SUM(l.prompt_tokens), 0) FROM llm_calls l WHERE l.session = s.id) AS input_tokens,
    (SELECT COALESCE(SUM(l.completion_tokens), 0) FROM llm_calls l WHERE l.session = s.id) AS output_tokens
FROM sessions s"""


def _like(text: str) -> str:
    """A ``LIKE ... ESCAPE '\\'`` pattern matching ``text`` anywhere."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped.lower()}%"


def _filters(
    kind: str | None, metadata: Mapping[str, str] | None, active_since_ms: int | None, search: str | None
) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    if kind is not None:
        where.append("s.kind = ?")
        params.append("main" if kind in ("main", "root") else kind)
    if active_since_ms is not None:
        where.append("(s.last_seq > 0 OR s.last_run > 0) AND s.updated_at >= ?")
        params.append(int(active_since_ms))
    if search:
        where.append("(LOWER(s.session_id) LIKE ? ESCAPE '\\' OR LOWER(s.metadata) LIKE ? ESCAPE '\\')")
        params += [_like(search), _like(search)]
    for key, value in (metadata or {}).items():  # narrowed here, decided by _metadata_matches
        where.append("LOWER(s.metadata) LIKE ? ESCAPE '\\' AND LOWER(s.metadata) LIKE ? ESCAPE '\\'")
        params += [_like(json.dumps(str(key))), _like(str(value))]
    return (" WHERE " + " AND ".join(where)) if where else "", params


def _decode_metadata(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {"_corrupt_metadata": raw}
    return value if isinstance(value, dict) else {"_corrupt_metadata": raw}


def _metadata_matches(found: Mapping[str, Any], wanted: Mapping[str, str]) -> bool:
    for key, value in wanted.items():
        if key not in found:
            return False
        have = found[key]
        if not (have == value or (not isinstance(have, str) and json.dumps(have) == value)):
            return False
    return True


def _overview(r: Any) -> SessionOverview:
    return SessionOverview(
        session_id=r["session_id"],
        kind=r["kind"],
        parent_session_id=r["parent_session_id"],
        created_at=int(r["created_at"]),
        last_active_at=None if r["last_active_at"] is None else int(r["last_active_at"]),
        messages=int(r["messages"]),
        runs=int(r["runs"]),
        last_status=r["last_status"],
        pending_calls=int(r["pending_calls"]),
        armed_timers=int(r["armed_timers"]),
        input_tokens=int(r["input_tokens"]),
        output_tokens=int(r["output_tokens"]),
        metadata=_decode_metadata(r["metadata"]),
        lifecycle=r["lifecycle"],
        paused=r["paused_at"] is not None,
    )


def list_sessions(
    tx: Tx,
    *,
    kind: str | None,
    metadata: Mapping[str, str] | None,
    active_since_ms: int | None,
    search: str | None,
    order: str,
    limit: int,
    offset: int,
) -> list[SessionOverview]:
    """Session overviews matching the filters, in ``order``, one page."""
    where, params = _filters(kind, metadata, active_since_ms, search)
    sql = f"SELECT * FROM ({_OVERVIEW}{where}) o ORDER BY {ORDERS[order]}"
    if not metadata:
        rows = tx.execute(f"{sql} LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
        return [_overview(r) for r in rows]
    found = [o for o in map(_overview, tx.execute(sql, params).fetchall()) if _metadata_matches(o.metadata, metadata)]
    return found[offset : offset + limit]


def count_sessions(
    tx: Tx,
    *,
    kind: str | None,
    metadata: Mapping[str, str] | None,
    active_since_ms: int | None,
    search: str | None,
) -> int:
    """How many sessions match the filters."""
    where, params = _filters(kind, metadata, active_since_ms, search)
    if not metadata:
        return int(tx.execute(f"SELECT COUNT(*) AS n FROM sessions s{where}", params).fetchone()["n"])
    rows = tx.execute(f"SELECT s.metadata FROM sessions s{where}", params).fetchall()
    return sum(1 for r in rows if _metadata_matches(_decode_metadata(r["metadata"]), metadata))


def list_runs(tx: Tx, session_id: str, *, limit: int) -> list[RunOverview]:
    """The session's latest ``limit`` runs, oldest first, with their usage."""
    key = _sessions.session_ref(tx, session_id).key
    rows = tx.execute(
        "SELECT r.run, r.run_id, r.kind, r.status, r.rounds, r.started_at, r.ended_at, r.error, "
        "(SELECT COUNT(*) FROM llm_calls l WHERE l.session = r.session AND l.run = r.run) AS calls, "
        "(SELECT COALESCE(SUM(l.prompt_tokens), 0) FROM llm_calls l WHERE l.session = r.session AND l.run = r.run) "
        "AS input_tokens, "
        "(SELECT COALESCE(SUM(l.completion_tokens), 0) FROM llm_calls l "
        "WHERE l.session = r.session AND l.run = r.run) AS output_tokens "
        "FROM runs r WHERE r.session = ? ORDER BY r.run DESC LIMIT ?",
        (key, limit),
    ).fetchall()
    return [
        RunOverview(
            run_id=r["run_id"],
            number=int(r["run"]),
            kind=r["kind"],
            status=r["status"],
            started_at=int(r["started_at"]),
            ended_at=None if r["ended_at"] is None else int(r["ended_at"]),
            rounds=int(r["rounds"]),
            llm_calls=int(r["calls"]),
            input_tokens=int(r["input_tokens"]),
            output_tokens=int(r["output_tokens"]),
            error=r["error"],
        )
        for r in reversed(rows)
    ]


def _entry(
    seq: int, data: dict[str, Any], *, compacted: bool, summary: bool, run_id: Any, created: int
) -> TranscriptEntry:
    message = message_from_dict(data)
    calls = message.tool_calls if isinstance(message, AssistantMessage) else ()
    text = content_text(message.content) if hasattr(message, "content") else ""
    return TranscriptEntry(
        seq=seq,
        role=message.role,
        content=text or None,
        tool_calls=[{"id": c.id, "name": c.name, "arguments": c.arguments} for c in calls],
        tool_call_id=message.tool_call_id if isinstance(message, ToolResultMessage) else None,
        name=data.get("name"),
        compacted=compacted,
        is_summary=summary,
        run_id=run_id,
        created_at=created,
        message=data,
        is_error=isinstance(message, ToolResultMessage) and message.is_error,
    )


def read_transcript(
    tx: Tx, session_id: str, *, after_seq: int, limit: int, include_compacted: bool
) -> list[TranscriptEntry]:
    """Message rows after ``after_seq`` (at most ``limit``), with each compaction summary
    placed after the last message it folds."""
    from ..compaction import summary_message
    from ..messages import message_to_dict

    key = _sessions.session_ref(tx, session_id).key
    live = "" if include_compacted else " AND m.compacted = 0"
    rows = tx.execute(
        "SELECT m.seq, m.body, m.compacted, m.created_at, r.run_id FROM messages m "
        "LEFT JOIN runs r ON r.session = m.session AND r.run = m.run "
        f"WHERE m.session = ? AND m.seq > ?{live} ORDER BY m.seq LIMIT ?",
        (key, after_seq, limit),
    ).fetchall()
    upto = int(rows[-1]["seq"]) if len(rows) == limit else None
    bound = "" if upto is None else " AND through_seq <= ?"
    folds = tx.execute(
        f"SELECT through_seq, summary, created_at FROM compactions WHERE session = ? AND through_seq > ?{bound} "
        "ORDER BY through_seq, id",
        (key, after_seq, *(() if upto is None else (upto,))),
    ).fetchall()
    summaries: dict[int, list[Any]] = {}
    for f in folds:
        summaries.setdefault(int(f["through_seq"]), []).append(f)
    out: list[TranscriptEntry] = []

    def add_summaries(upto_seq: int | None) -> None:
        for seq in sorted(s for s in summaries if upto_seq is None or s <= upto_seq):
            for f in summaries.pop(seq):
                data = message_to_dict(summary_message(f["summary"]))
                out.append(_entry(seq, data, compacted=False, summary=True, run_id=None, created=int(f["created_at"])))

    for r in rows:
        seq = int(r["seq"])
        add_summaries(seq - 1)
        try:
            data = json.loads(r["body"])
            entry = _entry(
                seq,
                data,
                compacted=bool(r["compacted"]),
                summary=False,
                run_id=r["run_id"],
                created=int(r["created_at"]),
            )
        except (ValueError, TypeError, AttributeError):
            _history.decode_message(session_id, seq, r["body"])  # raises CorruptRecordError naming the row
            raise
        out.append(entry)
        add_summaries(seq)
    add_summaries(None)
    return out


def list_all_timers(tx: Tx, session_id: str | None, *, statuses: Sequence[str], recent: int) -> TimersReport:
    """Active timers (in ``statuses``) soonest first, and the ``recent`` latest deliveries,
    fired and cancelled timers, across sessions or of one session."""
    scope, params = (
        ("", []) if session_id is None else (" AND t.session = ?", [_sessions.session_ref(tx, session_id).key])
    )
    cols = ", ".join(f"t.{c.strip()}" for c in TIMER_COLUMNS.split(","))
    wanted = timer_statuses(statuses)
    active: list[TimerRow] = []
    if wanted:
        marks = ",".join("?" * len(wanted))
        rows = tx.execute(
            f"SELECT s.session_id, {cols} FROM timers t JOIN sessions s ON s.id = t.session "
            f"WHERE t.status IN ({marks}){scope} ORDER BY t.due_at, s.session_id, t.timer_id",
            (*wanted, *params),
        ).fetchall()
        active = [timer_row(r["session_id"], r) for r in rows]
    done = tx.execute(
        f"SELECT s.session_id, {cols} FROM timers t JOIN sessions s ON s.id = t.session "
        f"WHERE (t.fired_at IS NOT NULL OR t.status IN ('fired', 'cancelled')){scope} "
        "ORDER BY t.updated_at DESC, s.session_id, t.timer_id DESC LIMIT ?",
        (*params, recent),
    ).fetchall()
    return TimersReport(active=active, recent=[timer_row(r["session_id"], r) for r in done])


# --------------------------------------------------------------------------- health


def _version_and_integrity(tx: Tx) -> tuple[int, str]:
    if tx.dialect == "sqlite":
        version = int(tx.execute("PRAGMA user_version").fetchone()[0])
        found = [str(r[0]) for r in tx.execute("PRAGMA quick_check").fetchall()]
        return version, "ok" if found == ["ok"] else "; ".join(found[:5])
    version = int(tx.execute("SELECT version FROM power_loop_schema").fetchone()["version"])
    tables = tx.execute(
        "SELECT COUNT(*) AS n FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
        "AND tablename IN ('sessions', 'messages', 'runs', 'tool_calls', 'timers')"
    ).fetchone()
    return version, "ok" if int(tables["n"]) == 5 else "tables missing from the schema"


def _lease_findings(tx: Tx, now: int, db: str) -> tuple[list[HealthFinding], set[int]]:
    findings: list[HealthFinding] = []
    busy: set[int] = set()
    rows = tx.execute(
        "SELECT s.id, s.session_id, s.lease_owner, s.lease_expires_at, s.holder_host, s.holder_pid, s.holder_start, "
        "(SELECT COUNT(*) FROM runs r WHERE r.session = s.id AND r.ended_at IS NULL) AS open_runs "
        "FROM sessions s WHERE s.lease_owner IS NOT NULL "
        "OR EXISTS (SELECT 1 FROM runs r WHERE r.session = s.id AND r.ended_at IS NULL) ORDER BY s.session_id"
    ).fetchall()
    for r in rows:
        sid = r["session_id"]
        if live_lease(r, now)[0] is not None:
            busy.add(int(r["id"]))
            continue
        if int(r["open_runs"]):
            findings.append(
                HealthFinding(
                    "stuck_run",
                    sid,
                    f"a run is recorded as running but no live process holds the session (its holder, "
                    f"{r['lease_owner'] or 'gone'}, died or lost its lease)",
                    f"await loop.resume({sid!r})  # continues the interrupted run; the next send also closes it",
                )
            )
        elif r["lease_owner"] is not None:
            findings.append(
                HealthFinding(
                    "dead_lease",
                    sid,
                    f"the session is still leased to {r['lease_owner']}, whose process ended without releasing it",
                    f"await loop.resume({sid!r})  # or any next send: it takes the dead lease over",
                )
            )
    return findings, busy


def health_report(tx: Tx, *, now: int, overdue_ms: int, db: str) -> HealthReport:
    """The schema version, the integrity check and the problems found, each with its fix."""
    version, integrity = _version_and_integrity(tx)
    sessions = int(tx.execute("SELECT COUNT(*) AS n FROM sessions").fetchone()["n"])
    findings, busy = _lease_findings(tx, now, db)
    stuck = {f.session_id for f in findings}
    pending = tx.execute(
        "SELECT s.id, s.session_id, COUNT(*) AS n FROM tool_calls t JOIN sessions s ON s.id = t.session "
        "WHERE t.result_seq IS NULL GROUP BY s.id, s.session_id ORDER BY s.session_id"
    ).fetchall()
    for r in pending:
        sid = r["session_id"]
        if int(r["id"]) in busy or sid in stuck:
            continue
        findings.append(
            HealthFinding(
                "pending_calls",
                sid,
                f"{r['n']} tool call(s) have no result and no run is going on",
                f"await loop.resume({sid!r})  # runs them; or: await loop.abort_pending_async({sid!r})",
            )
        )
    worker = f"power-loop worker APP --db {db}  # APP: module:attribute naming your StatefulAgentLoop"
    timers = tx.execute(
        "SELECT s.session_id, t.timer_id, t.status, t.due_at, t.owner, t.lease_expires_at FROM timers t "
        "JOIN sessions s ON s.id = t.session WHERE (t.status = 'claimed' AND t.lease_expires_at < ?) "
        "OR (t.status = 'armed' AND t.due_at < ?) ORDER BY t.due_at, s.session_id, t.timer_id",
        (now, now - overdue_ms),
    ).fetchall()
    for t in timers:
        late = (now - int(t["due_at"])) // 1000
        if t["status"] == "claimed":
            detail = f"timer {t['timer_id']} was claimed by {t['owner']}, whose claim expired; it is {late}s late"
            findings.append(HealthFinding("expired_timer_claim", t["session_id"], detail, worker))
        else:
            detail = f"timer {t['timer_id']} is {late}s overdue: no timer worker is delivering"
            findings.append(HealthFinding("overdue_timer", t["session_id"], detail, worker))
    return HealthReport(
        backend=tx.dialect, schema_version=version, integrity=integrity, sessions=sessions, findings=findings
    )


# --------------------------------------------------------------------------- prune


def _ended_ephemeral(tx: Tx, now: int, older_than_ms: int | None) -> list[Any]:
    # Ended: its runs are over, nothing of it is unanswered, no background task of it is
    # running, and its parent has no open call (a parent resumed after a crash reads a
    # finished child's stored answer: that child must stay until the parent has it).
    older = "" if older_than_ms is None else " AND s.updated_at < ?"
    rows = tx.execute(
        "SELECT s.id, s.session_id, s.lease_owner, s.lease_expires_at, s.holder_host, s.holder_pid, s.holder_start "
        "FROM sessions s WHERE s.kind = 'subagent' AND s.lifecycle = 'ephemeral' AND s.last_run > 0"
        f"{older} AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.session = s.id AND r.ended_at IS NULL) "
        "AND NOT EXISTS (SELECT 1 FROM tool_calls t WHERE t.session = s.id AND t.result_seq IS NULL) "
        "AND NOT EXISTS (SELECT 1 FROM subagent_tasks b WHERE b.session = s.id AND b.status = 'running') "
        "AND NOT EXISTS (SELECT 1 FROM tool_calls t JOIN sessions p ON p.id = t.session "
        "WHERE p.session_id = s.parent_session_id AND t.result_seq IS NULL) ORDER BY s.session_id",
        () if older_than_ms is None else (older_than_ms,),
    ).fetchall()
    return [r for r in rows if live_lease(r, now)[0] is None]


def prune(tx: Tx, *, dry_run: bool, older_than_ms: int | None, now: int) -> PruneReport:
    """Remove folded message rows (the rule of ``prune_compacted``) and ended ephemeral
    sub-agent sessions; with ``dry_run`` only count them."""
    sessions = [r["session_id"] for r in _ended_ephemeral(tx, now, older_than_ms)]
    if dry_run:
        older = "" if older_than_ms is None else " AND created_at < ?"
        row = tx.execute(
            f"SELECT COUNT(*) AS n FROM messages WHERE compacted = 1{older}",
            () if older_than_ms is None else (older_than_ms,),
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
        from ..errors import SessionNotFoundError

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
            "metadata": _decode_metadata(row["metadata"]),
            "system_prompt": row["system_prompt"],
            "created_at": int(row["created_at"]),
            "exported_at": now,
        }
    ]
    rows = tx.execute(
        "SELECT m.seq, m.body, m.compacted, m.created_at, r.run_id FROM messages m "
        "LEFT JOIN runs r ON r.session = m.session AND r.run = m.run WHERE m.session = ? ORDER BY m.seq",
        (key,),
    ).fetchall()
    for r in rows:
        try:
            message = json.loads(r["body"])
        except ValueError:
            _history.decode_message(session_id, int(r["seq"]), r["body"])
            raise
        records.append(
            {
                "type": "message",
                "seq": int(r["seq"]),
                "message": message,
                "compacted": bool(r["compacted"]),
                "run_id": r["run_id"],
                "created_at": int(r["created_at"]),
            }
        )
    for c in tx.execute(
        "SELECT through_seq, summary, before_tokens, after_tokens, created_at FROM compactions "
        "WHERE session = ? ORDER BY id",
        (key,),
    ).fetchall():
        records.append(
            {
                "type": "compaction",
                "through_seq": int(c["through_seq"]),
                "summary": c["summary"],
                "before_tokens": int(c["before_tokens"]),
                "after_tokens": int(c["after_tokens"]),
                "created_at": int(c["created_at"]),
            }
        )
    return records


def _bad(line: int, why: str) -> ValueError:
    return ValueError(f"line {line}: {why}; nothing was imported")


def _check_records(records: Sequence[Mapping[str, Any]]) -> tuple[Mapping[str, Any], list[tuple[int, Any]]]:
    """The header and the messages (line number, message), validated; ValueError naming the
    first bad line (records count from line 1)."""
    if not records:
        raise _bad(1, "empty input: expected a session record first")
    head = records[0]
    if not isinstance(head, Mapping) or head.get("type") != "session":
        raise _bad(1, 'the first record must be {"type": "session", ...}')
    if head.get("format") != EXPORT_FORMAT:
        raise _bad(1, f"unknown format {head.get('format')!r} (this power_loop reads format {EXPORT_FORMAT})")
    messages: list[tuple[int, Any]] = []
    open_calls: dict[str, int] = {}
    last_seq = 0
    for line, rec in enumerate(records[1:], start=2):
        if not isinstance(rec, Mapping) or rec.get("type") not in ("message", "compaction"):
            raise _bad(line, "expected a record of type 'message' or 'compaction'")
        if rec["type"] == "compaction":
            if not isinstance(rec.get("summary"), str) or not isinstance(rec.get("through_seq"), int):
                raise _bad(line, "a compaction needs 'through_seq' (int) and 'summary' (text)")
            continue
        seq = rec.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq <= last_seq:
            raise _bad(line, f"'seq' must be an integer greater than the previous one ({last_seq}), not {seq!r}")
        last_seq = seq
        try:
            message = message_from_dict(rec.get("message") or {})
        except (ValueError, TypeError, AttributeError) as exc:
            raise _bad(line, f"not a valid message ({exc})") from None
        if isinstance(message, ToolResultMessage):
            if message.tool_call_id not in open_calls:
                raise _bad(line, f"tool result for call {message.tool_call_id!r}, which no earlier message made")
            del open_calls[message.tool_call_id]
        elif isinstance(message, AssistantMessage):
            for call in message.tool_calls:
                if call.id in open_calls:
                    raise _bad(line, f"tool call id {call.id!r} is used twice")
                open_calls[call.id] = line
        messages.append((line, rec))
    for line, rec in enumerate(records[1:], start=2):
        if rec.get("type") == "compaction" and rec["through_seq"] > last_seq:
            raise _bad(line, "a compaction folds messages the file does not hold")
    return head, messages


def import_session(tx: Tx, records: Sequence[Mapping[str, Any]], *, session_id: str, now: int) -> int:
    """Create ``session_id`` from exported records (a top-level session with the header's
    metadata and system prompt) and store its messages, tool-call rows and compaction
    summaries; return the number of messages. All or nothing (the caller's transaction).

    Raises:
        ValueError: The records are invalid (the message names the line), or the id exists.
    """
    head, messages = _check_records(records)
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
        created = rec.get("created_at")
        created = int(created) if isinstance(created, int) else now
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


# --------------------------------------------------------------------------- the methods


class InspectMethods:
    """The :class:`~.protocols.InspectStore` methods, over the backend's ``_call`` /
    ``_call_sync`` (mixed into both store classes)."""

    if TYPE_CHECKING:

        def _call_sync(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

        async def _call(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

        @property
        def path(self) -> str: ...

    @store_op(tx=False)
    def list_sessions(
        self,
        *,
        kind: str | None = None,
        metadata: Mapping[str, str] | None = None,
        active_since_ms: int | None = None,
        search: str | None = None,
        order: str = "last_active",
        limit: int = 50,
        offset: int = 0,
    ) -> TxFn[list[SessionOverview]]:
        """Every session matching the filters (including ones that never finished a run), one page.

        Args:
            kind: Only this kind (``main``, ``subagent``).
            metadata: Only sessions whose metadata holds each of these keys with this value
                (a non-text value compares by its JSON text).
            active_since_ms: Only sessions a run or message changed at or after this time.
            search: Only sessions whose id or metadata text contains this (any case).
            order: ``last_active`` (latest first), ``created`` (newest first), ``id`` or
                ``tokens`` (most first).
            limit: Page size.
            offset: Sessions skipped before the page.

        Raises:
            ValueError: Unknown ``order``, or a negative ``limit`` / ``offset``.
        """
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r}; use one of {', '.join(ORDERS)}")
        if limit < 0 or offset < 0:
            raise ValueError("limit and offset must be >= 0")
        return lambda c: list_sessions(
            c,
            kind=kind,
            metadata=metadata,
            active_since_ms=active_since_ms,
            search=search,
            order=order,
            limit=limit,
            offset=offset,
        )

    list_sessions_sync = list_sessions.blocking()

    @store_op(tx=False)
    def count_sessions(
        self,
        *,
        kind: str | None = None,
        metadata: Mapping[str, str] | None = None,
        active_since_ms: int | None = None,
        search: str | None = None,
    ) -> TxFn[int]:
        """How many sessions :meth:`list_sessions` finds with these filters (for paging)."""
        return lambda c: count_sessions(c, kind=kind, metadata=metadata, active_since_ms=active_since_ms, search=search)

    @store_op(tx=False)
    def list_runs(self, session_id: str, *, limit: int = 100) -> TxFn[list[RunOverview]]:
        """The session's latest ``limit`` runs, oldest first, with usage (SessionNotFoundError
        for an unknown session)."""
        return lambda c: list_runs(c, session_id, limit=limit)

    @store_op(tx=False)
    def read_transcript(
        self, session_id: str, *, after_seq: int = 0, limit: int = 1000, include_compacted: bool = True
    ) -> TxFn[list[TranscriptEntry]]:
        """Message rows after ``after_seq`` in seq order (at most ``limit``), compaction
        summaries marked and placed after the last message they fold; poll with the last seq
        seen to follow a live session (SessionNotFoundError for an unknown session)."""
        return lambda c: read_transcript(
            c, session_id, after_seq=after_seq, limit=limit, include_compacted=include_compacted
        )

    read_transcript_sync = read_transcript.blocking()

    @store_op(tx=False)
    def list_all_timers(
        self,
        session_id: str | None = None,
        *,
        statuses: Sequence[str] = ("armed", "firing", "claimed"),
        recent: int = 20,
    ) -> TxFn[TimersReport]:
        """Armed and in-flight timers (soonest first) and the ``recent`` latest fired or
        cancelled ones (latest first), across sessions or of ``session_id``."""
        return lambda c: list_all_timers(c, session_id, statuses=statuses, recent=recent)

    @store_op(tx=False)
    def health_report(
        self, *, now_ms: int | None = None, overdue_ms: int = 300_000, db: str | None = None
    ) -> TxFn[HealthReport]:
        """Schema version, integrity check and the problems ``power-loop doctor`` reports:
        dead leases, runs left running, unanswered calls with no run going on, timer claims
        that expired and timers overdue by more than ``overdue_ms``; each with its fix
        (``db`` names the store in a fix's command; default: the store's path)."""
        now = _sessions.now_ms() if now_ms is None else now_ms
        where = db or self.path
        return lambda c: health_report(c, now=now, overdue_ms=overdue_ms, db=where)

    @store_op()
    def prune(self, *, dry_run: bool, older_than_ms: int | None = None) -> TxFn[PruneReport]:
        """Delete folded (compacted) message rows and ended ephemeral sub-agent sessions
        (older than ``older_than_ms``, epoch ms, when given); ``dry_run`` only counts them."""
        now = _sessions.now_ms()
        return lambda c: prune(c, dry_run=dry_run, older_than_ms=older_than_ms, now=now)

    @store_op(tx=False)
    def export_session(self, session_id: str) -> TxFn[list[dict[str, Any]]]:
        """The session as JSON-ready records: ``{"type": "session", "format": 1, ...}``, then
        one ``{"type": "message", "seq", "message", "compacted", "run_id", "created_at"}``
        per row, then ``{"type": "compaction", ...}`` per summary."""
        now = _sessions.now_ms()
        return lambda c: export_session(c, session_id, now=now)

    @store_op()
    def import_session(self, records: Iterable[Mapping[str, Any]], *, session_id: str) -> TxFn[int]:
        """Store exported records as the NEW session ``session_id`` (top-level, no runs);
        return the number of messages. All or nothing.

        Raises:
            ValueError: Invalid records (the message names the line) or the id exists.
        """
        rows = list(records)
        _check_records(rows)  # in the caller: bad input never reaches the database
        now = _sessions.now_ms()
        return lambda c: import_session(c, rows, session_id=session_id, now=now)
