"""Typed capabilities: what a tool may do through its ``ToolContext`` (``ctx.timers``,
``ctx.inbox``, ``ctx.session``), and the public ``TimerHost`` interface a ``TimerRunner``
drives its loop through."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable

import pytest

from power_loop import (
    AgentEventType,
    AgentHooks,
    BaseEventPayload,
    StatefulAgentLoop,
    StatefulResult,
    TimerFiredPayload,
    TimerHost,
    TimerRunner,
    ToolCapabilities,
    ToolContext,
    ToolError,
    ToolRegistry,
    UserMessage,
    register_timer_tools,
    tool,
    wake_up_message,
)
from power_loop.store import SQLiteSessionStore
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import text_reply, tool_reply
from power_loop.timers import TimerBudgetExceeded

from .helpers import EventLog

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "power_loop"


async def test_a_tool_uses_each_capability_in_a_real_run(db_path: str) -> None:
    seen: dict[str, object] = {}

    @tool
    async def plan(ctx: ToolContext) -> str:
        """Plan the next check."""
        seen["loop"] = ctx.loop
        seen["messages"] = await ctx.session.messages()
        seen["metadata"] = dict(await ctx.session.metadata())
        row = await ctx.timers.schedule(delay_s=3600, note="check the deploy")
        seen["armed"] = [t.timer_id for t in await ctx.timers.armed()]
        seen["depth"] = await ctx.inbox.enqueue("note from the tool")
        return f"timer {row.timer_id}"

    llm = ScriptedLLM([tool_reply(("plan", {}, "c1")), text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([plan])) as loop:
        sid = await loop.new_session_async(metadata={"team": "ops"})
        result = await loop.send("plan it", sid)
        timers = await loop.list_timers_async(sid)

    assert result.status == "completed" and result.final_text == "done"
    assert seen["loop"] is loop
    messages = seen["messages"]
    assert isinstance(messages, list) and isinstance(messages[0], UserMessage)
    assert messages[0].text == "plan it"
    assert seen["metadata"] == {"team": "ops"}
    assert [(t.timer_id, t.note) for t in timers] == [(1, "check the deploy")]
    assert seen["armed"] == [1] and seen["depth"] == 1
    # The queued follow-up reached the model right after the tool's result, in the same run.
    second = llm.requests[1].messages
    assert second[-2].role == "tool" and second[-1].role == "user"
    assert "note from the tool" in second[-1].text


async def test_a_call_run_again_schedules_its_wake_up_once(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        first = await loop.tool_capabilities(sid, "call-1").timers.schedule(delay_s=60, note="n")
        again = await loop.tool_capabilities(sid, "call-1").timers.schedule(delay_s=60, note="n")
        other = await loop.tool_capabilities(sid, "call-2").timers.schedule(delay_s=60, note="n")
        assert first.timer_id == again.timer_id != other.timer_id
        assert await loop.tool_capabilities(sid, "call-3").timers.cancel(other.timer_id)
        assert [t.timer_id for t in await loop.tool_capabilities(sid, "x").timers.armed()] == [first.timer_id]
        timers = loop.tool_capabilities(sid, "call-4").timers
        for bad in ({"delay_s": -1, "note": "n"}, {"delay_s": float("nan"), "note": "n"}, {"delay_s": 1, "note": " "}):
            with pytest.raises(ValueError):
                await timers.schedule(**bad)  # type: ignore[arg-type]
        with pytest.raises(TimerBudgetExceeded):
            await timers.schedule(delay_s=60, note="one too many", max_live=1)


async def test_a_context_built_with_a_loop_gets_its_capabilities(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        ctx = ToolContext(session_id=sid, tool_call_id="c", tool_name="t", loop=loop)
        assert isinstance(ctx.capabilities, ToolCapabilities)
        assert await ctx.session.messages() == []
    bare = ToolContext(session_id="s", tool_call_id="c", tool_name="t")
    assert bare.capabilities is None
    for name in ("timers", "inbox", "session"):
        with pytest.raises(ToolError, match="outside a run"):
            getattr(bare, name)


async def test_the_wake_up_tools_refuse_outside_a_loop() -> None:
    registry = register_timer_tools(ToolRegistry())
    answer = await registry.invoke_async("list_wakeups", {})
    assert answer.startswith("Error: wake-up tools only work inside an agent session")


async def test_a_wake_up_scheduled_by_a_tool_kicks_the_running_runner(db_path: str) -> None:
    """The runner scans once an hour here: only the news of the scheduled timer can make it
    deliver, and it does, into the session's inbox and then its conversation."""

    @tool
    async def soon(ctx: ToolContext) -> str:
        """Wake me now."""
        await ctx.timers.schedule(delay_s=0, note="now")
        return "ok"

    llm = ScriptedLLM([tool_reply(("soon", {}, "c1")), text_reply("done")], rule=lambda r: text_reply("woke"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([soon])) as loop:
        fired = asyncio.Event()
        loop.event_bus.subscribe(AgentEventType.TIMER_FIRED, lambda event: fired.set())
        sid = await loop.new_session_async()
        async with TimerRunner(loop, scan_interval_s=3600) as runner:
            await loop.send("go", sid)
            await asyncio.wait_for(fired.wait(), timeout=60)
            await runner.drain()
        texts = [m["content"] for m in await loop.get_messages_async(sid) if m["role"] == "user"]
    assert texts == ["go", wake_up_message(1, "now")]


class RecordingHost:
    """A ``TimerHost`` that is not a loop: a real store, real hooks, and records of what the
    runner asked for."""

    def __init__(self, store: SQLiteSessionStore) -> None:
        self._store = store
        self._hooks = AgentHooks()
        self.listeners: list[Callable[[], None]] = []
        self.woken: list[str] = []
        self.published: list[tuple[str, AgentEventType, BaseEventPayload, str, int]] = []

    @property
    def store(self) -> SQLiteSessionStore:
        return self._store

    @property
    def hooks(self) -> AgentHooks:
        return self._hooks

    async def wake(self, session_id: str) -> StatefulResult:
        self.woken.append(session_id)
        return StatefulResult(session_id=session_id, status="completed", final_text="", usage={})

    async def publish_session_event(
        self,
        session_id: str,
        event_type: AgentEventType,
        data: BaseEventPayload,
        *,
        source: str,
        min_seq: int = 0,
    ) -> None:
        self.published.append((session_id, event_type, data, source, min_seq))

    def add_timer_listener(self, listener: Callable[[], None]) -> None:
        self.listeners.append(listener)

    def remove_timer_listener(self, listener: Callable[[], None]) -> None:
        self.listeners.remove(listener)


async def test_a_runner_drives_any_timer_host(db_path: str) -> None:
    store = SQLiteSessionStore(db_path)
    await store.open()
    try:
        await store.create_session("s1")
        host = RecordingHost(store)
        typed: TimerHost = host  # the double satisfies the protocol (checked by mypy)
        runner = TimerRunner(typed, scan_interval_s=3600)
        await runner.start()
        assert len(host.listeners) == 1
        armed = await store.schedule_timer("s1", due_at=0, note="hello")
        for listener in host.listeners:
            listener()  # what the host does when a timer is scheduled through it
        for _ in range(100_000):  # the kick reaches the runner on this event loop
            if host.woken:
                break
            await asyncio.sleep(0)
        assert host.woken, "the kicked runner never delivered"
        await asyncio.wait_for(runner.drain(), 30)  # hang guards only
        await asyncio.wait_for(runner.stop(), 30)
        assert host.listeners == []
        # The double does not drain the inbox, so a later orphan scan may wake s1 again.
        assert set(host.woken) == {"s1"}
        [(sid, event_type, payload, source, min_seq)] = host.published
        assert (sid, event_type, source) == ("s1", AgentEventType.TIMER_FIRED, "timer")
        assert payload.to_dict()["outcome"] == "delivered" and payload.to_dict()["timer_id"] == armed.timer_id
        assert min_seq > 0
        assert await store.inbox_depth("s1") == 1
    finally:
        await store.close()


async def test_the_real_loop_publishes_and_wakes_through_its_public_interface(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda r: text_reply("read the inbox"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.store.enqueue(sid, "queued while idle", kind="follow_up")
        result = await loop.wake(sid)
        assert result.status == "completed" and result.final_text == "read the inbox"
        assert "queued while idle" in llm.requests[0].messages[-1].text
        calls: list[int] = []
        loop.add_timer_listener(lambda: calls.append(1))
        await loop.schedule_timer_async(sid, delay_s=60, note="n")
        assert calls == [1]
        before = log.of("timer_fired")
        payload = TimerFiredPayload(timer_id=9, note="n", due_at=0, outcome="skipped")
        await loop.publish_session_event(sid, AgentEventType.TIMER_FIRED, payload, source="timer", min_seq=1000)
        [event] = log.of("timer_fired")[len(before) :]
        assert event.seq == 1000 and event.session_id == sid and event.source == "timer"


def test_timers_reach_their_loop_only_through_public_members() -> None:
    for path in (PACKAGE / "timers").glob("*.py"):
        source = path.read_text()
        for private in ("loop._", "._rt", "host._"):
            assert private not in source, f"{path.name} uses {private!r}"
