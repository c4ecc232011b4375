"""Schema version 7: integer keys inside the store, no duplicated fields, only the indexes a
query uses; and the in-place migration from version 6.

What changes (version 6 → 7):

* ``sessions`` gets an integer key ``id`` (``AUTOINCREMENT``: a deleted session's key is
  never handed out again); ``session_id`` stays the text id the API speaks, unique. Every
  other table references ``sessions(id)``.
* ``session_leases`` and ``session_stats`` (one row per session each, plus a text key index
  each) are folded into ``sessions`` as columns: ``lease_owner``, ``fence``,
  ``lease_expires_at``, ``holder_*``; ``sends`` ... ``activity``, with ``stats_at`` the time
  the stats last changed (NULL: no finished run yet).
* Runs are numbered per session (``runs.run``, from the ``sessions.last_run`` counter);
  ``runs`` is keyed ``(session, run)`` and keeps the text ``run_id`` once. Messages, usage
  rows and compactions reference the run by that number.
* ``messages.role`` is gone (the JSON body holds it); ``tool_calls`` no longer copies the
  call's name, arguments and run (the assistant message at ``assistant_seq`` holds them).
* ``interactions`` and ``notes`` are keyed by ``(session, ...)`` without a rowid; the timer
  claims index is gone (claimed timers are found through ``timers_due``).
* ``legacy011_sessions`` (the 0.11-only session fields) is created here for every file,
  instead of on first use.

The migration runs inside the caller's transaction (the numbered-migration transaction, or
the 0.11 conversion's): each old table is renamed, the new one created and filled, the old one
dropped. Foreign keys are checked at commit (``PRAGMA defer_foreign_keys``, since
``PRAGMA foreign_keys`` cannot change inside a transaction), old child tables are dropped
before their parents, and ``PRAGMA foreign_key_check`` must come back empty.
"""

from __future__ import annotations

import sqlite3

from ..errors import StoreError

__all__ = ["CREATE_V7", "migrate_v7"]

