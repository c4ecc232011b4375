"""Calendar timers: cron schedules read in an IANA zone, across both DST changes, the misfire
rule after a downtime, cancellation, the store contract on every backend (the PostgreSQL
batch path included), the schema upgrade, and the agent's wake-up tool with ``cron``.

Dates are reached with the runner's injectable clock (``TimerRunner(clock=...)``) and the
store's ``now``: nothing sleeps until a real date.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import threading
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from power_loop import (
    AgentEventType,
    AgentLoopConfig,
    HookDirective,
    HookPoint,
    OfflineLLM,
    StatefulAgentLoop,
    TimerFireCtx,
    TimerRunner,
    TimerToolLimits,
    ToolRegistry,
    register_timer_tools,
    wake_up_message,
)
from power_loop.store._timer_calendar import next_occurrence, plan_firing
from power_loop.store.protocols import Delivery, SessionStoreProtocol
from power_loop.store.schema import LATEST_VERSION
from power_loop.testing import ScriptedServer
from power_loop.testing.script import text_reply, tool_reply

from .helpers import RawDatabase, history_is_valid
from .test_store_contract import BACKENDS

PARIS = "Europe/Paris"
NEW_YORK = "America/New_York"
MINUTE = 60_000
HOUR = 3_600_000


def at(tz: str, year: int, month: int, day: int, hour: int, minute: int = 0, *, fold: int = 0) -> int:
    """Epoch ms of a local wall-clock time in ``tz`` (``fold=1``: the second pass of a
    repeated hour)."""
    return int(datetime(year, month, day, hour, minute, tzinfo=ZoneInfo(tz), fold=fold).timestamp() * 1000)


def local(ms: int, tz: str) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=ZoneInfo(tz)).isoformat(timespec="minutes")


class Clock:
    """A simulated wall clock for the runner: epoch seconds, moved by the test."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


def timer_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user" and str(m["content"]).startswith("<timer id=")]


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStoreProtocol]:
    """A fresh, open store of each backend (as in the store contract suite)."""
    opened = await BACKENDS[request.param](request)
    try:
        yield opened
    finally:
        await opened.close()


# --------------------------------------------------------------------------- the calendar


def test_a_time_that_does_not_exist_fires_once_at_the_next_valid_instant() -> None:
    # New York springs forward on 2027-03-14 at 02:00 (to 03:00); Paris on 2027-03-28.
    for tz, day in ((NEW_YORK, 14), (PARIS, 28)):
        after = at(tz, 2027, 3, day - 1, 12)
        first = next_occurrence("30 2 * * *", tz, after)
        assert first is not None
        second = next_occurrence("30 2 * * *", tz, first)
        assert second is not None
        assert local(first, tz).startswith(f"2027-03-{day}T03:00")  # the first valid minute after 02:30
        assert local(second, tz).startswith(f"2027-03-{day + 1}T02:30")
        assert second - first == 23 * HOUR + 30 * MINUTE


def test_a_time_that_occurs_twice_fires_once() -> None:
    # New York falls back on 2027-11-07 at 02:00 (to 01:00): 01:30 happens twice.
    after = at(NEW_YORK, 2027, 11, 6, 12)
    first = next_occurrence("30 1 * * *", NEW_YORK, after)
    assert first == at(NEW_YORK, 2027, 11, 7, 1, 30, fold=0)  # the first pass, -04:00
    following = next_occurrence("30 1 * * *", NEW_YORK, first)
    assert following == at(NEW_YORK, 2027, 11, 8, 1, 30)  # not the second pass an hour later
    # Asked from inside the second pass (01:15 -05:00), the series still moves forward.
    assert next_occurrence("30 1 * * *", NEW_YORK, at(NEW_YORK, 2027, 11, 7, 1, 15, fold=1)) == following
    # Paris repeats 02:00-03:00 on 2027-10-31: 02:30 fires once there too.
    paris = next_occurrence("30 2 * * *", PARIS, at(PARIS, 2027, 10, 30, 12))
    assert paris == at(PARIS, 2027, 10, 31, 2, 30, fold=0)
    assert next_occurrence("30 2 * * *", PARIS, paris) == at(PARIS, 2027, 11, 1, 2, 30)


def test_the_offset_follows_the_zone_across_the_year() -> None:
    winter = next_occurrence("0 9 * * MON-FRI", PARIS, at(PARIS, 2027, 3, 26, 12))  # a Friday
    assert winter is not None and local(winter, PARIS) == "2027-03-29T09:00+02:00"  # Monday, summer time
    assert datetime.fromtimestamp(winter / 1000, ZoneInfo("UTC")).hour == 7
    assert next_occurrence("@monthly", "UTC", at("UTC", 2027, 1, 15, 0)) == at("UTC", 2027, 2, 1, 0)


