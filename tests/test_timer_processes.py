"""Timer workers as real processes: SIGKILL mid-delivery, two workers on one store (an SQLite
file, a PostgreSQL schema), the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from power_loop import ConfigurationError, OfflineLLM, StatefulAgentLoop, TimerRunner, wake_up_message
from power_loop.timers.worker import load_app

TESTS = Path(__file__).parent


def start_worker(tmp_path: Path, db: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent)]), "TIMER_DB": db}
    environ.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "power_loop", "worker", "timer_app:make_loop", "--scan-interval", "0.1", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=tmp_path,
    )


def stopped_log(worker: subprocess.Popen[str]) -> str:
    """The stderr of a worker sent SIGTERM, once it exits. One still running a minute later is
    a hang: its threads' stacks (``kill -USR1``) go into the failure, then it is killed."""
    try:
        return worker.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:
        worker.send_signal(signal.SIGUSR1)
        time.sleep(2)
        worker.kill()
        stderr = worker.communicate()[1]
        raise AssertionError(f"a worker did not stop within 60 s of SIGTERM; its stacks:\n{stderr}") from None


async def wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"worker exited early:\n{proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("worker never reached the marker")
        await asyncio.sleep(0.02)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)


async def timer_state(loop: StatefulAgentLoop) -> list[tuple[Any, ...]]:
    return await loop.store.execute_fetchall("SELECT timer_id, status, last_outcome, fire_count FROM timers")


def timer_texts(messages: list[dict[str, Any]]) -> list[str]:
    return [m["content"] for m in messages if m["role"] == "user" and str(m["content"]).startswith("<timer id=")]


async def test_a_worker_killed_before_its_commit_loses_nothing(tmp_path: Path, shared_db: str) -> None:
    db = shared_db
    marker = tmp_path / "claimed"
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db) as loop:
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="survive the crash")
        proc = start_worker(tmp_path, db, "--stale-firing", "1", env={"TIMER_BLOCK_BEFORE_COMMIT": str(marker)})
        await wait_for(marker, proc)  # claimed, hook running, nothing committed yet
        kill(proc)
        assert await timer_state(loop) == [(1, "claimed", None, 0)]
        assert await loop.get_messages_async(sid) == []
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 0  # the dead worker's lease is still running
        deadline = time.monotonic() + 10
        while await runner.scan_once() == 0:  # taken over once the 1 s lease has expired
            assert time.monotonic() < deadline, "the dead worker's claim was never taken over"
            await asyncio.sleep(0.1)
        await runner.drain()
        messages = await loop.get_messages_async(sid)
        assert await timer_state(loop) == [(1, "fired", "delivered", 1)]
    assert timer_texts(messages) == [wake_up_message(1, "survive the crash")]
    assert messages[-1]["role"] == "assistant"


async def test_a_worker_killed_holding_a_calendar_occurrence_leaves_it_on_time(tmp_path: Path, shared_db: str) -> None:
    """A worker claims a calendar occurrence on time and is killed before its commit; the
    runner taking the claim over much later (its clock two hours on, past the lease) delivers
    that occurrence as on time: not dropped by ``misfire="skip"``, not reported missed."""
    from power_loop.store._timer_calendar import next_occurrence

    db = shared_db
    marker = tmp_path / "claimed"
    cron, tz = "0 0 29 2 *", "Europe/Paris"  # no other occurrence within the test's two hours
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db) as loop:
        sid = await loop.new_session_async()
        due = int(time.time() * 1000)
        await loop.store.schedule_timer(sid, due_at=due, note="leap day", cron=cron, tz=tz, misfire="skip")
        proc = start_worker(tmp_path, db, "--stale-firing", "1", env={"TIMER_BLOCK_BEFORE_COMMIT": str(marker)})
        await wait_for(marker, proc)  # claimed on time, hook running, nothing committed yet
        kill(proc)
        assert await timer_state(loop) == [(1, "claimed", None, 0)]
        runner = TimerRunner(loop, misfire_grace_s=600, clock=lambda: time.time() + 7200)
        assert await runner.scan_once() == 1
        await runner.drain()
        [timer] = await loop.list_timers_async(sid)
        messages = await loop.get_messages_async(sid)
    assert timer_texts(messages) == [wake_up_message(1, "leap day")]
    assert (timer.fire_count, timer.last_outcome) == (1, "delivered")
    assert timer.due_at == next_occurrence(cron, tz, due)


