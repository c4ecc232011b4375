"""Typed events: order, payloads, streaming, isolation, sinks."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from power_loop import (
    AgentEvent,
    AgentEventBus,
    AgentEventType,
    AgentLoopConfig,
    HookPoint,
    StatefulAgentLoop,
    StreamDeltaPayload,
    ToolCallCompletedPayload,
    ToolRegistry,
)
from power_loop.contrib.jsonl import JsonlEventSink, read_events
from power_loop.contrib.logging_sink import attach_logging_sink
from power_loop.messages import Usage
from power_loop.testing import ScriptedLLM, ScriptedServer, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply

from .conftest import ServiceFactory
from .helpers import EventLog, registry

TOOL_THEN_TEXT = [
    "session_started",
    "round_started",
    "stream_started",
    "stream_completed",
    "status_changed",
    "usage_updated",
    "round_tools_present",
    "tool_call_started",
    "tool_call_completed",
    "round_completed",
    "round_started",
    "stream_started",
    "stream_delta",
    "stream_completed",
    "status_changed",
    "usage_updated",
    "round_tools_present",
    "round_completed",
    "session_ended",
]


def two_rounds() -> ScriptedLLM:
    return ScriptedLLM([tool_reply(("add", {"a": 2, "b": 3})), ScriptedReply(text="five", chunk_chars=100)])


async def test_event_order_for_a_tool_round_then_a_text_round(db_path: str) -> None:
    async with StatefulAgentLoop(llm=two_rounds(), db_path=db_path, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.send("2+3?", session_id=sid)
    assert log.types == TOOL_THEN_TEXT
    assert all(e.session_id == sid for e in log.events)
    seqs = [e.seq for e in log.events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e.round_index for e in log.of("round_started")] == [0, 1]
    kinds = [e.payload["kind"] for e in log.of("status_changed")]
    assert kinds == ["round_usage", "round_usage"]


async def test_typed_payloads_and_0_11_dict_view(db_path: str) -> None:
    async with StatefulAgentLoop(llm=two_rounds(), db_path=db_path, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.send("2+3?", session_id=sid)
    done = log.of("tool_call_completed")[0]
    assert isinstance(done.data, ToolCallCompletedPayload)
    assert (done.data.name, done.data.output, done.data.tool_call_id) == ("add", "5", "call_0_add")
    assert done.payload["tool_input"] == {"a": 2, "b": 3}
    assert done.payload["name"] == "add"
    delta = log.of("stream_delta")[0]
    assert isinstance(delta.data, StreamDeltaPayload) and delta.payload["text"] == "five"
    usage = log.of("usage_updated")
    assert [u.payload["usage"]["calls"] for u in usage] == [1, 1]
    assert usage[-1].payload["run_usage"]["calls"] == 2
    ended = log.of("session_ended")[0]
    assert (ended.payload["reason"], ended.payload["final_text"]) == ("completed", "five")
    assert ended.ts > 0


async def test_stream_deltas_concatenate_to_the_final_text(
    scripted_server: ScriptedServer, db_path: str, llm_factory: ServiceFactory, protocol: str
) -> None:
    text = "Streaming works: " + " ".join(f"token{i}" for i in range(60))
    scripted_server.push(ScriptedReply(text=text, reasoning="first I think", chunk_chars=5))
    async with StatefulAgentLoop(llm=llm_factory(protocol, scripted_server), db_path=db_path) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("stream please", session_id=sid)
    deltas = log.of("stream_delta")
    assert len(deltas) > 20
    assert "".join(e.payload["text"] for e in deltas) == result.final_text == text
    assert "".join(e.payload["text"] for e in log.of("stream_think_delta")) == "first I think"
    assert all(e.payload["is_think"] for e in log.of("stream_think_delta"))


async def test_budget_and_round_limit_status_kinds(db_path: str) -> None:
    # The first call fits; after it reports 5,000 tokens the second would not: the run ends
    # before it.
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 1}), usage=Usage.of_call(prompt_tokens=5_000))])
    config = AgentLoopConfig(max_tokens_per_run=5_050)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(), config=config) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.send("x", session_id=sid)
    assert [e.payload["kind"] for e in log.of("status_changed")] == ["round_usage", "budget_exceeded"]
    assert log.types[-1] == "session_ended"


async def test_a_failing_run_publishes_agent_error_and_closes_the_session(db_path: str) -> None:
    async with StatefulAgentLoop(llm=two_rounds(), db_path=db_path, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)

        def broken(ctx: Any) -> None:
            raise RuntimeError("hook bug")

        loop.hooks.register(HookPoint.ROUND_END, broken)
        sid = await loop.new_session_async()
        with pytest.raises(Exception, match="hook bug"):
            await loop.send("x", session_id=sid)
    assert log.types.count("session_started") == log.types.count("session_ended") == 1
    error = log.of("agent_error")[0]
    assert error.payload["error_type"] == "HookError" and "hook bug" in error.payload["error"]
    assert log.of("session_ended")[0].payload["reason"] == "error"


async def test_seq_is_monotonic_across_runs_and_loops(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda r: text_reply("ok"))
    seqs: list[int] = []
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        loop.event_bus.subscribe(None, lambda e: seqs.append(e.seq))
        sid = await loop.new_session_async()
        await loop.send("one", session_id=sid)
        await loop.send("two", session_id=sid)
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as again:
        again.event_bus.subscribe(None, lambda e: seqs.append(e.seq))
        await again.send("three", session_id=sid)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_suppressed_subscriber_errors_never_break_a_run(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    bus = AgentEventBus(suppress_subscriber_errors=True)
    seen: list[str] = []

    def broken(event: AgentEvent) -> None:
        raise ValueError("subscriber bug")

    async def broken_async(event: AgentEvent) -> None:
        raise ValueError("async subscriber bug")

    bus.subscribe(AgentEventType.ROUND_STARTED, broken)
    bus.subscribe(AgentEventType.STREAM_DELTA, broken_async)
    bus.subscribe(None, lambda e: seen.append(e.type.value), priority=-1)
    async with StatefulAgentLoop(llm=two_rounds(), db_path=db_path, tool_registry=registry(), event_bus=bus) as loop:
        sid = await loop.new_session_async()
        with caplog.at_level(logging.ERROR, logger="power_loop.events"):
            result = await loop.send("x", session_id=sid)
    assert result.status == "completed" and seen == TOOL_THEN_TEXT
    messages = [r.getMessage() for r in caplog.records]
    assert any("round_started" in m for m in messages)
    assert any("stream_delta" in m for m in messages)


async def test_unsuppressed_subscriber_errors_fail_the_run_visibly(db_path: str) -> None:
    bus = AgentEventBus()

    async def broken_async(event: AgentEvent) -> None:
        raise ValueError("async subscriber bug")

    bus.subscribe(AgentEventType.STREAM_DELTA, broken_async)
    async with StatefulAgentLoop(llm=two_rounds(), db_path=db_path, tool_registry=registry(), event_bus=bus) as loop:
        sid = await loop.new_session_async()
        with pytest.raises(ValueError, match="async subscriber bug"):
            await loop.send("x", session_id=sid)
        # The store is consistent: the next send works on a valid history.
        bus.unsubscribe(broken_async)
        loop.llm.push(text_reply("recovered"))  # type: ignore[attr-defined]
        assert (await loop.send("again", session_id=sid)).final_text == "recovered"


async def test_async_subscribers_are_awaited_in_priority_order() -> None:
    bus = AgentEventBus()
    order: list[str] = []

    async def slow(event: AgentEvent) -> None:
        await asyncio.sleep(0.01)
        order.append("slow")

    bus.subscribe(AgentEventType.SYSTEM_LOG, lambda e: order.append("low"), priority=-5)
    bus.subscribe(AgentEventType.SYSTEM_LOG, slow, priority=5)
    bus.subscribe(None, lambda e: order.append("any"))
    await bus.publish_async(AgentEvent(AgentEventType.SYSTEM_LOG, payload={"message": "hi"}))
    assert order == ["slow", "any", "low"]
    assert bus.unsubscribe(AgentEventType.SYSTEM_LOG, slow)
    order.clear()
    bus.publish(AgentEvent(AgentEventType.SYSTEM_LOG))
    assert order == ["any", "low"]


async def test_publish_tracks_async_subscribers_until_drained() -> None:
    bus = AgentEventBus()
    done: list[int] = []

    async def later(event: AgentEvent) -> None:
        await asyncio.sleep(0.01)
        done.append(event.seq)

    bus.subscribe(None, later)
    for seq in range(3):
        bus.publish(AgentEvent(AgentEventType.SYSTEM_LOG, seq=seq))
    assert done == []
    await bus.drain()
    assert sorted(done) == [0, 1, 2]


async def test_two_loops_do_not_share_hooks_or_events(db_path: str, tmp_path: Path) -> None:
    first = StatefulAgentLoop(llm=ScriptedLLM(rule=lambda r: text_reply("a")), db_path=db_path)
    second = StatefulAgentLoop(llm=ScriptedLLM(rule=lambda r: text_reply("b")), db_path=str(tmp_path / "other.db"))
    seen_first = EventLog(first.event_bus)
    hooked: list[str] = []
    first.hooks.register(HookPoint.SESSION_START, lambda ctx: hooked.append(ctx.session_id))
    assert first.event_bus is not second.event_bus and first.hooks is not second.hooks
    sid = await second.new_session_async()
    await second.send("hello", session_id=sid)
    assert seen_first.events == [] and hooked == []
    await first.aclose()
    await second.aclose()


async def test_jsonl_round_trip(db_path: str, tmp_path: Path) -> None:
    path = tmp_path / "audit" / "events.jsonl"
    async with StatefulAgentLoop(llm=two_rounds(), db_path=db_path, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)
        sink = JsonlEventSink(path).attach(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.send("2+3?", session_id=sid)
        await sink.aclose()
    replayed = list(read_events(path))
    assert [e.type for e in replayed] == [e.type for e in log.events]
    assert [e.to_dict() for e in replayed] == [json.loads(json.dumps(e.to_dict())) for e in log.events]
    completed = next(e for e in replayed if e.type is AgentEventType.TOOL_CALL_COMPLETED)
    assert isinstance(completed.data, ToolCallCompletedPayload) and completed.data.output == "5"
    path.write_text(path.read_text() + "not json\n")
    with pytest.raises(ValueError, match=r"events.jsonl:\d+"):
        list(read_events(path))


async def test_logging_sink_writes_one_json_line_per_event(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    llm = ScriptedLLM([text_reply("y" * 2_000)])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sink = attach_logging_sink(
            loop.event_bus,
            logger=logging.getLogger("audit"),
            max_field_len=50,
            events=["session_started", "session_ended"],
        )
        sid = await loop.new_session_async()
        with caplog.at_level(logging.INFO, logger="audit"):
            await loop.send("x", session_id=sid)
        sink.detach()
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "audit"]
    assert [r["type"] for r in records] == ["session_started", "session_ended"]
    assert records[1]["payload"]["final_text"].startswith("y" * 50 + "...(+1950 chars)")


async def test_jsonl_sink_survives_a_lone_surrogate_in_a_payload(db_path: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"

    def ls() -> str:
        """List a directory."""
        return "caf\udce9.txt"  # what os.listdir gives for a non-UTF-8 file name

    tools = ToolRegistry()
    tools.register(ls)
    llm = ScriptedLLM([tool_reply(("ls", {})), text_reply("listed \udce9"), text_reply("again")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools) as loop:
        sink = JsonlEventSink(path).attach(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("ls", session_id=sid)
        await loop.send("again", session_id=sid)
        await sink.aclose()
    assert result.status == "completed"
    replayed = list(read_events(path))
    # The writer thread kept going after the events carrying the surrogate (the final text).
    assert [e.type for e in replayed].count(AgentEventType.SESSION_ENDED) == 2