def test_the_misfire_count_says_what_a_late_firing_stands_for() -> None:
    due = at(PARIS, 2026, 12, 1, 9)  # a Tuesday
    plan = plan_firing("0 9 * * MON-FRI", PARIS, "once", due_at=due, now=due + 5_000, grace_ms=MINUTE)
    assert plan.deliver and plan.missed == 0 and plan.describe(PARIS) == ""
    late = at(PARIS, 2026, 12, 3, 10)
    plan = plan_firing("0 9 * * MON-FRI", PARIS, "once", due_at=due, now=late, grace_ms=MINUTE)
    assert plan.deliver and plan.describe(PARIS) == "(missed 3 occurrences since 2026-12-01T09:00+01:00)"
    plan = plan_firing("0 9 * * MON-FRI", PARIS, "skip", due_at=due, now=late, grace_ms=MINUTE)
    assert not plan.deliver and plan.missed == 3
    on_time = at(PARIS, 2026, 12, 3, 9) + 30_000  # Thursday's occurrence is on time
    plan = plan_firing("0 9 * * MON-FRI", PARIS, "skip", due_at=due, now=on_time, grace_ms=MINUTE)
    assert plan.deliver and plan.describe(PARIS) == "(skipped 2 occurrences since 2026-12-01T09:00+01:00)"
    plan = plan_firing("* * * * *", PARIS, "once", due_at=due, now=due + 30 * 86_400_000, grace_ms=MINUTE)
    assert plan.describe(PARIS) == "(missed 1000+ occurrences since 2026-12-01T09:00+01:00)"


# --------------------------------------------------------------------------- scheduling


def test_schedule_timer_validates_the_expression_and_the_zone(tmp_path: Any) -> None:
    loop = StatefulAgentLoop(llm=OfflineLLM(), db_path=os.path.join(tmp_path, "v.db"))
    sid = loop.new_session()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"cron": "0 9 * *"}, "cron must have 5 fields"),
        ({"cron": "0 0 9 * * *"}, "cron must have 5 fields"),
        ({"cron": "61 9 * * *"}, "cron '61 9 \\* \\* \\*' is not valid: bad minute"),
        ({"cron": "0 9 * * FUNDAY"}, "bad day-of-week"),
        ({"cron": "0 0 31 2 *"}, "cron .* is not valid"),
        ({"cron": 9}, "cron must be a cron expression"),
        ({"cron": ",".join(["1"] * 300) + " * * * *"}, "cron must be at most 512 characters long"),
        ({"cron": "0 9 * * *", "tz": "Europe/Atlantis"}, "tz must be an IANA time zone name"),
        ({"cron": "0 9 * * *", "tz": ""}, "tz must be an IANA time zone name"),
        ({"cron": "0 9 * * *", "tz": "../../etc/passwd"}, "tz must be an IANA time zone name"),
        ({"cron": "0 9 * * *", "delay_s": 5}, "cron cannot be combined with delay_s, due_at_ms or every_s"),
        ({"cron": "0 9 * * *", "due_at_ms": 10**12}, "cron cannot be combined"),
        ({"cron": "0 9 * * *", "every_s": 60}, "cron cannot be combined"),
        ({"cron": "0 9 * * *", "misfire": "twice"}, "misfire must be 'once' or 'skip'"),
        ({"cron": "0 9 * * *", "count": 0}, "count must be an int >= 1"),
        ({"cron": "0 9 * * *", "until_ms": 1}, "until_ms must be epoch milliseconds no earlier"),
        ({"delay_s": 5, "tz": PARIS}, "tz applies to calendar timers"),
        ({"delay_s": 5, "misfire": "skip"}, "misfire applies to calendar timers"),
    ]
    try:
        for kwargs, message in cases:
            with pytest.raises(ValueError, match=message):
                loop.schedule_timer(sid, note="digest", **kwargs)
        with pytest.raises(ValueError, match="note is required"):
            loop.schedule_timer(sid, note=" ", cron="0 9 * * *")
        assert loop.list_timers(sid) == []  # nothing was armed
    finally:
        loop.close()


async def test_a_calendar_timer_is_armed_at_its_next_occurrence_and_listed(shared_db: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=shared_db) as loop:
        sid = await loop.new_session_async()
        before = int(datetime.now().timestamp() * 1000)
        row = await loop.schedule_timer_async(sid, cron="0  9 * * MON-FRI", tz=PARIS, note="send the digest")
        after = int(datetime.now().timestamp() * 1000)
        assert row.due_at in {next_occurrence("0 9 * * MON-FRI", PARIS, t) for t in (before, after)}
        assert (row.cron, row.tz, row.misfire, row.every_s, row.last_fired_at) == (
            "0 9 * * MON-FRI",
            PARIS,
            "once",
            None,
            None,
        )
        daily = await loop.schedule_timer_async(sid, cron="@daily", note="tidy up", misfire="skip", count=3)
        assert (daily.tz, daily.misfire, daily.remaining) == ("UTC", "skip", 3)
        listed = await loop.list_timers_async(sid)
        assert {t.timer_id: (t.cron, t.tz) for t in listed} == {1: ("0 9 * * MON-FRI", PARIS), 2: ("@daily", "UTC")}
        assert [t.due_at for t in listed] == sorted(t.due_at for t in listed)


# --------------------------------------------------------------------------- delivery


async def _calendar_loop(shared_db: str, clock: Clock, cron: str, tz: str, **kwargs: Any) -> tuple[Any, str, Any]:
    """A loop, a session and a calendar timer armed at its first occurrence after ``clock``."""
    loop = StatefulAgentLoop(llm=OfflineLLM(), db_path=shared_db)
    await loop.__aenter__()
    sid = await loop.new_session_async()
    due = next_occurrence(cron, tz, clock.ms)
    assert due is not None
    row = await loop.store.schedule_timer(sid, due_at=due, note="send the digest", cron=cron, tz=tz, **kwargs)
    return loop, sid, row


