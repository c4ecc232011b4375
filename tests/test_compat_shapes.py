"""The dicts and rows a 0.11 program reads keep 0.11's keys and value types.

The expected shapes below are facts recorded by running the same programs against the
published power-loop 0.11.0 (in its own virtualenv, against a loopback Chat Completions
server) and dumping what it returned. A shape lists every key 0.11 returned with the type of
its value; this version may add keys, never drop one or change a type.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from power_loop import (
    AgentHooks,
    AgentLoopConfig,
    HookDirective,
    HookPoint,
    SessionPendingError,
    StatefulAgentLoop,
    ToolDefinition,
    ToolRegistry,
    request_user_input,
)
from power_loop.contrib.jsonl import JsonlEventSink, read_events
from power_loop.contrib.logging_sink import attach_logging_sink
from power_loop.events import AgentEventType, UsageUpdatedPayload
from power_loop.messages import ToolCall, ToolResultMessage, Usage
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import ScriptedReply, ScriptedRequest

from .helpers import EventLog

# --------------------------------------------------------------------------- 0.11's shapes

TOOL_CALL = {"id": str, "type": str, "function": {"name": str, "arguments": str}}
USAGE = dict.fromkeys(
    ("calls", "prompt_tokens", "completion_tokens", "cache_read_tokens", "reasoning_tokens", "total_tokens"), int
)
USER_MESSAGE = {"role": str, "content": str}
ASSISTANT_TOOL_TURN = {"role": str, "content": str, "tool_calls": [TOOL_CALL]}
TOOL_MESSAGE = {"role": str, "content": str, "tool_call_id": str, "name": str}
ASSISTANT_TEXT = {"role": str, "content": str}
INTERACTION = {
    "interaction_id": str,
    "tool_call_id": str,
    "tool_name": str,
    "kind": str,
    "prompt": str,
    "options": list,
    "metadata": dict,
}
STATEFUL_RESULT = {
    "session_id": str,
    "status": str,
    "final_text": str,
    "rounds": int,
    "pending_tool_calls": list,
    "pending_interactions": list,
    "usage": USAGE,
    "tool_calls": int,
}
GET_PENDING = {"assistant_seq": int, "round_index": int, "tool_call_ids": [str], "tool_calls": [TOOL_CALL]}
STATS_ROW = {
    "session_id": str,
    "sends": int,
    "rounds": int,
    "llm_calls": int,
    "tool_calls": int,
    "prompt_tokens": int,
    "completion_tokens": int,
    "total_tokens": int,
    "first_send_at": int,
    "last_send_at": int,
    "updated_at": int,
}
TIMER_ROW = {
    "session_id": str,
    "timer_id": int,
    "due_at": int,
    "note": str,
    "status": str,
    "created_at": int,
    "updated_at": int,
}
# lifecycle is left out: 0.11 reported "ephemeral" for top-level sessions, this version None
# (listed in docs/migration.md).
SESSION_ROW = {
    "session_id": str,
    "created_at": int,
    "updated_at": int,
    "system_prompt": str,
    "model": type(None),
    "config": dict,
    "status": str,
    "kind": str,
    "parent_session_id": type(None),
    "spawn_tool_call_id": type(None),
    "spawn_depth": int,
    "metadata": dict,
}
USAGE_UPDATED_USAGE = dict.fromkeys(
    (
        "input",
        "output",
        "cache_read",
        "reasoning",
        "prompt_tokens",
        "completion_tokens",
        "cache_read_tokens",
        "reasoning_tokens",
        "total_tokens",
    ),
    int,
)
TOOL_PAYLOAD = {"name": str, "output": str, "tool_call_id": str, "tool_input": dict}
PAYLOADS: dict[str, dict[str, Any]] = {
    "session_started": {"scope": str},
    "session_ended": {"reason": str},
    "round_started": {"round_index": int},
    "round_completed": {"round_index": int, "has_tools": bool, "used_todo": bool},
    "round_tools_present": {"has_tools": bool},
    "stream_started": {"stream_id": str},
    "stream_delta": {"stream_id": str, "text": str, "is_think": bool},
    "stream_think_delta": {"stream_id": str, "text": str, "is_think": bool},
    "stream_completed": {"stream_id": str},
    "tool_call_started": {"name": str, "tool_call_id": str, "tool_input": dict},
    "tool_call_completed": TOOL_PAYLOAD,
    "tool_call_failed": TOOL_PAYLOAD,
    "usage_updated": {"usage": USAGE_UPDATED_USAGE},
    "status_changed:round_usage": {
        "kind": str,
        "time_iso": str,
        "round_index": int,
        "round_number": int,
        "max_rounds": int,
        "prompt_tokens": int,
        "completion_tokens": int,
        "cache_read_tokens": int,
        "reasoning_tokens": int,
    },
    "status_changed:hit_round_limit": {"kind": str, "max_rounds": int},
    "status_changed:budget_exceeded": {"kind": str, "budget_tokens": int, "spent_tokens": int, "rounds": int},
}
# A 0.11 logging-sink line: the event name under "event", then payload and session_id
# (round_index when the event has one).
SINK_LINE = {"event": str, "payload": dict, "session_id": str}


def assert_shape(value: Any, shape: Any, where: str = "value") -> None:
    """``value`` has every key of ``shape`` with a value of the given type (extra keys allowed).

    A shape is a type, a dict of shapes, or a one-item list (every element has that shape).
    """
    if isinstance(shape, dict):
        assert isinstance(value, Mapping), f"{where}: expected a dict, got {type(value).__name__}"
        for key, sub in shape.items():
            assert key in value, f"{where}: key {key!r} missing (0.11 had it); keys: {sorted(value)}"
            assert_shape(value[key], sub, f"{where}[{key!r}]")
    elif isinstance(shape, list):
        assert isinstance(value, list), f"{where}: expected a list, got {type(value).__name__}"
        for i, item in enumerate(value):
            assert_shape(item, shape[0], f"{where}[{i}]")
    else:
        # bool is an int subclass; keep them apart as JSON does.
        ok = isinstance(value, shape) and not (shape is int and isinstance(value, bool))
        assert ok, f"{where}: expected {shape.__name__}, got {type(value).__name__} ({value!r})"


def fields_of(row: Any) -> dict[str, Any]:
    return {f.name: getattr(row, f.name) for f in dataclasses.fields(row)}


# --------------------------------------------------------------------------- the program

CALL_USAGE = Usage.of_call(prompt_tokens=20, completion_tokens=7, cache_read_tokens=3, reasoning_tokens=2)


def rule(request: ScriptedRequest) -> ScriptedReply:
    """``CALL [[name, args], ...]`` calls tools; after tool results, answer with them."""
    if request.messages and isinstance(request.messages[-1], ToolResultMessage):
        return ScriptedReply(text="done: " + "; ".join(r.text for r in request.tool_results), usage=CALL_USAGE)
    text = request.last_user_text
    if text.startswith("CALL "):
        calls = tuple(
            ToolCall(id=f"call_{len(request.messages)}_{i}", name=name, arguments=json.dumps(args))
            for i, (name, args) in enumerate(json.loads(text[5:]))
        )
        return ScriptedReply(tool_calls=calls, usage=CALL_USAGE)
    return ScriptedReply(text=f"echo: {text}", reasoning="thinking", usage=CALL_USAGE)


def add(a: int, b: int) -> int:
    return a + b


def boom() -> str:
    raise RuntimeError("kaput")


def ask() -> str:
    return request_user_input(prompt="Pick one", options=[{"label": "a"}])


def registry() -> ToolRegistry:
    # 0.11's way of registering tools: a ToolDefinition and a handler.
    tools = ToolRegistry()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
    tools.register(ToolDefinition("add", "Add two integers.", schema, ("a", "b")), add)
    for name, handler in (("boom", boom), ("skipme", add), ("ask", ask)):
        tools.register(ToolDefinition(name, name), handler)
    return tools


def skip_hook(point: HookPoint, only: str | None = None) -> AgentHooks:
    hooks = AgentHooks()

    def skip(ctx: Any) -> HookDirective:
        if only is not None and ctx.tool_name != only:
            return HookDirective.CONTINUE
        ctx.output = "skipped by hook"
        return HookDirective.SKIP

    hooks.register(point, skip)
    return hooks


def make_loop(db_path: str, **options: Any) -> StatefulAgentLoop:
    config = options.pop("config", AgentLoopConfig(max_rounds=4))
    return StatefulAgentLoop(
        llm=ScriptedLLM(rule=rule), db_path=db_path, config=config, tool_registry=registry(), **options
    )


ADD = '["add", {"a": 1, "b": 2}]'

# --------------------------------------------------------------------------- messages


async def test_get_messages_has_content_on_a_tool_call_turn(db_path: str) -> None:
    async with make_loop(db_path) as loop:
        sid = loop.new_session()
        await loop.send(f"CALL [{ADD}]", session_id=sid)
        for include_compacted in (False, True):
            messages = loop.get_messages(sid, include_compacted=include_compacted)
            assert [m["role"] for m in messages] == ["user", "assistant", "tool", "assistant"]
            assert messages[1]["content"] == ""  # 0.11: "", never a missing key
            for message, shape in zip(
                messages, (USER_MESSAGE, ASSISTANT_TOOL_TURN, TOOL_MESSAGE, ASSISTANT_TEXT), strict=True
            ):
                assert_shape(message, shape, f"message {message['role']}")


# --------------------------------------------------------------------------- results and pending


async def test_stateful_result_and_get_pending_shapes(db_path: str) -> None:
    async with make_loop(db_path) as loop:
        sid = loop.new_session()
        done = await loop.send(f"CALL [{ADD}]", session_id=sid)
        assert_shape(fields_of(done), STATEFUL_RESULT, "result")
        assert loop.get_pending(sid) is None

        # round 0 calls add, round 1 asks the user: the pending calls are round 1's.
        waiting_sid = loop.new_session()
        loop.llm.push(  # type: ignore[attr-defined]
            ScriptedReply(tool_calls=(ToolCall(id="c1", name="add", arguments='{"a": 1, "b": 1}'),)),
            ScriptedReply(tool_calls=(ToolCall(id="c2", name="ask", arguments="{}"),)),
            ScriptedReply(text="thanks"),
        )
        waiting = await loop.send("go", session_id=waiting_sid)
        assert waiting.status == "waiting_for_input"
        assert_shape(fields_of(waiting), STATEFUL_RESULT, "result")
        assert_shape(waiting.pending_tool_calls, [TOOL_CALL], "result.pending_tool_calls")
        assert_shape(waiting.pending_interactions, [INTERACTION], "result.pending_interactions")
        pending = loop.get_pending(waiting_sid)
        assert pending is not None
        assert_shape(pending, {**GET_PENDING, "pending_interactions": [INTERACTION]}, "get_pending")
        assert pending["round_index"] == 1
        assert pending["tool_call_ids"] == ["c2"]

        with pytest.raises(SessionPendingError) as caught:
            await loop.send("hello?", session_id=waiting_sid)
        assert_shape(caught.value.pending_tool_calls, [TOOL_CALL], "SessionPendingError.pending_tool_calls")
        assert caught.value.pending_tool_calls[0]["function"]["name"] == "ask"


# --------------------------------------------------------------------------- rows


async def test_stats_timer_and_session_rows(db_path: str) -> None:
    async with make_loop(db_path) as loop:
        sid = loop.new_session(metadata={"user_id": "u1"}, system_prompt="Session prompt.")
        await loop.send(f"CALL [{ADD}]", session_id=sid)
        stats = loop.get_session_stats(sid)
        assert stats is not None
        assert_shape(fields_of(stats), STATS_ROW, "SessionStatsRow")
        for row in loop.list_session_stats():
            assert_shape(fields_of(row), STATS_ROW, "list_session_stats()[]")

        timer = loop.schedule_timer(sid, delay_s=3600, note="wake me")
        assert_shape(fields_of(timer), TIMER_ROW, "TimerRow")
        assert timer.updated_at >= timer.created_at > 0
        for row in loop.list_timers(sid):
            assert_shape(fields_of(row), TIMER_ROW, "list_timers()[]")

        session = loop.store.get_session(sid)
        assert session is not None
        assert_shape(fields_of(session), SESSION_ROW, "store.get_session()")
        assert (session.status, session.spawn_depth, session.config) == ("active", 0, {})


# --------------------------------------------------------------------------- events and sinks


async def test_event_payloads_keep_their_011_keys(db_path: str) -> None:
    async with make_loop(db_path) as loop:
        log = EventLog(loop.event_bus)
        sid = loop.new_session()
        await loop.send(f'CALL [{ADD}, ["boom", {{}}]]', session_id=sid)
        await loop.send("plain", session_id=sid)
        # the round limit and the token budget, on the same store and event log
        for config in (AgentLoopConfig(max_rounds=1), AgentLoopConfig(max_tokens_per_run=5)):
            other = StatefulAgentLoop(
                llm=loop.llm,
                store=loop.store,
                config=config,
                tool_registry=loop.tool_registry,
                event_bus=loop.event_bus,
            )
            await other.send(f"CALL [{ADD}]", session_id=loop.new_session())
            await other.aclose()
    seen: dict[str, dict[str, Any]] = {}
    for event in log.events:
        key = event.type.value
        if event.type is AgentEventType.STATUS_CHANGED:
            key += ":" + str(event.payload["kind"])
        if key in PAYLOADS:
            assert_shape(event.payload, PAYLOADS[key], f"{key} payload")
            # the typed payload carries the same view
            assert event.data is not None and event.data.to_dict() == event.payload
            seen[key] = event.payload
    assert set(seen) == set(PAYLOADS)
    assert seen["usage_updated"]["usage"]["input"] == 20 and seen["usage_updated"]["usage"]["output"] == 7
    usage_event = next(e for e in log.events if e.type is AgentEventType.USAGE_UPDATED)
    assert isinstance(usage_event.data, UsageUpdatedPayload)
    assert usage_event.data.usage["input"] == usage_event.data.usage["prompt_tokens"]


async def test_logging_sink_lines_name_the_event_under_event(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    async with make_loop(db_path) as loop:
        sink = attach_logging_sink(loop.event_bus, logger=logging.getLogger("compat.audit"))
        sid = loop.new_session()
        with caplog.at_level(logging.INFO, logger="compat.audit"):
            await loop.send(f"CALL [{ADD}]", session_id=sid)
        sink.detach()
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "compat.audit"]
    assert lines and lines[0]["event"] == "session_started" and lines[-1]["event"] == "session_ended"
    for line in lines:
        assert_shape(line, SINK_LINE, f"sink line {line.get('event')}")
    usage = next(line for line in lines if line["event"] == "usage_updated")["payload"]["usage"]
    assert_shape(usage, USAGE_UPDATED_USAGE, "usage_updated line")
    assert (usage["input"], usage["output"]) == (20, 7)


async def test_jsonl_sink_writes_event_and_reader_reads_old_and_new_lines(db_path: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    async with make_loop(db_path) as loop:
        sink = JsonlEventSink(path).attach(loop.event_bus)
        sid = loop.new_session()
        await loop.send(f"CALL [{ADD}]", session_id=sid)
        await sink.aclose()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        assert_shape(line, SINK_LINE, f"jsonl line {line.get('event')}")
    usage = next(line for line in lines if line["event"] == "usage_updated")["payload"]["usage"]
    assert (usage["input"], usage["output"]) == (20, 7)

    # A 0.11 logging-sink line (name under "event" only) and a line written before "event"
    # existed (name under "type" only) both replay.
    old = tmp_path / "mixed.jsonl"
    only_event = {k: v for k, v in lines[0].items() if k != "type"}
    only_type = {k: v for k, v in lines[1].items() if k != "event"}
    old.write_text(json.dumps(only_event) + "\n" + json.dumps(only_type) + "\n")
    replayed = list(read_events(old))
    assert [e.type.value for e in replayed] == [lines[0]["event"], lines[1]["event"]]


# --------------------------------------------------------------------------- result.tool_calls


@pytest.mark.parametrize("point", [HookPoint.TOOL_BEFORE, HookPoint.TOOLS_BATCH_BEFORE, HookPoint.ROUND_DECIDE])
async def test_a_call_a_hook_skipped_is_not_counted(db_path: str, point: HookPoint) -> None:
    async with make_loop(db_path, hooks=skip_hook(point)) as loop:
        sid = loop.new_session()
        result = await loop.send(f'CALL [{ADD}, ["add", {{"a": 3, "b": 4}}]]', session_id=sid)
        assert result.final_text == "done: skipped by hook; skipped by hook"
        assert result.tool_calls == 0  # 0.11: 0
        stats = loop.get_session_stats(sid)
        assert stats is not None and stats.tool_calls == 0


async def test_failed_calls_count_and_skipped_ones_do_not(db_path: str) -> None:
    async with make_loop(db_path, hooks=skip_hook(HookPoint.TOOL_BEFORE, only="skipme")) as loop:
        sid = loop.new_session()
        # ran, skipped by a hook, raised, unknown tool, invalid arguments: 0.11 counted 4
        result = await loop.send(
            f'CALL [{ADD}, ["skipme", {{}}], ["boom", {{}}], ["nope", {{}}], ["add", {{"a": 1}}]]', session_id=sid
        )
        assert result.status == "completed"
        assert result.tool_calls == 4
        stats = loop.get_session_stats(sid)
        assert stats is not None and stats.tool_calls == 4
