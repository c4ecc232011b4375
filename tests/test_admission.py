"""Admission control: ``max_concurrent_runs`` (run slots, priority, cancellation, leases,
sub-agents) and ``rate_limit`` (requests per second with a burst, tokens per minute)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import pytest

from power_loop import (
    AgentLoopConfig,
    ConfigurationError,
    LLMRetryPolicy,
    RateLimit,
    StatefulAgentLoop,
    ToolContext,
    ToolRegistry,
    tool,
)
from power_loop.cancellation import StopSignal
from power_loop.engine.admission import RunSlots
from power_loop.messages import Usage
from power_loop.testing import ScriptedLLM, error_reply, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest


async def until(predicate: Callable[[], bool], what: str = "condition") -> None:
    """Wait (polling) until ``predicate()`` holds; a hang guard, not a speed bound."""
    deadline = time.monotonic() + 60
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached")
        await asyncio.sleep(0.005)


class ManualClock:
    """A clock whose ``sleep`` moves time forward at once: rate limits run without waiting."""

    def __init__(self) -> None:
        self.t = 0.0
        self.slept = 0

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept += 1
        self.t += max(seconds, 0.0)
        await asyncio.sleep(0)


def most_in_one_second(starts: list[float]) -> int:
    """The largest number of ``starts`` inside any one-second window ``[t, t + 1)``."""
    ordered = sorted(starts)
    best = 0
    end = 0
    for begin, t in enumerate(ordered):
        end = max(end, begin)
        while end < len(ordered) and ordered[end] < t + 1.0:
            end += 1
        best = max(best, end - begin)
    return best


class Gate:
    """A tool that holds every run calling it until released, counting how many are inside."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.inside = 0
        self.most = 0
        self.entered: list[str] = []

        @tool
        async def hold(ctx: ToolContext) -> str:
            """Blocks until released."""
            self.inside += 1
            self.most = max(self.most, self.inside)
            self.entered.append(ctx.session_id)
            try:
                await self.release.wait()
            finally:
                self.inside -= 1
            return "held"

        self.tool = hold


def hold_rule(request: ScriptedRequest) -> ScriptedReply:
    """Messages saying "hold" call the hold tool once; everything else is answered."""
    if "hold" in request.last_user_text and not request.tool_results:
        return tool_reply(("hold", {}))
    return text_reply("ok")


def lease_owner(db_path: str, session_id: str) -> str | None:
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT lease_owner FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return None if row is None else row[0]


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_concurrent_runs": 0}, "max_concurrent_runs must be an integer >= 1"),
        ({"max_concurrent_runs": -2}, "max_concurrent_runs must be an integer >= 1"),
        ({"max_concurrent_runs": 1.5}, "max_concurrent_runs must be an integer >= 1"),
        ({"max_concurrent_runs": True}, "max_concurrent_runs must be an integer >= 1"),
        ({"max_concurrent_runs": "4"}, "max_concurrent_runs must be an integer >= 1"),
        ({"rate_limit": {"requests_per_s": 5}}, "rate_limit must be a RateLimit"),
        ({"rate_limit": 5}, "rate_limit must be a RateLimit"),
        ({"priority_key": "tier"}, "set max_concurrent_runs too"),
        ({"max_concurrent_runs": 2, "priority_key": ""}, "non-empty metadata key"),
        ({"max_concurrent_runs": 2, "priority_key": 3}, "priority_key must be a session-metadata key"),
    ],
)
def test_bad_admission_settings_are_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AgentLoopConfig(**options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "needs requests_per_s, tokens_per_min or both"),
        ({"requests_per_s": 0}, "requests_per_s must be a finite number > 0"),
        ({"requests_per_s": -1.0}, "requests_per_s must be a finite number > 0"),
        ({"requests_per_s": float("nan")}, "requests_per_s must be a finite number > 0"),
        ({"requests_per_s": float("inf")}, "requests_per_s must be a finite number > 0"),
        ({"requests_per_s": True}, "requests_per_s must be a finite number > 0"),
        ({"requests_per_s": "5"}, "requests_per_s must be a finite number > 0"),
        ({"tokens_per_min": 0}, "tokens_per_min must be an integer >= 1"),
        ({"tokens_per_min": 1000.5}, "tokens_per_min must be an integer >= 1"),
        ({"requests_per_s": 5, "burst": 0}, "burst must be an integer >= 1"),
        ({"requests_per_s": 5, "burst": 2.5}, "burst must be an integer >= 1"),
        ({"tokens_per_min": 1000, "burst": 3}, "burst applies to requests_per_s"),
        ({"requests_per_s": 5, "clock": object()}, "clock must have now"),
    ],
)
def test_bad_rate_limits_are_configuration_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        RateLimit(**options)


