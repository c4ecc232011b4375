"""Runtime state and background commands in the session store: the 0.11 methods, their
async twins, lost commands after a SIGKILL, and 0.11 rows carried over by the migration."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from power_loop import SessionNotFoundError, SQLiteSessionStore
from power_loop.store.rows import BackgroundTaskRow

FIXTURE = Path(__file__).parent / "fixtures" / "power_loop_011.db"


@pytest.fixture
def store(db_path: str) -> SQLiteSessionStore:
    return SQLiteSessionStore.open(db_path)


def test_runtime_state_round_trip(store: SQLiteSessionStore) -> None:
    sid = store.create_session()
    assert store.get_runtime_state(sid, "todo") is None
    assert store.get_runtime_state(sid, "todo", default=[]) == []
    store.set_runtime_state(sid, "todo", {"items": [{"content": "ship", "status": "pending"}]})
    store.set_runtime_state(sid, "counter", 3)
    store.set_runtime_state(sid, "counter", 4)  # replaced, not added
    assert store.get_runtime_state(sid, "todo") == {"items": [{"content": "ship", "status": "pending"}]}
    assert store.get_runtime_state(sid, "counter") == 4
    assert store.delete_runtime_state(sid, "counter") is True
    assert store.delete_runtime_state(sid, "counter") is False
    assert store.get_runtime_state(sid, "counter", "gone") == "gone"


def test_runtime_state_refuses_what_json_cannot_hold(store: SQLiteSessionStore) -> None:
    sid = store.create_session()
    store.set_runtime_state(sid, "k", 1)
    with pytest.raises(TypeError, match="runtime state 'k' must be JSON-encodable"):
        store.set_runtime_state(sid, "k", {1, 2})
    with pytest.raises(TypeError, match="JSON-encodable"):
        store.set_runtime_state(sid, "k", float("nan"))
    assert store.get_runtime_state(sid, "k") == 1  # nothing written
    with pytest.raises(ValueError, match="non-empty str"):
        store.set_runtime_state(sid, "", 1)


def test_unknown_session_is_a_clear_error(store: SQLiteSessionStore) -> None:
    with pytest.raises(SessionNotFoundError):
        store.set_runtime_state("nope", "k", 1)
    with pytest.raises(SessionNotFoundError):
        store.get_runtime_state("nope", "k")
    with pytest.raises(SessionNotFoundError):
        store.upsert_background_task("nope", task_id="t", command="true", status="running")


def test_background_updates_are_shown_once(store: SQLiteSessionStore) -> None:
    sid = store.create_session()
    started = store.upsert_background_task(sid, task_id="bg_1", command="make test", status="running")
    assert isinstance(started, BackgroundTaskRow)
    assert (started.status, started.seen, started["command"]) == ("running", False, "make test")
    store.upsert_background_task(sid, task_id="bg_2", command="sleep 9", status="running")
    assert [u.task_id for u in store.list_unseen_background_updates(sid)] == ["bg_1", "bg_2"]
    assert store.mark_background_seen(sid, ["bg_1", "bg_2", "bg_1"]) == 2
    assert store.list_unseen_background_updates(sid) == []
    ended = store.upsert_background_task(
        sid, task_id="bg_1", command="make test", status="failed", return_code=2, output_tail="x" * 9000
    )
    assert (ended.status, ended.return_code, ended.seen) == ("failed", 2, False)
    assert ended.output_tail == "x" * 4000  # the end of the output, bounded
    assert [u.task_id for u in store.list_unseen_background_updates(sid)] == ["bg_1"]
    assert [t.task_id for t in store.list_background_tasks(sid)] == ["bg_1", "bg_2"]
    assert store.get_background_task(sid, "bg_9") is None
    assert store.get_background_task(sid, "bg_2").status == "running"  # type: ignore[union-attr]


async def test_async_twins(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        sid = "sess_async"
        await store.create_session(sid)
        await store.set_runtime_state_async(sid, "todo", ["a"])
        assert await store.get_runtime_state_async(sid, "todo") == ["a"]
        await store.upsert_background_task_async(sid, task_id="b", command="true", status="completed", return_code=0)
        shown = await store.background_updates_async(sid)
        assert [(t.task_id, t.return_code) for t in shown] == [("b", 0)]
        assert await store.background_updates_async(sid) == shown  # not marked by reading
        # Marked only while the status is still the one shown.
        assert await store.mark_background_seen_async(sid, ["b"], statuses={"b": "running"}) == 0
        assert await store.mark_background_seen_async(sid, ["b"], statuses={"b": "completed"}) == 1
        assert await store.background_updates_async(sid) == []


def test_deleting_a_session_deletes_its_runtime_rows(store: SQLiteSessionStore, db_path: str) -> None:
    sid = store.create_session()
    store.set_runtime_state(sid, "todo", [1])
    store.upsert_background_task(sid, task_id="b", command="true", status="running")
    store.delete_session_sync(sid)
    with sqlite3.connect(db_path) as conn:
        counts = [
            conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("runtime_state", "background_tasks")
        ]
    assert counts == [0, 0]


def test_a_command_of_a_killed_process_is_reported_lost(store: SQLiteSessionStore, db_path: str) -> None:
    sid = store.create_session()
    script = textwrap.dedent(
        f"""
        import sys, time
        from power_loop import SQLiteSessionStore
        store = SQLiteSessionStore.open({db_path!r})
        store.upsert_background_task({sid!r}, task_id="bg_dead", command="long build", status="running")
        print("started", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        # Its process is alive: the command is running, not lost.
        assert store.reap_lost_background(sid) == []
        assert store.get_background_task(sid, "bg_dead").status == "running"  # type: ignore[union-attr]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    assert [lost.task_id for lost in store.reap_lost_background(sid)] == ["bg_dead"]
    lost = store.get_background_task(sid, "bg_dead")
    assert lost is not None and lost.status == "lost" and not lost.seen
    assert "[lost: the process running it ended before it finished; its outcome is unknown]" in (lost.output_tail or "")
    assert store.reap_lost_background(sid) == []  # once
    assert [u.status for u in store.background_updates(sid)] == ["lost"]


def test_a_command_of_another_machine_is_lost_once_far_past_its_deadline(
    store: SQLiteSessionStore, db_path: str
) -> None:
    sid = store.create_session()
    for task_id in ("recent", "stale"):
        store.upsert_background_task(sid, task_id=task_id, command="build", status="running")
    with sqlite3.connect(db_path) as conn:  # as a process of another machine recorded them
        conn.execute("UPDATE background_tasks SET holder_host = 'elsewhere', deadline_at = 9e15")
        conn.execute("UPDATE background_tasks SET deadline_at = 1000 WHERE task_id = 'stale'")
    assert [lost.task_id for lost in store.reap_lost_background(sid)] == ["stale"]
    assert store.get_background_task(sid, "recent").status == "running"  # type: ignore[union-attr]


def test_a_command_this_process_no_longer_runs_is_lost(store: SQLiteSessionStore) -> None:
    sid = store.create_session()
    store.upsert_background_task(sid, task_id="mine", command="build", status="running")
    assert store.reap_lost_background(sid) == []  # alive unknown: kept
    assert store.reap_lost_background(sid, alive={"mine"}) == []
    assert [lost.task_id for lost in store.reap_lost_background(sid, alive=set())] == ["mine"]


def test_011_runtime_rows_are_carried_over(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    with sqlite3.connect(path) as conn:
        sid = conn.execute("SELECT session_id FROM sessions ORDER BY created_at LIMIT 1").fetchone()[0]
        conn.execute(
            "INSERT INTO session_runtime_state (session_id, key, value_json, updated_at) VALUES (?, 'todo', ?, 1)",
            (sid, '{"items": [{"content": "migrate", "status": "in_progress"}]}'),
        )
        conn.executemany(
            "INSERT INTO background_tasks (session_id, task_id, command, status, return_code, output_tail, "
            "last_seen_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (sid, "t1", "make", "completed", 0, "ok", 5, 1, 5),
                (sid, "t2", "serve", "running", None, None, 0, 2, 2),
                (sid, "t3", "lint", "failed", 1, "E1", 0, 3, 4),
            ],
        )
    store = SQLiteSessionStore.open(path)
    assert store.get_runtime_state(sid, "todo") == {"items": [{"content": "migrate", "status": "in_progress"}]}
    rows = {t.task_id: t for t in store.list_background_tasks(sid)}
    assert (rows["t1"].status, rows["t1"].seen) == ("completed", True)
    assert (rows["t2"].status, rows["t2"].seen) == ("lost", False)  # its 0.11 process is gone
    assert (rows["t3"].status, rows["t3"].return_code, rows["t3"].seen) == ("failed", 1, False)
    with sqlite3.connect(path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert not any(t.startswith("legacy011_") and "runtime" in t or t == "legacy011_background_tasks" for t in tables)
    assert os.path.exists(str(path) + ".011-backup")
