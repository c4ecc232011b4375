"""0.11 surface of hooks, events, cancellation, results and the phase pipeline: each name is
there with 0.11's signature and behaves as 0.11 documented it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import power_loop
from power_loop import (
    AgentEvent,
    AgentEventBus,
    AgentEventType,
    AgentHooks,
    AgentLoopConfig,
    AgentLoopResult,
    AgentPipeline,
    CancellationRequested,
    CancellationToken,
    EventBusProtocol,
    EventHandler,
    HookContext,
    HookDirective,
    HookError,
    HookHandler,
    HookManagerProtocol,
    HookPoint,
    HookResult,
    HumanInputRequired,
    LLMRetryPolicy,
    PhaseContext,
    PhaseEventPayload,
    PhaseResult,
    RoundStartCtx,
    SessionEndCtx,
    StatefulAgentLoop,
    phase,
    request_user_input,
    tool,
)
from power_loop.testing import ScriptedLLM, error_reply, text_reply, tool_reply

from .helpers import EventLog, registry

NEW_NAMES = (
    "AgentPipeline",
    "CancellationLike",
    "EventBusProtocol",
    "EventHandler",
    "HookContext",
    "HookHandler",
    "HookManagerProtocol",
    "HookResult",
    "PhaseContext",
    "PhaseEventPayload",
    "PhaseResult",
    "phase",
)


def test_the_names_are_exported() -> None:
    for name in NEW_NAMES:
        assert name in power_loop.__all__, name
        assert getattr(power_loop, name) is not None
    assert isinstance(AgentHooks(), HookManagerProtocol)
    assert isinstance(AgentEventBus(), EventBusProtocol)
    assert isinstance(print, HookHandler) and isinstance(print, EventHandler)


# --------------------------------------------------------------------------- AgentHooks


async def test_register_by_keyword_and_by_position_steer_a_real_run(db_path: str) -> None:
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 2}, "c1")), text_reply("done")])
    loop = StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry())
    seen: list[str] = []
    loop.hooks.register(hook_point=HookPoint.ROUND_START, handler=lambda ctx: seen.append("kw"), order=5)
    loop.hooks.register(HookPoint.ROUND_START, lambda ctx: seen.append("pos"), order=1)
    loop.hooks.register(point="round.start", handler=lambda ctx: seen.append("point"), order=3)
    loop.hooks.register(hook_point="tool.before", handler=lambda ctx: HookDirective.SKIP)
    sid = await loop.new_session_async()
    result = await loop.send("1+2", session_id=sid)
    await loop.aclose()
    assert seen == ["pos", "point", "kw"] * 2
    assert result.tool_calls == 0  # the keyword-registered TOOL_BEFORE hook skipped the call
    with pytest.raises(TypeError, match="both hook_point"):
        AgentHooks().register(hook_point=HookPoint.ROUND_START, point=HookPoint.ROUND_END, handler=print)
    with pytest.raises(ValueError, match="unknown hook point 'nope'"):
        AgentHooks().register("nope", print)


def test_clear_by_hook_point_keyword_and_string() -> None:
    hooks = AgentHooks()
    hooks.register(HookPoint.ROUND_START, print)
    hooks.register(HookPoint.ROUND_END, print)
    hooks.clear(hook_point="round.start")  # a string clears the enum registration too
    assert not hooks.has(HookPoint.ROUND_START) and hooks.has("round.end")
    hooks.clear()
    assert not hooks.has(HookPoint.ROUND_END)


def test_legacy_run_threads_the_context_and_keeps_the_last_directive() -> None:
    hooks = AgentHooks()
    seen: list[dict[str, Any]] = []
    hooks.register(HookPoint.ROUND_START, lambda c: seen.append(dict(c.values)) or {"x": 1}, order=0)
    hooks.register(HookPoint.ROUND_START, lambda c: HookResult(c, HookDirective.SKIP), order=1)
    hooks.register(HookPoint.ROUND_START, lambda c: seen.append(dict(c.values)), order=2)
    hooks.register(HookPoint.ROUND_START, lambda c: HookContext({**c.values, "y": 2}), order=3)
    result = hooks.run(hook_point=HookPoint.ROUND_START, context=HookContext({"a": 0}))
    assert seen == [{"a": 0}, {"x": 1}]
    assert result == HookResult(HookContext({"x": 1, "y": 2}), HookDirective.SKIP)
    empty = HookContext({"k": 1})
    assert AgentHooks().run("round.start", empty).context is empty


def test_legacy_run_errors() -> None:
    hooks = AgentHooks()

    async def slow(ctx: HookContext) -> None:
        ctx.values["async"] = True

    hooks.register(HookPoint.ROUND_START, slow)
    with pytest.raises(HookError, match="is async; call await hooks.run_async"):
        hooks.run(HookPoint.ROUND_START, HookContext())
    bad = AgentHooks()
    bad.register(HookPoint.ROUND_START, lambda c: 42)
    with pytest.raises(HookError, match="returned 42"):
        bad.run(HookPoint.ROUND_START, HookContext())
    raising = AgentHooks()
    raising.register(HookPoint.ROUND_START, lambda c: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # the handler's own error, as 0.11
        raising.run(HookPoint.ROUND_START, HookContext())


async def test_run_async_awaits_async_handlers() -> None:
    hooks = AgentHooks()

    async def mark(ctx: HookContext) -> HookDirective:
        ctx.values["async"] = True
        return HookDirective.BREAK

    hooks.register(HookPoint.ROUND_START, mark)
    result = await hooks.run_async(HookPoint.ROUND_START, HookContext())
    assert result.context.values == {"async": True} and result.directive is HookDirective.BREAK


async def test_run_typed_and_run_typed_async() -> None:
    hooks = AgentHooks()
    order: list[str] = []
    hooks.register(HookPoint.ROUND_START, lambda c: order.append("first"))
    hooks.register(HookPoint.ROUND_START, lambda c: HookDirective.SKIP, order=1)
    hooks.register(HookPoint.ROUND_START, lambda c: order.append("never"), order=2)
    ctx = RoundStartCtx()
    assert hooks.run_typed(HookPoint.ROUND_START, ctx) is HookDirective.SKIP
    assert ctx.directive is HookDirective.SKIP and order == ["first"]
    ctx2 = RoundStartCtx()
    assert await hooks.run_typed_async("round.start", ctx2) is HookDirective.SKIP
    assert await hooks.run(HookPoint.ROUND_START, RoundStartCtx()) is HookDirective.SKIP

    async def later(ctx: Any) -> None:
        return None

    hooks.register(HookPoint.SESSION_END, later)
    with pytest.raises(HookError, match="run_typed_async"):
        hooks.run_typed(HookPoint.SESSION_END, SessionEndCtx())
    unhonoured = AgentHooks()
    unhonoured.register(HookPoint.SESSION_END, lambda c: HookDirective.SKIP)
    with pytest.raises(HookError, match="does not honour"):
        unhonoured.run_typed(HookPoint.SESSION_END, SessionEndCtx())


# --------------------------------------------------------------------------- event bus


def test_unsubscribe_by_handler_alone_and_by_type() -> None:
    bus = AgentEventBus()
    seen: list[str] = []

    def handler(event: AgentEvent) -> None:
        seen.append(event.type.value)

    bus.subscribe(AgentEventType.SYSTEM_LOG, handler)
    bus.subscribe(None, handler)
    assert bus.unsubscribe(handler=handler)  # 0.11's keyword; removes every subscription
    bus.publish(AgentEvent(AgentEventType.SYSTEM_LOG))
    assert seen == []
    bus.subscribe(AgentEventType.SYSTEM_LOG, handler)
    bus.subscribe(AgentEventType.USER_NOTIFICATION, handler)
    assert bus.unsubscribe(AgentEventType.SYSTEM_LOG, handler)
    bus.publish(AgentEvent(AgentEventType.SYSTEM_LOG))
    bus.publish(AgentEvent(AgentEventType.USER_NOTIFICATION))
    assert seen == ["user_notification"]


# --------------------------------------------------------------------------- cancellation


async def test_never_from_any_and_raise_if_cancelled() -> None:
    never = CancellationToken.never()
    never.cancel("ignored")
    assert not never.is_cancelled()
    never.raise_if_cancelled()
    assert not CancellationToken.from_any(None).is_cancelled()
    token = CancellationToken()
    assert CancellationToken.from_any(token) is token
    token.cancel("user stop")
    with pytest.raises(CancellationRequested) as caught:
        token.raise_if_cancelled()
    assert caught.value.reason == "user stop"

    flag = threading.Event()
    wrapped = CancellationToken.from_any(flag)
    assert not wrapped.is_cancelled()
    wrapped.cancel("from token")  # a threading.Event source is set
    assert flag.is_set() and wrapped.is_cancelled()

    state = {"stop": False}
    polled = CancellationToken.from_any(lambda: state["stop"])
    waiter = asyncio.ensure_future(polled.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    state["stop"] = True
    await asyncio.wait_for(waiter, 5)

    aio = asyncio.Event()
    from_event = CancellationToken.from_any(aio)
    aio.set()
    assert from_event.is_cancelled()
    assert CancellationToken(_check=lambda: True).is_cancelled()
    with pytest.raises(TypeError, match="from_any takes"):
        CancellationToken.from_any(42)  # type: ignore[arg-type]


async def test_a_wrapped_token_stops_a_real_run(db_path: str) -> None:
    state = {"stop": False}
    token = CancellationToken.from_any(lambda: state["stop"])

    @tool
    def stop_now() -> str:
        """Ask the run to stop."""
        state["stop"] = True
        return "ok"

    from power_loop import ToolRegistry

    llm = ScriptedLLM([tool_reply(("stop_now", {})), text_reply("never sent")])
    loop = StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([stop_now]))
    sid = await loop.new_session_async()
    result = await loop.send("go", session_id=sid, stop_event=token)
    await loop.aclose()
    assert result.status == "cancelled" and llm.calls == 1


# --------------------------------------------------------------------------- results, human input


def test_human_input_and_loop_result_constructors_as_0_11() -> None:
    question = HumanInputRequired("confirm", "Delete it?")
    assert (question.kind, question.prompt) == ("confirm", "Delete it?")
    pending = question.to_pending(tool_call_id="c1")
    assert pending["tool_name"] == "request_user_input" and pending["tool_call_id"] == "c1"
    with pytest.raises(HumanInputRequired) as caught:
        request_user_input(prompt="Name?")
    assert caught.value.kind == "text" and caught.value.prompt == "Name?"
    result = AgentLoopResult("completed", "hi", 1, [{"id": "c"}], [{"interaction_id": "i"}], [], {"calls": 1}, 3)
    assert result.pending_tool_calls == [{"id": "c"}] and result.pending_interactions == [{"interaction_id": "i"}]
    assert result.messages == [] and result.usage == {"calls": 1} and result.tool_calls == 3


# --------------------------------------------------------------------------- phase pipeline


class Steps(AgentPipeline):
    calls = 0

    @phase(
        before=HookPoint.ROUND_START,
        after=HookPoint.ROUND_END,
        error=HookPoint.TOOL_ERROR,
        start_event=AgentEventType.ROUND_STARTED,
        end_event=AgentEventType.ROUND_COMPLETED,
    )
    async def step(self, ctx: PhaseContext) -> Any:
        self.calls += 1
        if ctx.values.get("fail") and self.calls == 1:
            raise ValueError("boom")
        return {"seen": ctx.values.get("x")}


def make_steps() -> tuple[Steps, EventLog]:
    steps = Steps(llm=ScriptedLLM(), config=AgentLoopConfig(), session_id="S1")
    return steps, EventLog(steps.bus)


async def test_phase_runs_hooks_and_publishes_typed_events() -> None:
    steps, log = make_steps()
    steps.hooks.register(HookPoint.ROUND_START, lambda c: {**c.values, "x": 5})
    after: list[dict[str, Any]] = []
    steps.hooks.register(HookPoint.ROUND_END, lambda c: after.append(dict(c.values)))
    result = await steps.step(PhaseContext(values={"a": 1}, round_index=3))
    assert result == PhaseResult(output={"seen": 5}, values={"a": 1, "x": 5, "output": {"seen": 5}})
    assert after == [{"a": 1, "x": 5, "output": {"seen": 5}}]
    assert log.types == ["round_started", "round_completed"]
    first = log.events[0]
    assert isinstance(first.data, PhaseEventPayload) and first.payload == {"phase": "step"}
    assert (first.session_id, first.round_index) == ("S1", 3)
    assert PhaseEventPayload(values={"a": 1}).to_dict() == {"a": 1}


async def test_phase_before_directives_return_at_once() -> None:
    for directive in (HookDirective.SKIP, HookDirective.SHORT_CIRCUIT, HookDirective.BREAK):
        steps, log = make_steps()
        steps.hooks.register(HookPoint.ROUND_START, lambda c, d=directive: HookResult(HookContext({"output": "o"}), d))
        result = await steps.step(PhaseContext())
        assert result.directive is directive and result.output == "o" and steps.calls == 0 and log.types == []
        assert (result.should_skip, result.is_short_circuit, result.should_break) == (
            directive is HookDirective.SKIP,
            directive is HookDirective.SHORT_CIRCUIT,
            directive is HookDirective.BREAK,
        )


async def test_phase_after_break_and_output_replacement() -> None:
    steps, _ = make_steps()
    steps.hooks.register(
        HookPoint.ROUND_END, lambda c: HookResult(HookContext({**c.values, "output": "new"}), HookDirective.BREAK)
    )
    result = await steps.step()  # type: ignore[call-arg]
    assert result.should_break and result.output == "new"


async def test_phase_error_paths() -> None:
    steps, log = make_steps()
    failed = await steps.step(PhaseContext(values={"fail": 1}))
    assert failed.output == "Error: boom" and failed.values["failed"] is True
    assert isinstance(failed.values["error"], ValueError) and log.types == ["round_started"]

    steps, log = make_steps()
    got: list[dict[str, Any]] = []
    steps.hooks.register(
        HookPoint.TOOL_ERROR,
        lambda c: got.append(dict(c.values)) or HookResult(HookContext({"output": "fallback"}), HookDirective.SKIP),
    )
    skipped = await steps.step(PhaseContext(values={"fail": 1}))
    assert got[0]["error_message"] == "boom" and skipped.output == "fallback"
    assert log.types == ["round_started", "round_completed"]

    steps, _ = make_steps()
    steps.hooks.register(HookPoint.TOOL_ERROR, lambda c: HookResult(c, HookDirective.SHORT_CIRCUIT))
    retried = await steps.step(PhaseContext(values={"fail": 1}))
    assert retried.output == {"seen": None} and steps.calls == 2


# --------------------------------------------------------------------------- AgentPipeline


async def test_pipeline_call_llm_retries_and_streams() -> None:
    llm = ScriptedLLM([error_reply(503), text_reply("hello")])
    policy = LLMRetryPolicy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
    pipeline = AgentPipeline(llm=llm, config=AgentLoopConfig(retry_policy=policy), session_id="S")
    log = EventLog(pipeline.bus)
    tools = [{"type": "function", "function": {"name": "add", "description": "d", "parameters": {"type": "object"}}}]
    response = await pipeline.call_llm(
        0,
        messages=[{"role": "user", "content": "hi"}],
        system_prompt="sys",
        tools=tools,
        max_tokens=10,
        temperature=0.0,
    )
    assert response.message.content == "hello" and llm.calls == 2
    request = llm.requests[-1]
    assert request.system_prompt == "sys" and [t.name for t in request.tools] == ["add"]
    assert log.types[0] == "llm_retry_attempted" and "stream_completed" in log.types
    assert {e.session_id for e in log.events} == {"S"}


async def test_pipeline_execute_tool_results() -> None:
    pipeline = AgentPipeline(llm=ScriptedLLM(), config=AgentLoopConfig(), tool_registry=registry())
    assert await pipeline.execute_tool("add", {"a": 1, "b": 2}) == ("3", False)
    assert await pipeline.execute_tool("nope", {}) == ("Unknown tool: nope", True)
    output, failed = await pipeline.execute_tool("add", {"a": 1})
    assert failed and "b" in output


async def test_pipeline_run_and_prepare_round_name_the_replacement() -> None:
    pipeline = AgentPipeline(llm=ScriptedLLM(), config=AgentLoopConfig())
    with pytest.raises(NotImplementedError, match=r"StatefulAgentLoop\(llm=\.\.\., db_path=\.\.\.\)\.send"):
        await pipeline.run([{"role": "user", "content": "hi"}])
    with pytest.raises(NotImplementedError, match="StatefulAgentLoop.send"):
        await pipeline.prepare_round(0)


async def test_a_stop_signal_that_already_fired_closes_the_coroutine_it_was_given() -> None:
    import gc

    from power_loop.cancellation import StopSignal

    token = CancellationToken()
    token.cancel("stopped before the call")
    signal = StopSignal(token)
    with pytest.raises(CancellationRequested, match="stopped before the call"):
        await signal.sleep(3600)
    gc.collect()  # an un-awaited coroutine would warn here, an error under filterwarnings=error
