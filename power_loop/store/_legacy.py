"""Opening a session database written by power-loop 0.11: detection and in-place migration.

power-loop 0.11 kept ``PRAGMA user_version`` at 0 and used table names this store also uses
(``sessions``, ``messages``, ``timers`` ...) with other columns. :func:`is_011` recognises
such a file; :func:`migrate_011` converts it to the current schema in one transaction, after
writing a backup copy next to it with SQLite's online backup API.

What is carried over, and how (0.11 table → ours):

* ``sessions`` → ``sessions``: ids, times, metadata, per-session system prompt; kind
  ``root`` → ``main``, ``subagent`` kept with its parent, depth and lifecycle. The 0.11-only
  columns (``model``, ``config_json``, ``status``, ``spawn_tool_call_id``) → ``legacy011_sessions``.
* ``messages`` → ``messages`` (same seqs): every user, assistant, tool and system message as
  its dict view; ``compacted_out`` rows are flagged ``compacted``. The compaction summaries
  0.11 stored as ``system`` messages named ``compact_note`` become ``compactions`` rows.
* tool calls (``tool_calls_json``) → ``tool_calls``: answered calls ``done`` with their
  result's seq; the unanswered calls of the last turn stay unanswered (``pending``, or
  ``waiting_input`` with an open ``interactions`` row for a ``request_user_input`` pause).
* ``compactions`` → ``compactions`` (summary text from the note, ``through_seq`` = ``to_seq``).
* ``session_stats`` → ``session_stats``; ``usage_rounds`` → ``llm_calls``.
* ``timers`` → ``timers`` (ids kept; ``armed`` stays armed, an in-flight ``firing`` one is
  armed again, ``fired``/``cancelled`` kept as history).
* ``notes`` → ``notes`` (schema version 5).
* ``session_runtime_state`` and ``background_tasks`` (todo lists, background commands) are
  kept as they were in ``legacy011_session_runtime_state`` / ``legacy011_background_tasks``
  when they hold rows, and version 9 moves them into ``runtime_state`` / ``background_tasks``.

Rows of sessions that no longer exist (0.11 had no foreign keys) are dropped; the backup
keeps them.

The copy is written in the version-5 shape named above; the later migrations then run on it
in the same transaction (version 7 moves the stats and leases into ``sessions`` and keys
every table by the session's integer key, see ``_schema_v7.py``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from typing import Any

from ..errors import CorruptRecordError, SchemaVersionError
from ..messages import message_from_dict, message_json
from ._pragmas import rollback, schema_version

__all__ = ["BACKUP_SUFFIX", "is_011", "migrate_011", "refuse_foreign"]

log = logging.getLogger("power_loop.store")

BACKUP_SUFFIX = ".011-backup"

# Tables and columns that identify a 0.11 file (its SessionStore created them all together).
_SIGNATURE = {
    "sessions": {"session_id", "metadata_json", "spawn_depth", "config_json"},
    "messages": {"session_id", "seq", "role", "content", "tool_calls_json", "state"},
    "session_state": {"session_id", "next_seq", "pending_json"},
}
_OPTIONAL = (
    "compactions",
    "usage_rounds",
    "session_stats",
    "timers",
    "notes",
    "session_runtime_state",
    "background_tasks",
)
_KEPT_AS_IS = ("session_runtime_state", "background_tasks")
_OLD = "_pl011_"


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    return {str(r[0]) for r in rows}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in conn.execute(f'PRAGMA table_info("{table}")')}


def is_011(conn: sqlite3.Connection) -> bool:
    """True when the (version 0) database holds power-loop 0.11's tables."""
    tables = _tables(conn)
    return all(name in tables and cols <= _columns(conn, name) for name, cols in _SIGNATURE.items())