async def test_without_limits_nothing_is_set_up(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=hold_rule), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        assert (await loop.send("hi", sid)).final_text == "ok"
        view = loop.admission
        assert (view.max_concurrent_runs, view.running, view.waiting, view.requests_waiting) == (None, 0, 0, 0)
        assert "running=0" in repr(view)


# --------------------------------------------------------------------------- max_concurrent_runs


async def test_max_concurrent_runs_holds_and_the_rest_wait_their_turn(db_path: str) -> None:
    gate = Gate()
    config = AgentLoopConfig(max_concurrent_runs=2)
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=hold_rule), db_path=db_path, config=config, tool_registry=ToolRegistry([gate.tool])
    ) as loop:
        sids = [await loop.new_session_async() for _ in range(6)]
        sends = [asyncio.ensure_future(loop.send("hold", sid)) for sid in sids]
        await until(lambda: gate.inside == 2 and loop.admission.waiting == 4, "two runs inside, four waiting")
        assert loop.admission.running == 2
        gate.release.set()
        results = await asyncio.gather(*sends)
    assert [r.status for r in results] == ["completed"] * 6
    assert gate.most == 2  # two runs overlapped, never three
    assert sorted(gate.entered) == sorted(sids)
    assert (loop.admission.running, loop.admission.waiting) == (0, 0)


async def test_a_waiting_run_holds_no_lease(db_path: str) -> None:
    gate = Gate()
    config = AgentLoopConfig(max_concurrent_runs=1)
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=hold_rule), db_path=db_path, config=config, tool_registry=ToolRegistry([gate.tool])
    ) as loop:
        busy, queued = await loop.new_session_async(), await loop.new_session_async()
        first = asyncio.ensure_future(loop.send("hold", busy))
        await until(lambda: gate.inside == 1, "the first run inside its tool")
        second = asyncio.ensure_future(loop.send("then this", queued))
        await until(lambda: loop.admission.waiting == 1, "the second run queued")
        assert lease_owner(db_path, busy) is not None
        assert lease_owner(db_path, queued) is None
        # Another loop on the same file (as another process would) takes the session at once.
        other_config = AgentLoopConfig(session_wait_s=0)
        async with StatefulAgentLoop(llm=ScriptedLLM(rule=hold_rule), db_path=db_path, config=other_config) as other:
            assert (await other.send("meanwhile", queued)).final_text == "ok"
        assert not second.done() and loop.admission.waiting == 1
        gate.release.set()
        assert (await first).status == "completed"
        assert (await second).status == "completed"
        texts = [m["content"] for m in await loop.get_messages_async(queued) if m["role"] == "user"]
    assert texts == ["meanwhile", "then this"]


