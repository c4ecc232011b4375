"""Store faults on real files: a deleted or replaced file, read-only, full, not a database,
I/O errors, a missing directory. Each ends in a StoreError naming the path, with the sqlite3
exception chained, and nothing is reported done that is not durably stored at the path."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from power_loop import (
    AgentHooks,
    HookPoint,
    SQLiteSessionStore,
    StatefulAgentLoop,
    StoreCorruptError,
    StoreError,
    StoreFileGoneError,
    StoreFullError,
    StoreReadOnlyError,
    ToolRegistry,
    tool,
)
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest
from power_loop.timers import TimerRunner


def _echo() -> ScriptedLLM:
    return ScriptedLLM(rule=lambda r: text_reply(f"re: {r.last_user_text}"))


def _texts(db: str, sid: str) -> list[str]:
    """Message bodies as stored in the file at ``db`` (read with plain sqlite3)."""
    with closing(sqlite3.connect(db)) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT body FROM messages WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY seq",
                (sid,),
            )
        ]


# --------------------------------------------------------------------------- the file goes away


async def test_a_directory_deleted_during_a_run_fails_the_send(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    db = str(folder / "sessions.db")

    @tool
    def wipe() -> str:
        """Deletes the store's directory."""
        shutil.rmtree(folder)
        return "wiped"

    registry = ToolRegistry()
    registry.register(wipe)
    llm = ScriptedLLM([tool_reply(("wipe", {})), text_reply("all done")])
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        with pytest.raises(StoreFileGoneError, match="no longer exists") as raised:
            await loop.send("clean up", session_id=sid)
        assert raised.value.path == db and db in str(raised.value)
        with pytest.raises(StoreFileGoneError):  # every later call says the same, nothing is recreated
            await loop.send("again", session_id=sid)
        with pytest.raises(StoreFileGoneError):
            loop.get_messages(sid)
        with pytest.raises(StoreFileGoneError):
            loop.new_session()
    assert not folder.exists()


async def test_a_final_answer_committed_into_a_deleted_file_is_not_completed(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        for suffix in ("", "-wal", "-shm"):  # the file is deleted while the model answers
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        return text_reply("answer")

    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=str(db)) as loop:
        sid = await loop.new_session_async()
        with pytest.raises(StoreFileGoneError):
            await loop.send("question", session_id=sid)
    assert not db.exists()


async def test_a_replaced_file_is_noticed(tmp_path: Path) -> None:
    db = str(tmp_path / "sessions.db")
    async with StatefulAgentLoop(llm=_echo(), db_path=db) as loop:
        sid = await loop.new_session_async()
        await loop.send("one", session_id=sid)
        copy = str(tmp_path / "copy.db")
        with closing(sqlite3.connect(db)) as src, closing(sqlite3.connect(copy)) as dst:
            src.backup(dst)
        os.replace(copy, db)  # same content, another file: later writes would go to the old one
        with pytest.raises(StoreFileGoneError, match="different file"):
            await loop.send("two", session_id=sid)
        with pytest.raises(StoreFileGoneError, match="different file"):
            loop.get_messages(sid)
    assert len(_texts(db, sid)) == 2  # the replacement is untouched: "one" and its answer


def test_sync_conveniences_never_recreate_a_deleted_file(tmp_path: Path) -> None:
    db = tmp_path / "sessions.db"
    store = SQLiteSessionStore(db)
    store.create_session_sync("s")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreFileGoneError) as raised:
        store.get_session("s")
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    with pytest.raises(StoreFileGoneError):
        store.create_session_sync("t")
    assert not db.exists()


async def test_a_directory_deleted_while_a_timer_is_delivered(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The store's directory vanishes inside TIMER_FIRE: the delivery fails (nothing is
    reported delivered, no run starts), the runner keeps scanning and reports the lasting
    fault once instead of a traceback every scan, and nothing recreates the file."""
    folder = tmp_path / "data"
    db = str(folder / "sessions.db")
    hooks = AgentHooks()
    hooks.register(HookPoint.TIMER_FIRE, lambda ctx: shutil.rmtree(folder))
    async with StatefulAgentLoop(llm=_echo(), db_path=db, hooks=hooks) as loop:
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="wake up")
        runner = TimerRunner(loop, scan_interval_s=0.01)
        with caplog.at_level(logging.DEBUG, logger="power_loop.timers"):
            await runner.start()
            for _ in range(2000):  # hang guard: until several scans have failed
                if sum("failed again" in r.getMessage() for r in caplog.records) >= 3:
                    break
                await asyncio.sleep(0.01)
            await runner.stop(grace_s=5)
        assert runner.delivered == 0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "timer scan failed" in r.getMessage()]
        assert len(errors) == 1
        assert isinstance(errors[0].exc_info[1], StoreFileGoneError)  # type: ignore[index]
        assert any(db in r.getMessage() for r in caplog.records if "delivering timer" in r.getMessage())
        with pytest.raises(StoreFileGoneError):
            await loop.list_timers_async(sid)
    assert not folder.exists()


# --------------------------------------------------------------------------- sqlite faults


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A store file that cannot be written: chmod for a normal user, the immutable flag for root
    (root ignores permissions); skipped where neither can be applied."""
    db = tmp_path / "ro.db"
    store = SQLiteSessionStore(db)
    store.create_session_sync("s")
    store.create_session_sync("other")
    immutable = os.geteuid() == 0
    if immutable:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(db)]).returncode != 0:
            pytest.skip("cannot make a file read-only for root here (no chattr +i)")
    else:
        db.chmod(0o444)
    try:
        yield db
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(db)], check=True)
        else:
            db.chmod(0o644)


