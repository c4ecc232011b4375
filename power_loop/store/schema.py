"""SQLite schema and numbered migrations.

The schema version lives in ``PRAGMA user_version``. Migration ``n`` moves a database from
version ``n - 1`` to ``n`` inside one transaction. Opening a file whose version is newer than
the newest migration known here fails with :class:`~power_loop.errors.SchemaVersionError`
instead of guessing.

Tables as of version 8 (all times are epoch milliseconds). Inside the store a session is
its integer key ``sessions.id``; its text ``session_id`` is what the API speaks. Migrations
``_v1`` to ``_v6`` are kept as they were written (they run on older files and on new ones,
then version 7 rebuilds the tables, see ``_schema_v7.py``).

``sessions``
    One row per session: the integer key ``id`` (``AUTOINCREMENT``: never reused after a
    delete), the unique text ``session_id``, metadata, per-session system prompt,
    parent/kind/depth/lifecycle for sub-agents, ``version`` (bumped by every write, so a
    cached history knows when it is stale), ``event_seq`` (high-water mark of event sequence
    numbers) and the counters ``last_seq``, ``last_timer_id``, ``last_run``: each new
    message, timer or run increments its counter in the same transaction, so allocation never
    depends on ``MAX(...) + 1`` under a database-wide write lock.
    The lease: ``lease_owner``, ``fence`` (fencing number), ``lease_expires_at`` and the
    holder process's identity (``holder_host``: host name, boot id and pid namespace;
    ``holder_pid``; ``holder_start``: process start time in clock ticks after boot), so a
    contender on the same machine can tell that the holder died.
    The stats, added to when a run ends: ``sends``, ``rounds``, ``llm_calls``,
    ``tool_calls``, token sums, ``first_send_at``, ``last_send_at``, ``stats_at`` (NULL
    before the first finished run) and ``activity`` (a store-wide ordering counter).
``messages``
    Append-only history keyed by ``(session, seq)``; ``body`` is the message's dict view as
    JSON (its role included); ``run`` is the number of the run that wrote it. ``compacted``
    marks rows folded into a compaction summary.
``tool_calls``
    The lifecycle of every tool call, keyed by ``(session, assistant_seq, tool_call_id)``:
    ``pending → running → done | failed``, or ``aborted``, ``cancelled``, ``skipped``,
    ``waiting_input``; ``result`` holds a finished call's output until it is appended to
    ``messages`` (``result_seq``). The call's name and arguments are read from the assistant
    message at ``assistant_seq``.
``runs``
    One row per run (``send``, ``resume``, ``submit_input``, ``wake``), keyed by
    ``(session, run)`` with the text ``run_id``: status, rounds, start and end.
``llm_calls``
    Usage of every model call, with its session and run number.
``inbox``
    Durable follow-ups (and timer wake-ups) waiting for the next round boundary.
``interactions``
    Open ``request_user_input`` questions, answered by ``submit_input``.
``compactions``
    Summaries of folded history. The latest one is the session's load base: loading reads it
    and the messages after its ``through_seq``, never the whole history.
``timers``
    Durable wake-ups: ``armed`` → ``claimed`` (owner + lease + ``claim_seq``, a number that
    grows with every claim so a stale claimant is refused) → ``fired`` or ``cancelled``;
    ``origin`` makes scheduling idempotent (a tool call's idempotency key);
    recurring timers go back to ``armed`` with their next due time.
``notes``
    Notes per session (``note_id``, ``content``, ``pinned``); filled by the migration of a
    power-loop 0.11 file (``_legacy.py``), read by the notes feature.
``legacy011_sessions``
    The 0.11-only session fields (model, config, status, spawn call) that the 0.11 store API
    (``_compat.py``) reads and writes.
``runtime_state`` and ``background_tasks`` (version 9)
    Per-session runtime state by key (JSON; the todo list) and background commands
    (``background_run``) with the identity of the process running them, so one whose process
    died is reported ``lost``; ``seen`` marks updates already shown to the model.
    ``sessions.runtime_rev`` counts their writes: a run of a session that never used them
    reads nothing more.
``sessions.paused_at`` and ``sessions.chain_wall_ms`` (version 10)
    When the session was paused (``loop.pause``; NULL when it is not), and the wall-clock its
    last run's earlier parts took, which a run continued by ``resume`` or ``submit_input``
    counts against ``max_wall_s_per_run``.
``budget_ledger`` and ``budget_holds`` (version 10)
    What each shared budget (``AgentLoopConfig.budgets``) spent per window, keyed by the
    budget's key and the window's start, and the holds of model calls in flight (see
    ``_budgets_sql.py``).
``approvals`` (version 10)
    Approval requests of tool calls, keyed by their unguessable ``token``: the call, its tool
    and arguments, ``status`` (``pending`` → ``approved`` | ``denied`` | ``expired`` |
    ``superseded`` | ``aborted``), the reviewer's ``note``, ``expires_at`` and ``decided_at``.
``events`` (version 10)
    The event log, filled when ``AgentLoopConfig.persist_events`` is on: one row per event
    keyed by ``(session, seq)`` with its name, time, round, stream, source, the publishing
    ``run_id`` and the payload as JSON.
``timers.cron``, ``timers.tz`` and ``timers.misfire`` (version 11)
    A calendar timer's schedule: a cron expression, the IANA zone it is read in, and what a
    firing after a downtime does with the missed occurrences (``once`` or ``skip``); NULL for
    the other timers. ``due_at`` holds the next occurrence as an absolute time and
    ``fired_at`` the last firing.
``subagent_tasks`` (version 8)
    One row per sub-agent started in the background, keyed by the child's session, with its
    parent: ``running`` until the child's result is in the parent's inbox (``delivered``,
    written in the transaction that ends the child's run), or ``stopped``.

History: version 1 created sessions, messages, tool_calls, runs, llm_calls, session_stats,
session_leases, inbox, interactions; 2 compactions; 3 timers; 4 the lease holder's identity;
5 notes; 6 the per-session counters; 7 the integer keys and the folded tables above; 8
subagent_tasks; 9 runtime_state and background_tasks (0.11's kept rows move in); 10 guards, approvals
and the event log; 11 calendar timers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from ..errors import SchemaVersionError
from . import _legacy
from ._pragmas import rollback, schema_version
from ._schema_v7 import migrate_v7

__all__ = ["LATEST_VERSION", "MIGRATIONS", "migrate", "rollback", "schema_version"]


def _run_script(conn: sqlite3.Connection, script: str) -> None:
    # Not executescript(): it commits first, which would split the migration's transaction.
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _v1(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE sessions (
            session_id        TEXT PRIMARY KEY,
            created_at        INTEGER NOT NULL,
            updated_at        INTEGER NOT NULL,
            metadata          TEXT NOT NULL DEFAULT '{}',
            system_prompt     TEXT,
            parent_session_id TEXT REFERENCES sessions(session_id) ON DELETE CASCADE,
            kind              TEXT NOT NULL DEFAULT 'main',
            lifecycle         TEXT,
            depth             INTEGER NOT NULL DEFAULT 0,
            version           INTEGER NOT NULL DEFAULT 0,
            event_seq         INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX sessions_parent ON sessions(parent_session_id) WHERE parent_session_id IS NOT NULL;

        CREATE TABLE messages (
            session_id  TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            seq         INTEGER NOT NULL,
            role        TEXT NOT NULL,
            body        TEXT NOT NULL,
            run_id      TEXT,
            created_at  INTEGER NOT NULL,
            compacted   INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (session_id, seq)
        ) WITHOUT ROWID;

        CREATE TABLE tool_calls (
            session_id    TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            tool_call_id  TEXT NOT NULL,
            assistant_seq INTEGER NOT NULL,
            position      INTEGER NOT NULL,
            name          TEXT NOT NULL,
            arguments     TEXT NOT NULL,
            status        TEXT NOT NULL DEFAULT 'pending',
            result        TEXT,
            is_error      INTEGER NOT NULL DEFAULT 0,
            result_seq    INTEGER,
            run_id        TEXT,
            updated_at    INTEGER NOT NULL,
            PRIMARY KEY (session_id, assistant_seq, tool_call_id)
        ) WITHOUT ROWID;
        CREATE INDEX tool_calls_open ON tool_calls(session_id, tool_call_id) WHERE result_seq IS NULL;

        CREATE TABLE runs (
            run_id      TEXT PRIMARY KEY,
            session_id  TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            kind        TEXT NOT NULL DEFAULT 'send',
            status      TEXT NOT NULL DEFAULT 'running',
            rounds      INTEGER NOT NULL DEFAULT 0,
            started_at  INTEGER NOT NULL,
            ended_at    INTEGER,
            error       TEXT
        );
        CREATE INDEX runs_session ON runs(session_id, started_at);

        CREATE TABLE llm_calls (
            id                INTEGER PRIMARY KEY,
            session_id        TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            run_id            TEXT,
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
        CREATE INDEX llm_calls_session ON llm_calls(session_id, id);

        CREATE TABLE session_stats (
            session_id        TEXT PRIMARY KEY REFERENCES sessions(session_id) ON DELETE CASCADE,
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
            updated_at        INTEGER NOT NULL,
            activity          INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX session_stats_recent ON session_stats(activity);

        CREATE TABLE session_leases (
            session_id  TEXT PRIMARY KEY REFERENCES sessions(session_id) ON DELETE CASCADE,
            owner       TEXT,
            fence       INTEGER NOT NULL DEFAULT 0,
            expires_at  INTEGER NOT NULL DEFAULT 0
        );

        CREATE TABLE inbox (
            id           INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id   TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            source       TEXT NOT NULL DEFAULT 'follow_up',
            body         TEXT NOT NULL,
            ref          TEXT,
            created_at   INTEGER NOT NULL,
            consumed_at  INTEGER,
            consumed_seq INTEGER
        );
        CREATE INDEX inbox_waiting ON inbox(session_id, id) WHERE consumed_at IS NULL;

        CREATE TABLE interactions (
            interaction_id TEXT PRIMARY KEY,
            session_id     TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            tool_call_id   TEXT NOT NULL,
            body           TEXT NOT NULL,
            status         TEXT NOT NULL DEFAULT 'open',
            created_at     INTEGER NOT NULL,
            answered_at    INTEGER
        );
        CREATE INDEX interactions_open ON interactions(session_id) WHERE status = 'open';
        """,
    )


