"""Session databases written by power-loop 0.11 open, migrate in place and continue.

The committed ``fixtures/power_loop_011.db`` was written by the published 0.11.0 package
(``fixtures/make_011_db.py``); ``power_loop_011.json`` holds what 0.11 itself returned for
those sessions. ``test_fresh_011_file_migrates`` regenerates such a file with 0.11 when an
interpreter with ``power-loop==0.11.0`` is available (``POWER_LOOP_011_PYTHON``, default
``/tmp/venv011/bin/python``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from power_loop import StatefulAgentLoop
from power_loop.errors import CorruptRecordError, SchemaVersionError, SessionPendingError, StoreError
from power_loop.store.schema import LATEST_VERSION
from power_loop.testing import ScriptedLLM, text_reply
from power_loop.timers import TimerRunner

from .helpers import history_is_valid

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_DB = FIXTURES / "power_loop_011.db"
PYTHON_011 = os.environ.get("POWER_LOOP_011_PYTHON", "/tmp/venv011/bin/python")


def dump(path: Path) -> list[str]:
    """The database's full content as SQL (a byte copy could differ in free pages only)."""
    with closing(sqlite3.connect(path)) as conn:
        return [f"user_version={conn.execute('PRAGMA user_version').fetchone()[0]}", *conn.iterdump()]


