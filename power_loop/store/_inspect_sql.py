"""The inspection read layer, written once over :class:`~.protocols.Tx` for every backend:
session overviews, runs, transcripts, timers across sessions and the health report; pruning
and the export / import of a session are in :mod:`._inspect_io`.

Invariants:

* Everything here only reads, each call in one transaction (or one read-only statement
  series); the writes (``prune``, ``import_session``) are all or nothing.
* The SQL is portable like the other rules (no JSON functions: the metadata filter narrows
  with ``LIKE`` and is decided in Python).
* :class:`InspectMethods` offers the rules as store methods (and ``*_sync`` twins) to a
  backend mixing it in, through its ``_call`` / ``_call_sync``.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..messages import AssistantMessage, ToolResultMessage, content_text, message_from_dict
from . import _history_sql as _history
from . import _inspect_io as _io
from . import _sessions_sql as _sessions
from ._compat_sql import timer_statuses
from ._inspect_io import decode_metadata as _decode_metadata
from ._inspect_rows import (
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
from .rows import TimerRow

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


def _search_in_sql(search: str | None) -> bool:
    """Whether SQL alone decides ``search``: ASCII text the stored JSON holds as typed (no
    quote or backslash, which JSON escapes), compared case-blind the same way by both
    databases' ``LOWER``. Other text is decided by :func:`_decided_in_python`."""
    return not search or (search.isascii() and search.isprintable() and '"' not in search and "\\" not in search)


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
    if search and _search_in_sql(search):
        where.append("(LOWER(s.session_id) LIKE ? ESCAPE '\\' OR LOWER(s.metadata) LIKE ? ESCAPE '\\')")
        params += [_like(search), _like(search)]
    for key in metadata or {}:  # narrowed by the key as stored (JSON text); decided by _matches
        where.append("LOWER(s.metadata) LIKE ? ESCAPE '\\'")
        params.append(_like(json.dumps(str(key))))
    return (" WHERE " + " AND ".join(where)) if where else "", params


def _decided_in_python(metadata: Mapping[str, str] | None, search: str | None) -> bool:
    return bool(metadata) or not _search_in_sql(search)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _matches(session_id: str, found: Mapping[str, Any], wanted: Mapping[str, str] | None, search: str | None) -> bool:
    """The filters SQL could only narrow: metadata values, and a search SQL cannot decide."""
    for key, value in (wanted or {}).items():
        if key not in found:
            return False
        have = found[key]
        if not (have == value or (not isinstance(have, str) and json.dumps(have) == value)):
            return False
    if search and not _search_in_sql(search):
        needle = search.casefold()
        texts = [session_id, json.dumps(dict(found), ensure_ascii=False), *found, *map(_text, found.values())]
        return any(needle in t.casefold() for t in texts)
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
    if not _decided_in_python(metadata, search):
        rows = tx.execute(f"{sql} LIMIT ? OFFSET ?", (*params, limit, offset)).fetchall()
        return [_overview(r) for r in rows]
    found = [
        o
        for o in map(_overview, tx.execute(sql, params).fetchall())
        if _matches(o.session_id, o.metadata, metadata, search)
    ]
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
    if not _decided_in_python(metadata, search):
        return int(tx.execute(f"SELECT COUNT(*) AS n FROM sessions s{where}", params).fetchone()["n"])
    rows = tx.execute(f"SELECT s.session_id, s.metadata FROM sessions s{where}", params).fetchall()
    return sum(1 for r in rows if _matches(r["session_id"], _decode_metadata(r["metadata"]), metadata, search))


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


def _lease_findings(tx: Tx, now: int) -> tuple[list[HealthFinding], set[int]]:
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
                    f"the session is still leased to {r['lease_owner']}, which ended or stopped renewing the lease "
                    "without releasing it",
                    f"await loop.resume({sid!r})  # or any next send: it takes the dead lease over",
                )
            )
    return findings, busy


