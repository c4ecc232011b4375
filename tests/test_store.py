"""The SQLite store: pragmas, migrations, cascades, transactions, fencing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import pytest

from power_loop import LeaseLostError, SchemaVersionError, SQLiteSessionStore, StoreError
from power_loop.messages import AssistantMessage, ToolCall, ToolResultMessage, UserMessage
from power_loop.store._sqlite_conn import _Job
from power_loop.store.rows import Append, BeginRun, FinishRun, LeaseClaim, UpdateToolCall
from power_loop.store.schema import LATEST_VERSION


async def test_pragmas_and_schema_version(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        mode = await store.execute_fetchall("PRAGMA journal_mode")
        fk = await store.execute_fetchall("PRAGMA foreign_keys")
        sync = await store.execute_fetchall("PRAGMA synchronous")
        version = await store.execute_fetchall("PRAGMA user_version")
        busy = await store.execute_fetchall("PRAGMA busy_timeout")
    assert mode == [("wal",)]
    assert fk == [(1,)]
    assert sync == [(1,)]  # NORMAL
    assert version == [(LATEST_VERSION,)]
    assert busy[0][0] >= 1000


async def test_a_newer_schema_is_refused(db_path: str) -> None:
    async with SQLiteSessionStore(db_path):
        pass
    with sqlite3.connect(db_path) as raw:
        raw.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    with pytest.raises(SchemaVersionError, match="upgrade power_loop"):
        await SQLiteSessionStore(db_path).open()
    with pytest.raises(SchemaVersionError):
        SQLiteSessionStore(db_path).get_session("x")


def test_memory_paths_are_refused() -> None:
    with pytest.raises(StoreError, match="file path"):
        SQLiteSessionStore(":memory:")


async def test_sync_and_async_paths_share_one_file(db_path: str) -> None:
    store = SQLiteSessionStore(db_path)
    store.create_session_sync("s1", metadata={"a": 1})
    async with store:
        assert (await store.get_session_async("s1")).metadata == {"a": 1}  # type: ignore[union-attr]
        await store.create_session("s2", system_prompt="p")
    assert store.get_session("s2").system_prompt == "p"  # type: ignore[union-attr]


async def _begin(store: SQLiteSessionStore, sid: str, owner: str = "me", **kwargs: object) -> int:
    outcome = await store.begin_run(
        BeginRun(session_id=sid, run_id=f"run-{owner}", lease=LeaseClaim(owner, 5_000), **kwargs)
    )  # type: ignore[arg-type]
    assert outcome.status == "ok", outcome
    return outcome.fence


async def test_seqs_are_contiguous_and_history_reloads(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("s")
        fence = await _begin(store, "s", messages=[UserMessage(content="hi")])
        lease = LeaseClaim("me", 5_000, fence)
        out = await store.write("s", [Append([AssistantMessage(content="a"), UserMessage(content="b")])], lease=lease)
        assert out.seqs == (2, 3)
        stored = await store.load_messages("s")
    assert [(m.seq, m.message.role) for m in stored] == [(1, "user"), (2, "assistant"), (3, "user")]


async def test_a_result_nobody_takes_does_not_stall_the_writer(db_path: str) -> None:
    """Before a transaction that follows one whose result the event loop has not taken yet,
    the worker sleeps (GIL released) so the event loop can take it; a result nobody ever
    takes (its event loop is gone) costs a bounded wait, never a hang."""
    async with SQLiteSessionStore(db_path) as store:
        store._handed = _Job(loop=asyncio.get_running_loop())  # never completed
        await asyncio.wait_for(store.create_session("s"), 30)
        await asyncio.wait_for(store.create_session("t"), 30)
        assert {s.session_id for s in await store.list_sessions()} == {"s", "t"}


async def test_a_caller_cancelled_mid_transaction_waits_for_it_and_the_write_stands(db_path: str) -> None:
    """A transaction handed to the worker cannot be taken back: the cancelled caller gets
    ``CancelledError`` only once it has ended, and what it wrote is committed."""
    started, release = threading.Event(), threading.Event()

    def slow_create(tx: Any) -> str:
        tx.execute("CREATE TABLE probe (x INTEGER)")
        tx.execute("INSERT INTO probe VALUES (1)")
        started.set()
        release.wait(30)
        return "done"

    async with SQLiteSessionStore(db_path) as store:
        task = asyncio.ensure_future(store._call(slow_create))
        try:
            await asyncio.to_thread(started.wait, 30)
            task.cancel()
            for _ in range(20):  # the job runs on: the task stays pending however often it is run
                await asyncio.sleep(0)
            assert not task.done()
        finally:
            release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await store.execute_fetchall("SELECT x FROM probe") == [(1,)]
        await store.create_session("after")  # the worker goes on
        assert [s.session_id for s in await store.list_sessions()] == ["after"]


async def test_cascade_delete_removes_everything(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("parent")
        await store.create_session("child", parent_session_id="parent", kind="subagent")
        await store.create_session("grandchild", parent_session_id="child", kind="subagent")
        fence = await _begin(store, "parent", messages=[UserMessage(content="x")])
        await store.write("parent", [FinishRun("run-me", "completed")], lease=LeaseClaim("me", 5_000, fence))
        assert await store.delete_session("parent") == 3
        for table in ("sessions", "messages", "runs", "llm_calls", "tool_calls", "legacy011_sessions"):
            assert await store.execute_fetchall(f"SELECT COUNT(*) FROM {table}") == [(0,)], table


async def test_delete_without_cascade_detaches_children(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("parent")
        await store.create_session("child", parent_session_id="parent")
        assert await store.delete_session("parent", cascade=False) == 1
        child = await store.get_session_async("child")
    assert child is not None and child.parent_session_id is None


async def test_a_failing_write_rolls_back_entirely(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("s")
        fence = await _begin(store, "s", messages=[UserMessage(content="hi")])
        lease = LeaseClaim("me", 5_000, fence)
        broken = AssistantMessage(content="x", tool_calls=(ToolCall(id="dup", name="t"), ToolCall(id="dup", name="t")))
        with pytest.raises(StoreError, match="rolled back") as raised:
            await store.write("s", [Append([AssistantMessage(content="kept?")]), Append([broken])], lease=lease)
        assert isinstance(raised.value.__cause__, sqlite3.IntegrityError)
        assert [m.message.text for m in await store.load_messages("s")] == ["hi"]


async def test_a_fenced_out_writer_is_refused(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("s")
        old = await _begin(store, "s", owner="old", messages=[UserMessage(content="first")])
        await store.execute_fetchall("SELECT 1")
        # The old owner's lease expires; a new owner takes the session.
        await store._call(lambda c: c.execute("UPDATE sessions SET lease_expires_at = 0"))
        new = await _begin(store, "s", owner="new", messages=[UserMessage(content="second")])
        assert new == old + 1
        with pytest.raises(LeaseLostError, match="refused"):
            await store.write("s", [Append([AssistantMessage(content="stale")])], lease=LeaseClaim("old", 5_000, old))
        await store.write("s", [Append([AssistantMessage(content="fresh")])], lease=LeaseClaim("new", 5_000, new))
        texts = [m.message.text for m in await store.load_messages("s")]
    assert texts == ["first", "second", "fresh"]


async def test_begin_reports_busy_pending_and_not_found(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        assert (
            await store.begin_run(BeginRun(session_id="nope", run_id="r", lease=LeaseClaim("a", 5000)))
        ).status == "not_found"
        await store.create_session("s")
        fence = await _begin(store, "s", owner="a", messages=[UserMessage(content="hi")])
        busy = await store.begin_run(BeginRun(session_id="s", run_id="r2", lease=LeaseClaim("b", 5000)))
        assert (busy.status, busy.lease_owner) == ("busy", "a")
        call = ToolCall(id="c1", name="t", arguments="{}")
        lease = LeaseClaim("a", 5000, fence)
        await store.write(
            "s",
            [
                Append([AssistantMessage(tool_calls=(call,))]),
                UpdateToolCall("c1", "running"),
                FinishRun("run-a", "cancelled", drain_inbox=False),
            ],
            lease=lease,
        )
        pending = await store.begin_run(BeginRun(session_id="s", run_id="r3", lease=LeaseClaim("b", 5000)))
        assert pending.status == "pending" and pending.pending is not None
        assert pending.pending.assistant_seq == 2
        assert [(c.tool_call_id, c.status) for c in pending.pending.calls] == [("c1", "running")]
        healed = await store.begin_run(
            BeginRun(
                session_id="s",
                run_id="r4",
                lease=LeaseClaim("b", 5000),
                heal_pending=True,
                messages=[UserMessage(content="next")],
            )
        )
        assert healed.status == "ok"
        assert [m.message.role for m in healed.appended] == ["tool", "user"]
        result = healed.appended[0].message
        assert isinstance(result, ToolResultMessage) and "aborted" in result.text


async def test_history_is_returned_only_when_the_cache_is_stale(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("s")
        first = await store.begin_run(
            BeginRun(session_id="s", run_id="r1", lease=LeaseClaim("a", 5000), messages=[UserMessage(content="one")])
        )
        assert first.history is not None and len(first.history.messages) == 1
        await store.write("s", [FinishRun("r1", "completed")], lease=LeaseClaim("a", 5000, first.fence))
        fresh = await store.begin_run(
            BeginRun(
                session_id="s",
                run_id="r2",
                lease=LeaseClaim("a", 5000),
                messages=[UserMessage(content="two")],
                cached_version=first.version,
            )
        )
        assert fresh.history is None and [m.message.text for m in fresh.appended] == ["two"]
        await store.write("s", [FinishRun("r2", "completed")], lease=LeaseClaim("a", 5000, fresh.fence))
        stale = await store.begin_run(
            BeginRun(session_id="s", run_id="r3", lease=LeaseClaim("a", 5000), cached_version=first.version)
        )
        assert stale.history is not None and [m.text for m in stale.history.messages] == ["one", "two"]
        assert stale.history.seqs == [1, 2]


async def test_inbox_is_merged_in_order_and_consumed_once(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("s")
        assert await store.enqueue("s", "ignored", only_if_busy=True) is None  # idle: not queued
        await store.enqueue("s", "first")
        assert await store.enqueue("s", "second") == 2
        outcome = await store.begin_run(
            BeginRun(session_id="s", run_id="r", lease=LeaseClaim("a", 5000), messages=[UserMessage(content="now")])
        )
        texts = [m.message.text for m in outcome.appended]
        assert texts == ["<follow_up>\nfirst\n\nsecond\n</follow_up>", "now"]
        assert await store.inbox_depth("s") == 0
        assert await store.enqueue("s", "while busy", only_if_busy=True) == 1


async def test_prune_compacted_keeps_the_newest_rows_even_when_old(db_path: str) -> None:
    import time as _time

    from power_loop.store.rows import Compact

    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("s")
        await store.write("s", [Append([UserMessage(content=f"m{i}") for i in range(10)])])
        await store.write("s", [Compact(through_seq=4, summary="first four")])
        await store.write("s", [Compact(through_seq=8, summary="first eight")])
        future = int(_time.time() * 1000) + 60_000  # every folded row is "old enough"
        # Both limits: a row goes only when it is old enough AND beyond the newest 3.
        assert await store.prune_compacted("s", older_than_ms=future, keep_last=3) == 5
        seqs = [m.seq for m in await store.load_messages("s", include_compacted=True)]
        assert seqs == [6, 7, 8, 9, 10]
        # Nothing beyond keep_last: nothing deleted, but the older summary still goes.
        assert await store.prune_compacted("s", keep_last=3) == 0
        (count,) = (
            await store.execute_fetchall(
                "SELECT COUNT(*) FROM compactions WHERE session = (SELECT id FROM sessions WHERE session_id = 's')"
            )
        )[0]
        assert count == 1
        assert [m.message.text for m in await store.load_messages("s")][0].endswith("first eight")


async def test_corrupt_inbox_rows_raise_a_clear_error(db_path: str) -> None:
    from power_loop import CorruptRecordError

    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("s")
        await store.enqueue("s", "fine")
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE inbox SET body = '{broken'")
    conn.close()
    async with SQLiteSessionStore(db_path) as store:
        with pytest.raises(CorruptRecordError, match="inbox item of session 's'") as info:
            await store.begin_run(BeginRun(session_id="s", run_id="r", lease=LeaseClaim("a", 5000)))
        assert info.value.session_id == "s"
        # The failed begin rolled back: no lease was taken, the item is still there.
        assert await store.inbox_depth("s") == 1


async def test_a_version_5_file_with_data_migrates_to_the_counters(db_path: str) -> None:
    from contextlib import closing

    from power_loop.store.schema import MIGRATIONS

    with closing(sqlite3.connect(db_path, isolation_level=None)) as raw:
        for migration in MIGRATIONS[:5]:
            migration(raw)
        raw.execute("PRAGMA user_version = 5")
        raw.execute("INSERT INTO sessions (session_id, created_at, updated_at) VALUES ('old', 0, 0)")
        for seq in (1, 2, 3):
            raw.execute(
                "INSERT INTO messages (session_id, seq, role, body, created_at) VALUES ('old', ?, 'user', ?, 0)",
                (seq, f'{{"role": "user", "content": "m{seq}"}}'),
            )
        raw.execute(
            "INSERT INTO timers (session_id, timer_id, due_at, note, created_at, updated_at) "
            "VALUES ('old', 4, 9, 'n', 0, 0)"
        )
    async with SQLiteSessionStore(db_path) as store:
        assert await store.execute_fetchall("PRAGMA user_version") == [(LATEST_VERSION,)]
        out = await store.write("old", [Append([UserMessage(content="m4")])])
        assert out.seqs == (4,)
        assert [m.seq for m in await store.load_messages("old")] == [1, 2, 3, 4]
        assert (await store.schedule_timer("old", due_at=10, note="next")).timer_id == 5


def test_a_transaction_reuses_a_cursor_only_once_its_caller_has_let_go(tmp_path: Any) -> None:
    """Statements of one transaction share a cursor while no caller holds the last one (fewer
    objects for the collector); a cursor a caller still iterates or reads is never reused."""
    from power_loop.store._sqlite_tx import SQLiteTx

    conn = sqlite3.connect(tmp_path / "cursors.db")
    try:
        conn.execute("CREATE TABLE t (x INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(5)])
        tx = SQLiteTx(conn)
        seen = []
        for row in tx.execute("SELECT x FROM t ORDER BY x"):  # iterated while others run
            seen.append(row["x"])
            assert tx.execute("SELECT COUNT(*) AS n FROM t").fetchone()["n"] == 5
        assert seen == [0, 1, 2, 3, 4]
        held = tx.execute("UPDATE t SET x = x + 1")
        assert tx.execute("SELECT MAX(x) AS m FROM t").fetchone()["m"] == 5
        assert held.rowcount == 5  # still its own statement's count
        first = tx.execute("SELECT 1 AS one")
        first_id = id(first)
        assert first.fetchone()["one"] == 1
        del first
        second = tx.execute("SELECT 2 AS two")  # the caller let go: the same cursor again
        assert id(second) == first_id and second.fetchone()["two"] == 2
    finally:
        conn.close()
