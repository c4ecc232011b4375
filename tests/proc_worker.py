"""Processes driven by the crash and cross-process tests (``python tests/proc_worker.py MODE ...``).

Each mode uses only the public API of power_loop with an in-process scripted model.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from pathlib import Path

from power_loop import AgentLoopConfig, SessionPendingError, StatefulAgentLoop, ToolRegistry, tool
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import ScriptedReply, ScriptedRequest, text_reply, tool_reply

SESSIONS = [f"crash-session-{i}" for i in range(4)]


@tool
async def work(units: int) -> str:
    """Does some work.

    Args:
        units: How much.
    """
    await asyncio.sleep(random.uniform(0.0, 0.02) * units)
    return f"did {units} units"


@tool
def compute(n: int) -> int:
    """Computes in a worker thread.

    Args:
        n: Input.
    """
    time.sleep(random.uniform(0.0, 0.01))
    return n * n


def busy_rule(request: ScriptedRequest) -> ScriptedReply:
    """Tool rounds most of the time, then a streamed answer."""
    if request.tool_results and random.random() < 0.5:
        return ScriptedReply(text="finished: " + "words " * random.randint(5, 40), chunk_chars=6, chunk_delay_s=0.001)
    calls = [("work", {"units": random.randint(1, 3)}), ("compute", {"n": random.randint(1, 9)})]
    return tool_reply(*calls[: random.randint(1, 2)])


async def crash_worker(db: str) -> None:
    registry = ToolRegistry()
    registry.register(work)
    registry.register(compute)
    llm = ScriptedLLM(rule=busy_rule)
    config = AgentLoopConfig(max_rounds=6, lease_ttl_s=1.0, session_wait_s=30)
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry, config=config) as loop:
        for sid in SESSIONS:
            if await loop.store.get_session_async(sid) is None:
                await loop.new_session_async(session_id=sid)
        print("ready", flush=True)

        async def drive(sid: str) -> None:
            n = 0
            while True:
                n += 1
                try:
                    await loop.send(f"message {n} from pid", session_id=sid)
                except SessionPendingError:
                    choice = random.choice(["resume", "abort", "heal"])
                    if choice == "resume":
                        await loop.resume(sid)
                    elif choice == "abort":
                        await loop.abort_pending_async(sid, reason="recovering after a crash")
                    else:
                        await loop.send("continue after a crash", session_id=sid, heal_pending=True)

        await asyncio.gather(*(drive(sid) for sid in SESSIONS))


async def sender(db: str, sid: str, label: str, count: int) -> None:
    llm = ScriptedLLM(rule=lambda r: ScriptedReply(text=f"re: {r.last_user_text}", delay_s=0.01))
    config = AgentLoopConfig(session_wait_s=60, lease_ttl_s=2.0)
    async with StatefulAgentLoop(llm=llm, db_path=db, config=config) as loop:
        for i in range(count):
            await loop.send(f"{label}{i}", session_id=sid)
            await asyncio.sleep(random.uniform(0, 0.01))
    print("done", flush=True)


async def fenced(db: str, sid: str, marker: str) -> None:
    @tool
    async def slow_side_effect() -> str:
        """Takes a while."""
        Path(marker).write_text("entered")
        await asyncio.sleep(3)
        return "side effect done"

    registry = ToolRegistry()
    registry.register(slow_side_effect)
    llm = ScriptedLLM([tool_reply(("slow_side_effect", {})), text_reply("never")])
    config = AgentLoopConfig(lease_ttl_s=1.0)
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry, config=config) as loop:
        try:
            await loop.send("do the slow thing", session_id=sid)
            print("completed", flush=True)
        except Exception as exc:
            print(type(exc).__name__, flush=True)


async def takeover(db: str, sid: str, session_wait_s: float = 20) -> None:
    llm = ScriptedLLM([text_reply("took over")])
    async with StatefulAgentLoop(llm=llm, db_path=db, config=AgentLoopConfig(session_wait_s=session_wait_s)) as loop:
        result = await loop.send("second process", session_id=sid, heal_pending=True)
        print(result.final_text, flush=True)


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "crash":
        asyncio.run(crash_worker(args[0]))
    elif mode == "sender":
        asyncio.run(sender(args[0], args[1], args[2], int(args[3])))
    elif mode == "fenced":
        asyncio.run(fenced(args[0], args[1], args[2]))
    elif mode == "takeover":
        asyncio.run(takeover(args[0], args[1], *(float(a) for a in args[2:])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
