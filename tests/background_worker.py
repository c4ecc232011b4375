"""A process whose agent starts a background sub-agent that hangs in a tool, to be SIGKILLed
(``python tests/background_worker.py DB PARENT_SESSION``). Prints ``HANGING`` once the child is
inside its tool call and the parent's run has ended."""

from __future__ import annotations

import asyncio
import sys

from power_loop import StatefulAgentLoop, ToolRegistry, register_spawn_agent, tool
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import ScriptedReply, ScriptedRequest, text_reply, tool_reply

CHILD_MARK = "You are a sub-agent"


@tool
async def hang() -> str:
    """Work for a long time."""
    print("HANGING", flush=True)
    await asyncio.sleep(3600)
    return "never"


def rule(request: ScriptedRequest) -> ScriptedReply:
    child = CHILD_MARK in (request.system_prompt or "")
    said = request.messages[-1].text
    if child:
        if request.messages[-1].role == "tool":
            return text_reply(f"child answer: {said}")
        return tool_reply(("hang", {}, "call_hang"))
    if said.startswith("<subagent "):
        return text_reply(f"parent got: {said}")
    if request.messages[-1].role == "tool":
        return text_reply("started a helper")
    return tool_reply(("spawn_agent", {"task": "do the long thing", "background": True}, "call_bg"))


async def main(db: str, sid: str) -> None:
    registry = ToolRegistry()
    registry.register(hang)
    register_spawn_agent(registry, include_run_agent=False)
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db, tool_registry=registry) as loop:
        await loop.new_session_async(session_id=sid)
        await loop.send("start", session_id=sid)
        await asyncio.sleep(3600)  # the background child runs; the test kills this process


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
