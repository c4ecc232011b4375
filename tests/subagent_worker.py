"""A process that delegates to a sub-agent whose tool hangs, to be SIGKILLed mid-child
(``python tests/subagent_worker.py DB PARENT_SESSION``). Prints ``HANGING`` when the child is
inside its tool call."""

from __future__ import annotations

import asyncio
import sys

from power_loop import StatefulAgentLoop, ToolContext, ToolRegistry, tool
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import ScriptedReply, ScriptedRequest, text_reply, tool_reply

CHILD_MARK = "You are a sub-agent"


@tool
async def delegate(task: str, ctx: ToolContext) -> str:
    """Hand a task to a linked sub-agent.

    Args:
        task: The task.
    """
    return (await ctx.subagents.run(task, lifecycle="linked")).final_text


@tool
async def hang() -> str:
    """Work for a long time."""
    print("HANGING", flush=True)
    await asyncio.sleep(3600)
    return "never"


def registry(*tools: object) -> ToolRegistry:
    reg = ToolRegistry()
    for t in (delegate, *tools):
        reg.register(t)
    return reg


def rule(request: ScriptedRequest) -> ScriptedReply:
    child = CHILD_MARK in (request.system_prompt or "")
    if request.messages[-1].role == "tool":
        return text_reply(
            f"child answer: {request.messages[-1].text}" if child else f"parent got: {request.messages[-1].text}"
        )
    if child:
        return tool_reply(("hang", {}, "call_hang"))
    return tool_reply(("delegate", {"task": "do the long thing"}, "call_delegate"))


async def main(db: str, sid: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db, tool_registry=registry(hang)) as loop:
        await loop.new_session_async(session_id=sid)
        await loop.send("start", session_id=sid)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