def _v2(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE compactions (
            id            INTEGER PRIMARY KEY,
            session_id    TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            through_seq   INTEGER NOT NULL,
            summary       TEXT NOT NULL,
            before_tokens INTEGER NOT NULL DEFAULT 0,
            after_tokens  INTEGER NOT NULL DEFAULT 0,
            run_id        TEXT,
            created_at    INTEGER NOT NULL
        );
        CREATE INDEX compactions_latest ON compactions(session_id, id);
        CREATE INDEX messages_folded ON messages(session_id, compacted, created_at) WHERE compacted = 1;
        """,
    )


def _v3(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        CREATE TABLE timers (
            session_id       TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
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
            PRIMARY KEY (session_id, timer_id)
        );
        CREATE INDEX timers_due ON timers(status, due_at);
        CREATE INDEX timers_claims ON timers(owner) WHERE status = 'claimed';
        CREATE UNIQUE INDEX timers_origin ON timers(session_id, origin) WHERE origin IS NOT NULL;
        """,
    )


def _v4(conn: sqlite3.Connection) -> None:
    # Leases taken by older versions keep NULLs here: they expire as before.
    _run_script(
        conn,
        """
        ALTER TABLE session_leases ADD COLUMN holder_host TEXT;
        ALTER TABLE session_leases ADD COLUMN holder_pid INTEGER;
        ALTER TABLE session_leases ADD COLUMN holder_start INTEGER
        """,
    )


