"""0.11's public SessionStore methods, enums, rows and sinks, against a real SQLite file."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
import warnings

import pytest

from power_loop import (
    MessageRow,
    MessageSink,
    MessageState,
    NullSink,
    SessionBusyError,
    SessionKind,
    SessionNotFoundError,
    SessionPendingError,
    SessionStatus,
    SessionStore,
    SQLiteSink,
    StatefulAgentLoop,
    ToolRegistry,
    tool,
)
from power_loop.store import UnsupportedStoreCallError
from power_loop.testing import ScriptedLLM, text_reply, tool_reply

CALL = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}


# --------------------------------------------------------------------------- opening


def test_open_on_the_class_is_sync_and_on_an_instance_async(db_path: str) -> None:
    store = SessionStore.open(db_path)  # 0.11: a sync classmethod returning an open store
    assert isinstance(store, SessionStore)
    sid = store.create_session(system_prompt="p")
    assert store.get_session(sid) is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.close()  # 0.11's close was sync: nothing left unawaited
        gc.collect()

    async def use() -> None:
        other = SessionStore(db_path)
        assert await other.open() is other
        assert other.is_open
        assert (await other.get_session_async(sid)) is not None
        await other.close()
        assert not other.is_open

    asyncio.run(use())


def test_constructor_takes_0_11_connection_and_path(db_path: str) -> None:
    SessionStore.open(db_path).close()
    conn = sqlite3.connect(db_path)
    try:
        by_conn = SessionStore(conn, db_path)
        by_conn_only = SessionStore(conn)
        sid = by_conn.create_session()
        assert by_conn_only.get_session(sid) is not None
        assert by_conn_only._abs_path == by_conn._abs_path
    finally:
        conn.close()
    memory = sqlite3.connect(":memory:")
    with pytest.raises(Exception, match="in-memory"):
        SessionStore(memory)
    memory.close()


# --------------------------------------------------------------------------- sessions


def test_create_session_0_11_form_kind_status_children(db_path: str) -> None:
    store = SessionStore.open(db_path)
    sid = store.create_session(system_prompt="hi", model="m1", config={"a": 1}, metadata={"x": 1})
    assert sid.startswith("sess_") and len(sid) == 29
    row = store.get_session(sid)
    assert row is not None
    assert row.kind == SessionKind.ROOT and row.kind == "root"
    assert row.status == SessionStatus.ACTIVE
    assert (row.model, dict(row.config), dict(row.metadata), row.system_prompt) == ("m1", {"a": 1}, {"x": 1}, "hi")

    child = store.create_session(parent_session_id=sid, kind=SessionKind.SUBAGENT, spawn_tool_call_id="c9")
    crow = store.get_session(child)
    assert crow is not None
    assert (crow.kind, crow.spawn_depth, crow.spawn_tool_call_id, crow.parent_session_id) == (
        SessionKind.SUBAGENT,
        1,
        "c9",
        sid,
    )
    assert [r.session_id for r in store.list_children(sid)] == [child]
    assert store.create_session(session_id="mine") == "mine"
    with pytest.raises(ValueError, match="already exists"):
        store.create_session(session_id="mine")

    store.update_session_prompt(sid, "new prompt")
    store.archive_session(sid)
    row = store.get_session(sid)
    assert row is not None and row.system_prompt == "new prompt" and row.status == SessionStatus.ARCHIVED
    with pytest.raises(SessionNotFoundError):
        store.archive_session("nope")
    assert store.close_session(sid) == 2
    assert store.get_session(sid) is None and store.get_session(child) is None
    assert store.close_session(sid) == 0


async def test_loop_sessions_read_back_as_root(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        row = await loop.store.get_session_async(sid)
        assert row is not None and row.kind == SessionKind.ROOT and row.status == "active"
        # this version's own spelling is accepted when writing
        await loop.store.create_session("s-main", kind="main")
        again = await loop.store.get_session_async("s-main")
        assert again is not None and again.kind is SessionKind.ROOT


# --------------------------------------------------------------------------- messages


def test_append_message_keeps_tool_calls_paired(db_path: str) -> None:
    store = SessionStore.open(db_path)
    sid = store.create_session()
    assert store.append_message(sid, role="user", content="hello") == 1
    seq = store.append_message(sid, role="assistant", content=None, tool_calls=[CALL])
    state = store.get_state(sid)
    assert state is not None and state.next_seq == 3
    assert state.pending is not None and state.pending["tool_call_ids"] == ["c1"]
    assert state.pending["assistant_seq"] == seq

    with pytest.raises(SessionPendingError, match="loop.resume"):
        store.append_message(sid, role="user", content="butting in")
    with pytest.raises(ValueError, match="no unanswered tool call"):
        store.append_message(sid, role="tool", content="r", tool_call_id="other")
    store.append_message(sid, role="tool", content="result", tool_call_id="c1", name="lookup")
    state = store.get_state(sid)
    assert state is not None and state.pending is None and state.next_seq == 4

    row = store.get_message(sid, seq)
    assert isinstance(row, MessageRow)
    assert (row.role, row.content, row.tool_calls, row.state) == ("assistant", "", [CALL], MessageState.ACTIVE)
    assert store.get_message(sid, 99) is None
    assert [m.role for m in store.load_all_messages(sid)] == ["user", "assistant", "tool"]
    assert [m.tool_call_id for m in store.load_active_messages(sid)] == [None, None, "c1"]
    with pytest.raises(SessionNotFoundError):
        store.append_message("nope", role="user", content="x")


async def test_appended_messages_reach_the_next_run(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("one"), text_reply("two")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        await loop.send("first", sid)  # the loop now caches the history
        await loop.store.append_message_async(sid, role="user", content="added by hand")
        await loop.send("second", sid)
        seen = [(m.role, m.text) for m in llm.requests[-1].messages if m.role != "system"]
        assert seen == [("user", "first"), ("assistant", "one"), ("user", "added by hand"), ("user", "second")]


async def test_writers_refuse_while_a_run_holds_the_session(db_path: str) -> None:
    started, release = asyncio.Event(), asyncio.Event()

    @tool
    async def wait_here() -> str:
        """Wait until released."""
        started.set()
        await release.wait()
        return "done"

    llm = ScriptedLLM([tool_reply(("wait_here", {})), text_reply("end")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([wait_here])) as loop:
        sid = await loop.new_session_async()
        run = asyncio.create_task(loop.send("go", sid))
        await asyncio.wait_for(started.wait(), 10)
        with pytest.raises(SessionBusyError, match="loop.follow_up"):
            await loop.store.append_message_async(sid, role="user", content="x")
        with pytest.raises(SessionBusyError):
            await asyncio.to_thread(
                loop.store.record_compaction,
                sid,
                from_seq=1,
                to_seq=1,
                note_content="s",
                before_tokens=1,
                after_tokens=1,
                round_index=0,
            )
        release.set()
        result = await asyncio.wait_for(run, 10)
        assert result.final_text == "end"
        assert [m.role for m in await loop.store.load_all_messages_async(sid)] == [
            "user",
            "assistant",
            "tool",
            "assistant",
        ]


def test_unsupported_writers_name_the_replacement(db_path: str) -> None:
    store = SessionStore.open(db_path)
    sid = store.create_session()
    with pytest.raises(UnsupportedStoreCallError, match="loop.abort_pending"):
        store.set_pending(sid, {"assistant_seq": 1, "tool_calls": []})
    with pytest.raises(UnsupportedStoreCallError, match="max_rounds"):
        store.set_round_index(sid, 3)
    assert store.get_state(sid) == store.get_state(sid)  # nothing changed
    assert store.get_state("nope") is None


# --------------------------------------------------------------------------- compaction


def test_record_compaction_folds_a_prefix(db_path: str) -> None:
    store = SessionStore.open(db_path)
    sid = store.create_session()
    store.append_message(sid, role="user", content="u1")
    store.append_message(sid, role="assistant", tool_calls=[CALL])
    store.append_message(sid, role="tool", content="r", tool_call_id="c1")
    store.append_message(sid, role="assistant", content="a")
    with pytest.raises(ValueError, match="tool call 'c1'"):
        store.record_compaction(
            sid, from_seq=1, to_seq=2, note_content="s", before_tokens=10, after_tokens=2, round_index=0
        )
    with pytest.raises(ValueError, match="prefix"):
        store.record_compaction(
            sid, from_seq=2, to_seq=3, note_content="s", before_tokens=10, after_tokens=2, round_index=0
        )
    assert store.record_compaction(
        sid, from_seq=1, to_seq=3, note_content="summary", before_tokens=10, after_tokens=2, round_index=0
    ) == (1, 3)
    states = [m.state for m in store.load_all_messages(sid)]
    assert states == [MessageState.COMPACTED_OUT] * 3 + [MessageState.ACTIVE]
    active = store.load_active_messages(sid)
    assert [(m.role, m.name, m.content) for m in active] == [
        ("system", "compact_note", "summary"),
        ("assistant", None, "a"),
    ]
    (row,) = store.list_compactions(sid)
    assert (row.compact_seq, row.from_seq, row.to_seq, row.before_tokens, row.after_tokens) == (1, 1, 3, 10, 2)
    state = store.get_state(sid)
    assert state is not None and state.last_compact_seq == 1


# --------------------------------------------------------------------------- usage and stats


def test_usage_and_stats(db_path: str) -> None:
    store = SessionStore.open(db_path)
    sid = store.create_session()
    store.record_usage(sid, round_index=2, prompt_tokens=10, completion_tokens=5, total_tokens=15, model="m")
    assert store.get_session_stats(sid) is None  # usage rows do not change the stats (as in 0.11)
    state = store.get_state(sid)
    assert state is not None and state.round_index == 2
    store.bump_session_stats(
        sid, {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}, rounds=2, tool_calls=1
    )
    store.bump_session_stats(sid, {"prompt_tokens": 1}, rounds=1)
    stats = store.get_session_stats(sid)
    assert stats is not None
    assert (stats.sends, stats.rounds, stats.tool_calls, stats.prompt_tokens, stats.total_tokens) == (2, 3, 1, 11, 15)
    assert [s.session_id for s in store.list_session_stats()] == [sid]
    with pytest.raises(SessionNotFoundError):
        store.bump_session_stats("nope", {})


# --------------------------------------------------------------------------- timers


async def test_timers_0_11_methods(db_path: str) -> None:
    store = SessionStore.open(db_path)
    sid = store.create_session()
    now = int(time.time() * 1000)
    due = store.create_timer(sid, due_at=now - 10, note="wake")
    later = store.create_timer(sid, due_at=now + 3_600_000, note="later")
    assert store.get_timer(sid, due.timer_id) == due
    assert store.get_timer(sid, 999) is None
    assert [t.timer_id for t in store.due_timers()] == [due.timer_id]
    assert [t.timer_id for t in store.due_timers(now=now + 7_200_000, limit=1)] == [due.timer_id]

    # claiming or firing by hand is the runner's job
    with pytest.raises(UnsupportedStoreCallError, match="loop.cancel_timer"):
        store.transition_timer(sid, due.timer_id, from_status="armed", to_status="firing")
    # postpone (compare-and-set) and cancel
    assert store.transition_timer(sid, later.timer_id, from_status="armed", to_status="armed", due_at=now + 10)
    moved = store.get_timer(sid, later.timer_id)
    assert moved is not None and moved.due_at == now + 10
    assert store.transition_timer(sid, later.timer_id, from_status="armed", to_status="cancelled")
    assert not store.transition_timer(sid, later.timer_id, from_status="armed", to_status="cancelled")
    assert [t.timer_id for t in store.list_timers_sync(sid)] == [due.timer_id]
    every = store.list_timers_sync(sid, statuses=("armed", "firing", "fired", "cancelled"))
    assert sorted(t.timer_id for t in every) == [due.timer_id, later.timer_id]

    # a runner that died mid-delivery: its claim expired, the timer is re-armed
    (claimed,) = await store.claim_due_timers("dead-runner", lease_ms=-1, limit=10)
    assert [t.status for t in store.list_timers_sync(sid, statuses=("firing",))] == ["claimed"]
    assert store.recover_stale_firing_timers(older_than_ms=0) == 1
    again = store.get_timer(sid, claimed.timer_id)
    assert again is not None and again.status == "armed"
    # a live claim is never taken
    await store.claim_due_timers("live-runner", lease_ms=3_600_000, limit=10)
    assert store.recover_stale_firing_timers(older_than_ms=0) == 0
    await store.close()


# --------------------------------------------------------------------------- sinks


def test_sinks(db_path: str) -> None:
    assert isinstance(NullSink(), MessageSink)
    NullSink().on_message_appended({"role": "user", "content": "x"}, round_index=0)
    store = SessionStore.open(db_path)
    sid = store.create_session()
    sink = SQLiteSink(store, sid)
    assert isinstance(sink, MessageSink)
    sink.init_history_seqs([])
    sink.on_round_started(0)
    sink.on_message_appended({"role": "user", "content": "hi"}, round_index=0)
    sink.on_message_appended({"role": "assistant", "content": None, "tool_calls": [CALL]}, round_index=0)
    sink.on_assistant_tool_calls(assistant_seq=2, tool_calls=[CALL], round_index=0)
    sink.on_message_appended({"role": "user", "content": "refused: calls are pending"}, round_index=0)
    sink.on_message_appended({"role": "tool", "tool_call_id": "c1", "content": "r"}, round_index=0)
    sink.on_round_ended(0, usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
    sink.on_message_appended({"role": "assistant", "content": "done"}, round_index=1)
    sink.on_compaction(
        fold_start_idx=0, fold_end_idx=2, summary_text="S", before_tokens=9, after_tokens=2, round_index=1
    )
    assert sink._history_seqs == [3, 4]
    assert [(m.role, m.content) for m in store.load_active_messages(sid)] == [("system", "S"), ("assistant", "done")]
    assert len(store.load_all_messages(sid)) == 4
