"""AgentRunner: session brackets run the session hooks and publish the session events, in
the loop's order, on every path (completed, the block raising, a hook raising), sync and async."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from typing import Any

import pytest

from power_loop import (
    AgentEvent,
    AgentEventBus,
    AgentEventType,
    AgentHooks,
    AgentRunner,
    HookDirective,
    HookError,
    HookPoint,
    SessionEndCtx,
    SessionStartCtx,
)


class Trace:
    """One ordered record of hook calls and events, with what each received."""

    def __init__(self, hooks: AgentHooks, bus: AgentEventBus, *, async_hooks: bool = False) -> None:
        self.steps: list[str] = []
        self.contexts: list[Any] = []
        self.events: list[AgentEvent] = []
        if async_hooks:
            hooks.register(HookPoint.SESSION_START, self.start_async)
            hooks.register(HookPoint.SESSION_END, self.end_async)
        else:
            hooks.register(HookPoint.SESSION_START, self.hook)
            hooks.register(HookPoint.SESSION_END, self.hook)
        bus.subscribe(AgentEventType.SESSION_STARTED, self.event)
        bus.subscribe(AgentEventType.SESSION_ENDED, self.event)

    def hook(self, ctx: SessionStartCtx | SessionEndCtx) -> None:
        point = "session.start" if isinstance(ctx, SessionStartCtx) else "session.end"
        self.steps.append(f"hook {point}")
        self.contexts.append(ctx)

    async def start_async(self, ctx: SessionStartCtx) -> None:
        await asyncio.sleep(0)
        self.hook(ctx)

    async def end_async(self, ctx: SessionEndCtx) -> None:
        await asyncio.sleep(0)
        self.hook(ctx)

    def event(self, event: AgentEvent) -> None:
        self.steps.append(f"event {event.type.value}")
        self.events.append(event)

    def ended(self) -> tuple[SessionEndCtx, AgentEvent]:
        end = self.contexts[-1]
        assert isinstance(end, SessionEndCtx)
        return end, self.events[-1]


BRACKET = ["event session_started", "hook session.start", "body", "hook session.end", "event session_ended"]


def make(*, async_hooks: bool = False) -> tuple[AgentRunner, Trace]:
    hooks, bus = AgentHooks(), AgentEventBus()
    return AgentRunner(event_bus=bus, hooks=hooks), Trace(hooks, bus, async_hooks=async_hooks)


def assert_closed(trace: Trace, sid: str, reason: str, status: str) -> None:
    end, ended = trace.ended()
    assert (end.session_id, end.reason, end.status, end.messages) == (sid, reason, status, [])
    assert ended.type is AgentEventType.SESSION_ENDED and ended.session_id == sid
    assert (ended.payload["reason"], ended.payload["status"]) == (reason, status)
    started = trace.events[0]
    assert started.type is AgentEventType.SESSION_STARTED and started.session_id == sid
    assert started.source == ended.source == "runner"
    assert started.payload["run_id"] == ended.payload["run_id"] and started.payload["run_id"].startswith("run_")


# --------------------------------------------------------------------------- sync


def test_a_sync_session_runs_the_hooks_and_events_in_the_loops_order() -> None:
    runner, trace = make()
    with runner.session() as sid:
        trace.steps.append("body")
    assert trace.steps == BRACKET
    start = trace.contexts[0]
    assert isinstance(start, SessionStartCtx) and start.session_id == sid and start.scope == "main"
    assert_closed(trace, sid, "completed", "completed")
    started = trace.events[0].payload
    assert started["scope"] == "main" and started["run_id"] == trace.events[1].payload["run_id"]
    assert started["parent_session_id"] == "" and started["spawn_tool_call_id"] == ""  # no sub-agent


def test_ids_are_fresh_unless_given() -> None:
    runner, trace = make()
    with runner.session() as first, runner.session() as second:
        pass
    assert re.fullmatch(r"sess_[0-9a-f]{24}", first) and re.fullmatch(r"sess_[0-9a-f]{24}", second)
    assert first != second
    with runner.session(session_id="sess_mine") as given:
        assert given == "sess_mine"
    assert [e.session_id for e in trace.events[-2:]] == ["sess_mine", "sess_mine"]
    run_ids = {e.payload["run_id"] for e in trace.events}
    assert len(run_ids) == 3  # one per bracket, shared by its two events


@pytest.mark.parametrize("bad", ["", "   ", "x" * 201])
def test_an_invalid_session_id_is_refused_before_anything_runs(bad: str) -> None:
    runner, trace = make()
    with pytest.raises(ValueError, match="session_id"), runner.session(session_id=bad):
        pass
    assert trace.steps == []


def test_the_blocks_exception_propagates_and_names_the_reason() -> None:
    runner, trace = make()
    boom = KeyError("missing")
    with pytest.raises(KeyError) as raised, runner.session(session_id="s1"):
        trace.steps.append("body")
        raise boom
    assert raised.value is boom
    assert trace.steps == BRACKET
    assert_closed(trace, "s1", "error: KeyError", "failed")


def test_a_failing_start_hook_closes_the_session_and_the_block_never_runs() -> None:
    runner, trace = make()

    def refuse(ctx: SessionStartCtx) -> None:
        raise PermissionError("no sessions today")

    runner.hooks.register(HookPoint.SESSION_START, refuse, order=-1)
    with pytest.raises(HookError, match="no sessions today") as raised, runner.session(session_id="s1"):
        trace.steps.append("body")
    assert isinstance(raised.value.__cause__, PermissionError)
    assert trace.steps == ["event session_started", "hook session.end", "event session_ended"]
    assert_closed(trace, "s1", "error: HookError", "failed")


def test_a_directive_the_start_point_does_not_honour_is_a_hook_error() -> None:
    runner, trace = make()
    runner.hooks.register(HookPoint.SESSION_START, lambda ctx: HookDirective.SKIP, order=-1)
    with pytest.raises(HookError, match="does not honour"), runner.session():
        trace.steps.append("body")
    assert "body" not in trace.steps and trace.steps[-1] == "event session_ended"


def test_a_failing_end_hook_after_a_completed_block_is_raised_after_session_ended() -> None:
    runner, trace = make()

    def audit(ctx: SessionEndCtx) -> None:
        raise OSError("disk full")

    runner.hooks.register(HookPoint.SESSION_END, audit, order=-1)
    with pytest.raises(HookError, match="disk full"), runner.session(session_id="s1"):
        trace.steps.append("body")
    # audit ran first and raised, so the chain stopped before the trace hook
    assert trace.steps == ["event session_started", "hook session.start", "body", "event session_ended"]
    assert trace.events[-1].payload["reason"] == "completed"


def test_a_failing_end_hook_after_a_failed_block_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    runner, trace = make()
    runner.hooks.register(HookPoint.SESSION_END, lambda ctx: 1 / 0, order=-1)
    with (
        caplog.at_level(logging.ERROR, logger="power_loop.agent_runner"),
        pytest.raises(LookupError, match="the block"),
        runner.session(session_id="s1"),
    ):
        raise LookupError("the block")
    assert trace.events[-1].payload["reason"] == "error: LookupError"
    [record] = caplog.records
    assert "s1" in record.getMessage() and isinstance(record.exc_info and record.exc_info[1], HookError)


def test_a_failing_subscriber_still_gets_the_session_closed() -> None:
    runner, trace = make()

    def broken(event: AgentEvent) -> None:
        raise RuntimeError("subscriber down")

    runner.event_bus.subscribe(AgentEventType.SESSION_STARTED, broken, priority=-1)  # after the trace
    with pytest.raises(RuntimeError, match="subscriber down"), runner.session():
        trace.steps.append("body")
    assert trace.steps == ["event session_started", "hook session.end", "event session_ended"]
    assert trace.events[-1].payload["reason"] == "error: RuntimeError"


def test_async_hooks_and_subscribers_work_from_sync_code_without_a_loop() -> None:
    runner, trace = make(async_hooks=True)
    seen: list[str] = []

    async def subscriber(event: AgentEvent) -> None:
        await asyncio.sleep(0)
        seen.append(event.type.value)

    runner.event_bus.subscribe(None, subscriber)
    with runner.session() as sid:
        trace.steps.append("body")
    assert trace.steps == BRACKET
    assert seen == ["session_started", "session_ended"]
    assert_closed(trace, sid, "completed", "completed")


async def test_sync_hooks_work_inside_a_running_loop_and_async_subscribers_are_drained() -> None:
    runner, trace = make()
    seen: list[str] = []

    async def subscriber(event: AgentEvent) -> None:
        seen.append(event.type.value)

    runner.event_bus.subscribe(None, subscriber)
    with runner.session() as sid:
        trace.steps.append("body")
    assert trace.steps == BRACKET
    await runner.event_bus.drain()
    assert seen == ["session_started", "session_ended"]
    assert_closed(trace, sid, "completed", "completed")


@pytest.mark.parametrize("point", [HookPoint.SESSION_START, HookPoint.SESSION_END])
async def test_async_hooks_inside_a_running_loop_are_refused_before_anything_happens(point: HookPoint) -> None:
    runner, trace = make()

    async def handler(ctx: Any) -> None:
        trace.steps.append("async hook")

    runner.hooks.register(point, handler)
    with pytest.raises(RuntimeError, match="session_async"), runner.session():
        trace.steps.append("body")
    assert trace.steps == []


async def test_an_async_end_hook_added_during_a_sync_block_in_a_loop_is_refused_at_the_end() -> None:
    runner, trace = make()

    async def late(ctx: SessionEndCtx) -> None:
        trace.steps.append("late hook")

    with pytest.raises(RuntimeError, match="session_async"), runner.session():
        runner.hooks.register(HookPoint.SESSION_END, late, order=-1)
    assert "late hook" not in trace.steps and trace.steps[-1] == "event session_ended"


# --------------------------------------------------------------------------- async


async def test_an_async_session_awaits_async_hooks_and_subscribers_in_order() -> None:
    runner, trace = make(async_hooks=True)

    async def subscriber(event: AgentEvent) -> None:
        await asyncio.sleep(0)
        trace.steps.append(f"async subscriber {event.type.value}")

    runner.event_bus.subscribe(None, subscriber, priority=-1)
    async with runner.session_async() as sid:
        trace.steps.append("body")
    assert trace.steps == [
        "event session_started",
        "async subscriber session_started",
        "hook session.start",
        "body",
        "hook session.end",
        "event session_ended",
        "async subscriber session_ended",
    ]
    assert re.fullmatch(r"sess_[0-9a-f]{24}", sid)
    assert_closed(trace, sid, "completed", "completed")


async def test_an_async_session_with_a_given_id_and_a_failing_block() -> None:
    runner, trace = make()
    with pytest.raises(ValueError, match="bad input"):
        async with runner.session_async(session_id="s2") as sid:
            assert sid == "s2"
            trace.steps.append("body")
            raise ValueError("bad input")
    assert trace.steps == BRACKET
    assert_closed(trace, "s2", "error: ValueError", "failed")


async def test_an_async_start_hook_failure_and_an_end_hook_failure() -> None:
    runner, trace = make()

    async def refuse(ctx: SessionStartCtx) -> None:
        raise PermissionError("closed")

    runner.hooks.register(HookPoint.SESSION_START, refuse, order=-1)
    with pytest.raises(HookError, match="closed"):
        async with runner.session_async(session_id="s3"):
            trace.steps.append("body")
    assert trace.steps == ["event session_started", "hook session.end", "event session_ended"]
    assert_closed(trace, "s3", "error: HookError", "failed")

    runner.hooks.clear(HookPoint.SESSION_START)
    runner.hooks.register(HookPoint.SESSION_END, refuse, order=-1)
    with pytest.raises(HookError, match="closed"):
        async with runner.session_async():
            pass
    assert trace.events[-1].payload["reason"] == "completed"


async def test_a_cancelled_block_closes_its_session_and_stays_cancelled() -> None:
    runner, trace = make(async_hooks=True)
    entered = asyncio.Event()

    async def work() -> None:
        async with runner.session_async(session_id="s4"):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(work())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_closed(trace, "s4", "error: CancelledError", "failed")


async def test_overlapping_sessions_of_one_runner_stay_paired() -> None:
    runner, trace = make()
    opened: list[str] = []
    both_open = asyncio.Event()

    async def work(sid: str) -> None:
        async with runner.session_async(session_id=sid):
            opened.append(sid)
            if len(opened) == 2:
                both_open.set()
            await both_open.wait()  # neither closes before both are open

    await asyncio.gather(work("a"), work("b"))
    assert [e.type.value for e in trace.events[:2]] == ["session_started", "session_started"]
    by_run: dict[str, set[tuple[str | None, str]]] = {}
    for event in trace.events:
        by_run.setdefault(event.payload["run_id"], set()).add((event.session_id, event.type.value))
    assert sorted(map(sorted, by_run.values())) == [
        [("a", "session_ended"), ("a", "session_started")],
        [("b", "session_ended"), ("b", "session_started")],
    ]


# --------------------------------------------------------------------------- construction


def test_a_runner_owns_a_new_bus_and_hooks_unless_given() -> None:
    first, second = AgentRunner(), AgentRunner()
    assert isinstance(first.event_bus, AgentEventBus) and isinstance(first.hooks, AgentHooks)
    assert first.event_bus is not second.event_bus and first.hooks is not second.hooks
    with first.session():
        pass  # nothing registered: nothing to run, nothing fails
    hooks, bus = AgentHooks(), AgentEventBus()
    runner = AgentRunner(event_bus=bus, hooks=hooks)
    assert runner.event_bus is bus and runner.hooks is hooks


def test_the_0_11_signatures() -> None:
    def shape(fn: Any) -> list[tuple[str, Any, Any]]:
        params = inspect.signature(fn).parameters.values()
        return [(p.name, p.kind, p.default) for p in params if p.name != "self"]

    keyword_only = inspect.Parameter.KEYWORD_ONLY
    assert shape(AgentRunner) == [("event_bus", keyword_only, None), ("hooks", keyword_only, None)]
    assert shape(AgentRunner.session) == shape(AgentRunner.session_async) == [("session_id", keyword_only, None)]
