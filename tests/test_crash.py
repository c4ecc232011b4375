"""Crash safety: SIGKILL a busy process at random moments, then check and continue the store
(an SQLite file, a PostgreSQL schema)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from power_loop import StatefulAgentLoop
from power_loop.messages import AssistantMessage, ToolResultMessage, message_from_dict
from power_loop.testing import ScriptedLLM, text_reply

from .helpers import RawDatabase, is_valid_history

WORKER = Path(__file__).with_name("proc_worker.py")
ITERATIONS = int(os.environ.get("POWER_LOOP_CRASH_ITERATIONS", "50"))


def start_worker(db: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent)}
    return subprocess.Popen([sys.executable, str(WORKER), "crash", db], stdout=subprocess.PIPE, text=True, env=env)


def check_file(db: str) -> dict[str, int]:
    """Integrity and the invariants of a torn-free store; returns pending calls per session."""
    conn = RawDatabase(db)
    try:
        if not conn.postgres:  # PostgreSQL enforces its foreign keys on every statement
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        pending: dict[str, int] = {}
        for (sid,) in conn.execute("SELECT session_id FROM sessions").fetchall():
            rows = conn.execute(
                "SELECT seq, body FROM messages WHERE session = (SELECT id FROM sessions WHERE session_id = ?) "
                "ORDER BY seq",
                (sid,),
            ).fetchall()
            seqs = [r[0] for r in rows]
            assert seqs == list(range(1, len(seqs) + 1)), f"{sid}: seqs have gaps {seqs[:20]}"
            messages = [message_from_dict(json.loads(r[1])) for r in rows]
            open_calls = conn.execute(
                "SELECT tool_call_id, assistant_seq FROM tool_calls "
                "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) AND result_seq IS NULL",
                (sid,),
            ).fetchall()
            # Every call has exactly one result, except the open calls of the last assistant message.
            tail = len(messages)
            if open_calls:
                assistant_seq = open_calls[0][1]
                assert {seq for _, seq in open_calls} == {assistant_seq}
                last = messages[assistant_seq - 1]
                assert isinstance(last, AssistantMessage)
                answered = messages[assistant_seq:]
                assert all(isinstance(m, ToolResultMessage) for m in answered)
                assert {c.id for c in last.tool_calls} == {cid for cid, _ in open_calls} | {
                    m.tool_call_id for m in answered if isinstance(m, ToolResultMessage)
                }
                tail = assistant_seq - 1
            assert is_valid_history(messages[:tail]), f"{sid}: history invalid"
            # A model turn and its usage row commit together: no round is half written.
            assistants = sum(1 for m in messages if isinstance(m, AssistantMessage))
            calls = conn.execute(
                "SELECT COUNT(*) FROM llm_calls WHERE session = (SELECT id FROM sessions WHERE session_id = ?) "
                "AND purpose != 'compaction'",
                (sid,),
            ).fetchone()[0]
            assert assistants == calls, f"{sid}: {assistants} assistant messages but {calls} usage rows"
            results = conn.execute(
                "SELECT t.tool_call_id, m.body FROM tool_calls t JOIN messages m "
                "ON m.session = t.session AND m.seq = t.result_seq "
                "WHERE t.session = (SELECT id FROM sessions WHERE session_id = ?)",
                (sid,),
            ).fetchall()
            for call_id, body in results:
                assert json.loads(body)["tool_call_id"] == call_id
            pending[sid] = len(open_calls)
        return pending
    finally:
        conn.close()


def test_sigkill_at_random_moments_never_tears_a_round(shared_db: str) -> None:
    db = shared_db
    rng = random.Random(1234)
    kills = 0
    killed_mid_tool = 0
    iterations = ITERATIONS if not db.startswith("postgresql://") else max(1, ITERATIONS * 2 // 5)
    for _ in range(iterations):
        proc = start_worker(db)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line.strip() == "ready", line
            time.sleep(rng.uniform(0.02, 0.4))
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
            if proc.stdout is not None:
                proc.stdout.close()
        kills += 1
        killed_mid_tool += any(check_file(db).values())
    assert kills == iterations
    assert killed_mid_tool > 0  # some kills landed while tools were running

    # Every session can go on: resume, abort or heal, then a normal send.
    import asyncio

    async def continue_all() -> None:
        llm = ScriptedLLM(rule=lambda r: text_reply("recovered"))
        async with StatefulAgentLoop(llm=llm, db_path=db) as loop:
            for index, sid in enumerate(sorted(check_file(db))):
                if await loop.get_pending_async(sid):
                    if index % 3 == 0:
                        await loop.resume(sid)
                    elif index % 3 == 1:
                        await loop.abort_pending_async(sid, reason="after crash")
                    else:
                        await loop.send("heal and go on", session_id=sid, heal_pending=True)
                result = await loop.send("are you there?", session_id=sid)
                assert result.final_text == "recovered"
                assert is_valid_history([message_from_dict(m) for m in await loop.get_messages_async(sid)])

    asyncio.run(continue_all())
    assert all(count == 0 for count in check_file(db).values())