async def test_runner_fires_across_both_dst_changes_once_per_occurrence(shared_db: str) -> None:
    clock = Clock(at(NEW_YORK, 2027, 3, 13, 12))
    loop, sid, _ = await _calendar_loop(shared_db, clock, "30 2 * * *", NEW_YORK)
    second, fall = None, None
    try:
        runner = TimerRunner(loop, clock=clock)
        [timer] = await loop.list_timers_async(sid)
        assert timer.due_at == at(NEW_YORK, 2027, 3, 14, 3)  # 02:30 does not exist that day
        clock.ms = timer.due_at - 1_000
        assert await runner.scan_once() == 0  # not yet
        clock.ms = timer.due_at + 1_000
        assert await runner.scan_once() == 1
        await runner.drain()
        [timer] = await loop.list_timers_async(sid)
        assert timer.due_at == at(NEW_YORK, 2027, 3, 15, 2, 30) and timer.fire_count == 1
        assert timer.last_fired_at == clock.ms and timer.status == "armed"
        # The autumn change, on another series: 01:30 happens twice on 2027-11-07.
        clock.ms = at(NEW_YORK, 2027, 11, 6, 12)
        fall = await loop.store.schedule_timer(
            sid,
            due_at=next_occurrence("30 1 * * *", NEW_YORK, clock.ms) or 0,
            note="fall back",
            cron="30 1 * * *",
            tz=NEW_YORK,
        )
        assert await loop.cancel_timer_async(sid, timer.timer_id)
        clock.ms = at(NEW_YORK, 2027, 11, 7, 1, 30, fold=0) + 1_000
        assert await runner.scan_once() == 1
        await runner.drain()
        clock.ms = at(NEW_YORK, 2027, 11, 7, 1, 30, fold=1) + 1_000  # the second 01:30
        assert await runner.scan_once() == 0
        [second] = await loop.list_timers_async(sid)
        assert second.timer_id == fall.timer_id and second.due_at == at(NEW_YORK, 2027, 11, 8, 1, 30)
        texts = timer_texts(await loop.get_messages_async(sid))
    finally:
        await loop.__aexit__(None, None, None)
    assert texts == [wake_up_message(1, "send the digest"), wake_up_message(2, "fall back")]


async def test_after_a_downtime_a_calendar_timer_fires_once_and_says_what_was_missed(shared_db: str) -> None:
    clock = Clock(at(PARIS, 2026, 12, 1, 8))  # a Tuesday
    loop, sid, row = await _calendar_loop(shared_db, clock, "0 9 * * MON-FRI", PARIS)
    try:
        assert row.due_at == at(PARIS, 2026, 12, 1, 9)
        runner = TimerRunner(loop, clock=clock)
        clock.ms = at(PARIS, 2026, 12, 3, 10)  # down from Tuesday 08:00 to Thursday 10:00
        assert await runner.scan_once() == 1
        await runner.drain()
        [timer] = await loop.list_timers_async(sid)
        assert timer.due_at == at(PARIS, 2026, 12, 4, 9)  # back on the calendar: Friday 09:00
        assert (timer.fire_count, timer.last_outcome) == (1, "delivered")
        clock.ms = at(PARIS, 2026, 12, 4, 9) + 2_000  # Friday, on time
        assert await runner.scan_once() == 1
        await runner.drain()
        messages = await loop.get_messages_async(sid)
        [timer] = await loop.list_timers_async(sid)
        assert timer.due_at == at(PARIS, 2026, 12, 7, 9)  # Monday
    finally:
        await loop.__aexit__(None, None, None)
    assert timer_texts(messages) == [
        wake_up_message(1, "send the digest", "(missed 3 occurrences since 2026-12-01T09:00+01:00)"),
        wake_up_message(1, "send the digest"),
    ]
    assert "has fired (missed 3 occurrences since 2026-12-01T09:00+01:00). Your note" in timer_texts(messages)[0]
    assert history_is_valid(messages)


async def test_with_misfire_skip_missed_occurrences_are_dropped(shared_db: str) -> None:
    clock = Clock(at(PARIS, 2026, 12, 1, 8))
    loop, sid, _ = await _calendar_loop(shared_db, clock, "0 9 * * MON-FRI", PARIS, misfire="skip")
    fired: list[str] = []
    loop.event_bus.subscribe(AgentEventType.TIMER_FIRED, lambda e: fired.append(e.payload["outcome"]))
    try:
        runner = TimerRunner(loop, clock=clock)
        clock.ms = at(PARIS, 2026, 12, 3, 10)
        assert await runner.scan_once() == 1
        await runner.drain()
        [timer] = await loop.list_timers_async(sid)
        assert (timer.due_at, timer.last_outcome) == (at(PARIS, 2026, 12, 4, 9), "skipped")
        assert await loop.get_messages_async(sid) == []  # nothing delivered
        clock.ms = at(PARIS, 2026, 12, 8, 9) + 30_000  # down again, but Tuesday's occurrence is on time
        assert await runner.scan_once() == 1
        await runner.drain()
        texts = timer_texts(await loop.get_messages_async(sid))
    finally:
        await loop.__aexit__(None, None, None)
    assert fired == ["skipped", "delivered"]
    assert texts == [wake_up_message(1, "send the digest", "(skipped 2 occurrences since 2026-12-04T09:00+01:00)")]