@pytest.mark.parametrize("kind", ["metadata key", "callable"])
async def test_waiting_runs_go_by_priority_then_by_arrival(db_path: str, kind: str) -> None:
    gate = Gate()
    order: list[str] = []

    def rule(request: ScriptedRequest) -> ScriptedReply:
        order.append(request.last_user_text)
        return hold_rule(request)

    async def tier(session_id: str, metadata: Any) -> float:
        await asyncio.sleep(0)
        return {"gold": 10, "silver": 5}.get(metadata.get("tier"), 0)

    key: Any = "priority" if kind == "metadata key" else tier
    config = AgentLoopConfig(max_concurrent_runs=1, priority_key=key)
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=rule), db_path=db_path, config=config, tool_registry=ToolRegistry([gate.tool])
    ) as loop:
        blocker = await loop.new_session_async()
        first = asyncio.ensure_future(loop.send("hold", blocker))
        await until(lambda: gate.inside == 1, "the slot taken")
        waiting = [
            ("low", {"priority": 1, "tier": "bronze"}),
            ("high-1", {"priority": 5, "tier": "gold"}),
            ("mid", {"priority": 3, "tier": "silver"}),
            ("none", {"priority": "not a number"}),
            ("high-2", {"priority": 5.0, "tier": "gold"}),
        ]
        sends = []
        for count, (label, metadata) in enumerate(waiting, start=1):
            sid = await loop.new_session_async(metadata=metadata)
            sends.append(asyncio.ensure_future(loop.send(label, sid)))
            await until(lambda n=count: loop.admission.waiting == n, f"{label} queued")  # type: ignore[misc]
        gate.release.set()
        await asyncio.gather(first, *sends)
    assert [t for t in order if t != "hold"] == ["high-1", "high-2", "mid", "low", "none"]


async def test_a_priority_callable_must_return_a_number(db_path: str) -> None:
    gate = Gate()
    config = AgentLoopConfig(max_concurrent_runs=1, priority_key=lambda sid, metadata: "high")
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=hold_rule), db_path=db_path, config=config, tool_registry=ToolRegistry([gate.tool])
    ) as loop:
        first = asyncio.ensure_future(loop.send("hold", await loop.new_session_async()))
        await until(lambda: gate.inside == 1, "the slot taken")
        with pytest.raises(TypeError, match="must return a number"):
            await loop.send("x", await loop.new_session_async())
        assert loop.admission.waiting == 0
        gate.release.set()
        assert (await first).status == "completed"


async def test_a_cancelled_waiter_leaves_the_queue(db_path: str) -> None:
    gate = Gate()
    llm = ScriptedLLM(rule=hold_rule)
    config = AgentLoopConfig(max_concurrent_runs=1)
    async with StatefulAgentLoop(
        llm=llm, db_path=db_path, config=config, tool_registry=ToolRegistry([gate.tool])
    ) as loop:
        first = asyncio.ensure_future(loop.send("hold", await loop.new_session_async()))
        await until(lambda: gate.inside == 1, "the slot taken")
        # A task cancelled while it waits: gone from the queue, nothing stored.
        cancelled_sid = await loop.new_session_async()
        cancelled = asyncio.ensure_future(loop.send("never", cancelled_sid))
        await until(lambda: loop.admission.waiting == 1, "queued")
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert loop.admission.waiting == 0
        assert await loop.get_messages_async(cancelled_sid) == []
        # A stop signal while it waits: the run leaves the queue and ends cancelled at once,
        # without a model call, while the slot is still taken.
        stop = asyncio.Event()
        stopped = asyncio.ensure_future(loop.send("stop me", await loop.new_session_async(), stop_event=stop))
        await until(lambda: loop.admission.waiting == 1, "queued")
        calls = llm.calls
        stop.set()
        result = await stopped
        assert result.status == "cancelled" and llm.calls == calls
        assert gate.inside == 1 and loop.admission.waiting == 0 and loop.admission.running == 1
        # The slot was not lost: a later run gets it once the first is done.
        later = asyncio.ensure_future(loop.send("later", await loop.new_session_async()))
        await until(lambda: loop.admission.waiting == 1, "queued")
        gate.release.set()
        assert (await first).status == "completed"
        assert (await later).final_text == "ok"
    assert (loop.admission.running, loop.admission.waiting) == (0, 0)


