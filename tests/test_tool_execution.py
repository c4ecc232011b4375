"""Tool calls inside a run: validation, offered-only execution, concurrency, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from power_loop import AgentLoopConfig, StatefulAgentLoop, ToolContext, ToolRegistry, current_tool_context, tool
from power_loop.testing import ScriptedLLM, text_reply, tool_reply

from .helpers import EventLog, history_is_valid, registry


async def run_once(
    db_path: str, reg: ToolRegistry, first_reply: Any, **config: Any
) -> tuple[list[dict[str, Any]], ScriptedLLM]:
    llm = ScriptedLLM([first_reply, text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=reg, config=AgentLoopConfig(**config)) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
        assert result.status == "completed"
        messages = await loop.get_messages_async(sid)
    assert history_is_valid(messages)
    return messages, llm


async def test_schema_type_errors_go_back_to_the_model(db_path: str) -> None:
    messages, llm = await run_once(db_path, registry(), tool_reply(("add", {"a": "two", "b": 3})))
    result = messages[2]["content"]
    assert result.startswith("Error: invalid arguments for tool 'add'")
    assert "a: expected integer, got string" in result
    assert messages[2]["is_error"] is True
    # The model saw the error in its next request and the run went on.
    assert llm.requests[1].messages[-1].text == result  # type: ignore[union-attr]


async def test_missing_parameters_use_the_0_11_wording(db_path: str) -> None:
    messages, _ = await run_once(db_path, registry(), tool_reply(("add", {"a": 1})))
    assert messages[2]["content"] == "Error: missing required parameter(s): b"


async def test_malformed_json_arguments(db_path: str) -> None:
    messages, _ = await run_once(db_path, registry(), tool_reply(("add", '{"a": 1, "b":')))
    assert messages[2]["content"].startswith("Error: invalid JSON arguments for tool 'add'")
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == '{"a": 1, "b":'  # stored as the model said it


async def test_a_tool_not_offered_in_this_call_is_never_executed(db_path: str) -> None:
    calls: list[str] = []

    @tool
    def delete_everything() -> str:
        """Dangerous."""
        calls.append("ran")
        return "deleted"

    reg = registry(delete_everything)
    llm = ScriptedLLM([tool_reply(("delete_everything", {})), text_reply("ok")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=reg) as loop:
        sid = await loop.new_session_async()
        await loop.send("hi", session_id=sid, tools=[])
        messages = await loop.get_messages_async(sid)
    assert calls == []
    assert messages[2]["content"].startswith("Unknown tool: delete_everything")


async def test_handler_exception_becomes_a_result(db_path: str) -> None:
    @tool
    def explode() -> str:
        """Always fails."""
        raise RuntimeError("disk on fire")

    messages, _ = await run_once(db_path, registry(explode), tool_reply(("explode", {})))
    assert messages[2]["content"] == "Error: disk on fire"


async def test_a_handler_runs_once_even_on_type_error(db_path: str) -> None:
    count: list[int] = []

    @tool
    def fragile(x: int) -> str:
        """Raises TypeError."""
        count.append(x)
        raise TypeError("bad internal call")

    messages, _ = await run_once(db_path, registry(fragile), tool_reply(("fragile", {"x": 1})))
    assert count == [1]
    assert messages[2]["content"] == "Error: bad internal call"


async def test_a_hanging_tool_times_out(db_path: str) -> None:
    @tool(timeout_s=0.2)
    async def hang() -> str:
        """Never returns."""
        await asyncio.sleep(3600)
        return "never"

    # A hang guard only: without the tool timeout the run would wait an hour.
    messages, _ = await asyncio.wait_for(run_once(db_path, registry(hang), tool_reply(("hang", {}))), 60)
    assert messages[2]["content"] == "Error: tool 'hang' timed out after 0.2s"


async def test_loop_default_tool_timeout(db_path: str) -> None:
    @tool
    def slow() -> str:
        """Sleeps in a worker thread."""
        time.sleep(0.5)
        return "late"

    messages, _ = await run_once(db_path, registry(slow), tool_reply(("slow", {})), tool_timeout_s=0.1)
    assert "timed out after 0.1s" in messages[2]["content"]


@pytest.mark.parametrize(("concurrency", "peak"), [(8, 3), (1, 1)])
async def test_parallel_calls_run_concurrently_and_answer_in_order(db_path: str, concurrency: int, peak: int) -> None:
    # Proved by counting, not by timing: with room for all three, each call waits at a barrier
    # until all three are running at once (a serial run would never get past it); with one
    # slot, no two calls are ever running at once.
    threads: list[int] = []
    lock = threading.Lock()
    running = {"now": 0, "peak": 0, "entered": 0}
    all_in = threading.Event()

    def enter() -> None:
        with lock:
            running["now"] += 1
            running["peak"] = max(running["peak"], running["now"])
            running["entered"] += 1
            if running["entered"] == 3:
                all_in.set()

    def leave() -> None:
        with lock:
            running["now"] -= 1

    def meet() -> None:
        if peak > 1:
            assert all_in.wait(60), "the three calls never ran at the same time"  # a hang guard
        else:
            time.sleep(0.05)  # leave room for an overlap, were the calls not serialized

    @tool
    def nap(label: str) -> str:
        """Wait in a worker thread."""
        threads.append(threading.get_ident())
        enter()
        try:
            meet()
        finally:
            leave()
        return f"rested {label}"

    @tool
    async def anap(label: str) -> str:
        """Wait on the loop."""
        enter()
        try:
            await asyncio.to_thread(meet)
        finally:
            leave()
        return f"async rested {label}"

    reply = tool_reply(
        ("nap", {"label": "first"}, "c1"), ("anap", {"label": "second"}, "c2"), ("nap", {"label": "third"}, "c3")
    )
    messages, _ = await run_once(db_path, registry(nap, anap), reply, tool_concurrency=concurrency)
    assert running["peak"] == peak
    assert [m.get("tool_call_id") for m in messages[2:5]] == ["c1", "c2", "c3"]
    assert [m["content"] for m in messages[2:5]] == ["rested first", "async rested second", "rested third"]
    assert threading.get_ident() not in threads  # sync handlers ran in worker threads


async def test_results_are_truncated(db_path: str) -> None:
    @tool
    def big() -> str:
        """A huge result."""
        return "x" * 60_000

    messages, _ = await run_once(db_path, registry(big), tool_reply(("big", {})))
    content = messages[2]["content"]
    assert len(content) <= 50_000
    assert content.endswith("(truncated, 60000 total chars)")


async def test_non_string_results_are_json(db_path: str) -> None:
    @tool
    def data() -> dict[str, Any]:
        """Structured data."""
        return {"temperature": 21.5, "tags": ["sunny"]}

    messages, _ = await run_once(db_path, registry(data), tool_reply(("data", {})))
    assert messages[2]["content"] == '{"temperature": 21.5, "tags": ["sunny"]}'


async def test_tools_see_their_context_and_idempotency_key(db_path: str) -> None:
    seen: list[tuple[str, str, str]] = []

    @tool
    def record(note: str, ctx: ToolContext) -> str:
        """Records its context."""
        current = current_tool_context()
        assert current == ctx
        seen.append((ctx.session_id, ctx.tool_call_id, ctx.idempotency_key))
        return "ok"

    assert "ctx" not in record.definition.parameters["properties"]
    llm = ScriptedLLM([tool_reply(("record", {"note": "n"}, "call_9")), text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(record)) as loop:
        sid = await loop.new_session_async()
        await loop.send("go", session_id=sid)
    assert seen == [(sid, "call_9", f"{sid}:call_9")]


async def test_tool_lifecycle_is_recorded(db_path: str) -> None:
    @tool
    def ok() -> str:
        """Fine."""
        return "fine"

    llm = ScriptedLLM([tool_reply(("ok", {}, "a"), ("missing_tool", {}, "b")), text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(ok)) as loop:
        sid = await loop.new_session_async()
        await loop.send("go", session_id=sid)
        rows = await loop.store.execute_fetchall(
            "SELECT tool_call_id, status, result_seq IS NOT NULL FROM tool_calls "
            "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) "
            "ORDER BY position",
            (sid,),
        )
    assert rows == [("a", "done", 1), ("b", "failed", 1)]


async def test_empty_or_duplicate_call_ids_are_made_unique(db_path: str) -> None:
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 1}, ""), ("add", {"a": 2, "b": 2}, "")), text_reply("ok")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.send("go", session_id=sid)
        messages = await loop.get_messages_async(sid)
    ids = [c["id"] for c in messages[1]["tool_calls"]]
    assert len(set(ids)) == 2 and all(ids)
    assert [m["tool_call_id"] for m in messages[2:4]] == ids
    assert [m["content"] for m in messages[2:4]] == ["2", "4"]
    assert len(log.of("tool_call_completed")) == 2