async def test_a_worker_killed_after_its_commit_delivers_nothing_twice(tmp_path: Path, shared_db: str) -> None:
    db = shared_db
    marker = tmp_path / "committed"
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db) as loop:
        sid = await loop.new_session_async()
        await loop.schedule_timer_async(sid, delay_s=0, note="exactly once")
        proc = start_worker(tmp_path, db, "--stale-firing", "1", env={"TIMER_BLOCK_AFTER_COMMIT": str(marker)})
        await wait_for(marker, proc)  # delivered into the inbox; the session never ran
        kill(proc)
        assert await timer_state(loop) == [(1, "fired", "delivered", 1)]
        assert await loop.store.inbox_depth(sid) == 1
        await asyncio.sleep(1.2)  # past the dead worker's lease: nothing of it is retaken
        runner = TimerRunner(loop)
        assert await runner.scan_once() == 0  # no timer left to deliver...
        await runner.drain()  # ...but the orphaned inbox was run
        messages = await loop.get_messages_async(sid)
        assert await loop.store.inbox_depth(sid) == 0
        assert await runner.scan_once() == 0
        await runner.drain()
        assert await loop.get_messages_async(sid) == messages
    assert timer_texts(messages) == [wake_up_message(1, "exactly once")]
    assert [m["role"] for m in messages] == ["user", "assistant"]


async def test_two_worker_processes_deliver_a_thousand_timers_exactly_once(tmp_path: Path, shared_db: str) -> None:
    db = shared_db
    sessions, per_session = 100, 10
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db) as loop:
        sids = [await loop.new_session_async(session_id=f"s{i:03d}") for i in range(sessions)]
        due = int(time.time() * 1000) + 1500  # both workers are up before the first is due
        for sid in sids:
            for k in range(per_session):
                await loop.schedule_timer_async(sid, due_at_ms=due + k * 20, note=f"{sid} #{k + 1}")
        workers = [start_worker(tmp_path, db, "--concurrency", "8") for _ in range(2)]
        try:
            deadline = time.monotonic() + 120
            while True:
                (left,) = (
                    await loop.store.execute_fetchall(
                        "SELECT (SELECT COUNT(*) FROM timers WHERE status != 'fired') "
                        "+ (SELECT COUNT(*) FROM inbox WHERE consumed_at IS NULL)"
                    )
                )[0]
                if left == 0:
                    break
                assert time.monotonic() < deadline, f"{left} timers or inbox items still waiting"
                assert all(w.poll() is None for w in workers), "a worker died"
                await asyncio.sleep(0.2)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            logs = [stopped_log(w) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], logs
        processed = [int(re.search(r"\((\d+) timers processed\)", log).group(1)) for log in logs]  # type: ignore[union-attr]
        assert sum(processed) == sessions * per_session, processed
        print("timers processed per worker:", processed)
        refs = await loop.store.execute_fetchall("SELECT session, ref FROM inbox WHERE source = 'timer'")
        assert len(refs) == sessions * per_session and len(set(refs)) == len(refs)
        for sid in sids:
            texts = timer_texts(await loop.get_messages_async(sid))
            ids = Counter(int(re.match(r"<timer id=(\d+)>", t).group(1)) for t in texts)  # type: ignore[union-attr]
            assert ids == Counter(range(1, per_session + 1)), (sid, ids)
        states = await timer_state(loop)
        assert len(states) == sessions * per_session
        assert all(s[1] == "fired" and s[2] in ("delivered", "queued") and s[3] == 1 for s in states)


