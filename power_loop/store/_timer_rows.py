"""The value types of durable timers shared by the store's rules and the timer runner:
a claim, a delivery, the limits on due times, and the "too many timers" signal (the
calendar computation is in ``_timer_calendar.py``).

Nothing here touches a database, so the runner and the timer tools import it without
importing any backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import PowerLoopError

__all__ = ["MAX_DELAY_S", "MAX_DUE_AT_MS", "MAX_TIMER_ID", "ClaimedTimer", "Delivery", "TimerBudgetExceeded"]

MAX_TIMER_ID = 2**63 - 1
MAX_DELAY_S = 100 * 365 * 86400.0
"""The longest delay or period a timer accepts (100 years)."""
MAX_DUE_AT_MS = 253_402_300_799_999
"""The latest due time a timer accepts (the end of year 9999, epoch ms)."""


class TimerBudgetExceeded(PowerLoopError):
    """``max_live`` timers are armed already (``live`` says how many)."""

    def __init__(self, live: int) -> None:
        super().__init__(f"{live} timers armed")
        self.live = live


@dataclass(frozen=True)
class ClaimedTimer:
    """A due timer claimed by a runner; ``claim_seq`` identifies this claim and
    ``session_key`` is the session's key inside the store that claimed it. A calendar timer
    carries its schedule (``cron`` in zone ``tz``) and its ``misfire`` rule. ``claimed_at``
    (epoch ms) is set when this claim took over another runner's, whose lease ran out: when
    that runner had claimed it (a firing it picked up on time is not late because it died)."""

    session_id: str
    timer_id: int
    due_at: int
    note: str
    every_ms: int | None
    remaining: int | None
    until_at: int | None
    claim_seq: int = 0
    session_key: int = 0
    cron: str | None = None
    tz: str | None = None
    misfire: str | None = None
    claimed_at: int | None = None


@dataclass(frozen=True)
class Delivery:
    """What to do with one claimed timer: ``action`` is ``deliver`` (into the session's
    inbox), ``skip``, ``cancel`` or ``postpone`` (by ``postpone_ms``).

    ``covered_until`` (epoch ms) is, for a calendar timer, the instant up to which this firing
    stands for the schedule's occurrences (when the deliverer counted them); the series is
    re-armed at the first occurrence after it. None: the delivery's own time."""

    timer: ClaimedTimer
    action: str
    message: str
    postpone_ms: int = 0
    covered_until: int | None = None
