"""Two OS processes, one session, one SQLite file: runs serialize, histories never interleave.

The parent creates a session, then starts this file twice more as workers (``worker A`` and
``worker B``). Both workers open their own loop on the same file and send to the same
session at the same moment. A session lease (owner, fencing number, expiry) lets one run at a
time write to the session; the other send waits for it (up to
``AgentLoopConfig.session_wait_s``). The parent then reads the file: every answer directly
follows its own question, and no two runs overlap in time.

Runs offline with the built-in model: ``python examples/10_cross_process.py``. The temporary
directory is removed at the end.
"""

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from power_loop import AgentLoopConfig, OfflineLLM, StatefulAgentLoop

SESSION = "shared-session"
SENDS = 5  # per worker


async def worker(db: str, label: str) -> None:
    """One process: open the file, wait for the start signal, send SENDS messages."""
    llm = OfflineLLM(delay_s=0.05)  # each model call takes a moment, so the workers collide
    config = AgentLoopConfig(session_wait_s=20)
    async with StatefulAgentLoop(llm=llm, db_path=db, config=config) as loop:
        print("ready", flush=True)
        sys.stdin.readline()  # both workers start together
        for i in range(SENDS):
            started = time.monotonic()
            result = await loop.send(f"message {i} from {label}", session_id=SESSION)
            took = time.monotonic() - started
            print(f"{label}{i} {result.status} in {took:.2f}s (pid {os.getpid()})", flush=True)
            await asyncio.sleep(0.1)  # a user reading the answer: the other process gets a turn


def start(db: str, label: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "worker", db, label],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


async def summary(db: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db) as loop:
        messages = await loop.get_messages_async(SESSION)
        questions = [str(m["content"]) for m in messages[0::2]]
        paired = all(
            question["role"] == "user" and answer == {"role": "assistant", "content": f"(offline model) You said: {q}"}
            for question, answer, q in zip(messages[0::2], messages[1::2], questions, strict=True)
        )
        order = " ".join(q.split()[-1] + q.split()[1] for q in questions)
        print(f"history: {len(messages)} messages, run order: {order}")
        print(f"every answer directly follows its own question: {paired}")
        assert paired
        for label in "AB":
            mine = [q for q in questions if q.endswith(label)]
            assert mine == [f"message {i} from {label}" for i in range(SENDS)]

        runs = await loop.store.execute_fetchall(
            "SELECT status, started_at, ended_at FROM runs "
            "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY started_at, ended_at",
            (SESSION,),
        )
        assert len(runs) == 2 * SENDS and all(status == "completed" for status, _, _ in runs)
        overlaps = sum(1 for prev, nxt in zip(runs, runs[1:], strict=False) if nxt[1] < prev[2])
        assert overlaps == 0
        print(f"runs: {len(runs)} completed, {overlaps} overlapping in time")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "shared.db")
        setup = StatefulAgentLoop(llm=OfflineLLM(), db_path=db)
        setup.new_session(session_id=SESSION)
        setup.close()

        workers = {label: start(db, label) for label in "AB"}
        try:
            for proc in workers.values():
                assert proc.stdin is not None and proc.stdout is not None
                assert proc.stdout.readline().strip() == "ready"
            for proc in workers.values():  # go!
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for label, proc in workers.items():
                out, _ = proc.communicate(timeout=30)
                assert proc.returncode == 0, f"worker {label} failed"
                for line in out.splitlines():
                    print(f"  worker {label}: {line}")
        finally:
            for proc in workers.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        asyncio.run(summary(db))


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(worker(sys.argv[2], sys.argv[3]))
    else:
        main()
