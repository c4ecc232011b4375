"""Two processes on one store (an SQLite file, a PostgreSQL schema): serialized runs, no
interleaving, fenced stale writers, dead holders taken over."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from power_loop import open_store

from .helpers import history_is_valid

WORKER = Path(__file__).with_name("proc_worker.py")


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker hung:\n{err}") from None
    assert proc.returncode == 0, err
    return out


async def create_session(db: str, sid: str) -> None:
    store = open_store(db)
    try:
        await store.create_session(sid)
    finally:
        await store.close()


async def history(db: str, sid: str) -> list[dict[str, object]]:
    store = open_store(db)
    try:
        from power_loop import message_to_dict

        return [message_to_dict(m.message) for m in await store.load_messages(sid)]
    finally:
        await store.close()


def test_two_processes_sending_to_one_session_never_interleave(shared_db: str) -> None:
    db = shared_db
    asyncio.run(create_session(db, "shared"))
    count = 12
    procs = [spawn("sender", db, "shared", label, str(count)) for label in ("A", "B")]
    for proc in procs:
        assert finish(proc).strip() == "done"
    messages = asyncio.run(history(db, "shared"))
    assert len(messages) == 4 * count
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert sorted(users) == sorted([f"A{i}" for i in range(count)] + [f"B{i}" for i in range(count)])
    for i in range(0, len(messages), 2):  # every answer follows its own question: no interleaved round
        assert messages[i]["role"] == "user"
        assert messages[i + 1] == {"role": "assistant", "content": f"re: {messages[i]['content']}"}
    # Each process's own messages kept their order.
    for label in ("A", "B"):
        mine = [u for u in users if str(u).startswith(label)]
        assert mine == [f"{label}{i}" for i in range(count)]
    assert history_is_valid(messages)


def test_a_fenced_out_writer_is_refused(tmp_path: Path, shared_db: str) -> None:
    db = shared_db
    marker = tmp_path / "entered"
    asyncio.run(create_session(db, "fenced"))
    first = spawn("fenced", db, "fenced", str(marker))
    try:
        deadline = time.monotonic() + 30
        while not marker.exists():
            assert time.monotonic() < deadline, "the first process never reached its tool"
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            time.sleep(0.02)
        first.send_signal(signal.SIGSTOP)  # paused mid-tool: it cannot renew its lease
        time.sleep(2.0)  # > lease_ttl_s of 1 s
        second = spawn("takeover", db, "fenced")
        assert finish(second).strip() == "took over"
    finally:
        first.send_signal(signal.SIGCONT)
    assert finish(first).strip() == "LeaseLostError"
    messages = asyncio.run(history(db, "fenced"))
    contents = [m.get("content") for m in messages]
    # The stale writer's tool result never landed; the second process's run is intact.
    assert "side effect done" not in contents
    assert contents[-2:] == ["second process", "took over"]
    assert history_is_valid(messages)


@pytest.mark.parametrize("ttl", [1.0])
def test_a_killed_process_frees_its_sessions_within_seconds(tmp_path: Path, ttl: float, shared_db: str) -> None:
    db = shared_db
    marker = tmp_path / "entered"
    asyncio.run(create_session(db, "orphan"))
    first = spawn("fenced", db, "orphan", str(marker))
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    # No waiting allowed (session_wait_s=0): the dead holder's lease is taken over at once,
    # proved without a clock; a lease still held would end in SessionBusyError.
    second = spawn("takeover", db, "orphan", "0")
    assert finish(second).strip() == "took over"


def test_the_run_of_a_killed_process_is_recorded_as_interrupted(tmp_path: Path, shared_db: str) -> None:
    db = shared_db
    marker = tmp_path / "entered"
    asyncio.run(create_session(db, "audited"))
    first = spawn("fenced", db, "audited", str(marker))
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert finish(spawn("takeover", db, "audited")).strip() == "took over"

    async def statuses() -> list[str]:
        store = open_store(db)
        try:
            rows = await store.execute_fetchall(  # type: ignore[attr-defined]
                "SELECT status FROM runs "
                "WHERE session = (SELECT id FROM sessions WHERE session_id = 'audited') ORDER BY started_at"
            )
            return [r[0] for r in rows]
        finally:
            await store.close()

    assert asyncio.run(statuses()) == ["interrupted", "completed"]
