"""Durable timers in one process: the 0.11 API, delivery, the TIMER_FIRE hook, recurrence,
restarts, concurrency and the agent's wake-up tools."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from typing import Any

import pytest

from power_loop import (
    AgentLoopConfig,
    HookDirective,
    HookPoint,
    OfflineLLM,
    SessionNotFoundError,
    StatefulAgentLoop,
    TimerFireCtx,
    TimerRunner,
    TimerToolLimits,
    ToolRegistry,
    register_timer_tools,
    tool,
    wake_up_message,
)
from power_loop.testing import ScriptedLLM, ScriptedServer
from power_loop.testing.script import ScriptedReply, ScriptedRequest, text_reply, tool_reply

from .helpers import EventLog, history_is_valid


def now_ms() -> int:
    return int(time.time() * 1000)


def timer_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user" and str(m["content"]).startswith("<timer id=")]


async def timer_rows(loop: StatefulAgentLoop) -> list[tuple[Any, ...]]:
    return await loop.store.execute_fetchall(
        "SELECT s.session_id, t.timer_id, t.status, t.last_outcome, t.fire_count, t.due_at FROM timers t "
        "JOIN sessions s ON s.id = t.session ORDER BY s.session_id, t.timer_id"
    )


async def eventually(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- the API


def test_schedule_timer_validates_its_arguments(db_path: str) -> None:
    loop = StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path)
    sid = loop.new_session()
    with pytest.raises(ValueError, match="exactly one of delay_s / due_at_ms"):
        loop.schedule_timer(sid, note="x")
    with pytest.raises(ValueError, match="exactly one of delay_s / due_at_ms"):
        loop.schedule_timer(sid, delay_s=1, due_at_ms=now_ms(), note="x")
    with pytest.raises(ValueError, match="note is required"):
        loop.schedule_timer(sid, delay_s=1, note="  ")
    with pytest.raises(ValueError, match="delay_s"):
        loop.schedule_timer(sid, delay_s=-1, note="x")
    with pytest.raises(ValueError, match="every_s"):
        loop.schedule_timer(sid, delay_s=1, note="x", count=3)
    with pytest.raises(ValueError, match="count"):
        loop.schedule_timer(sid, delay_s=1, note="x", every_s=5, count=0)
    with pytest.raises(SessionNotFoundError):
        loop.schedule_timer("nope", delay_s=1, note="x")
    with pytest.raises(SessionNotFoundError):
        loop.list_timers("nope")
    assert loop.list_timers(sid) == []
    loop.close()


def test_list_and_cancel_timers(db_path: str) -> None:
    loop = StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path)
    sid, other = loop.new_session(), loop.new_session()
    late = loop.schedule_timer(sid, delay_s=600, note="later")
    soon = loop.schedule_timer(sid, due_at_ms=now_ms() + 60_000, note="sooner")
    assert (late.timer_id, soon.timer_id) == (1, 2)  # ids count per session
    assert loop.schedule_timer(other, delay_s=5, note="elsewhere").timer_id == 1
    assert late.status == "armed" and late.session_id == sid and late.note == "later"
    assert abs(late.due_at - (now_ms() + 600_000)) < 5_000
    assert [t.note for t in loop.list_timers(sid)] == ["sooner", "later"]
    assert loop.cancel_timer(sid, 1) is True
    assert loop.cancel_timer(sid, 1) is False  # already cancelled
    assert loop.cancel_timer(sid, 99) is False
    assert [t.timer_id for t in loop.list_timers(sid)] == [2]
    loop.close()


async def test_async_twins(db_path: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        row = await loop.schedule_timer_async(sid, delay_s=30, note="n")
        assert [t.timer_id for t in await loop.list_timers_async(sid)] == [row.timer_id]
        assert await loop.cancel_timer_async(sid, row.timer_id) is True
        assert await loop.list_timers_async(sid) == []


def test_runner_arguments_are_checked(db_path: str) -> None:
    loop = StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path)
    with pytest.raises(ValueError):
        TimerRunner(loop, scan_interval_s=0)
    with pytest.raises(ValueError):
        TimerRunner(loop, stale_firing_s=-1)
    loop.close()


# --------------------------------------------------------------------------- delivery


async def test_a_due_timer_wakes_an_idle_session(
    db_path: str, scripted_server: ScriptedServer, llm_factory: Any, protocol: str
) -> None:
    async with StatefulAgentLoop(llm=llm_factory(protocol, scripted_server), db_path=db_path) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.send("hello", session_id=sid)
        await loop.schedule_timer_async(sid, due_at_ms=now_ms() - 1, note="check the oven")
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 1
        await runner.drain()
        messages = await loop.get_messages_async(sid)
        assert await runner.scan_once() == 0  # nothing is delivered twice
        rows = await timer_rows(loop)
    text = wake_up_message(1, "check the oven")
    assert (
        text == "<timer id=1>\nYour scheduled wake-up has fired. Your note to yourself was:\ncheck the oven\n</timer>"
    )
    assert timer_texts(messages) == [text]
    assert messages[-1]["role"] == "assistant" and "check the oven" in messages[-1]["content"]
    assert text in scripted_server.requests[-1].last_user_text
    assert rows == [(sid, 1, "fired", "delivered", 1, rows[0][5])]
    fired = log.of("timer_fired")
    assert [(e.data.outcome, e.data.note, e.data.timer_id, e.session_id) for e in fired] == [
        ("delivered", "check the oven", 1, sid)
    ]
    assert "session_started" in log.types[log.types.index("timer_fired") :]
    seqs = [e.seq for e in log.events if e.session_id == sid]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_a_running_runner_delivers_a_new_timer_without_waiting_for_its_next_scan(db_path: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        async with TimerRunner(loop, scan_interval_s=3600) as runner:
            await asyncio.sleep(0.05)  # the runner is asleep until its next scan, an hour away
            await loop.schedule_timer_async(sid, delay_s=0.2, note="soon")

            async def delivered() -> bool:
                return len(timer_texts(await loop.get_messages_async(sid))) == 1

            await eventually(delivered, timeout=60)  # a hang guard; a scan would come after an hour
            assert runner.running
        assert not runner.running


async def test_a_busy_session_reads_the_timer_at_its_next_round(db_path: str) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    @tool
    async def wait_here() -> str:
        """Blocks until released."""
        entered.set()
        await release.wait()
        return "released"

    llm = ScriptedLLM([tool_reply(("wait_here", {}, "c1")), text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([wait_here])) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        send = asyncio.ensure_future(loop.send("go", session_id=sid))
        await asyncio.wait_for(entered.wait(), 5)
        await loop.schedule_timer_async(sid, delay_s=0, note="mid-run")
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 1
        release.set()
        result = await asyncio.wait_for(send, 5)
        await runner.drain()
        messages = await loop.get_messages_async(sid)
    assert result.status == "completed" and result.final_text == "done"
    assert [e.data.outcome for e in log.of("timer_fired")] == ["queued"]
    seqs = [e.seq for e in log.events if e.session_id == sid]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # one counter for the run and the timer
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "user", "assistant"]
    assert timer_texts(messages) == [wake_up_message(1, "mid-run")]
    assert wake_up_message(1, "mid-run") in [getattr(m, "text", None) for m in llm.requests[-1].messages]
    assert history_is_valid(messages)


async def test_a_pending_session_gets_its_timer_queued_once(db_path: str) -> None:
    entered = asyncio.Event()

    @tool
    async def hang() -> str:
        """Never returns."""
        entered.set()
        await asyncio.sleep(3600)
        return "never"

    llm = ScriptedLLM([tool_reply(("hang", {}, "c1"))], rule=lambda r: text_reply("after resume"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([hang])) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        send = asyncio.ensure_future(loop.send("go", session_id=sid))
        await asyncio.wait_for(entered.wait(), 5)
        send.cancel()  # like a crash: the call stays pending
        with pytest.raises(asyncio.CancelledError):
            await send
        assert await loop.get_pending_async(sid) is not None
        await loop.schedule_timer_async(sid, delay_s=0, note="while pending")
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 1
        await runner.drain()
        for _ in range(3):  # later scans neither redeliver nor loop on the pending session
            assert await runner.scan_once() == 0
        await runner.drain()
        assert [e.data.outcome for e in log.of("timer_fired")] == ["queued"]
        assert timer_texts(await loop.get_messages_async(sid)) == []
        result = await loop.send("carry on", session_id=sid, heal_pending=True)
        messages = await loop.get_messages_async(sid)
    assert result.status == "completed"
    assert timer_texts(messages) == [wake_up_message(1, "while pending")]
    assert history_is_valid(messages)


# --------------------------------------------------------------------------- TIMER_FIRE


@pytest.mark.parametrize(
    ("directive", "postpone_s", "outcome", "status"),
    [
        (HookDirective.SKIP, 0.0, "skipped", "fired"),
        (HookDirective.BREAK, 0.0, "cancelled", "cancelled"),
        (None, 60.0, "postponed", "armed"),
    ],
)
async def test_timer_fire_hook_directives(
    db_path: str, directive: HookDirective | None, postpone_s: float, outcome: str, status: str
) -> None:
    seen: list[TimerFireCtx] = []

    def hook(ctx: TimerFireCtx) -> HookDirective | None:
        seen.append(ctx)
        ctx.postpone_s = postpone_s
        return directive

    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        loop.hooks.register(HookPoint.TIMER_FIRE, hook)
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        due = now_ms() - 5
        await loop.schedule_timer_async(sid, due_at_ms=due, note="n")
        runner = TimerRunner(loop)
        await runner.scan_once()
        await runner.drain()
        rows = await timer_rows(loop)
        messages = await loop.get_messages_async(sid)
    assert [(c.session_id, c.timer_id, c.note, c.due_at, c.message) for c in seen] == [
        (sid, 1, "n", due, wake_up_message(1, "n"))
    ]
    assert [e.data.outcome for e in log.of("timer_fired")] == [outcome]
    assert rows[0][2:4] == (status, outcome)
    assert messages == []
    if outcome == "postponed":
        assert rows[0][5] >= now_ms() + 55_000


async def test_timer_fire_hook_can_rewrite_the_message(db_path: str) -> None:
    def hook(ctx: TimerFireCtx) -> None:
        ctx.message = f"[reminder #{ctx.timer_id}] {ctx.note.upper()}"

    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        loop.hooks.register(HookPoint.TIMER_FIRE, hook)
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="pay rent")
        runner = TimerRunner(loop)
        await runner.scan_once()
        await runner.drain()
        messages = await loop.get_messages_async(sid)
    assert messages[0] == {"role": "user", "content": "[reminder #1] PAY RENT", "name": "timer"}


async def test_a_failing_hook_reports_error_and_the_timer_is_retried_later(db_path: str) -> None:
    calls: list[int] = []

    def hook(ctx: TimerFireCtx) -> None:
        calls.append(ctx.timer_id)
        if len(calls) == 1:
            raise RuntimeError("hook broke")

    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        loop.hooks.register(HookPoint.TIMER_FIRE, hook)
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="n")
        # In the background, with its lease renewer running: the failed timer is handed back
        # due stale_firing_s later, not kept claimed (and renewed) forever.
        async with TimerRunner(loop, stale_firing_s=0.6, scan_interval_s=0.05) as runner:

            async def after_error() -> bool:
                return (await timer_rows(loop))[0][2:4] == ("armed", "error")

            await eventually(after_error)
            assert len(calls) == 1

            async def delivered() -> bool:
                return (await timer_rows(loop))[0][2] == "fired"

            await eventually(delivered)
            await runner.drain()
        messages = await loop.get_messages_async(sid)
    assert [e.data.outcome for e in log.of("timer_fired")] == ["error", "delivered"]
    assert timer_texts(messages) == [wake_up_message(1, "n")]


# --------------------------------------------------------------------------- recurring


async def test_a_recurring_timer_fires_count_times_and_skip_skips_one(db_path: str) -> None:
    def hook(ctx: TimerFireCtx) -> HookDirective | None:
        hook.fired += 1  # type: ignore[attr-defined]
        return HookDirective.SKIP if hook.fired == 2 else None  # type: ignore[attr-defined]

    hook.fired = 0  # type: ignore[attr-defined]
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        loop.hooks.register(HookPoint.TIMER_FIRE, hook)
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="tick", every_s=0.05, count=3)
        runner = TimerRunner(loop)
        for _ in range(40):
            await runner.scan_once()
            await runner.drain()
            if (await timer_rows(loop))[0][2] == "fired":
                break
            await asyncio.sleep(0.03)
        rows = await timer_rows(loop)
        messages = await loop.get_messages_async(sid)
        assert await loop.list_timers_async(sid) == []
    assert rows[0][2:5] == ("fired", "delivered", 3)
    assert [e.data.outcome for e in log.of("timer_fired")] == ["delivered", "skipped", "delivered"]
    assert timer_texts(messages) == [wake_up_message(1, "tick")] * 2


async def test_break_ends_a_series_and_until_bounds_it(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        start = now_ms()
        await loop.schedule_timer_async(sid, due_at_ms=start - 1, note="bounded", every_s=10, until_ms=start + 5_000)
        await loop.schedule_timer_async(sid, due_at_ms=start - 1, note="endless", every_s=10)
        loop.hooks.register(
            HookPoint.TIMER_FIRE,
            lambda ctx: HookDirective.BREAK if ctx.note == "endless" and ctx.timer_id == 2 else None,
        )
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 2
        await runner.drain()
        rows = await timer_rows(loop)
    # "bounded": its next occurrence would fall after until_ms, so the series is over.
    assert [r[1:5] for r in rows] == [(1, "fired", "delivered", 1), (2, "cancelled", "cancelled", 0)]


# --------------------------------------------------------------------------- durability, concurrency


async def test_timers_survive_a_restart(db_path: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0.1, note="after restart")
    await asyncio.sleep(0.15)
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path) as loop:
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 1
        await runner.drain()
        messages = await loop.get_messages_async(sid)
    assert timer_texts(messages) == [wake_up_message(1, "after restart")]
    assert messages[-1]["role"] == "assistant"


async def test_a_slow_run_never_delays_another_sessions_timer(db_path: str) -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    @tool
    async def slow() -> str:
        """Blocks until released."""
        entered.set()
        await release.wait()
        return "slow done"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if "slow job" in request.last_user_text and not request.tool_results:
            return tool_reply(("slow", {}))
        return text_reply("ok")

    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=ToolRegistry([slow])
    ) as loop:
        a, b = await loop.new_session_async(), await loop.new_session_async()
        await loop.schedule_timer_async(a, delay_s=0, note="slow job")
        async with TimerRunner(loop, scan_interval_s=0.05, concurrency=1):
            await asyncio.wait_for(entered.wait(), 5)
            await loop.schedule_timer_async(b, delay_s=0, note="quick job")

            async def b_answered() -> bool:
                messages = await loop.get_messages_async(b)
                return bool(messages) and messages[-1]["role"] == "assistant"

            await eventually(b_answered)
            assert not release.is_set()  # session A's run is still stuck in its tool
            release.set()
        a_messages = await loop.get_messages_async(a)
    assert a_messages[-1] == {"role": "assistant", "content": "ok"}


def _held_runs(limit_log: list[int]) -> tuple[Any, asyncio.Event, Any]:
    """A tool that holds every run inside it until released, logging how many are inside."""
    release = asyncio.Event()
    inside = [0]

    @tool
    async def hold() -> str:
        """Blocks until released."""
        inside[0] += 1
        limit_log.append(inside[0])
        await release.wait()
        inside[0] -= 1
        return "held"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        return text_reply("ok") if request.tool_results else tool_reply(("hold", {}))

    return hold, release, rule


async def test_max_runs_bounds_the_runs_a_burst_starts_and_never_the_deliveries(db_path: str) -> None:
    inside: list[int] = []
    hold, release, rule = _held_runs(inside)
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=ToolRegistry([hold])
    ) as loop:
        sids = [await loop.new_session_async() for _ in range(6)]
        for sid in sids:
            await loop.schedule_timer_async(sid, delay_s=0, note="burst")
        async with TimerRunner(loop, scan_interval_s=0.05, max_runs=2) as runner:

            async def all_fired() -> bool:
                return [r[2] for r in await timer_rows(loop)] == ["fired"] * 6

            await eventually(all_fired)  # every delivery committed while runs are held
            await eventually(lambda: asyncio.sleep(0, len(inside) == 2))
            assert max(inside) == 2  # two runs at a time; four wait for a slot
            release.set()
            await runner.drain()
        for sid in sids:
            assert (await loop.get_messages_async(sid))[-1] == {"role": "assistant", "content": "ok"}
    assert max(inside) == 2 and len(inside) == 6


async def test_stop_drops_runs_waiting_for_a_slot_and_the_next_runner_starts_them(db_path: str) -> None:
    inside: list[int] = []
    hold, release, rule = _held_runs(inside)
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=ToolRegistry([hold])
    ) as loop:
        sids = [await loop.new_session_async() for _ in range(3)]
        for sid in sids:
            await loop.schedule_timer_async(sid, delay_s=0, note="burst")
        runner = TimerRunner(loop, scan_interval_s=0.05, max_runs=1)
        await runner.start()
        await eventually(lambda: asyncio.sleep(0, len(inside) == 1))
        stopping = asyncio.ensure_future(runner.stop(grace_s=3600))
        await eventually(lambda: asyncio.sleep(0, len(runner._queued) == 0))
        assert not stopping.done()  # the run going on gets its grace; the queued ones are gone
        release.set()
        await stopping
        assert len(inside) == 1
        assert len(await loop.store.orphan_inboxes()) == 2  # their wake-ups wait in the inbox
        later = TimerRunner(loop)
        await later.scan_once()  # the next runner starts them
        await later.drain()
        for sid in sids:
            assert (await loop.get_messages_async(sid))[-1] == {"role": "assistant", "content": "ok"}
    assert len(inside) == 3


async def test_stop_releases_claims_it_did_not_deliver(db_path: str) -> None:
    gate = asyncio.Event()

    async def hook(ctx: TimerFireCtx) -> None:
        gate.set()
        await asyncio.sleep(3600)

    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        loop.hooks.register(HookPoint.TIMER_FIRE, hook)
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="n")
        runner = TimerRunner(loop, scan_interval_s=0.05)
        await runner.start()
        await asyncio.wait_for(gate.wait(), 5)
        await runner.stop()
        rows = await timer_rows(loop)
    assert rows[0][2] == "armed"  # back for the next runner, not stuck claimed for stale_firing_s


# --------------------------------------------------------------------------- agent tools


async def test_agent_schedules_lists_and_cancels_its_own_wakeups(
    db_path: str, scripted_server: ScriptedServer, llm_factory: Any, protocol: str
) -> None:
    scripted_server.push(
        tool_reply(("schedule_wakeup", {"delay_seconds": 60, "note": "check the build"}, "s1")),
        tool_reply(("schedule_wakeup", {"delay_seconds": 1, "note": "too soon"}, "s2")),
        tool_reply(("schedule_wakeup", {"delay_seconds": 7200.5, "note": "second"}, "s3")),
        tool_reply(("schedule_wakeup", {"delay_seconds": 30, "note": "third"}, "s4")),
        tool_reply(("list_wakeups", {}, "l1")),
        tool_reply(("cancel_wakeup", {"timer_id": 1}, "c1")),
        tool_reply(("cancel_wakeup", {"timer_id": 1}, "c2")),
        tool_reply(("current_time", {}, "t1")),
        text_reply("all set"),
    )
    registry = register_timer_tools(ToolRegistry(), limits=TimerToolLimits(max_live=2))
    config = AgentLoopConfig(max_rounds=12)
    llm = llm_factory(protocol, scripted_server)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry, config=config) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("remind me", session_id=sid)
        messages = await loop.get_messages_async(sid)
        timers = await loop.list_timers_async(sid)
    assert result.final_text == "all set"
    results = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    assert results["s1"] == "Wake-up #1 scheduled in 60s. You'll receive your note."
    assert results["s2"] == "Error: delay_seconds must be at least 5 seconds."
    assert results["s3"] == "Wake-up #2 scheduled in 7200.5s. You'll receive your note."
    assert results["s4"] == (
        "Budget exceeded: 2 wake-ups already scheduled. Cancel or merge some first (list_wakeups / cancel_wakeup)."
    )
    lines = results["l1"].splitlines()
    assert lines[0].startswith("#1 in ") and lines[0].endswith("s (armed): check the build")
    assert lines[1].startswith("#2 in ") and lines[1].endswith("s (armed): second")
    assert results["c1"] == "Wake-up #1 cancelled."
    assert results["c2"] == "Wake-up #1 not found or already fired."
    assert results["t1"].endswith(f"unix {results['t1'].split('unix ')[1]}") and "UTC" in results["t1"]
    assert abs(int(results["t1"].split("unix ")[1].rstrip(")")) - time.time()) < 60
    assert [t.note for t in timers] == ["second"]
    assert history_is_valid(messages)


async def test_wakeup_tools_refuse_to_run_outside_a_session() -> None:
    registry = register_timer_tools(ToolRegistry())
    text = await registry.invoke_async("list_wakeups", {})
    assert text.startswith("Error: wake-up tools only work inside an agent session")
    with pytest.raises(ValueError, match="already registered"):
        register_timer_tools(registry)
    with pytest.raises(ValueError):
        TimerToolLimits(min_delay_s=10, max_delay_s=5)


async def test_a_wakeup_scheduled_by_the_agent_comes_back_to_it(db_path: str) -> None:
    llm = ScriptedLLM(
        [tool_reply(("schedule_wakeup", {"delay_seconds": 5, "note": "look again"})), text_reply("will do")],
        rule=lambda r: text_reply("woke: " + r.last_user_text.splitlines()[-2]),
    )
    registry = register_timer_tools(ToolRegistry())
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        await loop.send("watch this", session_id=sid)
        # Make the wake-up due now instead of waiting five seconds (another connection).
        with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
            conn.execute("UPDATE timers SET due_at = 0")
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 1
        await runner.drain()
        messages = await loop.get_messages_async(sid)
    assert messages[-1] == {"role": "assistant", "content": "woke: look again"}
    assert history_is_valid(messages)


async def test_the_runner_leaves_waiting_follow_ups_to_the_next_run(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        await loop.store.enqueue(sid, "left behind by a run that was stopped")
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 0
        await runner.drain()
        assert await loop.get_messages_async(sid) == []  # no run was started for a follow-up
        assert await loop.store.inbox_depth(sid) == 1


# --------------------------------------------------------------------------- edge cases


async def test_pending_sessions_never_starve_the_recovery_of_others(db_path: str) -> None:
    """Sessions holding a queued wake-up behind unanswered calls are not orphans; they must
    not fill the recovery batch and hide a real one."""
    entered = asyncio.Event()

    @tool
    async def hang() -> str:
        """Never returns."""
        entered.set()
        await asyncio.sleep(3600)
        return "never"

    llm = ScriptedLLM([tool_reply(("hang", {}, "c1")), tool_reply(("hang", {}, "c1"))], rule=lambda r: text_reply("ok"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([hang])) as loop:
        for name in ("a-pending", "b-pending"):
            await loop.new_session_async(session_id=name)
            entered.clear()
            send = asyncio.ensure_future(loop.send("go", session_id=name))
            await asyncio.wait_for(entered.wait(), 5)
            send.cancel()
            with pytest.raises(asyncio.CancelledError):
                await send
            await loop.store.enqueue(name, wake_up_message(1, "x"), kind="timer")
        await loop.new_session_async(session_id="z-orphan")
        await loop.store.enqueue("z-orphan", wake_up_message(1, "left behind"), kind="timer")
        runner = TimerRunner(loop, batch=1)
        await runner.scan_once()
        await runner.drain()
        messages = await loop.get_messages_async("z-orphan")
    assert timer_texts(messages) == [wake_up_message(1, "left behind")]


async def test_a_bad_hook_result_fails_only_its_own_timer(db_path: str) -> None:
    def hook(ctx: TimerFireCtx) -> None:
        if ctx.note == "bad":
            ctx.message = {"not": "a string"}  # type: ignore[assignment]

    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        loop.hooks.register(HookPoint.TIMER_FIRE, hook)
        log = EventLog(loop.event_bus)
        sids = [await loop.new_session_async() for _ in range(3)]
        for sid, note in zip(sids, ("good", "bad", "good"), strict=True):
            await loop.schedule_timer_async(sid, delay_s=0, note=note)
        runner = TimerRunner(loop)
        await runner.scan_once()
        await runner.drain()
        outcomes = {e.session_id: e.data.outcome for e in log.of("timer_fired")}
        rows = await timer_rows(loop)
    assert outcomes == {sids[0]: "delivered", sids[1]: "error", sids[2]: "delivered"}
    assert sorted(r[2:4] for r in rows) == [("armed", "error"), ("fired", "delivered"), ("fired", "delivered")]


async def test_a_slow_hook_holds_up_only_its_own_timer(db_path: str) -> None:
    release = asyncio.Event()

    async def hook(ctx: TimerFireCtx) -> None:
        if ctx.note == "slow":
            await release.wait()

    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        loop.hooks.register(HookPoint.TIMER_FIRE, hook)
        slow, quick = await loop.new_session_async(), await loop.new_session_async()
        await loop.schedule_timer_async(slow, delay_s=0, note="slow")
        async with TimerRunner(loop, scan_interval_s=5) as runner:
            await asyncio.sleep(0.1)  # the slow hook is running
            await loop.schedule_timer_async(quick, delay_s=0.1, note="quick")

            async def quick_delivered() -> bool:
                return bool(timer_texts(await loop.get_messages_async(quick)))

            await eventually(quick_delivered, timeout=3)
            assert timer_texts(await loop.get_messages_async(slow)) == []
            release.set()
            await runner.drain()
        assert timer_texts(await loop.get_messages_async(slow)) == [wake_up_message(1, "slow")]


async def test_a_stale_claim_is_refused_even_for_the_same_runner(db_path: str) -> None:
    from power_loop.store import _timers_sql as timers_sql

    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="n")
        (first,) = await loop.store.claim_due_timers("me", lease_ms=1, limit=5)
        await asyncio.sleep(0.01)  # the lease expires: the timer is claimable again
        (second,) = await loop.store.claim_due_timers("me", lease_ms=60_000, limit=5)
        assert second.claim_seq == first.claim_seq + 1
        stale = timers_sql.Delivery(first, "deliver", "old claim")
        fresh = timers_sql.Delivery(second, "deliver", "new claim")
        assert await loop.store.deliver_timers("me", [stale]) == [(None, 0)]
        assert (await loop.store.deliver_timers("me", [fresh]))[0][0] == "delivered"
        assert await loop.store.inbox_depth(sid) == 1


async def test_no_occurrence_fires_after_until(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        now = now_ms()
        await loop.schedule_timer_async(sid, due_at_ms=now - 1_000, note="n", every_s=10, until_ms=now - 500)
        runner = TimerRunner(loop)
        await runner.scan_once()
        await runner.drain()
        rows = await timer_rows(loop)
        messages = await loop.get_messages_async(sid)
    assert [e.data.outcome for e in log.of("timer_fired")] == ["skipped"]
    assert rows[0][2] == "fired" and messages == []


async def test_out_of_range_values_are_refused_clearly(db_path: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        for kwargs in ({"delay_s": 1e17}, {"due_at_ms": 2**63}, {"delay_s": float("nan")}):
            with pytest.raises(ValueError):
                await loop.schedule_timer_async(sid, note="n", **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="every_s"):
            await loop.schedule_timer_async(sid, delay_s=1, note="n", every_s=1e17)
        assert await loop.cancel_timer_async(sid, 2**70) is False
    with pytest.raises(ValueError):
        TimerToolLimits(max_delay_s=float("inf"))


async def test_no_error_event_for_a_timer_cancelled_while_its_hook_failed(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:

        async def hook(ctx: TimerFireCtx) -> None:
            await loop.cancel_timer_async(ctx.session_id, ctx.timer_id)
            raise RuntimeError("and then failed")

        loop.hooks.register(HookPoint.TIMER_FIRE, hook)
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="n")
        runner = TimerRunner(loop)
        await runner.scan_once()
        rows = await timer_rows(loop)
    assert log.of("timer_fired") == []
    assert rows[0][2] == "cancelled"


async def test_the_wakeup_tool_schedules_once_per_call(db_path: str) -> None:
    """A call run again (resume after a crash) finds the wake-up it scheduled already."""
    from power_loop import ToolContext
    from power_loop.tools.context import _reset_context, _set_context

    registry = register_timer_tools(ToolRegistry())
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        ctx = ToolContext(session_id=sid, tool_call_id="call-7", tool_name="schedule_wakeup", loop=loop)
        token = _set_context(ctx)
        try:
            first = await registry.invoke_async("schedule_wakeup", {"delay_seconds": 60, "note": "n"})
            again = await registry.invoke_async("schedule_wakeup", {"delay_seconds": 60, "note": "n"})
        finally:
            _reset_context(token)
        timers = await loop.list_timers_async(sid)
    assert first == again == "Wake-up #1 scheduled in 60s. You'll receive your note."
    assert [t.timer_id for t in timers] == [1]


async def test_during_a_burst_the_deliveries_go_before_the_runs_they_start(db_path: str) -> None:
    fired_when_first_run_asked: list[int] = []

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if not fired_when_first_run_asked:  # a plain reader of the file, beside the store
            with contextlib.closing(sqlite3.connect(db_path)) as reader:
                (fired,) = reader.execute("SELECT COUNT(*) FROM timers WHERE status = 'fired'").fetchone()
            fired_when_first_run_asked.append(int(fired))
        return text_reply("ok")

    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path) as loop:
        sids = [await loop.new_session_async() for _ in range(12)]
        for sid in sids:
            await loop.schedule_timer_async(sid, delay_s=0, note="burst")
        async with TimerRunner(loop, scan_interval_s=0.05, concurrency=3, batch=3) as runner:

            async def all_answered() -> bool:
                answers = [(await loop.get_messages_async(s))[-1:] for s in sids]
                return all(a == [{"role": "assistant", "content": "ok"}] for a in answers)

            await eventually(all_answered)
            await runner.drain()
    assert fired_when_first_run_asked == [12]  # every due timer was delivered before any run began