def _read_snapshot(tx: Tx, fn: Callable[[], T], *, in_transaction: bool) -> T:
    """``fn()`` with every statement reading one snapshot, taking no write lock: a deferred
    transaction on SQLite (a WAL reader), ``REPEATABLE READ, READ ONLY`` on PostgreSQL.
    ``in_transaction``: the backend already began one (a transaction pooler's)."""
    if tx.dialect != "sqlite" and in_transaction:
        tx.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        return fn()
    tx.execute("BEGIN" if tx.dialect == "sqlite" else "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    try:
        result = fn()
    except BaseException:
        tx.execute("ROLLBACK")
        raise
    tx.execute("COMMIT")
    return result


def health_report(tx: Tx, *, now: int, overdue_ms: int, db: str, in_transaction: bool = False) -> HealthReport:
    """The schema version, the integrity check and the problems found, each with its fix, read
    from one snapshot: a run that begins or ends meanwhile is seen whole or not at all, never
    as its unanswered calls without its lease."""
    return _read_snapshot(tx, lambda: _health_report(tx, now, overdue_ms, db), in_transaction=in_transaction)


def _health_report(tx: Tx, now: int, overdue_ms: int, db: str) -> HealthReport:
    version, integrity = _version_and_integrity(tx)
    sessions = int(tx.execute("SELECT COUNT(*) AS n FROM sessions").fetchone()["n"])
    findings, busy = _lease_findings(tx, now)
    stuck = {f.session_id for f in findings}
    # Calls waiting on a person (an open question, an approval) and paused sessions are no
    # problem: they wait for submit_input, an approval decision or loop.resume on purpose.
    pending = tx.execute(
        "SELECT s.id, s.session_id, COUNT(*) AS n, "
        "SUM(CASE WHEN t.status IN ('waiting_input', 'awaiting_approval') THEN 1 ELSE 0 END) AS waiting "
        "FROM tool_calls t JOIN sessions s ON s.id = t.session "
        "WHERE t.result_seq IS NULL AND s.paused_at IS NULL GROUP BY s.id, s.session_id ORDER BY s.session_id"
    ).fetchall()
    for r in pending:
        sid = r["session_id"]
        if int(r["id"]) in busy or sid in stuck or int(r["waiting"]):
            continue
        findings.append(
            HealthFinding(
                "pending_calls",
                sid,
                f"{r['n']} tool call(s) have no result and no run is going on",
                f"await loop.resume({sid!r})  # runs them; or: await loop.abort_pending_async({sid!r})",
            )
        )
    worker = f"power-loop worker APP --db {shlex.quote(db)}  # APP: module:attribute naming your StatefulAgentLoop"
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
    # A wake-up (a timer's, a background task's or sub-agent's) delivered into an inbox that no
    # run drained: its process died before running the session; a timer worker recovers it.
    waiting = tx.execute(
        "SELECT s.id, s.session_id, COUNT(*) AS n FROM inbox i JOIN sessions s ON s.id = i.session "
        "WHERE i.consumed_at IS NULL AND i.source IN ('timer', 'task', 'subagent') AND i.created_at < ? "
        "AND s.paused_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM tool_calls t WHERE t.session = s.id AND t.result_seq IS NULL) "
        "GROUP BY s.id, s.session_id ORDER BY s.session_id",
        (now - overdue_ms,),
    ).fetchall()
    for r in waiting:
        if int(r["id"]) not in busy:
            detail = f"{r['n']} wake-up(s) wait in its inbox and no run reads them: no timer worker is delivering"
            findings.append(HealthFinding("undelivered_wakeup", r["session_id"], detail, worker))
    return HealthReport(
        backend=tx.dialect, schema_version=version, integrity=integrity, sessions=sessions, findings=findings
    )


# --------------------------------------------------------------------------- the methods


def _at_least(low: int, **counts: int) -> None:
    """Refuse a page size both databases would not read alike (SQLite reads LIMIT -1 as no limit)."""
    for name, value in counts.items():
        if not low <= value < 2**63:
            raise ValueError(f"{name} must be >= {low} and < 2**63, not {value}")


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
        _at_least(0, limit=limit, offset=offset)
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
        for an unknown session; ValueError for a negative ``limit``)."""
        _at_least(0, limit=limit)
        return lambda c: list_runs(c, session_id, limit=limit)

    @store_op(tx=False)
    def read_transcript(
        self, session_id: str, *, after_seq: int = 0, limit: int = 1000, include_compacted: bool = True
    ) -> TxFn[list[TranscriptEntry]]:
        """Message rows after ``after_seq`` in seq order (at most ``limit``), compaction
        summaries marked and placed after the last message they fold; poll with the last seq
        seen to follow a live session (SessionNotFoundError for an unknown session; ValueError
        for a ``limit`` below 1)."""
        _at_least(1, limit=limit)
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
        cancelled ones (latest first), across sessions or of ``session_id`` (ValueError for a
        negative ``recent``)."""
        _at_least(0, recent=recent)
        return lambda c: list_all_timers(c, session_id, statuses=statuses, recent=recent)

    @store_op(tx=False)
    def health_report(
        self, *, now_ms: int | None = None, overdue_ms: int = 300_000, db: str | None = None
    ) -> TxFn[HealthReport]:
        """Schema version, integrity check and the problems ``power-loop doctor`` reports:
        dead leases, runs left running, unanswered calls with no run going on, timer claims
        that expired, timers and delivered wake-ups waiting longer than ``overdue_ms``; each
        with its fix
        (``db`` names the store in a fix's command; default: the store's path)."""
        now = _sessions.now_ms() if now_ms is None else now_ms
        where = db or self.path
        pooled = bool(getattr(self, "transaction_pooler", False))  # its reads run in a transaction
        return lambda c: health_report(c, now=now, overdue_ms=overdue_ms, db=where, in_transaction=pooled)

    @store_op()
    def prune(self, *, dry_run: bool, older_than_ms: int | None = None) -> TxFn[PruneReport]:
        """Delete folded (compacted) message rows and ended ephemeral sub-agent sessions
        (older than ``older_than_ms``, epoch ms, when given); ``dry_run`` only counts them."""
        now = _sessions.now_ms()
        return lambda c: _io.prune(c, dry_run=dry_run, older_than_ms=older_than_ms, now=now)

    @store_op(tx=False)
    def export_session(self, session_id: str) -> TxFn[list[dict[str, Any]]]:
        """The session as JSON-ready records: ``{"type": "session", "format": 1, ...}``, then
        one ``{"type": "message", "seq", "message", "compacted", "run_id", "created_at"}``
        per row, then ``{"type": "compaction", ...}`` per summary."""
        now = _sessions.now_ms()
        return lambda c: _io.export_session(c, session_id, now=now)

    @store_op()
    def import_session(self, records: Iterable[Mapping[str, Any]], *, session_id: str) -> TxFn[int]:
        """Store exported records as the NEW session ``session_id`` (top-level, no runs);
        return the number of messages. All or nothing.

        Raises:
            ValueError: Invalid records (the message names the line) or the id exists.
        """
        rows = list(records)
        _io.check_records(rows)  # in the caller: bad input never reaches the database
        now = _sessions.now_ms()
        return lambda c: _io.import_session(c, rows, session_id=session_id, now=now)
