"""The event log (``AgentLoopConfig(persist_events=True)``): every event but stream deltas is
stored with its seq, replayed by ``loop.iter_events`` as typed events, after a restart, on
both backends; seqs are unique and increasing across runs and restarts; nothing is stored
when the option is off; a deleted session's events go with it."""

from __future__ import annotations

import time

import pytest

from power_loop import (
    AgentEvent,
    AgentEventType,
    AgentLoopConfig,
    SessionNotFoundError,
    StatefulAgentLoop,
    TimerFiredPayload,
    ToolCallCompletedPayload,
    UsageUpdatedPayload,
)
from power_loop.store.schema import LATEST_VERSION
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.timers import TimerRunner

from .helpers import EventLog, RawDatabase, registry

PERSIST = AgentLoopConfig(persist_events=True)


def _script() -> ScriptedLLM:
    return ScriptedLLM([tool_reply(("add", {"a": 2, "b": 3})), text_reply("5"), text_reply("bye")])


async def _replay(loop: StatefulAgentLoop, sid: str, **kwargs: int) -> list[AgentEvent]:
    return [event async for event in loop.iter_events(sid, **kwargs)]


def _key(events: list[AgentEvent]) -> list[dict[str, object]]:
    return [e.to_dict() for e in events]


async def test_events_are_replayed_after_a_restart_with_their_seqs(shared_db: str) -> None:
    llm = _script()
    async with StatefulAgentLoop(llm=llm, db_path=shared_db, config=PERSIST, tool_registry=registry()) as loop:
        seen = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.send("add 2 and 3", sid)
        await loop.send("thanks", sid)
        before = await _replay(loop, sid)
    published = [
        e for e in seen.events if e.type not in (AgentEventType.STREAM_DELTA, AgentEventType.STREAM_THINK_DELTA)
    ]
    assert _key(before) == _key(published)  # what subscribers saw, every field
    assert before[0].type is AgentEventType.SESSION_STARTED
    assert before[-1].type is AgentEventType.SESSION_ENDED  # published after the run's last commit
    async with StatefulAgentLoop(llm=llm, db_path=shared_db, config=AgentLoopConfig()) as reopened:
        after = await _replay(reopened, sid)
    assert _key(after) == _key(before)
    # The typed payloads are rebuilt: equal to the ones published.
    assert [e.data for e in after] == [e.data for e in published]
    done = next(e for e in after if e.type is AgentEventType.TOOL_CALL_COMPLETED)
    assert isinstance(done.data, ToolCallCompletedPayload) and done.data.tool_input == {"a": 2, "b": 3}
    usage = next(e for e in after if e.type is AgentEventType.USAGE_UPDATED)
    assert isinstance(usage.data, UsageUpdatedPayload) and usage.data.run_usage["calls"] == 1


async def test_seqs_are_unique_and_increasing_across_runs_and_restarts(shared_db: str) -> None:
    llm = ScriptedLLM([text_reply("one"), text_reply("two"), text_reply("three")])
    async with StatefulAgentLoop(llm=llm, db_path=shared_db, config=PERSIST) as loop:
        sid = await loop.new_session_async()
        await loop.send("1", sid)
        await loop.send("2", sid)
    async with StatefulAgentLoop(llm=llm, db_path=shared_db, config=PERSIST) as loop:
        await loop.send("3", sid)
        events = await _replay(loop, sid)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)) and seqs[0] >= 1
    runs = [e.payload["run_id"] for e in events if e.type is AgentEventType.SESSION_STARTED]
    assert len(runs) == 3 and len(set(runs)) == 3
    ended = [e for e in events if e.type is AgentEventType.SESSION_ENDED]
    assert [e.payload["final_text"] for e in ended] == ["one", "two", "three"]


async def test_after_seq_pages_through_the_log(shared_db: str) -> None:
    async with StatefulAgentLoop(llm=_script(), db_path=shared_db, config=PERSIST, tool_registry=registry()) as loop:
        sid = await loop.new_session_async()
        await loop.send("add", sid)
        everything = await _replay(loop, sid)
        assert len(everything) > 6
        middle = everything[3].seq
        assert _key(await _replay(loop, sid, after_seq=middle, page_size=2)) == _key(everything[4:])
        assert _key(await _replay(loop, sid, page_size=1)) == _key(everything)
        assert await _replay(loop, sid, after_seq=everything[-1].seq) == []
        with pytest.raises(ValueError):
            await _replay(loop, sid, after_seq=-1)