@pytest.fixture
def old(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the committed 0.11 file, and what 0.11 returned for its sessions."""
    target = tmp_path / "app.db"
    shutil.copyfile(FIXTURE_DB, target)
    return target, json.loads(FIXTURE_DB.with_suffix(".json").read_text())


def open_loop(db: Path, *replies: str) -> tuple[StatefulAgentLoop, ScriptedLLM]:
    llm = ScriptedLLM([text_reply(r) for r in replies])
    loop = StatefulAgentLoop(llm=llm, db_path=str(db))
    loop.list_session_stats()  # the store opens (and migrates) on first use
    return loop, llm


def _shape(m: dict[str, Any]) -> dict[str, Any]:
    """The fields both versions agree on (0.11 returned ``content: ""`` on tool-call turns)."""
    return {
        "role": m["role"],
        "content": m.get("content") or "",
        "tool_calls": m.get("tool_calls") or [],
        "tool_call_id": m.get("tool_call_id"),
        "name": m.get("name"),
    }


def check_migrated(db: Path, original: list[str], info: dict[str, Any]) -> None:
    """Everything 0.11 stored is there after the migration, and the backup is the original."""
    views = info["views"]
    loop, _ = open_loop(db)
    try:
        backup = Path(str(db) + ".011-backup")
        assert backup.exists()
        assert dump(backup) == original
        assert dump(db)[0] == f"user_version={LATEST_VERSION}"

        chat = loop.store.get_session(info["chat"])
        assert chat is not None
        assert chat.metadata == {"fixture": "chat", "user_id": "alice", "tags": ["a", "b"]}
        assert chat.system_prompt == "You are Alice's assistant."
        (child_id,) = views["chat"]["children"]
        child = loop.store.get_session(child_id)
        assert child is not None
        assert (child.parent_session_id, child.kind, child.lifecycle, child.depth) == (
            info["chat"],
            "subagent",
            "linked",
            1,
        )
        assert loop.store.get_session(info["ask"]).system_prompt == "Ask before acting."

        for name in ("chat", "long", "hang", "ask"):
            sid, view = info[name], views[name]
            # Every message in order, with its role, text, tool calls (ids) and results. 0.11
            # showed its summary as a system message among the others; here it heads the context.
            ours = [_shape(m) for m in loop.get_messages(sid) if m["role"] != "system"]
            theirs = [_shape(m) for m in view["messages"] if m["role"] != "system"]
            assert ours == theirs, name
            audit = [_shape(m) for m in loop.get_messages(sid, include_compacted=True) if m["role"] != "system"]
            assert audit == [_shape(m) for m in view["all_messages"] if m["role"] != "system"], name
            stats = loop.get_session_stats(sid)
            if view["stats"] is None:
                assert stats is None
            else:
                assert {k: getattr(stats, k) for k in view["stats"]} == view["stats"], name

        chat_messages = loop.get_messages(info["chat"])
        assert [c["id"] for m in chat_messages for c in m.get("tool_calls", ())] == [
            "call_add_3",
            "call_m1a_7",
            "call_m1b_7",
            "call_m2_10",
            "call_fail_14",
            "call_spawn_18",
        ]
        assert [m["content"] for m in chat_messages if m["role"] == "tool"] == [
            "5",
            "42",
            "HI",
            "AGAIN",
            "Error: boom",
            "echo: sub task please",
        ]
        assert any(m["role"] == "user" and m["content"].startswith("<timer id=3>") for m in chat_messages)
        assert history_is_valid(chat_messages)

        # The compaction summary is the load base of the long session.
        summary_text = next(m for m in views["long"]["messages"] if m.get("name") == "compact_note")["content"]
        head = loop.get_messages(info["long"])[0]
        assert head["role"] == "system" and head["content"].endswith(summary_text)
        assert len(loop.get_messages(info["long"], include_compacted=True)) > len(loop.get_messages(info["long"]))

        hang = loop.get_pending(info["hang"])
        assert hang is not None and hang["tool_call_ids"] == views["hang"]["pending"]["tool_call_ids"]
        assert hang["assistant_seq"] == views["hang"]["pending"]["assistant_seq"]
        ask = loop.get_pending(info["ask"])
        assert ask is not None and ask["tool_call_ids"] == ["call_ask_1"]
        assert ask["pending_interactions"] == views["ask"]["pending"]["pending_interactions"]
        assert loop.get_pending(info["chat"]) is None

        armed = [t for t in views["chat"]["timers"] if t["status"] == "armed"]
        assert [(t.timer_id, t.due_at, t.note, t.status) for t in loop.list_timers(info["chat"])] == [
            (t["timer_id"], t["due_at"], t["note"], "armed") for t in armed
        ]
        with closing(sqlite3.connect(db)) as conn:
            timers = conn.execute(
                "SELECT timer_id, status FROM timers "
                "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY timer_id",
                (info["chat"],),
            ).fetchall()
            assert timers == [
                (t["timer_id"], t["status"]) for t in sorted(views["chat"]["timers"], key=lambda t: t["timer_id"])
            ]
            notes = conn.execute(
                "SELECT note_id, content, pinned FROM notes "
                "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY note_id",
                (info["chat"],),
            ).fetchall()
            assert [(n, c, bool(p)) for n, c, p in notes] == [
                (n["note_id"], n["content"], n["pinned"]) for n in views["chat"]["notes"]
            ]
    finally:
        loop.close()


def test_fixture_migrates_with_everything_carried_over(old: tuple[Path, dict[str, Any]]) -> None:
    db, info = old
    check_migrated(db, dump(FIXTURE_DB), info)


async def test_migrated_session_continues_with_send(old: tuple[Path, dict[str, Any]]) -> None:
    db, info = old
    loop, llm = open_loop(db, "teal, as you said", "still compact")
    try:
        result = await loop.send("What did I ask before?", session_id=info["chat"])
        assert result.status == "completed" and result.final_text == "teal, as you said"
        sent = [(m.role, m.text) for m in llm.requests[0].messages]
        assert sent[0] == ("user", "hello there") and ("tool", "AGAIN") in sent
        assert sent[-1] == ("user", "What did I ask before?")
        assert llm.requests[0].system_prompt == "You are Alice's assistant."
        stats = loop.get_session_stats(info["chat"])
        assert stats is not None and stats.sends == info["views"]["chat"]["stats"]["sends"] + 1

        # The compacted session continues from its summary.
        await loop.send("go on", session_id=info["long"])
        first = llm.requests[1].messages[0]
        assert first.role == "system" and "SUMMARY:" in first.text
    finally:
        loop.close()


async def test_pending_call_of_a_crashed_011_run_is_still_pending(old: tuple[Path, dict[str, Any]]) -> None:
    db, info = old
    loop, _ = open_loop(db, "after the abort")
    try:
        with pytest.raises(SessionPendingError) as raised:
            await loop.send("hello?", session_id=info["hang"])
        assert [c["id"] for c in raised.value.pending_tool_calls] == ["call_hang_1"]
        assert loop.abort_pending(info["hang"], reason="gone after upgrade") == 1
        result = await loop.send("hello?", session_id=info["hang"])
        assert result.final_text == "after the abort"
        messages = loop.get_messages(info["hang"])
        assert messages[2]["tool_call_id"] == "call_hang_1"
        assert "gone after upgrade" in messages[2]["content"]
        assert history_is_valid(messages)
    finally:
        loop.close()


async def test_user_input_pause_of_011_is_answered_with_submit_input(old: tuple[Path, dict[str, Any]]) -> None:
    db, info = old
    loop, llm = open_loop(db, "Tea it is.")
    try:
        pending = loop.get_pending(info["ask"])
        assert pending is not None
        (question,) = pending["pending_interactions"]
        result = await loop.submit_input(info["ask"], question["interaction_id"], "tea")
        assert result.status == "completed" and result.final_text == "Tea it is."
        tail = [(m.role, m.text) for m in llm.requests[0].messages][-3:]
        assert tail[1:] == [("tool", "2"), ("tool", "tea")]
        assert loop.get_pending(info["ask"]) is None
        assert history_is_valid(loop.get_messages(info["ask"]))
    finally:
        loop.close()


async def test_armed_011_timer_is_delivered_by_a_timer_runner(old: tuple[Path, dict[str, Any]]) -> None:
    db, info = old
    with closing(sqlite3.connect(db)) as conn:  # the 0.11 timer falls due (0.11 data, before migrating)
        conn.execute("UPDATE timers SET due_at = 1 WHERE status = 'armed'")
        conn.commit()
    loop, llm = open_loop(db, "checking in")
    try:
        (timer,) = loop.list_timers(info["chat"])
        assert (timer.note, timer.status) == ("weekly check-in", "armed")
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 1
        for _ in range(500):  # the wake run is a task of its own
            if llm.requests and loop.get_session_stats(info["chat"]).sends > info["views"]["chat"]["stats"]["sends"]:
                break
            await asyncio.sleep(0.01)
        await runner.stop()
        assert "weekly check-in" in llm.requests[0].messages[-1].text
        assert loop.list_timers(info["chat"]) == []
        assert loop.get_messages(info["chat"])[-1]["content"] == "checking in"
    finally:
        loop.close()


def test_failed_migration_leaves_the_file_unchanged(old: tuple[Path, dict[str, Any]]) -> None:
    db, info = old
    with closing(sqlite3.connect(db)) as conn:  # a row 0.11 could never have read back
        (good,) = conn.execute(
            "SELECT tool_calls_json FROM messages WHERE session_id = ? AND seq = 8", (info["chat"],)
        ).fetchone()
        conn.execute(
            'UPDATE messages SET tool_calls_json = \'[{"id": "x", "function": 7\' WHERE session_id = ? AND seq = 8',
            (info["chat"],),
        )
        conn.commit()
    before = dump(db)
    with pytest.raises(CorruptRecordError) as raised:
        StatefulAgentLoop(llm=ScriptedLLM(), db_path=str(db)).new_session()
    assert raised.value.session_id == info["chat"] and raised.value.seq == 8
    assert "Nothing was changed" in str(raised.value)
    assert dump(db) == before  # the migration ran as far as this row: all of it was rolled back
    assert not Path(str(db) + ".011-backup").exists()

    with closing(sqlite3.connect(db)) as conn:  # repaired, it migrates
        conn.execute("UPDATE messages SET tool_calls_json = ? WHERE session_id = ? AND seq = 8", (good, info["chat"]))
        conn.commit()
    loop, _ = open_loop(db)
    try:
        assert [c["id"] for c in loop.get_messages(info["chat"])[7]["tool_calls"]] == ["call_m1a_7", "call_m1b_7"]
    finally:
        loop.close()


def test_reopening_a_migrated_file_does_not_migrate_again(old: tuple[Path, dict[str, Any]]) -> None:
    db, info = old
    loop, _ = open_loop(db)
    first = loop.get_messages(info["chat"])
    loop.close()
    migrated = dump(db)
    backup = dump(Path(str(db) + ".011-backup"))
    loop, _ = open_loop(db)
    try:
        assert loop.get_messages(info["chat"]) == first
    finally:
        loop.close()
    assert dump(db) == migrated
    assert dump(Path(str(db) + ".011-backup")) == backup
    assert sorted(p.name for p in db.parent.iterdir() if ".011-backup" in p.name) == ["app.db.011-backup"]


def test_an_earlier_backup_is_never_overwritten(old: tuple[Path, dict[str, Any]]) -> None:
    db, _ = old
    Path(str(db) + ".011-backup").write_bytes(b"an older copy")
    loop, _ = open_loop(db)
    loop.close()
    assert Path(str(db) + ".011-backup").read_bytes() == b"an older copy"
    assert dump(Path(str(db) + ".011-backup-2")) == dump(FIXTURE_DB)


@pytest.mark.parametrize("table", ["sessions (id INTEGER PRIMARY KEY, name TEXT)", "users (id INTEGER)"])
def test_a_database_of_something_else_is_refused(tmp_path: Path, table: str) -> None:
    db = tmp_path / "other.db"
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(f"CREATE TABLE {table}")
        conn.commit()
    before = dump(db)
    with pytest.raises(SchemaVersionError, match="is not a power_loop session database") as raised:
        StatefulAgentLoop(llm=ScriptedLLM(), db_path=str(db)).new_session()
    assert table.split()[0] in str(raised.value)
    assert dump(db) == before
    assert not list(tmp_path.glob("*backup*"))


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "notes.txt"
    db.write_text("shopping list\n" * 100)
    with pytest.raises(StoreError):
        StatefulAgentLoop(llm=ScriptedLLM(), db_path=str(db)).new_session()
    assert db.read_text() == "shopping list\n" * 100


def test_fresh_011_file_migrates(tmp_path: Path) -> None:
    """Regenerate a 0.11 file with the published package and migrate it (needs its venv)."""
    if not Path(PYTHON_011).exists():
        pytest.skip(
            f"no interpreter with power-loop==0.11.0 at {PYTHON_011}: create one with "
            "`python -m venv /tmp/venv011 && /tmp/venv011/bin/pip install power-loop==0.11.0` "
            "or set POWER_LOOP_011_PYTHON"
        )
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_011_db
    finally:
        sys.path.remove(str(FIXTURES))
    db = tmp_path / "fresh.db"
    info = make_011_db.generate(db, PYTHON_011)
    original = dump(db)
    check_migrated(db, original, info)
