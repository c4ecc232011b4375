"""Durable timers: the agent schedules its own wake-up, the host schedules reminders, and a
TimerRunner delivers each one exactly once into the conversation.

Runs offline with the built-in model (which calls a tool when the user writes its call
syntax). In production, run the runner in your service or as its own process:
``power-loop worker myapp.agents:loop``.

    python examples/12_timers.py
"""

import asyncio
import tempfile
import time
from pathlib import Path

from power_loop import (
    AgentEventType,
    HookDirective,
    HookPoint,
    StatefulAgentLoop,
    TimerFireCtx,
    TimerRunner,
    TimerToolLimits,
    ToolRegistry,
    create_llm_service_from_env,
    register_timer_tools,
)


async def main() -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "timers.db")
    # The agent's tools: schedule_wakeup, list_wakeups, cancel_wakeup, current_time.
    # (A 1 s minimum keeps this demo short; the default is 5 s.)
    registry = register_timer_tools(ToolRegistry(), limits=TimerToolLimits(min_delay_s=1))
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        loop.event_bus.subscribe(
            AgentEventType.TIMER_FIRED,
            lambda e: print(f"  [timer_fired] #{e.payload['timer_id']} {e.payload['note']!r}: {e.payload['outcome']}"),
        )

        def every_other_tick(ctx: TimerFireCtx) -> HookDirective | None:
            """TIMER_FIRE hook: skip the second occurrence of the recurring 'tick' timer."""
            if ctx.note == "tick" and every_other_tick.seen == 1:  # type: ignore[attr-defined]
                every_other_tick.seen += 1  # type: ignore[attr-defined]
                return HookDirective.SKIP
            every_other_tick.seen += ctx.note == "tick"  # type: ignore[attr-defined]
            return None

        every_other_tick.seen = 0  # type: ignore[attr-defined]
        loop.hooks.register(HookPoint.TIMER_FIRE, every_other_tick)

        sid = await loop.new_session_async()
        result = await loop.send('schedule_wakeup(delay_seconds=1, note="check the deploy")', session_id=sid)
        print(f"agent: {result.final_text}")
        await loop.schedule_timer_async(sid, delay_s=0.5, note="standup in 5 minutes")
        await loop.schedule_timer_async(sid, delay_s=0.2, note="tick", every_s=0.4, count=3)
        print("armed:", [(t.timer_id, t.note, t.status) for t in await loop.list_timers_async(sid)])

        started = time.monotonic()
        async with TimerRunner(loop, scan_interval_s=0.5) as runner:
            while await loop.list_timers_async(sid) and time.monotonic() - started < 10:
                await asyncio.sleep(0.1)
            await runner.drain()
        left = await loop.list_timers_async(sid)
        print(f"all timers done after {time.monotonic() - started:.1f}s; armed now: {left}")

        print("\nTranscript:")
        for message in await loop.get_messages_async(sid):
            text = str(message.get("content") or "").replace("\n", " ")
            print(f"  {message['role']:>9}: {text[:100]}")


if __name__ == "__main__":
    asyncio.run(main())