async def test_two_worker_processes_fire_each_calendar_occurrence_exactly_once(tmp_path: Path, shared_db: str) -> None:
    """Calendar timers whose occurrence came due during a downtime (their first due time is in
    the past): each fires exactly once across two workers, and its next occurrence is armed in
    the same transaction, never twice."""
    from power_loop.store._timer_calendar import next_occurrence

    db = shared_db
    sessions, per_session = 40, 5
    now = int(time.time() * 1000)
    cron, tz = "0 9 * * *", "Europe/Paris"
    first = next_occurrence(cron, tz, now - 2 * 86_400_000)  # missed twice by now
    following = next_occurrence(cron, tz, now)
    assert first is not None and following is not None
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db) as loop:
        sids = [await loop.new_session_async(session_id=f"c{i:03d}") for i in range(sessions)]
        for sid in sids:
            for k in range(per_session):
                await loop.store.schedule_timer(sid, due_at=first, note=f"{sid} #{k + 1}", cron=cron, tz=tz)
        workers = [start_worker(tmp_path, db, "--concurrency", "8") for _ in range(2)]
        try:
            deadline = time.monotonic() + 120
            while True:
                (left,) = (
                    await loop.store.execute_fetchall(
                        "SELECT (SELECT COUNT(*) FROM timers WHERE fire_count = 0 OR status = 'claimed') "
                        "+ (SELECT COUNT(*) FROM inbox WHERE consumed_at IS NULL)"
                    )
                )[0]
                if left == 0:
                    break
                assert time.monotonic() < deadline, f"{left} timers or inbox items still waiting"
                assert all(w.poll() is None for w in workers), "a worker died"
                await asyncio.sleep(0.2)
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            logs = [stopped_log(w) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], logs
        processed = [int(re.search(r"\((\d+) timers processed\)", log).group(1)) for log in logs]  # type: ignore[union-attr]
        assert sum(processed) == sessions * per_session, processed
        refs = await loop.store.execute_fetchall("SELECT session, ref FROM inbox WHERE source = 'timer'")
        assert len(refs) == sessions * per_session and len(set(refs)) == len(refs)
        for sid in sids:
            rows = await loop.list_timers_async(sid)
            assert {(t.status, t.fire_count, t.due_at, t.cron) for t in rows} == {("armed", 1, following, cron)}
            texts = timer_texts(await loop.get_messages_async(sid))
            assert Counter(int(re.match(r"<timer id=(\d+)>", t).group(1)) for t in texts) == Counter(  # type: ignore[union-attr]
                range(1, per_session + 1)
            )
            assert all("(missed " in t for t in texts)


def test_worker_cli_rejects_a_bad_app(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("def make():\n    raise RuntimeError('no database configured')\n")
    cases = (  # exit 2: a usage error; 1: an APP that cannot be loaded
        (["no_colon"], "must look like 'module:attribute'", 2),
        (["missing_mod:x"], "could not import", 1),
        (["broken_app:make"], "raised RuntimeError: no database configured", 1),
        (["broken_app:make", "--log-level", "chatty"], "unknown level 'chatty'", 2),
    )
    for args, message, code in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "power_loop", "worker", *args],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS.parent)])},
            timeout=60,
        )
        assert proc.returncode == code and message in proc.stderr, proc.stderr


async def test_load_app_accepts_a_loop_or_a_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "apps_mod.py").write_text(
        "from power_loop import OfflineLLM, StatefulAgentLoop\n"
        "loop = StatefulAgentLoop(llm=OfflineLLM(), db_path='a.db')\n"
        "async def factory():\n    return loop\n"
        "class Holder:\n    inner = loop\n"
        "not_a_loop = 42\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    loop = await load_app("apps_mod:loop")
    assert await load_app("apps_mod:factory") is loop
    assert await load_app("apps_mod:Holder.inner") is loop
    with pytest.raises(ConfigurationError, match="int, not a StatefulAgentLoop"):
        await load_app("apps_mod:not_a_loop")
    with pytest.raises(ConfigurationError, match="has no attribute"):
        await load_app("apps_mod:missing")


def test_a_worker_prints_its_stacks_on_sigusr1_and_goes_on(tmp_path: Path) -> None:
    db = str(tmp_path / "w.db")
    worker = start_worker(tmp_path, db)
    assert worker.stderr is not None
    line = worker.stderr.readline()  # logged once the worker delivers
    assert "delivering timers" in line, line
    worker.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    assert worker.poll() is None  # still running
    worker.send_signal(signal.SIGTERM)
    stderr = stopped_log(worker)
    assert worker.returncode == 0
    assert "most recent call first" in stderr and "stopping" in stderr
