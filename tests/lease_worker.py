"""A busy process for the lease takeover tests (``python tests/lease_worker.py DB SID...``).

It runs one send per session, each doing a few quick tool rounds and then calling ``hold``,
which prints ``holding <sid>`` and sleeps: from that line on, the session's lease is
certainly held (with a 60 s ttl) until the process is killed.
"""

from __future__ import annotations

import asyncio
import random
import sys

from power_loop import AgentLoopConfig, StatefulAgentLoop, ToolContext, ToolRegistry, tool
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import ScriptedReply, ScriptedRequest, tool_reply

LEASE_TTL_S = 60.0


@tool
async def work(units: int) -> str:
    """Does a little work.

    Args:
        units: How much.
    """
    await asyncio.sleep(0.002 * units)
    return f"did {units} units"


@tool
async def hold(ctx: ToolContext) -> str:
    """Holds the session until the process is killed."""
    print(f"holding {ctx.session_id}", flush=True)
    await asyncio.sleep(120)
    return "held"


def busy_rule(request: ScriptedRequest) -> ScriptedReply:
    """A few quick tool rounds, then ``hold``."""
    if len(request.messages) > 40:  # long histories after many kills: keep requests small
        return tool_reply(("hold", {}))
    if random.random() < 0.4:
        return tool_reply(("hold", {}))
    return tool_reply(("work", {"units": random.randint(1, 3)}))


async def main(db: str, sids: list[str]) -> None:
    registry = ToolRegistry()
    registry.register(work)
    registry.register(hold)
    config = AgentLoopConfig(lease_ttl_s=LEASE_TTL_S, max_rounds=20)
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=busy_rule), db_path=db, tool_registry=registry, config=config
    ) as loop:
        await asyncio.gather(*(loop.send("keep busy", session_id=sid, heal_pending=True) for sid in sids))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2:]))