CREATE_V7 = """
CREATE TABLE sessions (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id        TEXT NOT NULL UNIQUE,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    metadata          TEXT NOT NULL DEFAULT '{}',
    system_prompt     TEXT,
    parent_session_id TEXT REFERENCES sessions(session_id) ON DELETE CASCADE,
    kind              TEXT NOT NULL DEFAULT 'main',
    lifecycle         TEXT,
    depth             INTEGER NOT NULL DEFAULT 0,
    version           INTEGER NOT NULL DEFAULT 0,
    event_seq         INTEGER NOT NULL DEFAULT 0,
    last_seq          INTEGER NOT NULL DEFAULT 0,
    last_timer_id     INTEGER NOT NULL DEFAULT 0,
    last_run          INTEGER NOT NULL DEFAULT 0,
    lease_owner       TEXT,
    fence             INTEGER NOT NULL DEFAULT 0,
    lease_expires_at  INTEGER NOT NULL DEFAULT 0,
    holder_host       TEXT,
    holder_pid        INTEGER,
    holder_start      INTEGER,
    sends             INTEGER NOT NULL DEFAULT 0,
    rounds            INTEGER NOT NULL DEFAULT 0,
    llm_calls         INTEGER NOT NULL DEFAULT 0,
    tool_calls        INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    total_tokens      INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens  INTEGER NOT NULL DEFAULT 0,
    first_send_at     INTEGER,
    last_send_at      INTEGER,
    stats_at          INTEGER,
    activity          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sessions_parent ON sessions(parent_session_id) WHERE parent_session_id IS NOT NULL;
CREATE INDEX sessions_activity ON sessions(activity);

CREATE TABLE messages (
    session    INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    body       TEXT NOT NULL,
    run        INTEGER,
    created_at INTEGER NOT NULL,
    compacted  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (session, seq)
) WITHOUT ROWID;
CREATE INDEX messages_folded ON messages(session, seq) WHERE compacted = 1;

CREATE TABLE tool_calls (
    session       INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    assistant_seq INTEGER NOT NULL,
    tool_call_id  TEXT NOT NULL,
    position      INTEGER NOT NULL,
    status        TEXT NOT NULL DEFAULT 'pending',
    result        TEXT,
    is_error      INTEGER NOT NULL DEFAULT 0,
    result_seq    INTEGER,
    updated_at    INTEGER NOT NULL,
    PRIMARY KEY (session, assistant_seq, tool_call_id)
) WITHOUT ROWID;
CREATE INDEX tool_calls_open ON tool_calls(session, tool_call_id) WHERE result_seq IS NULL;

CREATE TABLE runs (
    session    INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    run        INTEGER NOT NULL,
    run_id     TEXT NOT NULL,
    kind       TEXT NOT NULL DEFAULT 'send',
    status     TEXT NOT NULL DEFAULT 'running',
    rounds     INTEGER NOT NULL DEFAULT 0,
    started_at INTEGER NOT NULL,
    ended_at   INTEGER,
    error      TEXT,
    PRIMARY KEY (session, run)
) WITHOUT ROWID;

CREATE TABLE llm_calls (
    id                INTEGER PRIMARY KEY,
    session           INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    run               INTEGER,
    round_index       INTEGER NOT NULL,
    purpose           TEXT NOT NULL DEFAULT 'round',
    model             TEXT,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cache_read_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens  INTEGER NOT NULL DEFAULT 0,
    total_tokens      INTEGER NOT NULL DEFAULT 0,
    duration_ms       INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL
);
CREATE INDEX llm_calls_session ON llm_calls(session);

CREATE TABLE inbox (
    id           INTEGER PRIMARY KEY,
    session      INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    source       TEXT NOT NULL DEFAULT 'follow_up',
    body         TEXT NOT NULL,
    ref          TEXT,
    created_at   INTEGER NOT NULL,
    consumed_at  INTEGER,
    consumed_seq INTEGER
);
CREATE INDEX inbox_waiting ON inbox(session, id) WHERE consumed_at IS NULL;

CREATE TABLE interactions (
    session        INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    interaction_id TEXT NOT NULL,
    tool_call_id   TEXT NOT NULL,
    body           TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open',
    created_at     INTEGER NOT NULL,
    answered_at    INTEGER,
    PRIMARY KEY (session, interaction_id)
) WITHOUT ROWID;

CREATE TABLE compactions (
    id            INTEGER PRIMARY KEY,
    session       INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    through_seq   INTEGER NOT NULL,
    summary       TEXT NOT NULL,
    before_tokens INTEGER NOT NULL DEFAULT 0,
    after_tokens  INTEGER NOT NULL DEFAULT 0,
    run           INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX compactions_latest ON compactions(session);

CREATE TABLE timers (
    session          INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    timer_id         INTEGER NOT NULL,
    due_at           INTEGER NOT NULL,
    note             TEXT NOT NULL,
    status           TEXT NOT NULL DEFAULT 'armed',
    owner            TEXT,
    lease_expires_at INTEGER NOT NULL DEFAULT 0,
    every_ms         INTEGER,
    remaining        INTEGER,
    until_at         INTEGER,
    fire_count       INTEGER NOT NULL DEFAULT 0,
    last_outcome     TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    fired_at         INTEGER,
    claim_seq        INTEGER NOT NULL DEFAULT 0,
    origin           TEXT,
    PRIMARY KEY (session, timer_id)
) WITHOUT ROWID;
CREATE INDEX timers_due ON timers(status, due_at);
CREATE UNIQUE INDEX timers_origin ON timers(session, origin) WHERE origin IS NOT NULL;

CREATE TABLE notes (
    session    INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    note_id    INTEGER NOT NULL,
    content    TEXT NOT NULL,
    pinned     INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (session, note_id)
) WITHOUT ROWID;

CREATE TABLE legacy011_sessions (
    session            INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
    model              TEXT,
    config_json        TEXT,
    status             TEXT,
    spawn_tool_call_id TEXT
)
"""

# Version 6's tables, children before parents (the order they are dropped in).
_V6_TABLES = (
    "legacy011_sessions",
    "notes",
    "timers",
    "compactions",
    "interactions",
    "inbox",
    "session_leases",
    "session_stats",
    "llm_calls",
    "runs",
    "tool_calls",
    "messages",
    "sessions",
)
_OLD = "_v6_"

