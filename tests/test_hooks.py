"""Hooks: every point, every directive it honours, one it does not, and history validity."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

import pytest

from power_loop import (
    AgentHooks,
    AgentLoopConfig,
    HookDirective,
    HookError,
    HookPoint,
    InMemoryMemory,
    LLMResponse,
    StatefulAgentLoop,
    tool,
)
from power_loop.hooks import HONOURED_DIRECTIVES
from power_loop.messages import AssistantMessage
from power_loop.testing import ScriptedLLM, text_reply, tool_reply

from .helpers import EventLog, history_is_valid, registry

TWO_CALLS = tool_reply(("add", {"a": 1, "b": 2}, "c1"), ("shout", {"text": "hi"}, "c2"))


async def make(db_path: str, script: list[Any], **config: Any) -> tuple[StatefulAgentLoop, ScriptedLLM, str]:
    llm = ScriptedLLM(script)
    loop = StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(), config=AgentLoopConfig(**config))
    sid = await loop.new_session_async()
    return loop, llm, sid


async def finish(loop: StatefulAgentLoop, sid: str) -> list[dict[str, Any]]:
    messages = await loop.get_messages_async(sid)
    assert history_is_valid(messages)
    assert await loop.get_pending_async(sid) is None
    await loop.aclose()
    return messages


def test_every_point_lists_its_directives() -> None:
    assert len(HookPoint) == 17
    assert set(HONOURED_DIRECTIVES) == set(HookPoint)
    assert HONOURED_DIRECTIVES[HookPoint.TIMER_FIRE] == {HookDirective.SKIP, HookDirective.BREAK}
    assert HookPoint.SESSION_START.value == "session.start"
    assert HookPoint.TIMER_FIRE.value == "timer.fire"


def test_has_async_tells_a_sync_caller_what_run_typed_would_refuse() -> None:
    class AsyncCall:
        async def __call__(self, ctx: Any) -> None:
            return None

    async def handler(ctx: Any) -> None:
        return None

    hooks = AgentHooks()
    hooks.register(HookPoint.ROUND_END, lambda ctx: None)
    assert hooks.has(HookPoint.ROUND_END) and not hooks.has_async("round.end")
    assert not hooks.has_async(HookPoint.ROUND_START)
    for async_handler in (handler, functools.partial(handler), AsyncCall()):
        hooks.register(HookPoint.ROUND_START, async_handler)
        assert hooks.has_async(HookPoint.ROUND_START)
        hooks.clear(HookPoint.ROUND_START)


async def test_hook_order_in_a_tool_round(db_path: str) -> None:
    loop, _, sid = await make(db_path, [tool_reply(("add", {"a": 1, "b": 2})), text_reply("3")])
    seen: list[str] = []
    for point in HookPoint:
        loop.hooks.register(point, lambda ctx, p=point: seen.append(p.name))
    await loop.send("1+2", session_id=sid)
    await finish(loop, sid)
    assert seen == [
        "MESSAGE_APPEND",  # the user message
        "SESSION_START",
        "ROUND_START",
        "LLM_BEFORE",
        "LLM_AFTER",
        "MESSAGE_APPEND",
        "ROUND_DECIDE",
        "TOOLS_BATCH_BEFORE",
        "TOOL_BEFORE",
        "TOOL_AFTER",
        "TOOLS_BATCH_AFTER",
        "MESSAGE_APPEND",
        "ROUND_END",
        "ROUND_START",
        "LLM_BEFORE",
        "LLM_AFTER",
        "MESSAGE_APPEND",
        "ROUND_END",
        "SESSION_END",
    ]


async def test_order_parameter_and_async_handlers(db_path: str) -> None:
    loop, _, sid = await make(db_path, [text_reply("ok")])
    seen: list[str] = []

    async def late(ctx: Any) -> None:
        await asyncio.sleep(0)
        seen.append("late")

    loop.hooks.register(HookPoint.SESSION_START, late, order=10)
    loop.hooks.register(HookPoint.SESSION_START, lambda ctx: seen.append("early"), order=-10)
    loop.hooks.register(HookPoint.SESSION_START, lambda ctx: seen.append("middle"))
    await loop.send("x", session_id=sid)
    await finish(loop, sid)
    assert seen == ["early", "middle", "late"]


async def test_unsupported_directive_raises_and_store_stays_consistent(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [TWO_CALLS])
    loop.hooks.register(HookPoint.TOOLS_BATCH_AFTER, lambda ctx: HookDirective.SKIP)
    with pytest.raises(HookError, match="does not honour"):
        await loop.send("go", session_id=sid)
    loop.hooks.clear(HookPoint.TOOLS_BATCH_AFTER)
    llm.push(text_reply("fine again"))
    # The failed run left no unanswered call: the session is usable at once.
    assert (await loop.send("again", session_id=sid)).final_text == "fine again"
    await finish(loop, sid)


async def test_a_raising_handler_ends_the_run_with_a_clear_error(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [text_reply("never stored")])

    def broken(ctx: Any) -> None:
        raise KeyError("missing tenant")

    loop.hooks.register(HookPoint.LLM_BEFORE, broken)
    with pytest.raises(HookError, match="llm.before hook .*broken raised KeyError") as info:
        await loop.send("x", session_id=sid)
    assert isinstance(info.value.__cause__, KeyError)
    assert llm.calls == 0
    rows = await loop.store.execute_fetchall(
        "SELECT status, error FROM runs WHERE session = (SELECT id FROM sessions WHERE session_id = ?)", (sid,)
    )
    assert rows[0][0] == "failed" and "KeyError" in rows[0][1]
    await finish(loop, sid)


async def test_session_start_projects_messages_for_the_run(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [text_reply("a"), text_reply("b")])
    await loop.send("first", session_id=sid)

    def trim(ctx: Any) -> None:
        ctx.messages = ctx.messages[-1:]  # the model sees only the new input this run

    loop.hooks.register(HookPoint.SESSION_START, trim)
    await loop.send("second", session_id=sid)
    assert [m.text for m in llm.requests[1].messages] == ["second"]
    messages = await finish(loop, sid)
    assert [m["content"] for m in messages] == ["first", "a", "second", "b"]  # storage untouched


async def test_session_end_sees_the_reason(db_path: str) -> None:
    loop, _, sid = await make(db_path, [text_reply("bye")])
    ends: list[tuple[str, str | None]] = []
    loop.hooks.register(HookPoint.SESSION_END, lambda ctx: ends.append((ctx.reason, ctx.final_text)))
    await loop.send("x", session_id=sid)
    await finish(loop, sid)
    assert ends == [("completed", "bye")]


async def test_round_start_break_and_skip(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [text_reply("after skip")])
    state = {"skipped": False}

    def skip_once(ctx: Any) -> HookDirective | None:
        if not state["skipped"]:
            state["skipped"] = True
            return HookDirective.SKIP
        return None

    loop.hooks.register(HookPoint.ROUND_START, skip_once)
    result = await loop.send("x", session_id=sid)
    assert (result.final_text, result.rounds, llm.calls) == ("after skip", 2, 1)
    loop.hooks.clear(HookPoint.ROUND_START)
    loop.hooks.register(HookPoint.ROUND_START, lambda ctx: HookDirective.BREAK)
    stopped = await loop.send("y", session_id=sid)
    assert (stopped.status, llm.calls) == ("completed", 1)
    await finish(loop, sid)


async def test_llm_before_changes_the_request(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [text_reply("ok")])

    def adjust(ctx: Any) -> None:
        ctx.system_prompt = "rewritten prompt"
        ctx.max_tokens = 77
        ctx.temperature = 0.5
        ctx.tools = [t for t in ctx.tools if t.name == "shout"]
        ctx.messages = ctx.messages + [{"role": "user", "content": "extra context"}]

    loop.hooks.register(HookPoint.LLM_BEFORE, adjust)
    await loop.send("x", session_id=sid)
    request = llm.requests[0]
    assert (request.system_prompt, request.max_tokens, request.temperature) == ("rewritten prompt", 77, 0.5)
    assert [t.name for t in request.tools] == ["shout"]
    assert [m.text for m in request.messages] == ["x", "extra context"]
    messages = await finish(loop, sid)
    assert [m["content"] for m in messages] == ["x", "ok"]


@pytest.mark.parametrize(
    "output",
    [
        "canned answer",
        AssistantMessage(content="canned answer"),
        LLMResponse(message=AssistantMessage(content="canned answer")),
    ],
)
async def test_llm_before_short_circuit(db_path: str, output: Any) -> None:
    loop, llm, sid = await make(db_path, [])

    def cached(ctx: Any) -> HookDirective:
        ctx.output = output
        return HookDirective.SHORT_CIRCUIT

    loop.hooks.register(HookPoint.LLM_BEFORE, cached)
    result = await loop.send("x", session_id=sid)
    assert (result.final_text, llm.calls, result.usage["calls"]) == ("canned answer", 0, 0)
    await finish(loop, sid)


async def test_llm_before_break(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [])
    loop.hooks.register(HookPoint.LLM_BEFORE, lambda ctx: HookDirective.BREAK)
    result = await loop.send("x", session_id=sid)
    assert (result.status, llm.calls) == ("completed", 0)
    await finish(loop, sid)


async def test_llm_after_rewrites_and_break_drops_tool_calls(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [text_reply("raw"), TWO_CALLS])

    def polish(ctx: Any) -> None:
        ctx.output = LLMResponse(message=AssistantMessage(content=ctx.output.message.text.upper()))

    loop.hooks.register(HookPoint.LLM_AFTER, polish)
    assert (await loop.send("x", session_id=sid)).final_text == "RAW"
    loop.hooks.clear()
    ran: list[str] = []
    loop.hooks.register(HookPoint.TOOL_BEFORE, lambda ctx: ran.append(ctx.tool_name))
    loop.hooks.register(HookPoint.LLM_AFTER, lambda ctx: HookDirective.BREAK)
    result = await loop.send("y", session_id=sid)
    assert result.status == "completed" and ran == []
    messages = await finish(loop, sid)
    assert "tool_calls" not in messages[-1]


async def test_round_decide_skip_answers_every_call(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [TWO_CALLS, text_reply("understood")])

    def deny(ctx: Any) -> HookDirective:
        ctx.output = "tools are disabled right now"
        return HookDirective.SKIP

    loop.hooks.register(HookPoint.ROUND_DECIDE, deny)
    result = await loop.send("go", session_id=sid)
    assert (result.final_text, result.rounds) == ("understood", 2)
    messages = await finish(loop, sid)
    assert [m["content"] for m in messages[2:4]] == ["tools are disabled right now"] * 2


async def test_round_decide_break_leaves_no_call_unanswered(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [TWO_CALLS])
    loop.hooks.register(HookPoint.ROUND_DECIDE, lambda ctx: HookDirective.BREAK)
    result = await loop.send("go", session_id=sid)
    assert (result.status, llm.calls) == ("completed", 1)
    messages = await finish(loop, sid)
    assert [m["content"] for m in messages[2:4]] == ["[skipped: round.decide hook ended the run]"] * 2


async def test_tools_batch_before_skip(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [TWO_CALLS, text_reply("ok")])

    def skip(ctx: Any) -> HookDirective:
        assert [c["id"] for c in ctx.tool_calls] == ["c1", "c2"]
        ctx.output = "batch skipped"
        return HookDirective.SKIP

    loop.hooks.register(HookPoint.TOOLS_BATCH_BEFORE, skip)
    await loop.send("go", session_id=sid)
    messages = await finish(loop, sid)
    assert [m["content"] for m in messages[2:4]] == ["batch skipped", "batch skipped"]


async def test_tool_before_rewrites_arguments_and_skips(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [TWO_CALLS, text_reply("ok")])

    def gate(ctx: Any) -> HookDirective | None:
        if ctx.tool_name == "shout":
            ctx.output = "shouting is not approved"
            return HookDirective.SKIP
        ctx.tool_args = {"a": 40, "b": 2}
        return None

    loop.hooks.register(HookPoint.TOOL_BEFORE, gate)
    await loop.send("go", session_id=sid)
    messages = await finish(loop, sid)
    assert [m["content"] for m in messages[2:4]] == ["42", "shouting is not approved"]


async def test_tool_after_rewrites_and_break_stops_the_batch(db_path: str) -> None:
    script = [
        tool_reply(("add", {"a": 1, "b": 1}, "c1"), ("add", {"a": 2, "b": 2}, "c2"), ("add", {"a": 3, "b": 3}, "c3")),
        text_reply("ok"),
    ]
    loop, llm, sid = await make(db_path, script, tool_concurrency=1)

    def after(ctx: Any) -> HookDirective | None:
        ctx.output = f"result={ctx.output}"
        return HookDirective.BREAK if ctx.tool_call["id"] == "c2" else None

    loop.hooks.register(HookPoint.TOOL_AFTER, after)
    await loop.send("go", session_id=sid)
    messages = await finish(loop, sid)
    assert [m["content"] for m in messages[2:5]] == [
        "result=2",
        "result=4",
        "[skipped: tool.after hook stopped the batch]",
    ]


async def test_tool_error_skip_and_short_circuit_retry(db_path: str) -> None:
    attempts: list[int] = []

    @tool
    def flaky() -> str:
        """Fails on the first call of each pair."""
        attempts.append(1)
        if len(attempts) % 2:
            raise ConnectionError("transient")
        return "recovered"

    @tool
    def broken() -> str:
        """Always fails."""
        raise ValueError("permanent")

    llm = ScriptedLLM([tool_reply(("flaky", {}, "c1"), ("broken", {}, "c2")), text_reply("ok")])
    loop = StatefulAgentLoop(
        llm=llm, db_path=db_path, tool_registry=registry(flaky, broken), config=AgentLoopConfig(tool_concurrency=1)
    )

    def on_error(ctx: Any) -> HookDirective:
        if ctx.tool_name == "flaky":
            return HookDirective.SHORT_CIRCUIT
        assert isinstance(ctx.error, ValueError) and ctx.error_message == "Error: permanent"
        ctx.output = "the broken tool is known to fail; continue without it"
        return HookDirective.SKIP

    loop.hooks.register(HookPoint.TOOL_ERROR, on_error)
    log = EventLog(loop.event_bus)
    sid = await loop.new_session_async()
    await loop.send("go", session_id=sid)
    messages = await finish(loop, sid)
    assert len(attempts) == 2
    assert [m["content"] for m in messages[2:4]] == [
        "recovered",
        "the broken tool is known to fail; continue without it",
    ]
    assert "is_error" not in messages[3]
    assert log.types.count("tool_call_failed") == 0


async def test_tool_error_retry_that_fails_again(db_path: str) -> None:
    @tool
    def broken() -> str:
        """Always fails."""
        raise ValueError("still broken")

    llm = ScriptedLLM([tool_reply(("broken", {})), text_reply("ok")])
    loop = StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(broken))
    loop.hooks.register(HookPoint.TOOL_ERROR, lambda ctx: HookDirective.SHORT_CIRCUIT)
    sid = await loop.new_session_async()
    await loop.send("go", session_id=sid)
    messages = await finish(loop, sid)
    assert messages[2]["content"] == "Error (retry failed): still broken"


async def test_round_end_and_batch_after_are_read_only_observers(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [TWO_CALLS, text_reply("ok")])
    seen: list[tuple[str, Any]] = []
    loop.hooks.register(HookPoint.TOOLS_BATCH_AFTER, lambda ctx: seen.append(("batch", len(ctx.messages))))
    loop.hooks.register(HookPoint.ROUND_END, lambda ctx: seen.append(("round", ctx.has_tools)))
    await loop.send("go", session_id=sid)
    await finish(loop, sid)
    assert seen == [("batch", 2), ("round", True), ("round", False)]


async def test_message_append_rewrites_before_storage(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [text_reply("my card is 4111-1111")])

    def redact(ctx: Any) -> None:
        if isinstance(ctx.message.get("content"), str):
            ctx.message["content"] = ctx.message["content"].replace("4111-1111", "[card]")

    loop.hooks.register(HookPoint.MESSAGE_APPEND, redact)
    result = await loop.send("charge 4111-1111", session_id=sid)
    assert llm.requests[0].messages[0].text == "charge [card]"  # the model saw the stored form
    messages = await finish(loop, sid)
    assert [m["content"] for m in messages] == ["charge [card]", "my card is [card]"]
    assert result.final_text == "my card is [card]"


async def test_message_append_may_not_change_roles(db_path: str) -> None:
    loop, llm, sid = await make(db_path, [text_reply("never")])

    def bad(ctx: Any) -> None:
        ctx.message = {"role": "assistant", "content": "forged"}

    loop.hooks.register(HookPoint.MESSAGE_APPEND, bad)
    with pytest.raises(HookError, match="changed a user message into a assistant message"):
        await loop.send("x", session_id=sid)
    assert await loop.get_messages_async(sid) == []
    await loop.aclose()


async def test_memory_recalled_edits_or_skips(db_path: str) -> None:
    memory = InMemoryMemory()
    memory.remember(session_id="old", user_input="The deploy password rotates on Mondays", response="")
    memory.remember(session_id="old", user_input="Deploys happen from the release branch", response="")
    llm = ScriptedLLM([text_reply("a"), text_reply("b")])
    loop = StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(memory=memory, system_prompt="base"))
    log = EventLog(loop.event_bus)
    loop.hooks.register(
        HookPoint.MEMORY_RECALLED,
        lambda ctx: setattr(ctx, "recalled", [r for r in ctx.recalled if "password" not in r]),
    )
    sid = await loop.new_session_async()
    await loop.send("how does the deploy work?", session_id=sid)
    assert "release branch" in (llm.requests[0].system_prompt or "")
    assert "password" not in (llm.requests[0].system_prompt or "")
    recalled = log.of("memory_recalled")[0].payload
    assert (recalled["returned"], recalled["injected"]) == (2, 1)
    loop.hooks.clear()
    loop.hooks.register(HookPoint.MEMORY_RECALLED, lambda ctx: HookDirective.SKIP)
    await loop.send("deploys again?", session_id=sid)
    assert llm.requests[1].system_prompt == "base"
    await finish(loop, sid)


async def test_memory_failure_is_reported_and_the_run_goes_on(db_path: str) -> None:
    class Broken:
        def recall(self, **kwargs: Any) -> list[str]:
            raise RuntimeError("memory backend down")

        def remember(self, **kwargs: Any) -> None:
            raise RuntimeError("memory backend down")

    llm = ScriptedLLM([text_reply("fine")])
    loop = StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(memory=Broken()))
    log = EventLog(loop.event_bus)
    sid = await loop.new_session_async()
    assert (await loop.send("x", session_id=sid)).final_text == "fine"
    assert [e.payload["phase"] for e in log.of("memory_failed")] == ["recall", "remember"]
    await finish(loop, sid)


async def test_hooks_can_be_shared_on_purpose(db_path: str, tmp_path: Any) -> None:
    shared = AgentHooks()
    seen: list[str] = []
    shared.register(HookPoint.SESSION_START, lambda ctx: seen.append(ctx.session_id))
    first = StatefulAgentLoop(llm=ScriptedLLM(rule=lambda r: text_reply("1")), db_path=db_path, hooks=shared)
    second = StatefulAgentLoop(
        llm=ScriptedLLM(rule=lambda r: text_reply("2")), db_path=str(tmp_path / "b.db"), hooks=shared
    )
    a = await first.new_session_async()
    b = await second.new_session_async()
    await first.send("x", session_id=a)
    await second.send("y", session_id=b)
    assert seen == [a, b]
    assert shared.unregister(HookPoint.SESSION_START, seen.append) is False
    await first.aclose()
    await second.aclose()