def _v5(conn: sqlite3.Connection) -> None:
    # The shape of power-loop 0.11's notes, so a migrated 0.11 file keeps them as they were.
    _run_script(
        conn,
        """
        CREATE TABLE notes (
            session_id  TEXT NOT NULL REFERENCES sessions(session_id) ON DELETE CASCADE,
            note_id     INTEGER NOT NULL,
            content     TEXT NOT NULL,
            pinned      INTEGER NOT NULL DEFAULT 0,
            created_at  INTEGER NOT NULL,
            updated_at  INTEGER NOT NULL,
            PRIMARY KEY (session_id, note_id)
        )
        """,
    )


def _v6(conn: sqlite3.Connection) -> None:
    _run_script(
        conn,
        """
        ALTER TABLE sessions ADD COLUMN last_seq INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE sessions ADD COLUMN last_timer_id INTEGER NOT NULL DEFAULT 0;
        UPDATE sessions SET
            last_seq = COALESCE((SELECT MAX(seq) FROM messages m WHERE m.session_id = sessions.session_id), 0),
            last_timer_id = COALESCE((SELECT MAX(timer_id) FROM timers t WHERE t.session_id = sessions.session_id), 0)
        """,
    )


def _v7(conn: sqlite3.Connection) -> None:
    migrate_v7(conn)