# Rows copied from the renamed version-6 tables ({o} is the prefix). Run numbers are given
# per session in start order; ``_v7_runs`` maps a text run id to (session key, run number).
_COPY = (
    # The id order follows creation, so keys grow with age as they will for new sessions.
    "INSERT INTO sessions (session_id, created_at, updated_at, metadata, system_prompt, parent_session_id, kind, "
    "lifecycle, depth, version, event_seq, last_seq, last_timer_id, lease_owner, fence, lease_expires_at, "
    "holder_host, holder_pid, holder_start, sends, rounds, llm_calls, tool_calls, prompt_tokens, completion_tokens, "
    "total_tokens, cache_read_tokens, reasoning_tokens, first_send_at, last_send_at, stats_at, activity) "
    "SELECT s.session_id, s.created_at, s.updated_at, s.metadata, s.system_prompt, s.parent_session_id, s.kind, "
    "s.lifecycle, s.depth, s.version, s.event_seq, s.last_seq, s.last_timer_id, l.owner, COALESCE(l.fence, 0), "
    "COALESCE(l.expires_at, 0), l.holder_host, l.holder_pid, l.holder_start, COALESCE(t.sends, 0), "
    "COALESCE(t.rounds, 0), COALESCE(t.llm_calls, 0), COALESCE(t.tool_calls, 0), COALESCE(t.prompt_tokens, 0), "
    "COALESCE(t.completion_tokens, 0), COALESCE(t.total_tokens, 0), COALESCE(t.cache_read_tokens, 0), "
    "COALESCE(t.reasoning_tokens, 0), t.first_send_at, t.last_send_at, t.updated_at, COALESCE(t.activity, 0) "
    "FROM {o}sessions s LEFT JOIN {o}session_leases l ON l.session_id = s.session_id "
    "LEFT JOIN {o}session_stats t ON t.session_id = s.session_id ORDER BY s.created_at, s.rowid",
    "CREATE TEMP TABLE _v7_runs (run_id TEXT PRIMARY KEY, session INTEGER NOT NULL, run INTEGER NOT NULL)",
    "INSERT INTO _v7_runs (run_id, session, run) SELECT r.run_id, s.id, "
    "ROW_NUMBER() OVER (PARTITION BY r.session_id ORDER BY r.started_at, r.rowid) "
    "FROM {o}runs r JOIN sessions s ON s.session_id = r.session_id",
    "UPDATE sessions SET last_run = COALESCE((SELECT MAX(run) FROM _v7_runs m WHERE m.session = sessions.id), 0)",
    "INSERT INTO runs (session, run, run_id, kind, status, rounds, started_at, ended_at, error) "
    "SELECT m.session, m.run, r.run_id, r.kind, r.status, r.rounds, r.started_at, r.ended_at, r.error "
    "FROM {o}runs r JOIN _v7_runs m ON m.run_id = r.run_id",
    "INSERT INTO messages (session, seq, body, run, created_at, compacted) "
    "SELECT s.id, x.seq, x.body, m.run, x.created_at, x.compacted FROM {o}messages x "
    "JOIN sessions s ON s.session_id = x.session_id LEFT JOIN _v7_runs m ON m.run_id = x.run_id",
    "INSERT INTO tool_calls (session, assistant_seq, tool_call_id, position, status, result, is_error, result_seq, "
    "updated_at) SELECT s.id, x.assistant_seq, x.tool_call_id, x.position, x.status, x.result, x.is_error, "
    "x.result_seq, x.updated_at FROM {o}tool_calls x JOIN sessions s ON s.session_id = x.session_id",
    "INSERT INTO llm_calls (id, session, run, round_index, purpose, model, prompt_tokens, completion_tokens, "
    "cache_read_tokens, reasoning_tokens, total_tokens, duration_ms, created_at) "
    "SELECT x.id, s.id, m.run, x.round_index, x.purpose, x.model, x.prompt_tokens, x.completion_tokens, "
    "x.cache_read_tokens, x.reasoning_tokens, x.total_tokens, x.duration_ms, x.created_at FROM {o}llm_calls x "
    "JOIN sessions s ON s.session_id = x.session_id LEFT JOIN _v7_runs m ON m.run_id = x.run_id",
    "INSERT INTO inbox (id, session, source, body, ref, created_at, consumed_at, consumed_seq) "
    "SELECT x.id, s.id, x.source, x.body, x.ref, x.created_at, x.consumed_at, x.consumed_seq FROM {o}inbox x "
    "JOIN sessions s ON s.session_id = x.session_id",
    "INSERT INTO interactions (session, interaction_id, tool_call_id, body, status, created_at, answered_at) "
    "SELECT s.id, x.interaction_id, x.tool_call_id, x.body, x.status, x.created_at, x.answered_at "
    "FROM {o}interactions x JOIN sessions s ON s.session_id = x.session_id",
    "INSERT INTO compactions (id, session, through_seq, summary, before_tokens, after_tokens, run, created_at) "
    "SELECT x.id, s.id, x.through_seq, x.summary, x.before_tokens, x.after_tokens, m.run, x.created_at "
    "FROM {o}compactions x JOIN sessions s ON s.session_id = x.session_id LEFT JOIN _v7_runs m ON m.run_id = x.run_id",
    "INSERT INTO timers (session, timer_id, due_at, note, status, owner, lease_expires_at, every_ms, remaining, "
    "until_at, fire_count, last_outcome, created_at, updated_at, fired_at, claim_seq, origin) "
    "SELECT s.id, x.timer_id, x.due_at, x.note, x.status, x.owner, x.lease_expires_at, x.every_ms, x.remaining, "
    "x.until_at, x.fire_count, x.last_outcome, x.created_at, x.updated_at, x.fired_at, x.claim_seq, x.origin "
    "FROM {o}timers x JOIN sessions s ON s.session_id = x.session_id",
    "INSERT INTO notes (session, note_id, content, pinned, created_at, updated_at) "
    "SELECT s.id, x.note_id, x.content, x.pinned, x.created_at, x.updated_at FROM {o}notes x "
    "JOIN sessions s ON s.session_id = x.session_id",
)
_COPY_LEGACY = (
    "INSERT INTO legacy011_sessions (session, model, config_json, status, spawn_tool_call_id) "
    "SELECT s.id, x.model, x.config_json, x.status, x.spawn_tool_call_id FROM {o}legacy011_sessions x "
    "JOIN sessions s ON s.session_id = x.session_id"
)


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


