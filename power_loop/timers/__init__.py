"""Durable timers: "wake this session at T with this note".

Schedule with ``StatefulAgentLoop.schedule_timer`` (or let the agent do it with the tools of
:func:`timer_tools`); a :class:`TimerRunner` delivers due timers exactly once into the
conversation, from one process or many. ``power-loop worker module:loop`` runs a runner as a
process of its own. A runner reaches its loop only through :class:`TimerHost`. See
``docs/timers.md``.
"""

from __future__ import annotations

from ..store._timers_sql import TimerBudgetExceeded
from ..store.rows import TimerRow
from .host import TimerHost
from .runner import TimerAction, TimerRunner, wake_up_message
from .tools import TimerToolLimits, register_timer_tools, timer_tools

__all__ = [
    "TimerAction",
    "TimerBudgetExceeded",
    "TimerHost",
    "TimerRow",
    "TimerRunner",
    "TimerToolLimits",
    "register_timer_tools",
    "timer_tools",
    "wake_up_message",
]