def _v8(conn: sqlite3.Connection) -> None:
    # Background sub-agents: one row per child started in the background, until its result is
    # in its parent's inbox.
    _run_script(
        conn,
        """
        CREATE TABLE subagent_tasks (
            session      INTEGER PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
            parent       INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            status       TEXT NOT NULL DEFAULT 'running',
            created_at   INTEGER NOT NULL,
            ended_at     INTEGER
        );
        CREATE INDEX subagent_tasks_parent ON subagent_tasks(parent)
        """,
    )


def _v9(conn: sqlite3.Connection) -> None:
    # Runtime state (the todo list) and background commands, per session; the rows a 0.11
    # conversion kept aside (legacy011_*) move in. A 0.11 command still "running" ran in a
    # 0.11 process, which cannot be running it on this file any more: it is lost.
    _run_script(
        conn,
        """
        CREATE TABLE runtime_state (
            session      INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            key          TEXT NOT NULL,
            value        TEXT,
            updated_at   INTEGER NOT NULL,
            PRIMARY KEY (session, key)
        ) WITHOUT ROWID;
        CREATE TABLE background_tasks (
            session      INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            task_id      TEXT NOT NULL,
            command      TEXT NOT NULL,
            status       TEXT NOT NULL,
            return_code  INTEGER,
            output_tail  TEXT,
            output_path  TEXT,
            seen         INTEGER NOT NULL DEFAULT 0,
            holder_host  TEXT,
            holder_pid   INTEGER,
            holder_start INTEGER,
            deadline_at  INTEGER,
            child_pid    INTEGER,
            child_start  INTEGER,
            created_at   INTEGER NOT NULL,
            updated_at   INTEGER NOT NULL,
            PRIMARY KEY (session, task_id)
        ) WITHOUT ROWID;
        ALTER TABLE sessions ADD COLUMN runtime_rev INTEGER NOT NULL DEFAULT 0
        """,
    )
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "legacy011_session_runtime_state" in tables:
        conn.execute(
            "INSERT INTO runtime_state (session, key, value, updated_at) "
            "SELECT s.id, r.key, r.value_json, r.updated_at FROM legacy011_session_runtime_state r "
            "JOIN sessions s ON s.session_id = r.session_id"
        )
        conn.execute("DROP TABLE legacy011_session_runtime_state")
    if "legacy011_background_tasks" in tables:
        conn.execute(
            "INSERT INTO background_tasks (session, task_id, command, status, return_code, output_tail, "
            "output_path, seen, created_at, updated_at) "
            "SELECT s.id, b.task_id, b.command, CASE WHEN b.status = 'running' THEN 'lost' ELSE b.status END, "
            "b.return_code, CASE WHEN b.status = 'running' THEN COALESCE(b.output_tail, '') || "
            "'\n[lost: the process running it ended before it finished; its outcome is unknown]' "
            "ELSE b.output_tail END, "
            "b.output_path, b.status <> 'running' AND b.last_seen_at >= b.updated_at, "
            "b.created_at, b.updated_at FROM legacy011_background_tasks b "
            "JOIN sessions s ON s.session_id = b.session_id"
        )
        conn.execute("DROP TABLE legacy011_background_tasks")
    conn.execute(
        "UPDATE sessions SET runtime_rev = 1 WHERE id IN (SELECT session FROM runtime_state) "
        "OR id IN (SELECT session FROM background_tasks)"
    )


