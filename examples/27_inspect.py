"""Inspecting a store from the command line: ``power-loop sessions``, ``show`` and ``doctor``.

Two sessions are filled in a temporary SQLite file with the built-in offline model (one with
a tool call); a third is left with an unanswered tool call, as a crash between a model turn
and its tools would leave it. Then the inspector commands run in this process through
``power_loop.cli.main`` (the same as ``power-loop sessions --db FILE`` in a shell), and
``doctor`` reports the unanswered call with the call that fixes it, then finds the store
healthy once it is fixed.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import AgentLoopConfig, StatefulAgentLoop, ToolRegistry, create_llm_service_from_env, tool
from power_loop.cli import main
from power_loop.messages import AssistantMessage, ToolCall, UserMessage
from power_loop.store.rows import Append


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First addend.
        b: Second addend.
    """
    return a + b


async def fill(db: str) -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    registry = ToolRegistry()
    registry.register(add)
    config = AgentLoopConfig(system_prompt="Use the tools for arithmetic.", max_rounds=4)
    async with StatefulAgentLoop(llm=llm, db_path=db, config=config, tool_registry=registry) as loop:
        await loop.new_session_async(session_id="billing", metadata={"team": "finance"})
        await loop.send("My favorite color is teal.", "billing")
        await loop.send("Please call add(17, 25).", "billing")
        await loop.new_session_async(session_id="support", metadata={"team": "help"})
        await loop.send("Hello!", "support")
        # What a process that died after the model asked for a tool leaves behind.
        await loop.new_session_async(session_id="crashed")
        call = ToolCall(id="call-1", name="add", arguments='{"a": 2, "b": 2}')
        turn = [UserMessage(content="What is 2 + 2?"), AssistantMessage(content="", tool_calls=(call,))]
        await loop.store.write("crashed", [Append(turn)])


async def fix(db: str) -> None:
    async with StatefulAgentLoop(llm=create_llm_service_from_env(offline_fallback=True), db_path=db) as loop:
        await loop.abort_pending_async("crashed")


def command(*argv: str) -> int:
    print(f"\n$ power-loop {' '.join(argv)}")
    return main(list(argv))


with tempfile.TemporaryDirectory() as tmp:
    db = str(Path(tmp) / "sessions.db")
    asyncio.run(fill(db))
    command("sessions", "--db", db, "--sort", "id")
    command("show", "billing", "--db", db)
    status = command("doctor", "--db", db)
    print(f"(doctor exit status: {status})")
    asyncio.run(fix(db))
    status = command("doctor", "--db", db)
    print(f"(doctor exit status: {status})")