async def test_a_slot_granted_to_a_waiter_cancelled_at_that_moment_goes_to_the_next(db_path: str) -> None:
    slots = RunSlots(1)
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        assert slots.take_now()
        no_stop = StopSignal(None)
        first = asyncio.ensure_future(slots.wait("a", no_stop, loop.store))
        second = asyncio.ensure_future(slots.wait("b", no_stop, loop.store))
        await until(lambda: slots.waiting == 2, "two waiting")
        slots.release()  # granted to the first waiter ...
        first.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await second is True
        assert (slots.running, slots.waiting) == (1, 0)
        slots.release()
    assert slots.running == 0


def test_runs_of_send_sync_in_several_threads_share_the_slots(db_path: str) -> None:
    entered, release = threading.Event(), threading.Event()
    lock = threading.Lock()
    inside = [0, 0]  # now, most

    @tool
    async def hold() -> str:
        """Blocks until released."""
        with lock:
            inside[0] += 1
            inside[1] = max(inside[1], inside[0])
        entered.set()
        await asyncio.to_thread(release.wait)
        with lock:
            inside[0] -= 1
        return "held"

    config = AgentLoopConfig(max_concurrent_runs=1)
    loop = StatefulAgentLoop(
        llm=ScriptedLLM(rule=hold_rule), db_path=db_path, config=config, tool_registry=ToolRegistry([hold])
    )
    try:
        sids = [loop.new_session(), loop.new_session()]
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda s=sid: results.append(loop.send_sync("hold", s).status)) for sid in sids
        ]
        threads[0].start()
        assert entered.wait(60)
        threads[1].start()
        deadline = time.monotonic() + 60  # a hang guard
        while loop.admission.waiting != 1:
            assert time.monotonic() < deadline, "the second thread's run never queued"
            time.sleep(0.005)
        assert inside[0] == 1
        release.set()
        for thread in threads:
            thread.join(60)
        assert results == ["completed", "completed"]
        assert inside[1] == 1  # never two at once, across event loops
        assert (loop.admission.running, loop.admission.waiting) == (0, 0)
    finally:
        loop.close()


@tool
async def delegate(task: str, ctx: ToolContext) -> str:
    """Hand a task to a sub-agent.

    Args:
        task: What the sub-agent should do.
    """
    result = await ctx.subagents.run(task)
    return json.dumps({"status": result.status, "text": result.final_text})


@tool
async def ask_other(session_id: str, ctx: ToolContext) -> str:
    """Send a message to another session of this loop.

    Args:
        session_id: The other session.
    """
    assert ctx.loop is not None
    result = await ctx.loop.send("from a tool", session_id)
    return result.final_text


def delegating_rule(request: ScriptedRequest) -> ScriptedReply:
    if "You are a sub-agent" in (request.system_prompt or ""):
        return text_reply("child answer")
    if request.last_user_text == "from a tool":
        return text_reply("other answer")
    if request.tool_results:
        return text_reply("parent done: " + str(request.tool_results[-1].content))
    if request.last_user_text.startswith("ask "):
        return tool_reply(("ask_other", {"session_id": request.last_user_text[4:]}))
    return tool_reply(("delegate", {"task": "do it"}))


async def test_a_sub_agent_of_the_run_holding_the_only_slot_completes(db_path: str) -> None:
    clock = ManualClock()
    starts: list[tuple[float, str]] = []

    def rule(request: ScriptedRequest) -> ScriptedReply:
        child = "You are a sub-agent" in (request.system_prompt or "")
        starts.append((clock.now(), "child" if child else "parent"))
        return delegating_rule(request)

    config = AgentLoopConfig(max_concurrent_runs=1, rate_limit=RateLimit(requests_per_s=1, clock=clock))
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=rule), db_path=db_path, config=config, tool_registry=ToolRegistry([delegate, ask_other])
    ) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("delegate", sid)
        assert result.status == "completed"
        assert "child answer" in result.final_text
        # A tool's send to another session also runs on its caller's slot.
        other = await loop.new_session_async()
        nested = await loop.send(f"ask {other}", sid)
        assert nested.status == "completed" and "parent done" in nested.final_text
        assert (loop.admission.running, loop.admission.waiting) == (0, 0)
    # The child's requests went through the loop's rate limit: one request a second.
    assert [who for _, who in starts[:3]] == ["parent", "child", "parent"]
    times = [t for t, _ in starts]
    assert all(later - earlier >= 1.0 - 1e-9 for earlier, later in pairwise(times))


