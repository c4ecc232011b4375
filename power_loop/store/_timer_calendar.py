"""Calendar schedules of timers: cron expressions read in an IANA time zone.

Pure computation, no database: the store's rules call :func:`next_occurrence` to arm a
series' next occurrence in the transaction that marks one fired, and the timer runner calls
:func:`plan_firing` to tell how many occurrences a late firing stands for. Times are epoch
milliseconds; an occurrence is computed in the zone's local time (``zoneinfo``) and stored as
an absolute instant, so runners compare integers and never think about zones.

Expressions have the five standard fields (minute, hour, day of month, month, day of week;
names such as ``MON-FRI`` and ``JAN``, ranges, lists, steps, ``L`` and ``#``) or one of the
aliases ``@yearly``, ``@annually``, ``@monthly``, ``@weekly``, ``@daily``, ``@midnight``,
``@hourly``. They are evaluated by ``cronsim``, which follows Debian's cron. Across daylight
saving time changes that gives, for a schedule at fixed local times:

* a local time that does not exist that day (02:30 when clocks jump from 02:00 to 03:00)
  fires once, at the first valid minute after it (03:00);
* a local time that occurs twice (01:30 when clocks go back from 02:00 to 01:00) fires once,
  at its first occurrence.

A schedule whose minute or hour field starts with ``*`` (``*/15 * * * *``, ``0 * * * *``)
follows elapsed time instead: it fires at every instant that matches, so an hourly schedule
fires 23 times on the spring day and 25 times on the autumn day.

:func:`next_occurrence` never returns an instant at or before the one it is given, whatever
the library does around a repeated hour: a series can only move forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from ._timer_rows import MAX_DUE_AT_MS, ClaimedTimer

__all__ = [
    "MISFIRE_RULES",
    "MissedCount",
    "Misfire",
    "check_schedule",
    "ends_series",
    "following_due",
    "local_time",
    "next_occurrence",
    "plan_firing",
    "zone",
]

Misfire = Literal["once", "skip"]
"""What a calendar timer does with occurrences missed during a downtime: fire ``once`` for
all of them, or ``skip`` them."""

MISFIRE_RULES: tuple[Misfire, ...] = ("once", "skip")

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

MAX_CRON_LENGTH = 512
"""The longest expression accepted: the agent's tool passes on what a model wrote, and each
occurrence computed parses the expression again."""

MISSED_COUNT_LIMIT = 1000
"""Most missed occurrences counted one by one (a wake-up after a long downtime of a frequent
schedule says "1000+" instead of iterating on the event loop)."""


def zone(tz: object) -> ZoneInfo:
    """The IANA zone named ``tz``.

    Raises:
        ValueError: ``tz`` is not the name of a zone known to ``zoneinfo``.
    """
    problem = f"tz must be an IANA time zone name such as 'Europe/Paris' or 'UTC', not {tz!r}"
    if not isinstance(tz, str) or not tz.strip() or len(tz) > 255:
        raise ValueError(problem)
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(problem) from exc


def _expression(cron: str) -> str:
    """The five-field form of ``cron`` (aliases expanded)."""
    return ALIASES.get(cron.lower(), cron)


def check_schedule(cron: object, tz: object, *, now_ms: int) -> tuple[str, str]:
    """Check a schedule and return it as stored: ``(cron, tz)`` with the expression's
    whitespace normalized.

    Raises:
        ValueError: The expression or the zone is not valid (the message names the field),
            or the schedule never comes due.
    """
    if not isinstance(cron, str):
        raise ValueError(f"cron must be a cron expression such as '0 9 * * MON-FRI', not {cron!r}")
    text = " ".join(cron.split())
    if len(text) > MAX_CRON_LENGTH:
        raise ValueError(f"cron must be at most {MAX_CRON_LENGTH} characters long, not {len(text)}")
    fields = _expression(text).split(" ")
    if len(fields) != 5:
        raise ValueError(
            f"cron must have 5 fields (minute hour day-of-month month day-of-week) or be an alias such as "
            f"'@daily', not {len(fields) if text else 0}: {cron!r}"
        )
    where = zone(tz)
    assert isinstance(tz, str)
    try:
        CronSim(_expression(text), datetime.now(where))
    except CronSimError as exc:
        raise ValueError(f"cron {cron!r} is not valid: {str(exc).lower() or 'bad expression'}") from exc
    if next_occurrence(text, tz, now_ms) is None:
        raise ValueError(f"cron {cron!r} never comes due in zone {tz}")
    return text, tz


def next_occurrence(cron: str, tz: str, after_ms: int) -> int | None:
    """The first occurrence of ``cron`` in zone ``tz`` strictly after ``after_ms`` (epoch ms),
    or None when there is none (within the library's 50-year search, and before the end of
    year 9999)."""
    where = zone(tz)
    after = datetime.fromtimestamp(after_ms / 1000, tz=timezone.utc)
    try:
        it = CronSim(_expression(cron), after.astimezone(where))
        while True:
            at = int(next(it).timestamp() * 1000)
            # Around a repeated hour the library walks local wall time, which can lead to an
            # instant before the start (01:30 of the first pass, asked from the second):
            # such an occurrence already passed, the series moves on.
            if at > after_ms:
                break
    except (StopIteration, OverflowError, ValueError):
        return None
    return at if at <= MAX_DUE_AT_MS else None


def local_time(ms: int, tz: str) -> str:
    """``ms`` as local time in zone ``tz`` with its offset, to the minute
    (``2026-12-01T09:00+01:00``)."""
    return datetime.fromtimestamp(ms / 1000, tz=zone(tz)).isoformat(timespec="minutes")


@dataclass(frozen=True)
class MissedCount:
    """What one firing of a calendar timer stands for.

    Attributes:
        deliver: Whether the firing delivers a wake-up (False: the occurrences it stands for
            were all missed and the rule is ``skip``).
        missed: Occurrences that came due more than the grace period before the firing.
        since: The first of them (epoch ms), or None when none was missed.
        more: True when counting stopped at :data:`MISSED_COUNT_LIMIT`.
        skipped: True when the missed occurrences were dropped (the rule is ``skip``).
    """

    deliver: bool = True
    missed: int = 0
    since: int | None = None
    more: bool = False
    skipped: bool = False

    def describe(self, tz: str) -> str:
        """The words the wake-up adds, e.g. ``(missed 3 occurrences since
        2026-12-01T09:00+01:00)``; empty when nothing was missed."""
        if not self.missed or self.since is None:
            return ""
        count = f"{self.missed}+" if self.more else str(self.missed)
        noun = "occurrence" if self.missed == 1 and not self.more else "occurrences"
        verb = "skipped" if self.skipped else "missed"
        return f"({verb} {count} {noun} since {local_time(self.since, tz)})"


def plan_firing(
    cron: str, tz: str, misfire: str, *, due_at: int, now: int, grace_ms: int, until: int | None = None
) -> MissedCount:
    """What the firing at ``now`` of a calendar timer due at ``due_at`` stands for.

    The firing covers the occurrence it was due for and every occurrence since, up to ``now``
    (and up to ``until``, the end of the series, when it has one).
    An occurrence is *missed* when it came due more than ``grace_ms`` before ``now`` (the
    runners were down, or behind). With ``misfire="once"`` the firing delivers one wake-up
    for all of them; with ``"skip"`` the missed ones are dropped and it delivers only when the
    latest covered occurrence is on time. Either way the series then resumes at the first
    occurrence after ``now``.
    """
    if now - due_at <= grace_ms:
        return MissedCount()
    missed = 1
    more = False
    at = due_at
    while (
        (following := next_occurrence(cron, tz, at)) is not None
        and now - following > grace_ms
        and (until is None or following <= until)
    ):
        if missed >= MISSED_COUNT_LIMIT:
            more = True
            break
        missed += 1
        at = following
    if misfire != "skip":
        return MissedCount(missed=missed, since=due_at, more=more)
    # The latest occurrence up to now, if it is on time, is delivered.
    latest = next_occurrence(cron, tz, now - grace_ms - 1)
    on_time = latest is not None and latest <= now and (until is None or latest <= until)
    return MissedCount(deliver=on_time, missed=missed, since=due_at, more=more, skipped=True)


def following_due(timer: ClaimedTimer, *, now: int, covered_until: int | None = None) -> int | None:
    """When a recurring timer that fires at ``now`` is due next, or None when it is not
    recurring (or its schedule has no further occurrence): ``every_ms`` after the firing, or
    the schedule's first occurrence after ``covered_until`` (default ``now``)."""
    if timer.cron is not None and timer.tz is not None:
        return next_occurrence(timer.cron, timer.tz, now if covered_until is None else covered_until)
    if timer.every_ms:
        return now + timer.every_ms
    return None


def ends_series(timer: ClaimedTimer, *, now: int) -> bool:
    """Whether this firing comes after the series' ``until_at``: it is skipped and ends the
    series. A calendar timer's firing stands for an occurrence, which counts when it came due
    by ``until_at`` even if a runner fires it a moment later (or after a downtime: the misfire
    rule then applies); another timer's firing counts when it happens by ``until_at``."""
    if timer.until_at is None:
        return False
    return (timer.due_at if timer.cron is not None else now) > timer.until_at