def _v10(conn: sqlite3.Connection) -> None:
    # Guards: a durable pause (loop.pause / loop.resume), the wall-clock a run continued by
    # resume / submit_input carries (max_wall_s_per_run), the shared budgets' ledger and
    # holds (AgentLoopConfig.budgets), and approval requests of tool calls, keyed by their
    # token (written with the end of a run that pauses for approval, decided once by a
    # conditional UPDATE on status), and the event log (AgentLoopConfig.persist_events):
    # a session's events by seq, deleted with the session, indexed by run.
    _run_script(
        conn,
        """
        ALTER TABLE sessions ADD COLUMN paused_at INTEGER;
        ALTER TABLE sessions ADD COLUMN chain_wall_ms INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE budget_ledger (
            key          TEXT NOT NULL,
            window_start INTEGER NOT NULL,
            tokens       INTEGER NOT NULL DEFAULT 0,
            cost_nano    INTEGER NOT NULL DEFAULT 0,
            updated_at   INTEGER NOT NULL,
            PRIMARY KEY (key, window_start)
        ) WITHOUT ROWID;
        CREATE TABLE budget_holds (
            id           TEXT PRIMARY KEY,
            key          TEXT NOT NULL,
            window_start INTEGER NOT NULL,
            tokens       INTEGER NOT NULL,
            cost_nano    INTEGER NOT NULL,
            expires_at   INTEGER NOT NULL
        );
        CREATE INDEX budget_holds_window ON budget_holds(key, window_start);
        CREATE TABLE approvals (
            token        TEXT PRIMARY KEY,
            session      INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            tool_call_id TEXT NOT NULL,
            tool_name    TEXT NOT NULL,
            arguments    TEXT NOT NULL DEFAULT '{}',
            status       TEXT NOT NULL DEFAULT 'pending',
            reason       TEXT,
            note         TEXT,
            created_at   INTEGER NOT NULL,
            expires_at   INTEGER NOT NULL,
            decided_at   INTEGER
        );
        CREATE INDEX approvals_call ON approvals(session, tool_call_id);
        CREATE INDEX approvals_undecided ON approvals(created_at) WHERE status = 'pending';
        CREATE TABLE events (
            session      INTEGER NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            seq          INTEGER NOT NULL,
            type         TEXT NOT NULL,
            ts           REAL NOT NULL,
            round_index  INTEGER,
            stream_id    TEXT,
            source       TEXT,
            run_id       TEXT,
            payload      TEXT NOT NULL,
            PRIMARY KEY (session, seq)
        ) WITHOUT ROWID;
        CREATE INDEX events_run ON events(session, run_id) WHERE run_id IS NOT NULL
        """,
    )


def _v11(conn: sqlite3.Connection) -> None:
    # Calendar timers: the schedule (a cron expression and its IANA zone) and the misfire
    # rule, kept beside the next occurrence (due_at) that runners compare. In place: adding
    # nullable columns rewrites no row.
    _run_script(
        conn,
        """
        ALTER TABLE timers ADD COLUMN cron TEXT;
        ALTER TABLE timers ADD COLUMN tz TEXT;
        ALTER TABLE timers ADD COLUMN misfire TEXT
        """,
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _v1,
    _v2,
    _v3,
    _v4,
    _v5,
    _v6,
    _v7,
    _v8,
    _v9,
    _v10,
    _v11,
)
LATEST_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, *, path: str) -> int:
    """Bring ``conn``'s database to :data:`LATEST_VERSION`; return the version found.

    The connection must be in autocommit mode (``isolation_level=None``); each migration runs
    in its own ``BEGIN IMMEDIATE`` transaction, so concurrent openers serialize and a migration
    either fully applies or not at all.

    A file written by power-loop 0.11 (version 0, its own tables) is migrated in place in one
    transaction after a backup copy is written next to it (see ``_legacy.py``); any other
    version-0 file that already holds tables is refused.

    Raises:
        SchemaVersionError: The file was written by a newer power_loop, or by something else.
        CorruptRecordError: A 0.11 row cannot be migrated (the file is left unchanged).
    """
    found = schema_version(conn)
    if found > LATEST_VERSION:
        raise SchemaVersionError(
            f"{path} has schema version {found}, but this power_loop only knows up to "
            f"{LATEST_VERSION}; upgrade power_loop (pip install -U power-loop) or use another file"
        )
    if found == 0:
        if _legacy.is_011(conn):
            if _legacy.migrate_011(conn, path=path, migrations=MIGRATIONS):
                return found
        else:
            _legacy.refuse_foreign(conn, path=path)
    for version in range(found + 1, LATEST_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if schema_version(conn) >= version:  # another process migrated meanwhile
                conn.execute("ROLLBACK")
                continue
            MIGRATIONS[version - 1](conn)
            conn.execute(f"PRAGMA user_version = {version}")
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise
    return found