# --------------------------------------------------------------------------- rate_limit


async def test_the_rate_holds_under_200_concurrent_sends(db_path: str) -> None:
    rate, burst = 100, 10
    starts: list[float] = []
    queued: list[int] = []
    loop_ref: list[StatefulAgentLoop] = []

    def rule(request: ScriptedRequest) -> ScriptedReply:
        starts.append(time.monotonic())
        queued.append(loop_ref[0].admission.requests_waiting)
        return text_reply("ok")

    config = AgentLoopConfig(rate_limit=RateLimit(requests_per_s=rate, burst=burst))
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, config=config) as loop:
        loop_ref.append(loop)
        sids = [await loop.new_session_async() for _ in range(200)]
        results = await asyncio.gather(*(loop.send("hi", sid) for sid in sids))
    assert [r.final_text for r in results] == ["ok"] * 200
    assert len(starts) == 200
    assert most_in_one_second(starts) <= rate + burst
    assert max(queued) > 50  # most requests did wait for their turn, concurrently


async def test_the_rate_holds_for_many_sends_on_a_manual_clock(db_path: str) -> None:
    clock = ManualClock()
    starts: list[float] = []

    def rule(request: ScriptedRequest) -> ScriptedReply:
        starts.append(clock.now())
        return text_reply("ok")

    config = AgentLoopConfig(rate_limit=RateLimit(requests_per_s=4, burst=3, clock=clock))
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, config=config) as loop:
        sids = [await loop.new_session_async() for _ in range(60)]
        await asyncio.gather(*(loop.send("hi", sid) for sid in sids))
    assert len(starts) == 60
    assert starts[:3] == [0.0, 0.0, 0.0]  # the burst
    assert most_in_one_second(starts) <= 4 + 3
    # Never slower than the rate: the last start is when the bucket had refilled for it.
    assert starts[-1] == pytest.approx((60 - 3) / 4, abs=1e-3)


async def test_each_retry_is_a_request_of_its_own(db_path: str) -> None:
    clock = ManualClock()
    starts: list[float] = []
    replies = iter([error_reply(503), error_reply(503), text_reply("third time")])

    def rule(request: ScriptedRequest) -> ScriptedReply:
        starts.append(clock.now())
        return next(replies)

    policy = LLMRetryPolicy(max_attempts=3, backoff_initial=0.0, backoff_max=0.0)
    config = AgentLoopConfig(retry_policy=policy, rate_limit=RateLimit(requests_per_s=2, clock=clock))
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, config=config) as loop:
        result = await loop.send("hi", await loop.new_session_async())
    assert result.final_text == "third time"
    assert starts == pytest.approx([0.0, 0.5, 1.0], abs=1e-3)


async def test_tokens_per_min_throttles_by_what_requests_reserve_and_use(db_path: str) -> None:
    clock = ManualClock()
    starts: list[float] = []
    used = 300  # what each request reports (prompt + completion)

    def rule(request: ScriptedRequest) -> ScriptedReply:
        starts.append(clock.now())
        return text_reply("ok", usage=Usage(calls=1, prompt_tokens=100, completion_tokens=200, total_tokens=used))

    tpm = 900  # three requests' worth, refilled at 15 tokens a second
    config = AgentLoopConfig(max_tokens=200, rate_limit=RateLimit(tokens_per_min=tpm, clock=clock))
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, config=config) as loop:
        for _ in range(8):
            await loop.send("hi", await loop.new_session_async())
    assert starts[:3] == [0.0, 0.0, 0.0]
    assert all(t > 0 for t in starts[3:])
    for k, t in enumerate(starts):
        # Tokens spent before a start never exceed the bucket plus its refill ...
        assert used * k <= tpm + t * tpm / 60 + 1e-6
        # ... and a request waits no longer than it takes to refill what it reserves
        # (at most what a request uses).
        assert t <= max(0.0, (used * (k + 1) - tpm) / (tpm / 60)) + 1e-3