def refuse_foreign(conn: sqlite3.Connection, *, path: str) -> None:
    """Raise when a version-0 file already holds tables: it is neither a power_loop file nor a
    0.11 one, and adding the session tables to it would mix two applications' data.

    Raises:
        SchemaVersionError: The file has tables of its own.
    """

    conn.execute("BEGIN")  # one snapshot: a concurrent opener may be creating our schema
    try:
        version = schema_version(conn)
        tables = sorted(_tables(conn))
    finally:
        conn.execute("COMMIT")
    if version == 0 and tables:
        shown = ", ".join(tables[:6]) + (", ..." if len(tables) > 6 else "")
        raise SchemaVersionError(
            f"{path} is not a power_loop session database: it has no power_loop schema version and holds "
            f"other tables ({shown}), and it is not a power-loop 0.11 file either. Point db_path at a new "
            "file or at a power_loop database; the file was left unchanged"
        )


def _backup_path(db_file: str) -> str:
    # Never overwrite an earlier backup: it may be the only copy of an older original.
    candidate = db_file + BACKUP_SUFFIX
    n = 2
    while os.path.lexists(candidate):
        candidate = f"{db_file}{BACKUP_SUFFIX}-{n}"
        n += 1
    return candidate


def _write_backup(conn: sqlite3.Connection) -> str:
    """Copy the committed database next to it; return the copy's path.

    Called while ``conn`` holds the write lock and has written nothing, so a second reading
    connection sees exactly the state the migration starts from. (``Connection.backup`` from
    ``conn`` itself would wait forever on its own lock; a file copy could miss WAL content.)
    """
    db_file = str(conn.execute("PRAGMA database_list").fetchone()[2])
    target = _backup_path(db_file)
    try:
        with closing(sqlite3.connect(db_file)) as source, closing(sqlite3.connect(target)) as copy:
            source.backup(copy)
    except BaseException:
        _remove(target)
        raise
    return target