async def test_a_read_only_file_raises_store_read_only_error(read_only: Path) -> None:
    db = str(read_only)
    with pytest.raises(StoreReadOnlyError, match="cannot be written") as raised:
        SQLiteSessionStore(db).create_session_sync("new")
    assert raised.value.path == db
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
    async with StatefulAgentLoop(llm=_echo(), db_path=db) as loop:
        with pytest.raises(StoreReadOnlyError, match=db):
            await loop.send("hi", session_id="s")
        assert loop.get_messages("s") == []  # reading still works


async def test_a_full_disk_raises_store_full_error_and_loses_nothing(db_path: str) -> None:
    async with StatefulAgentLoop(llm=_echo(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        await loop.send("small", session_id=sid)
        # A real SQLITE_FULL: the file may not grow past its current size.
        await loop.store.execute_fetchall("PRAGMA max_page_count = 1")
        with pytest.raises(StoreFullError, match="rolled back") as raised:
            await loop.send("x" * 200_000, session_id=sid)
        assert isinstance(raised.value.__cause__, sqlite3.OperationalError)
        assert raised.value.path == db_path
        assert [m["content"] for m in await loop.get_messages_async(sid)] == ["small", "re: small"]
        await loop.store.execute_fetchall("PRAGMA max_page_count = 1000000")
        result = await loop.send("after space was freed", session_id=sid)
        assert result.final_text == "re: after space was freed"


def test_a_file_that_is_not_a_database_raises_store_corrupt_error(tmp_path: Path) -> None:
    garbage = b"this is not an sqlite file " * 400
    db = tmp_path / "notes.db"
    db.write_bytes(garbage)
    with pytest.raises(StoreCorruptError, match="not a usable session store") as raised:
        SQLiteSessionStore(db).get_session("s")
    assert isinstance(raised.value.__cause__, sqlite3.DatabaseError)

    async def open_async() -> None:
        async with StatefulAgentLoop(llm=_echo(), db_path=str(db)) as loop:
            await loop.send("hi", session_id="s")

    # asyncio.run closes its loop right after the failure: aiosqlite's worker thread must be
    # finished by then (an exception in that thread would fail this test).
    with pytest.raises(StoreCorruptError, match=str(db)):
        asyncio.run(open_async())
    assert db.read_bytes() == garbage  # never removed or rewritten


def test_an_io_error_while_creating_the_file_leaves_no_file_behind(tmp_path: Path) -> None:
    # A real EFBIG from the kernel: the process may not write files past 20 kB, less than the
    # schema needs. Run in a child process, since the limit applies to a whole process.
    script = textwrap.dedent(
        """
        import asyncio, os, resource, signal, sys
        from power_loop import SQLiteSessionStore, StoreIOError

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        sync_db, async_db = sys.argv[1:]
        try:
            SQLiteSessionStore(sync_db).create_session_sync("s")
        except StoreIOError as exc:
            print("sync", type(exc.__cause__).__name__, os.path.exists(sync_db), flush=True)

        async def main():
            try:
                await SQLiteSessionStore(async_db).open()
            except StoreIOError as exc:
                print("async", type(exc.__cause__).__name__, os.path.exists(async_db), flush=True)

        asyncio.run(main())
        """
    )
    paths = [str(tmp_path / "sync" / "a.db"), str(tmp_path / "async" / "b.db")]
    out = subprocess.run([sys.executable, "-c", script, *paths], capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == ["sync OperationalError False", "async OperationalError False"], out
    assert sorted(os.listdir(tmp_path / "sync")) == sorted(os.listdir(tmp_path / "async")) == []


# --------------------------------------------------------------------------- opening


async def test_the_async_store_creates_a_missing_directory(tmp_path: Path) -> None:
    db = tmp_path / "a" / "b" / "sessions.db"
    async with StatefulAgentLoop(llm=_echo(), db_path=str(db)) as loop:
        sid = await loop.new_session_async()
        assert (await loop.send("hi", session_id=sid)).final_text == "re: hi"
    assert db.is_file()


def test_store_errors_name_the_path_and_keep_the_cause(tmp_path: Path) -> None:
    db = tmp_path / "folder"
    db.mkdir()  # a directory where the file should be
    with pytest.raises(StoreError) as raised:
        SQLiteSessionStore(db).get_session("s")
    assert str(db) in str(raised.value)
    assert isinstance(raised.value.__cause__, sqlite3.Error)
    assert db.is_dir() and list(db.iterdir()) == []
    blocker = tmp_path / "plain-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="could not be opened") as raised:  # its directory cannot be created
        SQLiteSessionStore(blocker / "sub" / "sessions.db").get_session("s")
    assert isinstance(raised.value.__cause__, NotADirectoryError)