async def test_nothing_is_stored_when_the_option_is_off(db_path: str) -> None:
    async with StatefulAgentLoop(llm=_script(), db_path=db_path, tool_registry=registry()) as loop:
        seen = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.send("add", sid)
        assert seen.events  # events were published ...
        assert await _replay(loop, sid) == []  # ... and none stored
        assert loop._rt.event_log is None


async def test_events_outside_runs_are_stored_and_go_with_their_session(shared_db: str) -> None:
    async with StatefulAgentLoop(llm=_script(), db_path=shared_db, config=PERSIST) as loop:
        sid = await loop.new_session_async()
        await loop.publish_session_event(
            sid, AgentEventType.TIMER_FIRED, TimerFiredPayload(timer_id=7, note="wake"), source="timer", min_seq=40
        )
        (fired,) = await _replay(loop, sid)
        assert (fired.seq, fired.source, fired.data) == (40, "timer", TimerFiredPayload(timer_id=7, note="wake"))
        await loop.close_session_async(sid)
        with pytest.raises(SessionNotFoundError):
            await _replay(loop, sid)
        assert await loop.store.execute_fetchall("SELECT COUNT(*) FROM events") == [(0,)]  # type: ignore[attr-defined]


async def test_an_unknown_session_has_no_log(db_path: str) -> None:
    async with StatefulAgentLoop(llm=_script(), db_path=db_path, config=PERSIST) as loop:
        with pytest.raises(SessionNotFoundError):
            await _replay(loop, "nope")


def test_persist_events_is_validated() -> None:
    from power_loop import ConfigurationError

    with pytest.raises(ConfigurationError):
        AgentLoopConfig(persist_events="yes")  # type: ignore[arg-type]


async def test_a_version_9_store_is_upgraded_in_place(shared_db: str) -> None:
    llm = ScriptedLLM([text_reply("one"), text_reply("two")])
    async with StatefulAgentLoop(llm=llm, db_path=shared_db) as loop:
        sid = await loop.new_session_async()
        await loop.send("1", sid)
    raw = RawDatabase(shared_db)  # back to version 9: nothing of versions 10 and 11
    for table in ("events", "approvals", "budget_holds", "budget_ledger"):
        raw.execute(f"DROP TABLE {table}")
    for column in ("paused_at", "chain_wall_ms"):
        raw.execute(f"ALTER TABLE sessions DROP COLUMN {column}")
    for column in ("cron", "tz", "misfire"):
        raw.execute(f"ALTER TABLE timers DROP COLUMN {column}")
    raw.execute("UPDATE power_loop_schema SET version = 9" if raw.postgres else "PRAGMA user_version = 9")
    raw.close()
    async with StatefulAgentLoop(llm=llm, db_path=shared_db, config=PERSIST) as loop:
        await loop.send("2", sid)
        events = await _replay(loop, sid)
        assert len(await loop.get_messages_async(sid)) == 4  # the history is kept
    assert [e.payload["final_text"] for e in events if e.type is AgentEventType.SESSION_ENDED] == ["two"]
    raw = RawDatabase(shared_db)
    version = raw.execute("SELECT version FROM power_loop_schema" if raw.postgres else "PRAGMA user_version")
    assert version.fetchone()[0] == LATEST_VERSION
    raw.close()


async def test_a_timer_delivery_and_its_wake_run_are_in_the_log(shared_db: str) -> None:
    llm = ScriptedLLM([text_reply("hi"), text_reply("the oven is done")])
    async with StatefulAgentLoop(llm=llm, db_path=shared_db, config=PERSIST) as loop:
        sid = await loop.new_session_async()
        await loop.send("hello", sid)
        await loop.schedule_timer_async(sid, due_at_ms=int(time.time() * 1000) - 1, note="check the oven")
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 1
        await runner.drain()
    async with StatefulAgentLoop(llm=llm, db_path=shared_db) as reopened:
        events = await _replay(reopened, sid)
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs))
    fired = [e for e in events if e.type is AgentEventType.TIMER_FIRED]
    assert (
        len(fired) == 1
        and fired[0].source == "timer"
        and fired[0].data
        == TimerFiredPayload(timer_id=1, note="check the oven", due_at=fired[0].payload["due_at"], outcome="delivered")
    )
    ended = [e.payload["final_text"] for e in events if e.type is AgentEventType.SESSION_ENDED]
    assert ended == ["hi", "the oven is done"]  # the wake run's events too
