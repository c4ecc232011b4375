"""Calendar wake-ups: "every weekday at 09:00 Paris time, wake the agent to send the digest".

A calendar timer is one timer for the whole series: a cron expression read in an IANA time
zone, stored as its next absolute due time. This example moves a simulated clock through
the calendar instead of waiting for real dates: a few on-time firings, a week of downtime
(one wake-up that says what was missed), and the night clocks spring forward in Paris (a
02:30 that does not exist that day fires at 03:00).

Runs offline with the built-in model, in a few seconds. In production, leave out ``clock``
and run the runner in your service or as ``power-loop worker myapp.agents:loop``.

    python examples/24_calendar_wakeups.py
"""

import asyncio
import tempfile
import time
from datetime import datetime, timedelta, timezone
from datetime import time as wall_time
from pathlib import Path
from zoneinfo import ZoneInfo

from power_loop import StatefulAgentLoop, TimerRunner, create_llm_service_from_env

PARIS = ZoneInfo("Europe/Paris")
DAY_MS = 86_400_000


class SimulatedClock:
    """The runner's clock (epoch seconds), moved by hand."""

    def __init__(self) -> None:
        self.ms = int(time.time() * 1000)

    def __call__(self) -> float:
        return self.ms / 1000


def paris(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, PARIS).strftime("%a %Y-%m-%d %H:%M %z")


def next_spring_forward(after_ms: int) -> datetime:
    """Noon on the day before the next night whose 02:30 does not exist in Paris."""
    day = datetime.fromtimestamp(after_ms / 1000, PARIS).date()
    while True:
        day += timedelta(days=1)
        at_0230 = datetime.combine(day, wall_time(2, 30), PARIS)
        if at_0230 != at_0230.astimezone(timezone.utc).astimezone(PARIS):  # skipped by the clocks
            return datetime.combine(day - timedelta(days=1), wall_time(12, 0), PARIS)


async def main() -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "calendar.db")
    async with StatefulAgentLoop(llm=llm, db_path=db) as loop:
        sid = await loop.new_session_async()
        digest = await loop.schedule_timer_async(
            sid, cron="0 9 * * MON-FRI", tz="Europe/Paris", note="Send the morning digest."
        )
        logs = await loop.schedule_timer_async(
            sid, cron="30 2 * * *", tz="Europe/Paris", note="Rotate the logs.", misfire="skip"
        )
        for row in (digest, logs):
            print(f'#{row.timer_id} "{row.cron}" ({row.tz}, misfire={row.misfire}): next {paris(row.due_at)}')

        clock = SimulatedClock()
        runner = TimerRunner(loop, clock=clock)
        shown = 0

        async def advance(to_ms: int, title: str) -> None:
            """Move the clock, deliver what is due, print the wake-ups the session received."""
            nonlocal shown
            clock.ms = to_ms
            await runner.scan_once()
            await runner.drain()
            texts = [m["content"] for m in await loop.get_messages_async(sid) if m["role"] == "user"]
            print(f"\n{title}: {paris(to_ms)}")
            for text in texts[shown:]:  # "<timer id=1>\nYour scheduled wake-up has fired (...). Your note..."
                head, fired, note = text.splitlines()[:3]
                print(f"  woke up by {head}: {fired.split(' wake-up ')[1].split('. Your note')[0]} -> {note}")
            shown = len(texts)
            for row in await loop.list_timers_async(sid):
                outcome = row.last_outcome or "-"
                print(f"  #{row.timer_id} last: {outcome:9} next: {paris(row.due_at)}")

        for _ in range(3):  # three weekday mornings, on time
            [due] = [t.due_at for t in await loop.list_timers_async(sid) if t.timer_id == digest.timer_id]
            await advance(due + 2_000, "On time")
        await advance(clock.ms + 7 * DAY_MS + 3 * 3_600_000, "Back after a week down")
        await advance(int(next_spring_forward(clock.ms).timestamp() * 1000), "The day before clocks spring forward")
        [rotate] = [t for t in await loop.list_timers_async(sid) if t.timer_id == logs.timer_id]
        await advance(rotate.due_at + 2_000, "02:30 does not exist tonight: the log rotation fires at")
        await runner.stop()


if __name__ == "__main__":
    asyncio.run(main())