def migrate_v7(conn: sqlite3.Connection) -> None:
    """Rebuild a version-6 database in the version-7 shape (inside the caller's transaction).

    Raises:
        StoreError: A row refers to a session that does not exist (nothing is changed: the
            caller rolls back).
    """
    conn.execute("PRAGMA defer_foreign_keys = ON")
    tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
    present = {str(r[0]) for r in tables}
    old = [t for t in _V6_TABLES if t in present]
    # Indexes keep their names through a rename; drop them so the new ones can take the names.
    for (index,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN "
        f"({','.join('?' * len(old))})",
        old,
    ).fetchall():
        conn.execute(f'DROP INDEX "{index}"')
    for table in old:
        conn.execute(f'ALTER TABLE "{table}" RENAME TO "{_OLD}{table}"')
    for statement in _statements(CREATE_V7):
        conn.execute(statement)
    for statement in _COPY:
        conn.execute(statement.format(o=_OLD))
    if "legacy011_sessions" in old:
        conn.execute(_COPY_LEGACY.format(o=_OLD))
    conn.execute("DROP TABLE temp._v7_runs")
    for table in old:  # children first: dropping a parent then finds no rows pointing at it
        conn.execute(f'DROP TABLE "{_OLD}{table}"')
    problems = conn.execute("PRAGMA foreign_key_check").fetchall()
    if problems:
        raise StoreError(
            f"migrating to schema version 7 found {len(problems)} rows whose session is gone "
            f"(first: table {problems[0][0]}); nothing was changed"
        )
