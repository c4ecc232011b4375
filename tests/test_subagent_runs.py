"""Sub-agent runs started by a tool through ``ctx.subagents``: child sessions, lifecycles,
depth, tools, model, usage and budget, cancellation, concurrency, events."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from power_loop import (
    AgentLoopConfig,
    CancellationToken,
    HookPoint,
    SessionNotFoundError,
    StatefulAgentLoop,
    ToolContext,
    ToolRegistry,
    tool,
)
from power_loop.messages import Usage
from power_loop.providers.base import LLMRequest
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply

from .helpers import EventLog, add, history_is_valid, shout
from .subagent_worker import registry as worker_registry
from .subagent_worker import rule as worker_rule

WORKER = Path(__file__).with_name("subagent_worker.py")

CHILD_MARK = "You are a sub-agent"


@tool
async def delegate(task: str, ctx: ToolContext, lifecycle: str = "ephemeral", tools: list[str] | None = None) -> str:
    """Hand a task to a sub-agent.

    Args:
        task: What the sub-agent should do.
        lifecycle: ephemeral, linked or detached.
        tools: Tools the sub-agent may use.
    """
    result = await ctx.subagents.run(task, lifecycle=lifecycle, tools=tools)
    return json.dumps(result.to_dict())


def tools_registry(*extra: Any) -> ToolRegistry:
    reg = ToolRegistry()
    for t in (delegate, add, shout, *extra):
        reg.register(t)
    return reg


def is_child(request: LLMRequest) -> bool:
    return CHILD_MARK in (request.system_prompt or "")


def last_user(request: LLMRequest) -> str:
    for m in reversed(request.messages):
        if m.role == "user":
            return m.text  # type: ignore[attr-defined,no-any-return]
    return ""


def has_result(request: LLMRequest) -> bool:
    return request.messages[-1].role == "tool"


def two_level(child_usage: Usage | None = None) -> ScriptedLLM:
    """The parent delegates once (each task its user message names), children answer."""

    def rule(request: LLMRequest) -> ScriptedReply:
        if is_child(request):
            return text_reply(f"done: {last_user(request)}", usage=child_usage)
        if has_result(request):
            return text_reply("parent saw: " + request.messages[-1].text)  # type: ignore[attr-defined]
        args = json.loads(last_user(request))
        return tool_reply(("delegate", args, "call_d"))

    return ScriptedLLM(rule=rule)


async def test_a_child_answers_and_an_ephemeral_child_is_deleted(db_path: str) -> None:
    usage = Usage.of_call(prompt_tokens=70, completion_tokens=5)
    llm = two_level(child_usage=usage)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools_registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send(json.dumps({"task": "count the files"}), session_id=sid)
        child = log.of("subagent_task_start")[0].payload["sub_session_id"]
        child_row = await loop.store.get_session_async(child)
        parent_messages = await loop.get_messages_async(sid)
        stats = await loop.get_session_stats_async(sid)
    answer = json.loads(parent_messages[2]["content"])
    assert answer == {
        "session_id": child,
        "status": "completed",
        "final_text": "done: count the files",
        "rounds": 1,
        "depth": 1,
    }
    assert result.final_text.startswith("parent saw: ")
    assert child_row is None  # ephemeral: gone once its answer was read
    # The child's tokens are the parent run's too: in its result and its session stats.
    child_calls = [r for r in llm.requests if is_child(r)]
    assert len(child_calls) == 1
    assert result.usage["total_tokens"] >= usage.total_tokens
    assert stats is not None and stats.total_tokens == result.usage["total_tokens"]
    assert [e.type.value for e in log.events if e.type.value.startswith("subagent_")] == [
        "subagent_task_start",
        "subagent_text",
        "subagent_completed",
    ]
    done = log.of("subagent_completed")[0]
    assert done.session_id == sid and done.payload["status"] == "completed"
    scopes = {e.session_id: e.payload["scope"] for e in log.of("session_started")}
    assert scopes == {sid: "main", child: "subagent"}
    assert history_is_valid(parent_messages)


async def test_a_linked_child_is_kept_and_deleted_with_its_parent(db_path: str) -> None:
    llm = two_level()
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools_registry()) as loop:
        sid = await loop.new_session_async()
        await loop.send(json.dumps({"task": "remember this", "lifecycle": "linked"}), session_id=sid)
        parent_messages = await loop.get_messages_async(sid)
        child = json.loads(parent_messages[2]["content"])["session_id"]
        row = await loop.store.get_session_async(child)
        child_messages = await loop.get_messages_async(child)
        deleted = await loop.close_session_async(sid)
        after = await loop.store.get_session_async(child)
    assert row is not None
    assert (row.parent_session_id, row.kind, row.depth, row.lifecycle) == (sid, "subagent", 1, "linked")
    assert row.spawn_tool_call_id == "call_d"
    assert [m["role"] for m in child_messages] == ["user", "assistant"]
    assert child_messages[0]["content"] == "remember this"
    assert deleted == 2 and after is None


async def test_the_depth_limit_refuses_with_a_message_the_model_reads(db_path: str) -> None:
    def rule(request: LLMRequest) -> ScriptedReply:
        if has_result(request):
            return text_reply("ok")
        # Parent and child alike try to delegate further.
        return tool_reply(("delegate", {"task": "go deeper", "lifecycle": "linked"}, "call_deeper"))

    llm = ScriptedLLM(rule=rule)
    config = AgentLoopConfig(max_subagent_depth=1)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=tools_registry()) as loop:
        sid = await loop.new_session_async()
        await loop.send("start", session_id=sid)
        parent_messages = await loop.get_messages_async(sid)
        child = json.loads(parent_messages[2]["content"])["session_id"]
        child_messages = await loop.get_messages_async(child)
        children_of_child = await loop.store.execute_fetchall("SELECT COUNT(*) FROM sessions WHERE depth >= 2", ())
    refusal = child_messages[2]["content"]
    assert "depth 1" in refusal and "at most 1 deep" in refusal and "do this task yourself" in refusal
    assert children_of_child == [(0,)]


async def test_a_child_gets_only_tools_its_parent_was_offered(db_path: str) -> None:
    seen: dict[str, list[str]] = {}

    def rule(request: LLMRequest) -> ScriptedReply:
        if is_child(request):
            seen.setdefault(last_user(request), list(request.tools))
            return text_reply("child done")
        if has_result(request):
            return text_reply("parent done")
        return tool_reply(("delegate", json.loads(last_user(request)), "call_t"))

    llm = ScriptedLLM(rule=rule)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools_registry()) as loop:
        sid = await loop.new_session_async()
        # The parent call is offered delegate and add only: shout is registered but not offered.
        await loop.send(json.dumps({"task": "widen", "tools": ["shout"]}), session_id=sid, tools=["delegate", "add"])
        widened = (await loop.get_messages_async(sid))[2]["content"]
        await loop.send(json.dumps({"task": "narrow", "tools": ["add"]}), session_id=sid, tools=["delegate", "add"])
        await loop.send(json.dumps({"task": "inherit"}), session_id=sid, tools=["delegate", "add"])
    assert "cannot use shout" in widened and "delegate, add" in widened
    assert "widen" not in seen  # refused before any child existed
    assert seen["narrow"] == ["add"]
    assert seen["inherit"] == ["delegate", "add"]


async def test_a_spec_model_is_asked_of_the_provider_or_a_registered_service(db_path: str) -> None:
    fast = ScriptedLLM(rule=lambda request: text_reply("fast answer"), model="fast-model")

    @tool
    async def pick(model: str, ctx: ToolContext) -> str:
        """Delegate to a model.

        Args:
            model: The model.
        """
        return (await ctx.subagents.run("answer", model=model, max_rounds=2, max_tokens=77)).final_text

    def rule(request: LLMRequest) -> ScriptedReply:
        if is_child(request):
            return text_reply("own provider answer")
        if has_result(request):
            return text_reply("ok")
        return tool_reply(("pick", {"model": last_user(request)}, "call_p"))

    llm = ScriptedLLM(rule=rule)
    config = AgentLoopConfig(llm_services={"fast": fast})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=tools_registry(pick)) as loop:
        sid = await loop.new_session_async()
        await loop.send("other-model", session_id=sid)
        await loop.send("fast", session_id=sid)
        messages = await loop.get_messages_async(sid)
    child_requests = [r for r in llm.requests if is_child(r)]
    assert [r.model for r in child_requests] == ["other-model"]
    assert child_requests[0].max_tokens == 77
    assert len(fast.requests) == 1 and fast.requests[0].model is None
    assert [m["content"] for m in messages if m["role"] == "tool"] == ["own provider answer", "fast answer"]


async def test_a_child_cannot_spend_past_its_parents_budget(db_path: str) -> None:
    heavy = Usage.of_call(prompt_tokens=900, completion_tokens=50)

    def rule(request: LLMRequest) -> ScriptedReply:
        if is_child(request):
            return tool_reply(("add", {"a": 1, "b": 2}), usage=heavy)  # the child keeps working
        if has_result(request):
            return text_reply("parent done")
        return tool_reply(("delegate", {"task": "work hard"}, "call_b"))

    llm = ScriptedLLM(rule=rule)
    config = AgentLoopConfig(max_tokens_per_run=2000, max_tokens=1500)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=tools_registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
        answer = json.loads((await loop.get_messages_async(sid))[2]["content"])
    child_requests = [r for r in llm.requests if is_child(r)]
    # The first child call fits under the loop's cap; the second is clamped to what the
    # parent's budget has left; a third would not fit at all and is never sent.
    assert [r.max_tokens for r in child_requests][0] == 1500
    second = child_requests[1].max_tokens
    assert second is not None and 0 < second < 1500
    assert len(child_requests) == 2
    assert answer["status"] == "budget_exceeded"
    assert "parent budget" in answer["final_text"]
    assert result.usage["total_tokens"] >= 2 * heavy.total_tokens  # the children's tokens are the parent's
    # The parent's own next call does not fit in what is left either: it is never sent.
    assert result.status == "budget_exceeded" and llm.requests[-1] is child_requests[-1]
    assert result.budget is not None and result.budget.limit == "max_tokens_per_run"
    assert result.budget.session_id == sid and result.budget.allowed == 2000
    assert result.budget.spent <= 2000 < result.budget.spent + result.budget.needed
    assert log.of("subagent_completed")[0].payload["status"] == "budget_exceeded"


async def test_stopping_the_parent_stops_its_child(db_path: str) -> None:
    token = CancellationToken()
    child_started = asyncio.Event()

    @tool
    async def wait_here(ctx: ToolContext) -> str:
        """Wait until the parent is stopped."""
        child_started.set()
        token.cancel("user pressed stop")
        return "waited"

    def rule(request: LLMRequest) -> ScriptedReply:
        if is_child(request):
            if has_result(request):
                return text_reply("child finished anyway")
            return tool_reply(("wait_here", {}, "call_w"))
        if has_result(request):
            return text_reply("parent finished anyway")
        return tool_reply(("delegate", {"task": "wait", "lifecycle": "linked"}, "call_s"))

    llm = ScriptedLLM(rule=rule)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools_registry(wait_here)) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid, stop_event=token)
        answer = json.loads((await loop.get_messages_async(sid))[2]["content"])
    assert child_started.is_set()
    assert answer["status"] == "cancelled"
    assert result.status == "cancelled"
    assert not any(
        "finished anyway" in (r.messages[-1].text or "") for r in llm.requests if r.messages[-1].role == "assistant"
    )


async def test_cancelling_the_parent_task_cancels_the_child(db_path: str) -> None:
    in_child = asyncio.Event()
    release = asyncio.Event()

    @tool
    async def block(ctx: ToolContext) -> str:
        """Block."""
        in_child.set()
        await release.wait()
        return "released"

    def rule(request: LLMRequest) -> ScriptedReply:
        if is_child(request):
            return tool_reply(("block", {}, "call_x"))
        return tool_reply(("delegate", {"task": "block", "lifecycle": "linked"}, "call_c"))

    llm = ScriptedLLM(rule=rule)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools_registry(block)) as loop:
        sid = await loop.new_session_async()
        task = asyncio.create_task(loop.send("go", session_id=sid))
        await in_child.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        runs = await loop.store.execute_fetchall("SELECT status FROM runs ORDER BY started_at", ())
    assert [r[0] for r in runs] == ["cancelled", "cancelled"]


@pytest.mark.parametrize("slots", [1, 2])
async def test_children_of_one_round_run_concurrently_within_the_limit(db_path: str, slots: int) -> None:
    def rule(request: LLMRequest) -> ScriptedReply:
        if is_child(request):
            return text_reply("child " + last_user(request))
        if has_result(request):
            return text_reply("both done")
        return tool_reply(("delegate", {"task": "a"}, "call_a"), ("delegate", {"task": "b"}, "call_b"))

    llm = ScriptedLLM(rule=rule)
    config = AgentLoopConfig(max_concurrent_subagents=slots)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=tools_registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
    order = [e.type.value for e in log.events if e.type.value in ("subagent_task_start", "subagent_completed")]
    if slots == 2:  # both started before either finished: they overlapped
        assert order[:2] == ["subagent_task_start", "subagent_task_start"]
    else:
        assert order == ["subagent_task_start", "subagent_completed"] * 2
    assert result.final_text == "both done"


async def test_hooks_apply_to_children_and_say_their_scope(db_path: str) -> None:
    seen: list[tuple[str, str, str]] = []
    llm = two_level()
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools_registry()) as loop:
        loop.hooks.register(HookPoint.SESSION_START, lambda ctx: seen.append(("start", ctx.session_id, ctx.scope)))
        loop.hooks.register(HookPoint.SESSION_END, lambda ctx: seen.append(("end", ctx.session_id, ctx.scope)))
        sid = await loop.new_session_async()
        await loop.send(json.dumps({"task": "t", "lifecycle": "linked"}), session_id=sid)
        child = json.loads((await loop.get_messages_async(sid))[2]["content"])["session_id"]
    assert seen == [
        ("start", sid, "main"),
        ("start", child, "subagent"),
        ("end", child, "subagent"),
        ("end", sid, "main"),
    ]


async def test_a_process_killed_mid_child_leaves_a_parent_and_child_that_resume(tmp_path: Path) -> None:
    db = str(tmp_path / "kill.db")
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent)}
    proc = subprocess.Popen([sys.executable, str(WORKER), db, "parent"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "HANGING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    @tool
    async def hang() -> str:
        """Work (quickly, this time)."""
        return "finished the long thing"

    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=worker_rule), db_path=db, tool_registry=worker_registry(hang)
    ) as loop:
        pending = await loop.get_pending_async("parent")
        children = await loop.store.execute_fetchall("SELECT session_id FROM sessions WHERE kind = 'subagent'", ())
        result = await loop.resume("parent")
        after = await loop.store.execute_fetchall("SELECT session_id FROM sessions WHERE kind = 'subagent'", ())
        child_messages = await loop.get_messages_async(children[0][0])
        parent_messages = await loop.get_messages_async("parent")
    assert pending is not None and [c["id"] for c in pending["tool_calls"]] == ["call_delegate"]
    assert len(children) == 1 and after == children  # the same child went on; no second one
    assert result.status == "completed"
    assert result.final_text == "parent got: child answer: finished the long thing"
    assert [m["role"] for m in child_messages] == ["user", "assistant", "tool", "assistant"]
    assert history_is_valid(parent_messages) and history_is_valid(child_messages)


async def test_host_code_runs_a_child_under_a_session_once_per_spawn_id(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda request: text_reply(f"answer to {last_user(request)}"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools_registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        first = await loop.run_subagent(
            "sum it up", parent_session_id=sid, spawn_tool_call_id="call_1", lifecycle="linked", tools=["add"]
        )
        again = await loop.run_subagent(
            "sum it up", parent_session_id=sid, spawn_tool_call_id="call_1", lifecycle="linked"
        )
        row = await loop.store.get_session_async(first.session_id)
        with pytest.raises(ValueError, match="unknown tool"):
            await loop.run_subagent("x", tools=["nope"])
        with pytest.raises(SessionNotFoundError):
            await loop.run_subagent("x", parent_session_id="sess_missing")
        orphan = await loop.run_subagent("alone")
    assert first.to_dict() == {
        "session_id": first.session_id,
        "status": "completed",
        "final_text": "answer to sum it up",
        "rounds": 1,
        "depth": 1,
    }
    assert again.reused and again.final_text == first.final_text and again.session_id == first.session_id
    assert len(llm.requests) == 2  # the second call found the answer; only "alone" ran again
    assert llm.requests[0].tools and [t.name for t in llm.requests[0].tools] == ["add"]
    assert row is not None and row.parent_session_id == sid and row.spawn_tool_call_id == "call_1"
    assert orphan.status == "completed" and orphan.depth == 1
    assert [e.session_id for e in log.of("subagent_completed")][:2] == [sid, sid]