async def test_cancelling_the_series_id_ends_the_series(shared_db: str) -> None:
    clock = Clock(at(PARIS, 2026, 12, 1, 8))
    loop, sid, row = await _calendar_loop(shared_db, clock, "0 9 * * *", PARIS)
    try:
        runner = TimerRunner(loop, clock=clock)
        clock.ms = row.due_at + 1_000
        assert await runner.scan_once() == 1
        await runner.drain()
        assert await loop.cancel_timer_async(sid, row.timer_id)
        assert not await loop.cancel_timer_async(sid, row.timer_id)
        clock.ms += 10 * 86_400_000
        assert await runner.scan_once() == 0
        assert await loop.list_timers_async(sid) == []
        [ended] = await loop.store.list_timers(sid, statuses=("cancelled",))
        assert (ended.fire_count, ended.cron) == (1, "0 9 * * *")
    finally:
        await loop.__aexit__(None, None, None)


async def test_count_and_until_end_a_calendar_series(shared_db: str) -> None:
    clock = Clock(at("UTC", 2027, 1, 4, 0))
    loop, sid, counted = await _calendar_loop(shared_db, clock, "0 12 * * *", "UTC", count=2)
    try:
        await loop.store.schedule_timer(
            sid,
            due_at=at("UTC", 2027, 1, 4, 12),
            note="until",
            cron="0 12 * * *",
            tz="UTC",
            until_at=at("UTC", 2027, 1, 5, 12, 30),
        )
        runner = TimerRunner(loop, clock=clock)
        for day in (4, 5, 6):
            clock.ms = at("UTC", 2027, 1, day, 12) + 1_000
            await runner.scan_once()
            await runner.drain()
        done = {t.timer_id: t for t in await loop.store.list_timers(sid, statuses=("fired",))}
    finally:
        await loop.__aexit__(None, None, None)
    assert {t.note: (t.fire_count, t.last_outcome) for t in done.values()} == {
        "send the digest": (2, "delivered"),
        "until": (2, "delivered"),
    }
    assert counted.remaining == 2


async def test_timer_fire_hooks_act_on_one_occurrence_or_the_series(shared_db: str) -> None:
    clock = Clock(at(PARIS, 2026, 12, 1, 8))
    loop, sid, row = await _calendar_loop(shared_db, clock, "0 9 * * *", PARIS)
    seen: list[tuple[int, str]] = []

    def hook(ctx: TimerFireCtx) -> HookDirective | None:
        seen.append((ctx.due_at, ctx.message.splitlines()[1]))
        return [HookDirective.SKIP, None, HookDirective.BREAK][len(seen) - 1]

    loop.hooks.register(HookPoint.TIMER_FIRE, hook)
    try:
        runner = TimerRunner(loop, clock=clock)
        for day in (1, 2, 4):  # skipped; delivered; then, late, the series is cancelled
            clock.ms = at(PARIS, 2026, 12, day, 9) + 1_000
            assert await runner.scan_once() == 1
            await runner.drain()
        texts = timer_texts(await loop.get_messages_async(sid))
        [ended] = await loop.store.list_timers(sid, statuses=("cancelled",))
    finally:
        await loop.__aexit__(None, None, None)
    assert [due for due, _ in seen] == [at(PARIS, 2026, 12, d, 9) for d in (1, 2, 3)]
    assert seen[2][1] == (
        "Your scheduled wake-up has fired (missed 1 occurrence since 2026-12-03T09:00+01:00). "
        "Your note to yourself was:"
    )
    assert texts == [wake_up_message(row.timer_id, "send the digest")]
    assert (ended.fire_count, ended.last_outcome) == (2, "cancelled")


# --------------------------------------------------------------------------- the store contract


async def test_store_rearms_the_next_occurrence_in_the_delivery(
    store: SessionStoreProtocol, caplog: pytest.LogCaptureFixture
) -> None:
    """Per backend, per delivery path (one timer, and a batch: set-based on PostgreSQL)."""
    for sid in ("one", "batch"):
        await store.create_session(sid)
    t0 = at(PARIS, 2027, 3, 27, 12)
    spring = next_occurrence("30 2 * * *", PARIS, t0)
    assert spring == at(PARIS, 2027, 3, 28, 3)
    for sid in ("one", "batch"):
        await store.schedule_timer(sid, due_at=spring, note=sid, cron="30 2 * * *", tz=PARIS)
    await store.schedule_timer("batch", due_at=spring, note="weekly", cron="0 9 * * MON", tz=PARIS, misfire="skip")
    now = spring + 1_000
    assert await store.claim_due_timers("r", lease_ms=60_000, limit=10, now=spring - 1) == []
    claimed = {t.note: t for t in await store.claim_due_timers("r", lease_ms=60_000, limit=10, now=now)}
    assert set(claimed) == {"one", "batch", "weekly"}
    assert (claimed["weekly"].cron, claimed["weekly"].tz, claimed["weekly"].misfire) == ("0 9 * * MON", PARIS, "skip")
    assert await store.claim_due_timers("r2", lease_ms=60_000, limit=10, now=now) == []  # claimed once
    [(one, _)] = await store.deliver_timers("r", [Delivery(claimed["one"], "deliver", "wake one")], now=now)
    outcomes = await store.deliver_timers(
        "r",
        [
            Delivery(claimed["batch"], "deliver", "wake batch", covered_until=now),
            Delivery(claimed["weekly"], "skip", "dropped", covered_until=now),
        ],
        now=now,
    )
    assert one == "delivered" and [o for o, _ in outcomes] == ["delivered", "skipped"]
    assert "one by one" not in caplog.text  # the set-based batch applied (PostgreSQL), no fallback
    for sid in ("one", "batch"):
        timers = {t.note: t for t in await store.list_timers(sid)}
        assert timers[sid].due_at == at(PARIS, 2027, 3, 29, 2, 30)  # the next day, summer time
        assert (timers[sid].fire_count, timers[sid].last_fired_at, timers[sid].status) == (1, now, "armed")
    [weekly] = [t for t in await store.list_timers("batch") if t.note == "weekly"]
    assert weekly.due_at == at(PARIS, 2027, 3, 29, 9) and weekly.last_outcome == "skipped"
    # Delivered again with the same claim: refused, nothing re-armed twice.
    assert await store.deliver_timers("r", [Delivery(claimed["one"], "deliver", "x")], now=now) == [(None, 0)]


