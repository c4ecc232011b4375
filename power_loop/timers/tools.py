"""Agent tools for timers: the model schedules, lists and cancels its own wake-ups.

``schedule_wakeup(delay_seconds, note)`` (or ``schedule_wakeup(note, cron, tz)`` for a
calendar series), ``list_wakeups()``, ``cancel_wakeup(timer_id)`` and
``current_time()`` act on the session whose run calls them (from the tool context), so one
registry serves every session and tenant. Limits are per session and every refusal is a
message the model can act on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from ..store._timer_calendar import check_schedule, local_time, next_occurrence
from ..store.protocols import MAX_DELAY_S, TimerBudgetExceeded
from ..store.rows import TimerRow
from ..tools.context import SessionTimers, current_tool_context
from ..tools.definition import FunctionTool, ToolDefinition
from ..tools.registry import ToolRegistry

__all__ = ["TimerToolLimits", "register_timer_tools", "timer_tools"]


@dataclass(frozen=True)
class TimerToolLimits:
    """Per-session limits of the agent's wake-up tools.

    Attributes:
        min_delay_s: Shortest delay the agent may ask for.
        max_delay_s: Longest delay (30 days by default).
        max_live: Wake-ups a session may have scheduled at once (a calendar series counts
            once).
        min_cron_interval_s: Shortest time between two occurrences of a calendar series the
            agent schedules (``cron``), 15 minutes by default; its first occurrence must also
            come within ``max_delay_s``.
    """

    min_delay_s: float = 5.0
    max_delay_s: float = 30 * 86400.0
    max_live: int = 10
    min_cron_interval_s: float = 900.0

    def __post_init__(self) -> None:
        if (
            not (0 <= self.min_delay_s <= self.max_delay_s <= MAX_DELAY_S)
            or isinstance(self.max_live, bool)
            or self.max_live < 1
            or not (0 <= self.min_cron_interval_s <= MAX_DELAY_S)
        ):
            raise ValueError(
                "TimerToolLimits needs 0 <= min_delay_s <= max_delay_s <= 100 years, max_live >= 1 and "
                "0 <= min_cron_interval_s <= 100 years"
            )


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


CRON_SAMPLE = 48
"""Occurrences of a series the agent schedules that are checked against
``min_cron_interval_s``."""


def _cron_refusal(cron: str, tz: str, lim: TimerToolLimits) -> str | None:
    """Why the agent may not schedule this (valid) series, or None."""
    now = int(time.time() * 1000)
    first = next_occurrence(cron, tz, now)
    if first is None:
        return f"Error: cron {cron!r} never comes due."
    if first - now > lim.max_delay_s * 1000:
        return f"Error: the first occurrence of {cron!r} is more than {lim.max_delay_s / 86400:g} days away."
    at = first
    for _ in range(CRON_SAMPLE):
        following = next_occurrence(cron, tz, at)
        if following is None:
            break
        if following - at < lim.min_cron_interval_s * 1000:
            return (
                f"Error: occurrences of a wake-up schedule must be at least {_seconds(lim.min_cron_interval_s)} "
                f"seconds apart; {cron!r} fires more often."
            )
        at = following
    return None


def _describe(row: TimerRow) -> str:
    """How a wake-up is recurring, for the model: `` on "0 9 * * MON-FRI" (Europe/Paris)``."""
    if row.cron is not None:
        return f' on "{row.cron}" ({row.tz})'
    if row.every_s is not None:
        return f" every {_seconds(row.every_s)}s"
    return ""


def _budget(exc: TimerBudgetExceeded) -> str:
    return (
        f"Budget exceeded: {exc.live} wake-ups already scheduled. Cancel or merge some first "
        "(list_wakeups / cancel_wakeup)."
    )


def _timers() -> SessionTimers | str:
    """The calling session's wake-ups, or the refusal the model reads outside a loop's run."""
    ctx = current_tool_context()
    if ctx is None or ctx.capabilities is None:
        return "Error: wake-up tools only work inside an agent session run by StatefulAgentLoop."
    return ctx.capabilities.timers


def timer_tools(limits: TimerToolLimits | None = None) -> list[FunctionTool]:
    """The four wake-up tools, bound to ``limits``."""
    lim = limits or TimerToolLimits()

    async def schedule_wakeup(
        delay_seconds: float | None = None, note: str = "", cron: str | None = None, tz: str | None = None
    ) -> str:
        timers = _timers()
        if isinstance(timers, str):
            return timers
        if cron is not None:
            if delay_seconds is not None:
                return "Error: give either delay_seconds or cron, not both."
            return await schedule_series(timers, note, cron, tz)
        if delay_seconds is None:
            return "Error: give delay_seconds (seconds from now) or cron (a calendar schedule)."
        if tz is not None:
            return "Error: tz goes with cron (a calendar schedule)."
        if (
            isinstance(delay_seconds, bool)
            or not isinstance(delay_seconds, (int, float))
            or not math.isfinite(delay_seconds)
        ):
            return "Error: delay_seconds must be a number of seconds."
        if delay_seconds < lim.min_delay_s:
            return f"Error: delay_seconds must be at least {_seconds(lim.min_delay_s)} seconds."
        if delay_seconds > lim.max_delay_s:
            return (
                f"Error: delay_seconds must be at most {_seconds(lim.max_delay_s)} seconds "
                f"({lim.max_delay_s / 86400:g} days)."
            )
        if not isinstance(note, str) or not note.strip():
            return "Error: note is required: write what you should do when you wake up."
        try:
            # Keyed by the call's idempotency key: a call run again by resume() after a crash
            # gets the wake-up it already scheduled, not a second one.
            row = await timers.schedule(delay_s=delay_seconds, note=note.strip(), max_live=lim.max_live)
        except TimerBudgetExceeded as exc:
            return _budget(exc)
        return f"Wake-up #{row.timer_id} scheduled in {_seconds(delay_seconds)}s. You'll receive your note."

    async def schedule_series(timers: SessionTimers, note: object, cron: object, tz: object) -> str:
        if not isinstance(note, str) or not note.strip():
            return "Error: note is required: write what you should do when you wake up."
        try:
            # The message names the field at fault (cron or tz).
            cron, tz = check_schedule(cron, "UTC" if tz is None else tz, now_ms=int(time.time() * 1000))
        except ValueError as exc:
            return f"Error: {exc}."
        refusal = _cron_refusal(cron, tz, lim)
        if refusal is not None:
            return refusal
        try:
            row = await timers.schedule(note=note.strip(), cron=cron, tz=tz, max_live=lim.max_live)
        except TimerBudgetExceeded as exc:
            return _budget(exc)
        except ValueError as exc:
            return f"Error: {exc}."
        return (
            f'Wake-up #{row.timer_id} scheduled on "{row.cron}" ({row.tz}); next at {local_time(row.due_at, tz)} '
            f"(in {max(0, round((row.due_at - time.time() * 1000) / 1000))}s). You'll receive your note each time."
        )

    async def list_wakeups() -> str:
        timers = _timers()
        if isinstance(timers, str):
            return timers
        rows = await timers.armed()
        if not rows:
            return "No wake-ups scheduled."
        now = time.time() * 1000
        return "\n".join(
            f"#{r.timer_id} in {max(0, round((r.due_at - now) / 1000))}s ({r.status}){_describe(r)}: {r.note}"
            for r in rows
        )

    async def cancel_wakeup(timer_id: int) -> str:
        timers = _timers()
        if isinstance(timers, str):
            return timers
        if await timers.cancel(int(timer_id)):
            return f"Wake-up #{timer_id} cancelled."
        return f"Wake-up #{timer_id} not found or already fired."

    def current_time() -> str:
        now = datetime.now(timezone.utc)
        return f"{now.strftime('%Y-%m-%dT%H:%M:%SZ')} ({now.strftime('%A')}, UTC; unix {int(now.timestamp())})"

    return [
        FunctionTool(
            ToolDefinition(
                "schedule_wakeup",
                "Schedule a wake-up: after delay_seconds you receive a message with your note, even if "
                "nobody writes to you. Use it to check back on something later. Or give cron (and tz) "
                "instead of delay_seconds to wake up on a calendar, e.g. every weekday at 09:00 Paris "
                'time: cron "0 9 * * MON-FRI", tz "Europe/Paris". '
                f"Delay between {_seconds(lim.min_delay_s)} s and {lim.max_delay_s / 86400:g} days; "
                f"calendar occurrences at least {_seconds(lim.min_cron_interval_s)} s apart; "
                f"at most {lim.max_live} wake-ups at once.",
                {
                    "type": "object",
                    "properties": {
                        "delay_seconds": {"type": "number", "description": "Seconds from now."},
                        "note": {"type": "string", "description": "What to do when you wake up."},
                        "cron": {
                            "type": "string",
                            "description": "Instead of delay_seconds: a 5-field cron schedule "
                            "(minute hour day-of-month month day-of-week).",
                        },
                        "tz": {
                            "type": "string",
                            "description": "With cron: the IANA time zone it is read in, e.g. Europe/Paris "
                            "(default UTC).",
                        },
                    },
                    "required": ["note"],
                },
            ),
            schedule_wakeup,
        ),
        FunctionTool(
            ToolDefinition("list_wakeups", "List your scheduled wake-ups, soonest first."),
            list_wakeups,
        ),
        FunctionTool(
            ToolDefinition(
                "cancel_wakeup",
                "Cancel a scheduled wake-up by its id (see list_wakeups).",
                {
                    "type": "object",
                    "properties": {"timer_id": {"type": "integer", "description": "The wake-up's id."}},
                    "required": ["timer_id"],
                },
            ),
            cancel_wakeup,
        ),
        FunctionTool(ToolDefinition("current_time", "The current date and time (UTC)."), current_time),
    ]


def register_timer_tools(
    registry: ToolRegistry, *, limits: TimerToolLimits | None = None, overwrite: bool = False
) -> ToolRegistry:
    """Register :func:`timer_tools` in ``registry`` and return it."""
    for fn_tool in timer_tools(limits):
        registry.register(fn_tool, overwrite=overwrite)
    return registry
