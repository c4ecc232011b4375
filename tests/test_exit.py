"""Programs that never close their loop, raise with one open, or close it from async code exit
at once, with what they committed on disk (real interpreters in subprocesses)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HANG_GUARD_S = 120  # only a guard against a hang; a healthy program exits in about a second


def run_program(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(body))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


def stored_user_texts(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT body FROM messages ORDER BY session, seq").fetchall()
    return [body for (body,) in rows if '"role":"user"' in body.replace(" ", "")]


QUICK_EXAMPLE = """
    import asyncio
    from power_loop import AgentLoopConfig, StatefulAgentLoop, create_llm_service_from_env

    async def main():
        llm = create_llm_service_from_env(offline_fallback=True)
        loop = StatefulAgentLoop(llm=llm, db_path="./power_loop_sessions.db",
                                 config=AgentLoopConfig(system_prompt="You are a concise assistant.", max_rounds=4))
        sid = loop.new_session(metadata={"user_id": "demo"})
        first = await loop.send("My favorite color is teal.", session_id=sid)
        second = await loop.send("What is my favorite color?", session_id=sid)
        print(second.final_text)
        {ending}

    asyncio.run(main())
"""


@pytest.mark.parametrize(
    ("ending", "returncode"),
    [
        ("", 0),  # the 0.11 README program: the loop is never closed
        ("loop.close()", 0),  # the 0.11 pattern: a sync close inside async code
        ("raise RuntimeError('boom')", 1),  # a program that fails with its loop open
    ],
    ids=["never-closed", "sync-close-in-async", "raises"],
)
def test_a_program_exits_at_once_with_its_data_committed(tmp_path: Path, ending: str, returncode: int) -> None:
    done = run_program(tmp_path, QUICK_EXAMPLE.replace("{ending}", ending))
    assert done.returncode == returncode, done.stderr
    assert "teal" in done.stdout
    assert "Event loop is closed" not in done.stderr
    assert "Exception in thread" not in done.stderr
    texts = stored_user_texts(tmp_path / "power_loop_sessions.db")
    assert len(texts) == 2 and "teal" in texts[0]


def test_send_sync_without_close_exits(tmp_path: Path) -> None:
    done = run_program(
        tmp_path,
        """
        from power_loop import OfflineLLM, StatefulAgentLoop

        loop = StatefulAgentLoop(llm=OfflineLLM(), db_path="s.db")
        sid = loop.new_session()
        print(loop.send_sync("hello", session_id=sid).status)
        print(loop.send_sync("again", session_id=sid).status)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["completed", "completed"]
    assert done.stderr == ""


def test_a_run_in_flight_at_exit_is_cancelled_and_the_session_continues(tmp_path: Path) -> None:
    # main() returns while a send is stuck in a tool: asyncio.run cancels the task, the run
    # records what it knows (the call stays unanswered, as after a crash) and the process exits.
    done = run_program(
        tmp_path,
        """
        import asyncio
        from power_loop import StatefulAgentLoop, ToolRegistry
        from power_loop.testing import ScriptedLLM, text_reply, tool_reply

        async def wait_forever() -> str:
            \"\"\"Wait.\"\"\"
            await asyncio.Event().wait()
            return "never"

        async def main():
            tools = ToolRegistry()
            tools.register(wait_forever)
            llm = ScriptedLLM([tool_reply(("wait_forever", {}))])
            loop = StatefulAgentLoop(llm=llm, db_path="s.db", tool_registry=tools)
            sid = loop.new_session()
            print(sid, flush=True)
            asyncio.ensure_future(loop.send("start", session_id=sid))
            while not loop.get_pending(sid):
                await asyncio.sleep(0.01)

        asyncio.run(main())
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "Exception in thread" not in done.stderr
    sid = done.stdout.split()[0]
    follow = run_program(
        tmp_path,
        f"""
        from power_loop import StatefulAgentLoop
        from power_loop.testing import ScriptedLLM, text_reply

        loop = StatefulAgentLoop(llm=ScriptedLLM([text_reply("continued")]), db_path="s.db", config=None)
        print(len(loop.get_pending("{sid}")["tool_calls"]))
        result = loop.send_sync("go on", session_id="{sid}", heal_pending=True)
        print(result.status, result.final_text)
        """,
    )
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout.split() == ["1", "completed", "continued"]


def test_send_sync_from_several_threads_shares_one_store_and_exits(tmp_path: Path) -> None:
    # One loop, one store, six threads each running send_sync (one event loop per call):
    # the store's first opening is shared across those event loops instead of tying it to
    # whichever loop came first, and the program exits with every answer stored.
    done = run_program(
        tmp_path,
        """
        import threading
        from power_loop import AgentLoopConfig, OfflineLLM, StatefulAgentLoop

        loop = StatefulAgentLoop(llm=OfflineLLM(), db_path="./threads.db",
                                 config=AgentLoopConfig(persist_events=True, max_concurrent_runs=2))
        sids = [loop.new_session() for _ in range(6)]
        errors = []
        start = threading.Barrier(len(sids))

        def work(sid):
            start.wait()
            try:
                for i in range(3):
                    assert loop.send_sync(f"hello {i}", session_id=sid).status == "completed"
            except BaseException as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=work, args=(sid,)) for sid in sids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print("errors", errors)
        print("messages", sorted(len(loop.get_messages(sid)) for sid in sids))
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "errors []" in done.stdout
    assert "messages [6, 6, 6, 6, 6, 6]" in done.stdout
    assert "Traceback" not in done.stderr