async def test_a_series_resumes_after_the_instant_its_firing_covered(store: SessionStoreProtocol) -> None:
    """An occurrence that comes due between the count of a firing and its commit is not lost:
    the series is re-armed at it (and fires again), not after the commit."""
    await store.create_session("s")
    due = at("UTC", 2027, 1, 4, 9)
    await store.schedule_timer("s", due_at=due, note="n", cron="*/15 * * * *", tz="UTC")
    [timer] = await store.claim_due_timers("r", lease_ms=60_000, limit=1, now=due)
    later = due + 20 * MINUTE  # the hook took 20 minutes: 09:15 came due meanwhile
    await store.deliver_timers("r", [Delivery(timer, "deliver", "n", covered_until=due)], now=later)
    [timer_row] = await store.list_timers("s")
    assert timer_row.due_at == due + 15 * MINUTE


async def test_scheduling_a_bad_calendar_timer_in_the_store_is_refused(store: SessionStoreProtocol) -> None:
    await store.create_session("s")
    with pytest.raises(ValueError, match="cron must have 5 fields"):
        await store.schedule_timer("s", due_at=1, note="n", cron="* * *")
    with pytest.raises(ValueError, match="tz must be an IANA"):
        await store.schedule_timer("s", due_at=1, note="n", cron="* * * * *", tz="Nowhere/Land")
    with pytest.raises(ValueError, match="misfire"):
        await store.schedule_timer("s", due_at=1, note="n", cron="* * * * *", misfire="never")
    with pytest.raises(ValueError, match="cron cannot be combined with every_s"):
        await store.schedule_timer("s", due_at=1, note="n", cron="* * * * *", every_ms=1000)
    with pytest.raises(ValueError, match="pass cron as well"):
        await store.schedule_timer("s", due_at=1, note="n", tz=PARIS)
    assert await store.list_timers("s") == []


async def test_a_version_10_store_is_upgraded_in_place(shared_db: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=shared_db) as loop:
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=3600, note="kept")
    raw = RawDatabase(shared_db)  # back to version 10: no calendar columns
    for column in ("cron", "tz", "misfire"):
        raw.execute(f"ALTER TABLE timers DROP COLUMN {column}")
    raw.execute("UPDATE power_loop_schema SET version = 10" if raw.postgres else "PRAGMA user_version = 10")
    raw.close()
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=shared_db) as loop:
        [kept] = await loop.list_timers_async(sid)
        assert (kept.note, kept.cron, kept.tz, kept.misfire) == ("kept", None, None, None)
        row = await loop.schedule_timer_async(sid, cron="0 9 * * *", tz=PARIS, note="new")
        assert row.cron == "0 9 * * *"
    raw = RawDatabase(shared_db)
    version = raw.execute("SELECT version FROM power_loop_schema" if raw.postgres else "PRAGMA user_version")
    assert version.fetchone()[0] == LATEST_VERSION == 11
    raw.close()


# --------------------------------------------------------------------------- the agent's tool


async def test_the_agent_schedules_a_calendar_wakeup(
    tmp_path: Any, scripted_server: ScriptedServer, llm_factory: Any, protocol: str
) -> None:
    far = f"0 0 1 {(datetime.now().month + 5) % 12 + 1} *"  # always months away
    scripted_server.push(
        tool_reply(("schedule_wakeup", {"note": "send the digest", "cron": "0 9 * * MON-FRI", "tz": PARIS}, "c1")),
        tool_reply(("schedule_wakeup", {"note": "x", "cron": "0 9 * *", "tz": PARIS}, "c2")),
        tool_reply(("schedule_wakeup", {"note": "x", "cron": "0 9 * * *", "tz": "Mars/Olympus"}, "c3")),
        tool_reply(("schedule_wakeup", {"note": "x", "cron": "*/5 * * * *"}, "c4")),
        tool_reply(("schedule_wakeup", {"note": "x", "cron": "0 9 * * *", "delay_seconds": 60}, "c5")),
        tool_reply(("schedule_wakeup", {"note": "x", "cron": far}, "c6")),
        tool_reply(("schedule_wakeup", {"note": "x"}, "c7")),
        tool_reply(("schedule_wakeup", {"note": "hourly", "cron": "0 * * * *", "tz": "UTC"}, "c8")),
        tool_reply(("list_wakeups", {}, "l1")),
        text_reply("done"),
    )
    registry = register_timer_tools(
        ToolRegistry(), limits=TimerToolLimits(max_delay_s=7 * 86400, min_cron_interval_s=3600, max_live=1)
    )
    llm = llm_factory(protocol, scripted_server)
    config = AgentLoopConfig(max_rounds=12)
    async with StatefulAgentLoop(
        llm=llm, db_path=os.path.join(tmp_path, "t.db"), tool_registry=registry, config=config
    ) as loop:
        sid = await loop.new_session_async()
        assert (await loop.send("send me a digest every weekday morning", session_id=sid)).final_text == "done"
        messages = await loop.get_messages_async(sid)
        [timer] = await loop.list_timers_async(sid)
    results = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    assert (timer.cron, timer.tz, timer.note, timer.misfire) == ("0 9 * * MON-FRI", PARIS, "send the digest", "once")
    assert results["c1"].startswith(
        f'Wake-up #1 scheduled on "0 9 * * MON-FRI" ({PARIS}); next at {local(timer.due_at, PARIS)}'
    )
    assert results["c1"].endswith("You'll receive your note each time.")
    assert results["c2"].startswith("Error: cron must have 5 fields")
    assert results["c3"].startswith("Error: tz must be an IANA time zone name")
    assert results["c4"] == (
        "Error: occurrences of a wake-up schedule must be at least 3600 seconds apart; '*/5 * * * *' fires more often."
    )
    assert results["c5"] == "Error: give either delay_seconds or cron, not both."
    assert results["c6"] == f"Error: the first occurrence of {far!r} is more than 7 days away."
    assert results["c7"] == "Error: give delay_seconds (seconds from now) or cron (a calendar schedule)."
    assert results["c8"].startswith("Budget exceeded: 1 wake-ups already scheduled")  # a series counts once
    assert results["l1"].startswith("#1 in ") and results["l1"].endswith(
        f's (armed) on "0 9 * * MON-FRI" ({PARIS}): send the digest'
    )
    assert history_is_valid(messages)