def _remove(db_file: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(db_file + suffix)
        except OSError:
            pass


COPY_VERSION = 5
"""The schema version the 0.11 rows are copied into."""


def migrate_011(
    conn: sqlite3.Connection,
    *,
    path: str,
    migrations: Sequence[Callable[[sqlite3.Connection], None]],
) -> bool:
    """Convert a 0.11 database to the current schema in one transaction; False when another
    opener did it first.

    The backup is written first (``<file>.011-backup``, or ``-2``, ``-3`` ... when that name is
    taken); any failure rolls everything back and leaves the file as it was.

    Raises:
        CorruptRecordError: A 0.11 row cannot be converted (the file is unchanged).
        sqlite3.Error: SQLite failed (the file is unchanged).
        OSError: The backup could not be written (the file is unchanged).
    """

    conn.execute("BEGIN IMMEDIATE")
    backup: str | None = None
    try:
        if schema_version(conn) != 0 or not is_011(conn):  # another opener migrated meanwhile
            conn.execute("ROLLBACK")
            return False
        backup = _write_backup(conn)
        present = [t for t in (*_SIGNATURE, *_OPTIONAL) if t in _tables(conn)]
        for table in present:
            conn.execute(f'ALTER TABLE "{table}" RENAME TO "{_OLD}{table}"')
        # The copier writes the version-5 shape; later migrations then run on the copied rows.
        for step in migrations[:COPY_VERSION]:
            step(conn)
        _Copier(conn, set(present), path).run()
        for table in present:
            # Kept rows wait under their legacy011_ name for the migration that reads them (9).
            if table in _KEPT_AS_IS and conn.execute(f'SELECT 1 FROM "{_OLD}{table}" LIMIT 1').fetchone():
                conn.execute(f'ALTER TABLE "{_OLD}{table}" RENAME TO "legacy011_{table}"')
            else:
                conn.execute(f'DROP TABLE "{_OLD}{table}"')
        for step in migrations[COPY_VERSION:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {len(migrations)}")
        conn.execute("COMMIT")
    except BaseException:
        rollback(conn)
        if backup is not None:
            # The original is unchanged, so this copy is redundant; a retry writes a fresh one.
            _remove(backup)
        raise
    log.warning("migrated power-loop 0.11 database %s in place; the original is kept at %s", path, backup)
    return True


def _loads(text: str | None, default: Any) -> Any:
    return default if text is None or text == "" else json.loads(text)


class _Copier:
    """Moves the renamed 0.11 tables' rows into the new tables (one transaction, caller's)."""

    def __init__(self, conn: sqlite3.Connection, present: set[str], path: str) -> None:
        self.conn = conn
        self.present = present
        self.path = path
        self.sessions: set[str] = set()

    def has(self, table: str) -> bool:
        return table in self.present

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql.replace("{old}", _OLD), params)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def corrupt(self, what: str, session_id: str, exc: Exception, seq: int | None = None) -> CorruptRecordError:
        return CorruptRecordError(
            f"{self.path}: {what} of session {session_id!r} in this power-loop 0.11 file cannot be migrated "
            f"({type(exc).__name__}: {exc}). Nothing was changed. Repair or delete that row with the sqlite3 "
            "tool (or open the file with power-loop 0.11 and close that session), then open it again",
            session_id=session_id,
            seq=seq,
        )

    def run(self) -> None:
        self.copy_sessions()
        for session_id in sorted(self.sessions):
            self.copy_history(session_id)
        self.copy_stats()
        self.copy_usage()
        self.copy_timers()
        self.copy_notes()

    # ------------------------------------------------------------------ sessions

    def copy_sessions(self) -> None:
        rows = self.rows("SELECT * FROM {old}sessions ORDER BY created_at, session_id")
        ids = {r["session_id"] for r in rows}
        for r in rows:
            sid = r["session_id"]
            try:
                metadata = _loads(r["metadata_json"], {})
                if not isinstance(metadata, dict):
                    raise ValueError("metadata is not a JSON object")
            except ValueError as exc:
                raise self.corrupt("the metadata", sid, exc) from exc
            parent = r["parent_session_id"] if r["parent_session_id"] in ids else None
            sub = r["kind"] == "subagent"
            # Parents first would need a topological order; the links are set afterwards instead.
            self.conn.execute(
                "INSERT INTO sessions (session_id, created_at, updated_at, metadata, system_prompt, kind, lifecycle, "
                "depth, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (
                    sid,
                    r["created_at"],
                    r["updated_at"],
                    json.dumps(metadata),
                    r["system_prompt"],
                    "subagent" if sub else "main",
                    r["lifecycle"] if sub else None,
                    int(r["spawn_depth"] or 0),
                ),
            )
            if parent is not None:
                r["_parent"] = parent
            self.sessions.add(sid)
        for r in rows:
            if "_parent" in r:
                self.conn.execute(
                    "UPDATE sessions SET parent_session_id = ? WHERE session_id = ?", (r["_parent"], r["session_id"])
                )
        self.conn.execute(
            "CREATE TABLE legacy011_sessions (session_id TEXT PRIMARY KEY REFERENCES sessions(session_id) "
            "ON DELETE CASCADE, model TEXT, config_json TEXT, status TEXT, spawn_tool_call_id TEXT)"
        )
        self.conn.executemany(
            "INSERT INTO legacy011_sessions VALUES (?, ?, ?, ?, ?)",
            [(r["session_id"], r["model"], r["config_json"], r["status"], r["spawn_tool_call_id"]) for r in rows],
        )

    # ------------------------------------------------------------------ history

    def copy_history(self, sid: str) -> None:
        rows = self.rows("SELECT * FROM {old}messages WHERE session_id = ? ORDER BY seq", (sid,))
        compactions = (
            self.rows("SELECT * FROM {old}compactions WHERE session_id = ? ORDER BY compact_seq", (sid,))
            if self.has("compactions")
            else []
        )
        by_seq = {r["seq"]: r for r in rows}
        note_seqs = {c["note_seq"] for c in compactions}
        notes = {
            r["seq"] for r in rows if r["role"] == "system" and (r["name"] == "compact_note" or r["seq"] in note_seqs)
        }
        kept = [r for r in rows if r["seq"] not in notes]
        # The load base: the latest summary, never hiding a message 0.11 still showed.
        through = 0
        summaries: list[tuple[dict[str, Any], str]] = []
        for c in compactions:
            note = by_seq.get(c["note_seq"])
            if note is not None and note["content"]:
                summaries.append((c, str(note["content"])))
        if summaries:
            through = int(summaries[-1][0]["to_seq"])
            active = [r["seq"] for r in kept if r["state"] != "compacted_out"]
            if active:
                through = min(through, min(active) - 1)
        now_rows: list[tuple[Any, ...]] = []
        calls: list[tuple[int, int, Any]] = []  # (assistant seq, position, ToolCall)
        results: dict[str, list[int]] = {}
        for r in kept:
            seq = int(r["seq"])
            data: dict[str, Any] = {"role": r["role"], "content": r["content"] or ""}
            if r["name"]:
                data["name"] = r["name"]
            try:
                if r["role"] == "assistant":
                    raw = _loads(r["tool_calls_json"], [])
                    if raw:
                        data["tool_calls"] = raw
                elif r["role"] == "tool":
                    data["tool_call_id"] = r["tool_call_id"]
                message = message_from_dict(data)
                body = message_json(message)
            except (ValueError, TypeError, AttributeError) as exc:
                raise self.corrupt(f"message seq {seq}", sid, exc, seq) from exc
            now_rows.append((sid, seq, message.role, body, r["created_at"], int(seq <= through)))
            for position, call in enumerate(getattr(message, "tool_calls", ())):
                calls.append((seq, position, call))
            if r["role"] == "tool":
                results.setdefault(str(r["tool_call_id"]), []).append(seq)
        self.conn.executemany(
            "INSERT INTO messages (session_id, seq, role, body, created_at, compacted) VALUES (?, ?, ?, ?, ?, ?)",
            now_rows,
        )
        for c, summary in summaries:
            self.conn.execute(
                "INSERT INTO compactions (session_id, through_seq, summary, before_tokens, after_tokens, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    sid,
                    through if c is summaries[-1][0] else int(c["to_seq"]),
                    summary,
                    int(c["before_tokens"] or 0),
                    int(c["after_tokens"] or 0),
                    c["created_at"],
                ),
            )
        self.copy_calls(sid, kept, calls, results)

    def copy_calls(
        self, sid: str, kept: list[dict[str, Any]], calls: list[tuple[int, int, Any]], results: dict[str, list[int]]
    ) -> None:
        # Only the last model turn, with nothing but tool results after it, can be waiting: that
        # is 0.11's pending state. Calls older turns left unanswered (0.11 defects) get no row.
        last_turn = None
        for r in reversed(kept):
            if r["role"] == "tool":
                continue
            if r["role"] == "assistant" and r["tool_calls_json"]:
                last_turn = int(r["seq"])
            break
        interactions = self.pending_interactions(sid)
        assistant_seqs = sorted({seq for seq, _, _ in calls})
        seen: set[tuple[int, str]] = set()
        for seq, position, call in calls:
            if (seq, call.id) in seen:
                continue
            seen.add((seq, call.id))
            following = [s for s in assistant_seqs if s > seq]
            limit = following[0] if following else None
            answered = [s for s in results.get(call.id, ()) if s > seq and (limit is None or s < limit)]
            if answered:
                status, result_seq = "done", answered[0]
            elif seq == last_turn:
                status, result_seq = ("waiting_input" if call.id in interactions else "pending"), None
            else:
                continue
            self.conn.execute(
                "INSERT INTO tool_calls (session_id, tool_call_id, assistant_seq, position, name, arguments, status, "
                "result_seq, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, call.id, seq, position, call.name, call.arguments, status, result_seq, kept[-1]["created_at"]),
            )
            if status == "waiting_input":
                body = interactions[call.id]
                self.conn.execute(
                    "INSERT INTO interactions (interaction_id, session_id, tool_call_id, body, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (str(body["interaction_id"]), sid, call.id, json.dumps(body), kept[-1]["created_at"]),
                )

    def pending_interactions(self, sid: str) -> dict[str, dict[str, Any]]:
        row = self.conn.execute(f"SELECT pending_json FROM {_OLD}session_state WHERE session_id = ?", (sid,)).fetchone()
        try:
            pending = _loads(row[0], None) if row else None
            items = (pending or {}).get("pending_interactions") or []
            return {str(i["tool_call_id"]): dict(i) for i in items if i.get("interaction_id")}
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise self.corrupt("the pending state", sid, exc) from exc

    # ------------------------------------------------------------------ the rest

    def copy_stats(self) -> None:
        if not self.has("session_stats"):
            return
        rows = self.rows("SELECT * FROM {old}session_stats ORDER BY COALESCE(last_send_at, 0), updated_at, session_id")
        activity = 0
        for r in rows:
            if r["session_id"] not in self.sessions:
                continue
            activity += 1
            self.conn.execute(
                "INSERT INTO session_stats (session_id, sends, rounds, llm_calls, tool_calls, prompt_tokens, "
                "completion_tokens, total_tokens, first_send_at, last_send_at, updated_at, activity) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r["session_id"],
                    r["sends"],
                    r["rounds"],
                    r["llm_calls"],
                    r["tool_calls"],
                    r["prompt_tokens"],
                    r["completion_tokens"],
                    r["total_tokens"],
                    r["first_send_at"],
                    r["last_send_at"],
                    r["updated_at"],
                    activity,
                ),
            )

    def copy_usage(self) -> None:
        if not self.has("usage_rounds"):
            return
        for r in self.rows("SELECT * FROM {old}usage_rounds ORDER BY created_at, session_id, round_index"):
            if r["session_id"] in self.sessions:
                self.conn.execute(
                    "INSERT INTO llm_calls (session_id, round_index, purpose, model, prompt_tokens, completion_tokens, "
                    "total_tokens, created_at) VALUES (?, ?, 'round', ?, ?, ?, ?, ?)",
                    (
                        r["session_id"],
                        r["round_index"],
                        r["model"],
                        int(r["prompt_tokens"] or 0),
                        int(r["completion_tokens"] or 0),
                        int(r["total_tokens"] or 0),
                        r["created_at"],
                    ),
                )

    def copy_timers(self) -> None:
        if not self.has("timers"):
            return
        for r in self.rows("SELECT * FROM {old}timers ORDER BY session_id, timer_id"):
            if r["session_id"] not in self.sessions:
                continue
            old = r["status"]
            # 'firing' was in flight when 0.11 stopped: deliver it again (at least once).
            status = {"armed": "armed", "firing": "armed", "fired": "fired"}.get(old, "cancelled")
            fired = status == "fired"
            self.conn.execute(
                "INSERT INTO timers (session_id, timer_id, due_at, note, status, fire_count, last_outcome, created_at, "
                "updated_at, fired_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    r["session_id"],
                    r["timer_id"],
                    r["due_at"],
                    r["note"],
                    status,
                    int(fired),
                    None if status != "cancelled" else ("cancelled" if old == "cancelled" else f"0.11 status {old}"),
                    r["created_at"],
                    r["updated_at"],
                    r["updated_at"] if fired else None,
                ),
            )

    def copy_notes(self) -> None:
        if not self.has("notes"):
            return
        for r in self.rows("SELECT * FROM {old}notes ORDER BY session_id, note_id"):
            if r["session_id"] in self.sessions:
                self.conn.execute(
                    "INSERT INTO notes (session_id, note_id, content, pinned, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        r["session_id"],
                        r["note_id"],
                        r["content"],
                        int(bool(r["pinned"])),
                        r["created_at"],
                        r["updated_at"],
                    ),
                )
