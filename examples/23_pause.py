"""Pause a running session at the next round boundary, and resume it later.

``loop.pause(sid)`` is durable: the run going on (in this process or another one) stops with
status ``paused`` once its current round has committed, and until ``loop.resume(sid)``
nothing runs the session (``send`` raises ``SessionPausedError``), even after a restart.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import SessionPausedError, StatefulAgentLoop, ToolRegistry, tool
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

step_started = asyncio.Event()


@tool
async def migrate_batch(batch: int) -> str:
    """Migrate one batch of records."""
    step_started.set()
    await asyncio.sleep(0.05)  # the work of one step
    return f"batch {batch} migrated"


def plan(request: ScriptedRequest) -> ScriptedReply:
    done = sum(1 for m in request.messages if getattr(m, "role", "") == "tool")
    if done < 5:
        return tool_reply(("migrate_batch", {"batch": done + 1}))
    return text_reply("All 5 batches migrated.")


async def main() -> None:
    db = str(Path(tempfile.mkdtemp()) / "pause.db")
    tools = ToolRegistry([migrate_batch])
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=plan), db_path=db, tool_registry=tools) as loop:
        sid = await loop.new_session_async()
        running = asyncio.ensure_future(loop.send("Migrate the records in batches.", session_id=sid))
        await step_started.wait()
        print("pause while running:", await loop.pause(sid))
        result = await running
        print("send returned:      ", result.status, "| resumable:", result.status == "paused")
        try:
            await loop.send("and then?", session_id=sid)
        except SessionPausedError as exc:
            print("send while paused:  ", type(exc).__name__)

    # The pause is in the store: a new process (here, a new loop) sees it and resumes the run.
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=plan), db_path=db, tool_registry=tools) as loop:
        resumed = await loop.resume(sid)
        print("resume:             ", resumed.status, "-", resumed.final_text)
        tools_run = [m["content"] for m in await loop.get_messages_async(sid) if m["role"] == "tool"]
        print("steps:              ", tools_run)


if __name__ == "__main__":
    asyncio.run(main())