# --------------------------------------------------------------------------- review: edges


async def test_an_occurrence_at_until_fires_even_when_delivered_a_moment_later(store: SessionStoreProtocol) -> None:
    """``until_ms`` ends a calendar series after the occurrences due by it: the last one, due
    exactly at ``until_ms``, is delivered although a runner never fires it at that very
    millisecond (one timer, and a batch: set-based on PostgreSQL)."""
    for sid in ("one", "batch"):
        await store.create_session(sid)
    first, last = at("UTC", 2027, 1, 4, 12), at("UTC", 2027, 1, 5, 12)
    for sid in ("one", "batch", "batch"):
        await store.schedule_timer(sid, due_at=first, note=sid, cron="0 12 * * *", tz="UTC", until_at=last)
    for due in (first, last):
        now = due + 1_000
        claimed = await store.claim_due_timers("r", lease_ms=60_000, limit=10, now=now)
        assert len(claimed) == 3
        single = [Delivery(t, "deliver", "wake", covered_until=now) for t in claimed if t.session_id == "one"]
        batch = [Delivery(t, "deliver", "wake", covered_until=now) for t in claimed if t.session_id == "batch"]
        outcomes = await store.deliver_timers("r", single, now=now) + await store.deliver_timers("r", batch, now=now)
        assert [o for o, _ in outcomes] == ["delivered"] * 3
    for sid in ("one", "batch"):
        assert await store.list_timers(sid) == []
        ended = await store.list_timers(sid, statuses=("fired",))
        assert [(t.fire_count, t.last_outcome) for t in ended] == [(2, "delivered")] * len(ended)


async def test_cancelling_a_series_while_an_occurrence_is_in_flight_ends_it(shared_db: str) -> None:
    """The series' id cancelled while a runner holds an occurrence (its hook running): the
    delivery finds its claim gone, writes nothing and arms no next occurrence."""
    clock = Clock(at(PARIS, 2026, 12, 1, 8))
    loop, sid, row = await _calendar_loop(shared_db, clock, "0 9 * * *", PARIS)
    entered, release = asyncio.Event(), asyncio.Event()

    async def hook(ctx: TimerFireCtx) -> None:
        entered.set()
        await release.wait()

    loop.hooks.register(HookPoint.TIMER_FIRE, hook)
    try:
        runner = TimerRunner(loop, clock=clock)
        clock.ms = row.due_at + 1_000
        scan = asyncio.create_task(runner.scan_once())
        await entered.wait()
        [flying] = await loop.list_timers_async(sid)
        assert flying.status == "claimed"
        assert await loop.cancel_timer_async(sid, row.timer_id)
        release.set()
        assert await scan == 0  # the claim was lost: nothing processed
        await runner.drain()
        clock.ms += 3 * 86_400_000
        assert await runner.scan_once() == 0
        assert await loop.list_timers_async(sid) == []
        [ended] = await loop.store.list_timers(sid, statuses=("cancelled",))
        messages = await loop.get_messages_async(sid)
    finally:
        await loop.__aexit__(None, None, None)
    assert (ended.fire_count, ended.last_outcome, ended.due_at) == (0, "cancelled", row.due_at)
    assert messages == []


