"""A killed holder's sessions are taken over at once on the same machine, not after lease_ttl_s.

The worker (``tests/lease_worker.py``) holds its sessions with a 60 s lease; the continuing
loop waits at most 10 s for a session. Continuing can only succeed because the holder is
found dead (pid gone, or a zombie not yet reaped), never because the lease expired.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from power_loop import AgentLoopConfig, SessionBusyError, SQLiteSessionStore, StatefulAgentLoop, ToolRegistry, tool
from power_loop.messages import UserMessage, message_from_dict
from power_loop.store._holder import current_holder, holder_is_dead
from power_loop.store.rows import BeginRun, LeaseClaim
from power_loop.store.schema import MIGRATIONS, schema_version
from power_loop.testing import ScriptedLLM, text_reply

from .helpers import is_valid_history

WORKER = Path(__file__).with_name("lease_worker.py")
SIDS = ("takeover-a", "takeover-b")
KILLS = 10

linux_only = pytest.mark.skipif(current_holder().host is None, reason="needs /proc (Linux) to prove a holder dead")


@tool
async def hold() -> str:
    """The continuing process's ``hold``: returns at once."""
    return "held briefly"


def _start_worker(db: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), db, *SIDS], stdout=subprocess.PIPE, text=True, env=env, start_new_session=True
    )


def _live_leases(db: str) -> dict[str, tuple[str, int]]:
    """Sessions whose lease is unexpired: session -> (owner, fence)."""
    now_ms = int(time.time() * 1000)
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute(
            "SELECT session_id, lease_owner, fence FROM sessions "
            "WHERE lease_owner IS NOT NULL AND lease_expires_at > ?",
            (now_ms,),
        ).fetchall()
    return {sid: (owner, fence) for sid, owner, fence in rows}


async def _continue(db: str, iteration: int) -> None:
    registry = ToolRegistry()
    registry.register(hold)
    config = AgentLoopConfig(session_wait_s=10.0, lease_ttl_s=60.0)
    llm = ScriptedLLM(rule=lambda r: text_reply(f"continued {iteration}"))
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry, config=config) as loop:

        async def one(index: int, sid: str) -> None:
            if (index + iteration) % 2:
                result = await loop.resume(sid)  # runs the interrupted hold call again
            else:
                result = await loop.send("go on", session_id=sid, heal_pending=True)
            assert result.status == "completed", result
            assert result.final_text == f"continued {iteration}"
            history = [message_from_dict(m) for m in await loop.get_messages_async(sid)]
            assert is_valid_history(history)

        await asyncio.gather(*(one(i, sid) for i, sid in enumerate(SIDS)))


@linux_only
def test_sessions_of_a_killed_process_are_taken_over_at_once(tmp_path: Path) -> None:
    db = str(tmp_path / "takeover.db")
    store = SQLiteSessionStore(db)
    for sid in SIDS:
        store.create_session_sync(sid)
    for iteration in range(KILLS):
        proc = _start_worker(db)
        try:
            assert proc.stdout is not None
            holding = {proc.stdout.readline().split()[-1] for _ in SIDS}
            assert holding == set(SIDS)
            proc.send_signal(signal.SIGKILL)
            if iteration % 2:
                proc.wait(timeout=30)  # odd kills: the holder's pid is gone
            # even kills: the pid may still be an unreaped zombie while the sessions are taken over
            held = _live_leases(db)
            assert set(held) == set(SIDS)  # both leases unexpired: only a dead-holder check frees them
            asyncio.run(_continue(db, iteration))
        finally:
            proc.kill()
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        with closing(sqlite3.connect(db)) as conn:
            for sid, (_, fence) in held.items():
                new_fence = conn.execute("SELECT fence FROM sessions WHERE session_id = ?", (sid,)).fetchone()[0]
                assert new_fence == fence + 1  # the takeover bumped the fence
            interrupted = conn.execute(
                f"SELECT COUNT(*) FROM runs WHERE status = 'interrupted' AND run_id IN ({','.join('?' * len(held))})",
                [owner.rsplit("/", 1)[-1] for owner, _ in held.values()],
            ).fetchone()[0]
            assert interrupted == len(SIDS)  # the dead runs are recorded as interrupted
    assert _live_leases(db) == {}


# --------------------------------------------------------------------------- holder identity


@linux_only
def test_a_holder_is_dead_only_when_proven() -> None:
    me = current_holder()
    assert me.start is not None
    assert not holder_is_dead(me.host, me.pid, me.start)  # this process
    assert holder_is_dead(me.host, me.pid, me.start + 1)  # this pid, another start: reused
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        start = int(Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        assert not holder_is_dead(me.host, child.pid, start)
        assert holder_is_dead(me.host, child.pid, start - 1)
        assert not holder_is_dead("another-host/boot/pid:[1]", child.pid, start - 1)  # never across hosts
        assert not holder_is_dead(None, child.pid, start - 1)  # a holder without identity: expiry only
        child.kill()
        child.wait(timeout=30)
        assert holder_is_dead(me.host, child.pid, start)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)


async def _begin(store: SQLiteSessionStore, sid: str, owner: str) -> str:
    outcome = await store.begin_run(
        BeginRun(
            session_id=sid, run_id=f"run-{owner}", lease=LeaseClaim(owner, 60_000), messages=(UserMessage(content="x"),)
        )
    )
    return outcome.status


@linux_only
async def test_a_dead_holder_on_another_host_keeps_its_lease_until_it_expires(db_path: str) -> None:
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("s")
        assert await _begin(store, "s", "first") == "ok"
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait(timeout=30)
        # Same holder row, but recorded by a process on another machine with the dead pid.
        await store._call(
            lambda c: c.execute(
                "UPDATE sessions SET holder_host = 'elsewhere/boot/pid:[1]', holder_pid = ?", (dead.pid,)
            )
        )
        assert await _begin(store, "s", "second") == "busy"
        await store._call(lambda c: c.execute("UPDATE sessions SET holder_host = ?", (current_holder().host,)))
        assert await _begin(store, "s", "second") == "ok"
        with pytest.raises(SessionBusyError):  # the live holder (this process) is respected
            await store.abort_pending("s", "x")


def test_a_version_3_file_migrates_and_keeps_its_leases(db_path: str) -> None:
    with closing(sqlite3.connect(db_path, isolation_level=None)) as raw:
        for migration in MIGRATIONS[:3]:
            migration(raw)
        raw.execute("PRAGMA user_version = 3")
        raw.execute("INSERT INTO sessions (session_id, created_at, updated_at) VALUES ('old', 0, 0)")
        far = int(time.time() * 1000) + 60_000
        raw.execute(
            "INSERT INTO session_leases (session_id, owner, fence, expires_at) VALUES ('old', 'pid1-x/run', 7, ?)",
            (far,),
        )

    async def check() -> None:
        async with SQLiteSessionStore(db_path) as store:
            rows = await store.execute_fetchall(
                "SELECT lease_owner, fence, holder_host, holder_pid, holder_start FROM sessions"
            )
            assert rows == [("pid1-x/run", 7, None, None, None)]
            assert await _begin(store, "old", "new") == "busy"  # no identity recorded: it expires as before

    asyncio.run(check())
    with closing(sqlite3.connect(db_path)) as raw:
        assert schema_version(raw) == len(MIGRATIONS)
