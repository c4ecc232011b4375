"""Schema version 7: a version-6 file (built here through the numbered migrations, with a row
in every table) is migrated in place with every row kept; integer session keys are never
reused; the file stays within its expected b-trees."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from power_loop.messages import AssistantMessage, ToolCall, UserMessage, message_json
from power_loop.store import SQLiteSessionStore
from power_loop.store.rows import Append, BeginRun, LeaseClaim
from power_loop.store.schema import LATEST_VERSION, MIGRATIONS

USER = message_json(UserMessage(content="hello"))
ASSISTANT = message_json(
    AssistantMessage(content="", tool_calls=(ToolCall(id="c1", name="lookup", arguments='{"q": 1}'),))
)
RESULT = json.dumps({"role": "tool", "tool_call_id": "c0", "name": "lookup", "content": "42"})
OPEN = message_json(
    AssistantMessage(content="", tool_calls=(ToolCall(id="c2", name="ask", arguments='{"question": "?"}'),))
)

# One row (at least) in every version-6 table; `legacy011_sessions` as the 0.11 store API
# created it on first use.
V6_ROWS = [
    "INSERT INTO sessions (session_id, created_at, updated_at, metadata, system_prompt, version, event_seq, "
    "last_seq, last_timer_id) VALUES ('parent', 1, 2, '{\"k\": 1}', 'be brief', 5, 40, 5, 2)",
    "INSERT INTO sessions (session_id, created_at, updated_at, parent_session_id, kind, lifecycle, depth, last_seq) "
    "VALUES ('child', 3, 3, 'parent', 'subagent', 'ephemeral', 1, 1)",
    "INSERT INTO runs VALUES ('run_b', 'parent', 'resume', 'waiting_for_input', 1, 200, 210, NULL)",
    "INSERT INTO runs VALUES ('run_a', 'parent', 'send', 'completed', 2, 100, 150, 'boom')",
    "INSERT INTO runs VALUES ('run_c', 'child', 'send', 'running', 0, 300, NULL, NULL)",
    f"INSERT INTO messages VALUES ('parent', 1, 'user', '{USER}', 'run_a', 100, 1)",
    f"INSERT INTO messages VALUES ('parent', 2, 'assistant', '{ASSISTANT}', 'run_a', 101, 1)",
    f"INSERT INTO messages VALUES ('parent', 3, 'tool', '{RESULT}', 'run_a', 102, 0)",
    f"INSERT INTO messages VALUES ('parent', 4, 'user', '{USER}', 'run_b', 200, 0)",
    f"INSERT INTO messages VALUES ('parent', 5, 'assistant', '{OPEN}', 'run_b', 201, 0)",
    f"INSERT INTO messages VALUES ('child', 1, 'user', '{USER}', NULL, 300, 0)",
    "INSERT INTO tool_calls VALUES ('parent', 'c1', 2, 0, 'lookup', '{\"q\": 1}', 'done', NULL, 0, 3, 'run_a', 102)",
    "INSERT INTO tool_calls VALUES ('parent', 'c2', 5, 0, 'ask', '{\"question\": \"?\"}', 'waiting_input', NULL, 0, "
    "NULL, 'run_b', 201)",
    "INSERT INTO llm_calls VALUES (7, 'parent', 'run_a', 0, 'round', 'm', 10, 5, 1, 2, 15, 30, 101)",
    "INSERT INTO llm_calls VALUES (8, 'parent', 'run_b', 3, 'round', 'm', 11, 6, 0, 0, 17, 31, 201)",
    "INSERT INTO llm_calls VALUES (9, 'parent', NULL, 1, 'recorded', NULL, 1, 1, 0, 0, 2, 0, 202)",
    "INSERT INTO session_stats VALUES ('parent', 2, 3, 2, 1, 21, 11, 32, 1, 2, 100, 200, 210, 9)",
    "INSERT INTO session_leases VALUES ('parent', 'pid1-x/run_b', 6, 999, 'host/boot/pid:[1]', 123, 456)",
    'INSERT INTO inbox VALUES (3, \'parent\', \'follow_up\', \'{"kind": "follow_up", "content": "more"}\', NULL, '
    "205, NULL, NULL)",
    "INSERT INTO inbox VALUES (2, 'parent', 'timer', '{\"kind\": \"timer\", \"content\": \"wake\"}', 'timer:1', "
    "99, 100, 1)",
    "INSERT INTO interactions VALUES ('i1', 'parent', 'c2', '{\"interaction_id\": \"i1\", \"tool_call_id\": "
    "\"c2\"}', 'open', 201, NULL)",
    "INSERT INTO compactions VALUES (4, 'parent', 2, 'the summary', 100, 10, 'run_a', 150)",
    "INSERT INTO timers VALUES ('parent', 1, 99, 'n1', 'fired', NULL, 0, NULL, NULL, NULL, 1, 'delivered', 50, 99, "
    "99, 1, 'call:c9')",
    "INSERT INTO timers VALUES ('parent', 2, 5000, 'n2', 'armed', NULL, 0, 60000, 3, NULL, 0, NULL, 60, 60, NULL, "
    "0, NULL)",
    "INSERT INTO notes VALUES ('parent', 1, 'remember', 1, 10, 11)",
    "CREATE TABLE legacy011_sessions (session_id TEXT PRIMARY KEY REFERENCES sessions(session_id) "
    "ON DELETE CASCADE, model TEXT, config_json TEXT, status TEXT, spawn_tool_call_id TEXT)",
    "INSERT INTO legacy011_sessions VALUES ('child', 'gpt', '{}', 'archived', 'call_9')",
]


def _v6_file(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as raw:
        raw.execute("PRAGMA foreign_keys = ON")
        raw.execute("BEGIN")
        for migration in MIGRATIONS[:6]:
            migration(raw)
        for statement in V6_ROWS:
            raw.execute(statement)
        raw.execute("PRAGMA user_version = 6")
        raw.execute("COMMIT")


def _rows(conn: sqlite3.Connection, sql: str) -> list[tuple[object, ...]]:
    return [tuple(r) for r in conn.execute(sql).fetchall()]


def test_a_version_6_file_keeps_every_row(tmp_path: Path) -> None:
    db = tmp_path / "v6.db"
    _v6_file(db)
    store = SQLiteSessionStore(str(db))
    try:
        store.list_session_stats()  # opens, and migrates
        pending = store.get_pending_sync("parent")
        assert pending is not None
        assert [(c.tool_call_id, c.name, c.arguments, c.status) for c in pending.calls] == [
            ("c2", "ask", '{"question": "?"}', "waiting_input")
        ]
        assert pending.assistant_seq == 5 and pending.round_index == 3  # run_b's model turn
        assert [i["interaction_id"] for i in pending.interactions] == ["i1"]
        stats = store.get_session_stats("parent")
        assert stats is not None
        assert (stats.sends, stats.rounds, stats.total_tokens, stats.updated_at) == (2, 3, 32, 210)
        assert store.get_session_stats("child") is None
        child = store.get_session("child")
        assert child is not None and child.parent_session_id == "parent" and child.lifecycle == "ephemeral"
        assert child.model == "gpt" and child.status == "archived" and child.spawn_tool_call_id == "call_9"
    finally:
        store.close()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not {"session_stats", "session_leases"} & tables
        assert not [t for t in tables if t.startswith("_v6_")]
        sessions = _rows(
            conn,
            "SELECT session_id, created_at, updated_at, metadata, system_prompt, version, event_seq, last_seq, "
            "last_timer_id, last_run, lease_owner, fence, lease_expires_at, holder_host, holder_pid, holder_start, "
            "activity FROM sessions ORDER BY id",
        )
        assert sessions == [
            ("parent", 1, 2, '{"k": 1}', "be brief", 5, 40, 5, 2, 2, "pid1-x/run_b", 6, 999, "host/boot/pid:[1]", 123,
             456, 9),
            ("child", 3, 3, "{}", None, 0, 0, 1, 0, 1, None, 0, 0, None, None, None, 0),
        ]  # fmt: skip
        # Runs are numbered per session in start order; every row keeps its run.
        assert _rows(
            conn,
            "SELECT s.session_id, r.run, r.run_id, r.kind, r.status, r.rounds, r.started_at, r.ended_at, r.error "
            "FROM runs r JOIN sessions s ON s.id = r.session ORDER BY s.id, r.run",
        ) == [
            ("parent", 1, "run_a", "send", "completed", 2, 100, 150, "boom"),
            ("parent", 2, "run_b", "resume", "waiting_for_input", 1, 200, 210, None),
            ("child", 1, "run_c", "send", "running", 0, 300, None, None),
        ]
        run_of = "(SELECT run_id FROM runs r WHERE r.session = x.session AND r.run = x.run)"
        assert _rows(
            conn,
            f"SELECT s.session_id, x.seq, x.body, {run_of}, x.created_at, x.compacted FROM messages x "
            "JOIN sessions s ON s.id = x.session ORDER BY s.id, x.seq",
        ) == [
            ("parent", 1, USER, "run_a", 100, 1),
            ("parent", 2, ASSISTANT, "run_a", 101, 1),
            ("parent", 3, RESULT, "run_a", 102, 0),
            ("parent", 4, USER, "run_b", 200, 0),
            ("parent", 5, OPEN, "run_b", 201, 0),
            ("child", 1, USER, None, 300, 0),
        ]
        assert _rows(
            conn,
            "SELECT assistant_seq, tool_call_id, position, status, result, is_error, result_seq, updated_at "
            "FROM tool_calls ORDER BY assistant_seq",
        ) == [(2, "c1", 0, "done", None, 0, 3, 102), (5, "c2", 0, "waiting_input", None, 0, None, 201)]
        assert _rows(
            conn,
            f"SELECT x.id, {run_of}, x.round_index, x.purpose, x.model, x.prompt_tokens, x.completion_tokens, "
            "x.cache_read_tokens, x.reasoning_tokens, x.total_tokens, x.duration_ms, x.created_at "
            "FROM llm_calls x ORDER BY x.id",
        ) == [
            (7, "run_a", 0, "round", "m", 10, 5, 1, 2, 15, 30, 101),
            (8, "run_b", 3, "round", "m", 11, 6, 0, 0, 17, 31, 201),
            (9, None, 1, "recorded", None, 1, 1, 0, 0, 2, 0, 202),
        ]
        assert _rows(conn, "SELECT id, source, ref, created_at, consumed_at, consumed_seq FROM inbox ORDER BY id") == [
            (2, "timer", "timer:1", 99, 100, 1),
            (3, "follow_up", None, 205, None, None),
        ]
        assert _rows(conn, "SELECT interaction_id, tool_call_id, status, created_at FROM interactions") == [
            ("i1", "c2", "open", 201)
        ]
        assert _rows(
            conn,
            f"SELECT x.id, x.through_seq, x.summary, x.before_tokens, x.after_tokens, {run_of}, x.created_at "
            "FROM compactions x",
        ) == [(4, 2, "the summary", 100, 10, "run_a", 150)]
        assert _rows(conn, "SELECT timer_id, due_at, status, every_ms, remaining, origin FROM timers") == [
            (1, 99, "fired", None, None, "call:c9"),
            (2, 5000, "armed", 60000, 3, None),
        ]
        assert _rows(conn, "SELECT note_id, content, pinned FROM notes") == [(1, "remember", 1)]


async def test_a_migrated_file_goes_on_with_its_counters(tmp_path: Path) -> None:
    db = tmp_path / "v6.db"
    _v6_file(db)
    async with SQLiteSessionStore(str(db)) as store:
        began = await store.begin_run(
            BeginRun("child", "run_d", LeaseClaim("me/run_d", 60_000), messages=[UserMessage(content="again")])
        )
        assert began.status == "ok" and [m.seq for m in began.appended] == [2]
        assert (await store.schedule_timer("parent", due_at=10, note="next")).timer_id == 3
        assert await store.inbox_depth("parent") == 1
        rows = await store.execute_fetchall(
            "SELECT r.run, r.run_id FROM runs r JOIN sessions s ON s.id = r.session WHERE s.session_id = 'child' "
            "ORDER BY r.run"
        )
        assert rows == [(1, "run_c"), (2, "run_d")]
        # No lease was held on the child: its open run is left as it was.
        assert await store.execute_fetchall("SELECT status FROM runs WHERE run_id = 'run_c'") == [("running",)]


async def test_a_deleted_sessions_key_is_never_reused(tmp_path: Path) -> None:
    async with SQLiteSessionStore(str(tmp_path / "s.db")) as store:
        await store.create_session("a")
        await store.create_session("b")
        ((b_key,),) = await store.execute_fetchall("SELECT id FROM sessions WHERE session_id = 'b'")
        assert await store.delete_session("b") == 1
        await store.create_session("b")
        ((again,),) = await store.execute_fetchall("SELECT id FROM sessions WHERE session_id = 'b'")
        assert again > b_key
        assert await store.load_messages("b") == []


async def test_a_text_session_id_is_not_a_key(tmp_path: Path) -> None:
    """Child rows hold the integer key; the text id is stored once, in ``sessions``."""
    async with SQLiteSessionStore(str(tmp_path / "s.db")) as store:
        sid = "sess_0123456789abcdef01234567"
        await store.create_session(sid)
        began = await store.begin_run(
            BeginRun(sid, "run_x", LeaseClaim("o/run_x", 60_000), messages=[UserMessage(content="hi")])
        )
        assert began.status == "ok"
        for table in ("messages", "runs"):
            columns = {r[1] for r in await store.execute_fetchall(f"PRAGMA table_info({table})")}
            assert "session_id" not in columns and "session" in columns
        assert await store.execute_fetchall("SELECT COUNT(*) FROM messages WHERE body LIKE '%sess_%'") == [(0,)]


async def test_the_rules_run_on_a_sqlite_without_returning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before SQLite 3.35 an ``UPDATE ... RETURNING`` runs as the update and a select."""
    from power_loop.store._sqlite_tx import SQLiteTx
    from power_loop.store.protocols import Delivery

    monkeypatch.setattr(SQLiteTx, "native_returning", False)
    async with SQLiteSessionStore(str(tmp_path / "s.db")) as store:
        await store.create_session("s")
        began = await store.begin_run(
            BeginRun("s", "run_1", LeaseClaim("o/run_1", 60_000), messages=[UserMessage(content="a")])
        )
        assert began.status == "ok" and [m.seq for m in began.appended] == [1]
        lease = LeaseClaim("o/run_1", 60_000, began.fence)
        out = await store.write(
            "s", [Append([UserMessage(content="b"), UserMessage(content="c")], run_id="run_1")], lease=lease
        )
        assert out.seqs == (2, 3)
        assert [(await store.schedule_timer("s", due_at=1, note=n)).timer_id for n in "xy"] == [1, 2]
        note = await store.add_note_async("s", "remember")  # no INSERT/DELETE ... RETURNING needed
        assert note.note_id == 1 and [n.content for n in await store.list_notes_async("s")] == ["remember"]
        assert await store.delete_note_async("s", 1) is True and await store.delete_note_async("s", 1) is False
        claimed = await store.claim_due_timers("runner", lease_ms=60_000, limit=5)
        outcomes = await store.deliver_timers("runner", [Delivery(t, "deliver", "wake") for t in claimed])
        assert [o for o, _ in outcomes] == ["queued", "queued"]  # the run holds the session
        assert [seq for _, seq in outcomes] == sorted({seq for _, seq in outcomes}) and outcomes[0][1] > 0