async def test_a_firing_after_years_of_downtime_is_counted_off_the_event_loop(
    shared_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting what a late firing stands for walks the calendar (up to 1000 occurrences, a
    good part of a second for a frequent schedule): the runner does it in a worker thread, so
    a burst of late series never stalls the event loop; the count stays bounded."""
    from power_loop.timers import runner as runner_module

    threads: list[int] = []
    count = runner_module.plan_firing

    def counted_in(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return count(*args, **kwargs)

    monkeypatch.setattr(runner_module, "plan_firing", counted_in)
    clock = Clock(at(PARIS, 2026, 12, 1, 8))
    loop, sid, row = await _calendar_loop(shared_db, clock, "*/15 * * * *", PARIS)
    try:
        runner = TimerRunner(loop, clock=clock)
        clock.ms = at(PARIS, 2031, 12, 1, 8, 5)  # five years later
        assert await runner.scan_once() == 1
        await runner.drain()
        [timer] = await loop.list_timers_async(sid)
        texts = timer_texts(await loop.get_messages_async(sid))
    finally:
        await loop.__aexit__(None, None, None)
    assert threads and threading.get_ident() not in threads
    missed = "(missed 1000+ occurrences since 2026-12-01T08:15+01:00)"
    assert texts == [wake_up_message(row.timer_id, "send the digest", missed)]
    assert timer.due_at == at(PARIS, 2031, 12, 1, 8, 15)  # back on the calendar


@pytest.mark.parametrize("misfire", ["once", "skip"])
async def test_an_occurrence_claimed_on_time_by_a_runner_that_died_is_not_missed(shared_db: str, misfire: str) -> None:
    """A runner claims an occurrence on time and dies before delivering it: the runner that
    takes the claim over after its lease (longer than the grace period) delivers it as on
    time, neither dropped (``skip``) nor reported missed (``once``), exactly once."""
    clock = Clock(at(PARIS, 2026, 12, 1, 8))
    loop, sid, row = await _calendar_loop(shared_db, clock, "0 9 * * *", PARIS, misfire=misfire)
    try:
        clock.ms = row.due_at + 1_000
        [dead] = await loop.store.claim_due_timers("dead", lease_ms=120_000, limit=10, now=clock.ms)
        assert dead.timer_id == row.timer_id
        runner = TimerRunner(loop, clock=clock, stale_firing_s=120, misfire_grace_s=60)
        clock.ms += 60_000
        assert await runner.scan_once() == 0  # the dead runner's lease still runs
        clock.ms += 61_000  # its lease ran out: taken over 121 s late
        assert await runner.scan_once() == 1
        await runner.drain()
        assert await runner.scan_once() == 0
        [timer] = await loop.list_timers_async(sid)
        texts = timer_texts(await loop.get_messages_async(sid))
    finally:
        await loop.__aexit__(None, None, None)
    assert texts == [wake_up_message(row.timer_id, "send the digest")]
    assert (timer.due_at, timer.fire_count, timer.last_outcome) == (at(PARIS, 2026, 12, 2, 9), 1, "delivered")


async def test_a_hook_postpones_one_occurrence_and_the_series_resumes_on_its_calendar(shared_db: str) -> None:
    clock = Clock(at(PARIS, 2026, 12, 1, 8))
    loop, sid, row = await _calendar_loop(shared_db, clock, "0 9 * * *", PARIS, count=3)
    seen: list[int] = []

    def hook(ctx: TimerFireCtx) -> None:
        seen.append(ctx.due_at)
        if len(seen) == 1:
            ctx.postpone_s = 1800  # Tuesday's 09:00 moves to 09:30, once

    loop.hooks.register(HookPoint.TIMER_FIRE, hook)
    try:
        runner = TimerRunner(loop, clock=clock)
        clock.ms = row.due_at + 1_000
        assert await runner.scan_once() == 1
        [postponed] = await loop.list_timers_async(sid)
        assert (postponed.due_at, postponed.last_outcome) == (clock.ms + 1800_000, "postponed")
        assert (postponed.fire_count, postponed.remaining) == (0, 3)  # a postponement is no firing
        clock.ms = postponed.due_at + 1_000
        assert await runner.scan_once() == 1
        await runner.drain()
        [resumed] = await loop.list_timers_async(sid)
        texts = timer_texts(await loop.get_messages_async(sid))
    finally:
        await loop.__aexit__(None, None, None)
    assert seen == [row.due_at, postponed.due_at]
    assert texts == [wake_up_message(row.timer_id, "send the digest")]  # on time: nothing missed
    assert (resumed.due_at, resumed.fire_count, resumed.remaining) == (at(PARIS, 2026, 12, 2, 9), 1, 2)


@pytest.mark.parametrize(
    ("tz", "cron", "due", "now", "words", "resumes"),
    [
        # The spring change in Paris: the 28th's 02:30 did not exist (03:00), counted once.
        (PARIS, "30 2 * * *", (2027, 3, 27, 2, 30), (2027, 3, 30, 10), "4 occurrences", (2027, 3, 31, 2, 30)),
        # Lord Howe moves 30 minutes: 02:00-02:30 does not exist on 2027-10-03.
        (
            "Australia/Lord_Howe",
            "15 2 * * *",
            (2027, 10, 1, 2, 15),
            (2027, 10, 4, 10),
            "4 occurrences",
            (2027, 10, 5, 2, 15),
        ),
        # The autumn change in New York: the repeated 01:30 counts once.
        (NEW_YORK, "30 1 * * *", (2027, 11, 6, 1, 30), (2027, 11, 8, 10), "3 occurrences", (2027, 11, 9, 1, 30)),
        ("Asia/Tokyo", "0 0 29 2 *", (2028, 2, 29, 0), (2036, 3, 1, 0), "3 occurrences", (2040, 2, 29, 0)),
    ],
)
def test_a_downtime_across_a_clock_change_counts_each_occurrence_once(
    tz: str, cron: str, due: tuple[int, ...], now: tuple[int, ...], words: str, resumes: tuple[int, ...]
) -> None:
    plan = plan_firing(cron, tz, "once", due_at=at(tz, *due), now=at(tz, *now), grace_ms=MINUTE)
    assert plan.describe(tz) == f"(missed {words} since {local(at(tz, *due), tz)})"
    assert next_occurrence(cron, tz, at(tz, *now)) == at(tz, *resumes)


async def test_after_a_downtime_past_until_only_the_series_occurrences_are_counted(shared_db: str) -> None:
    """A series ending at ``until_ms`` whose runners were down past it: the late firing
    stands for the occurrences due by ``until_ms`` only, and ends the series."""
    clock = Clock(at("UTC", 2027, 1, 4, 0))
    until = at("UTC", 2027, 1, 5, 12)
    loop, sid, row = await _calendar_loop(shared_db, clock, "0 12 * * *", "UTC", until_at=until)
    try:
        runner = TimerRunner(loop, clock=clock)
        clock.ms = at("UTC", 2027, 1, 10, 13)  # down from the 4th to the 10th
        assert await runner.scan_once() == 1
        await runner.drain()
        [ended] = await loop.store.list_timers(sid, statuses=("fired",))
        texts = timer_texts(await loop.get_messages_async(sid))
    finally:
        await loop.__aexit__(None, None, None)
    assert texts == [
        wake_up_message(row.timer_id, "send the digest", "(missed 2 occurrences since 2027-01-04T12:00+00:00)")
    ]
    assert (ended.fire_count, ended.last_outcome) == (1, "delivered")
    # With misfire="skip", an on-time occurrence past until_ms is no reason to deliver.
    on_time_past_until = at("UTC", 2027, 1, 10, 12) + 30_000
    plan = plan_firing(
        "0 12 * * *", "UTC", "skip", due_at=row.due_at, now=on_time_past_until, grace_ms=MINUTE, until=until
    )
    assert (plan.deliver, plan.missed) == (False, 2)


async def test_a_batch_delivery_leaves_a_series_cancelled_meanwhile_cancelled(store: SessionStoreProtocol) -> None:
    """Per backend (set-based on PostgreSQL): a claimed occurrence whose series is cancelled
    before its batch commits is neither delivered nor re-armed; the rest of the batch is."""
    await store.create_session("s")
    due = at(PARIS, 2027, 1, 4, 9)
    for note in ("kept", "cancelled"):
        await store.schedule_timer("s", due_at=due, note=note, cron="0 9 * * *", tz=PARIS)
    claimed = {t.note: t for t in await store.claim_due_timers("r", lease_ms=60_000, limit=10, now=due + 1_000)}
    assert await store.cancel_timer("s", claimed["cancelled"].timer_id)
    outcomes = await store.deliver_timers(
        "r", [Delivery(t, "deliver", t.note, covered_until=due + 1_000) for t in claimed.values()], now=due + 1_000
    )
    assert sorted(str(o) for o, _ in outcomes) == ["None", "delivered"]
    [kept] = await store.list_timers("s")
    assert (kept.note, kept.due_at, kept.fire_count) == ("kept", at(PARIS, 2027, 1, 5, 9), 1)
    [cancelled] = await store.list_timers("s", statuses=("cancelled",))
    assert (cancelled.fire_count, cancelled.due_at, cancelled.last_outcome) == (0, due, "cancelled")
    assert await store.inbox_depth("s") == 1


async def test_an_infinite_grace_counts_no_occurrence_as_missed(shared_db: str) -> None:
    clock = Clock(at(PARIS, 2026, 12, 1, 8))
    loop, sid, row = await _calendar_loop(shared_db, clock, "0 9 * * *", PARIS, misfire="skip")
    try:
        runner = TimerRunner(loop, clock=clock, misfire_grace_s=math.inf)
        clock.ms = at(PARIS, 2026, 12, 5, 10)
        assert await runner.scan_once() == 1
        await runner.drain()
        [timer] = await loop.list_timers_async(sid)
        texts = timer_texts(await loop.get_messages_async(sid))
    finally:
        await loop.__aexit__(None, None, None)
    assert texts == [wake_up_message(row.timer_id, "send the digest")]
    assert (timer.due_at, timer.last_outcome) == (at(PARIS, 2026, 12, 6, 9), "delivered")


async def test_a_011_file_migrates_and_takes_calendar_timers(tmp_path: Any) -> None:
    """The file written by power-loop 0.11 is migrated in place to the latest schema: its
    armed timer is kept as it was (no calendar), and a calendar timer can be added beside it."""
    fixtures = Path(__file__).parent / "fixtures"
    db = os.path.join(tmp_path, "old.db")
    shutil.copyfile(fixtures / "power_loop_011.db", db)
    info = json.loads((fixtures / "power_loop_011.json").read_text())
    sid = info["chat"]
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db) as loop:
        kept = await loop.list_timers_async(sid)
        assert kept and all((t.cron, t.tz, t.misfire) == (None, None, None) for t in kept)
        row = await loop.schedule_timer_async(sid, cron="0 9 * * MON-FRI", tz=PARIS, note="digest")
        listed = {t.timer_id: t for t in await loop.list_timers_async(sid)}
    assert (listed[row.timer_id].cron, listed[row.timer_id].tz) == ("0 9 * * MON-FRI", PARIS)
    assert row.timer_id > max(t.timer_id for t in kept)
    raw = RawDatabase(db)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    raw.close()