async def test_a_refund_wakes_the_request_waiting_for_tokens(db_path: str) -> None:
    """A request reserves its completion cap; when the answers use less, the refund lets the
    next request start before its computed wait is over."""
    first_answered = asyncio.Event()
    proceed = asyncio.Event()
    starts: list[float] = []

    class SlowClock(ManualClock):
        async def sleep(self, seconds: float) -> None:
            # Time stands still until told: a refund must cut the wait short.
            await proceed.wait()
            await super().sleep(seconds)

    slow = SlowClock()

    def rule(request: ScriptedRequest) -> ScriptedReply:
        starts.append(slow.now())
        return text_reply("ok", usage=Usage(calls=1, prompt_tokens=10, completion_tokens=10, total_tokens=20))

    # Each request reserves about 1000 tokens (its 990-token cap plus the prompt); the bucket
    # holds 1500, so the second must wait until the first's answer refunds what it did not use.
    config = AgentLoopConfig(max_tokens=990, rate_limit=RateLimit(tokens_per_min=1500, clock=slow))
    hold = asyncio.Event()
    llm = ScriptedLLM(rule=rule)
    original = llm.complete

    async def complete(request: Any, *, callbacks: Any = None) -> Any:
        response = await original(request, callbacks=callbacks)
        if len(starts) == 1:
            first_answered.set()
            await hold.wait()
        return response

    llm.complete = complete  # type: ignore[method-assign]
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        a, b = await loop.new_session_async(), await loop.new_session_async()
        first = asyncio.ensure_future(loop.send("one", a))
        await first_answered.wait()
        second = asyncio.ensure_future(loop.send("two", b))
        await until(lambda: loop.admission.requests_waiting == 1, "the second request waiting")
        hold.set()  # the first answer is settled: 20 tokens used, the rest refunded
        assert (await first).final_text == "ok"
        assert (await second).final_text == "ok"
        assert not proceed.is_set()
    assert starts == [0.0, 0.0]


async def test_rate_limit_waits_end_with_the_stop_signal(db_path: str) -> None:
    never = asyncio.Event()

    class StuckClock(ManualClock):
        async def sleep(self, seconds: float) -> None:
            await never.wait()

    stuck = StuckClock()
    config = AgentLoopConfig(rate_limit=RateLimit(requests_per_s=1, clock=stuck))
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=hold_rule), db_path=db_path, config=config) as loop:
        assert (await loop.send("first", await loop.new_session_async())).final_text == "ok"
        stop = asyncio.Event()
        waiting = asyncio.ensure_future(loop.send("second", await loop.new_session_async(), stop_event=stop))
        await until(lambda: loop.admission.requests_waiting == 1, "the request waiting")
        stop.set()
        assert (await waiting).status == "cancelled"
        assert loop.admission.requests_waiting == 0


async def test_the_limits_cover_compaction_summaries(db_path: str) -> None:
    clock = ManualClock()
    starts: list[tuple[float, str]] = []

    def rule(request: ScriptedRequest) -> ScriptedReply:
        summary = "summar" in (request.system_prompt or "").lower()
        starts.append((clock.now(), "summary" if summary else "round"))
        return text_reply("a long answer " * 40)

    config = AgentLoopConfig(context_window=600, rate_limit=RateLimit(requests_per_s=1, clock=clock))
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, config=config) as loop:
        sid = await loop.new_session_async()
        for i in range(6):
            await loop.send(f"question {i} " + "words " * 40, sid)
    kinds = [k for _, k in starts]
    assert "summary" in kinds
    times = [t for t, _ in starts]
    assert all(later - earlier >= 1.0 - 1e-9 for earlier, later in pairwise(times))
