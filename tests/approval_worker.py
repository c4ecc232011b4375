"""A process that decides an approval (``python tests/approval_worker.py DB SID TOKEN EFFECTS``).

It opens its own loop on the store ``DB`` (an SQLite file or a PostgreSQL URL), with the
same ``transfer`` tool as the test that paused the run: the tool appends a line to the file
``EFFECTS``, so the test counts how often it ran, in every process. It approves ``TOKEN`` of
session ``SID`` and prints the result's status and text, or ``ApprovalError``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from power_loop import AgentLoopConfig, ApprovalError, StatefulAgentLoop, ToolRegistry, tool
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import text_reply


def transfer_tool(effects: Path) -> ToolRegistry:
    """The ``transfer`` tool, recording each run in ``effects``."""

    @tool(requires_approval=True)
    def transfer(amount: int) -> str:
        """Transfer money.

        Args:
            amount: Amount in cents.
        """
        with effects.open("a") as out:
            out.write(f"transfer {amount}\n")
        return f"transferred {amount}"

    return ToolRegistry([transfer])


async def approve(db: str, sid: str, token: str, effects: Path) -> None:
    llm = ScriptedLLM([text_reply("done after approval")])
    config = AgentLoopConfig(session_wait_s=30)
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=transfer_tool(effects), config=config) as loop:
        try:
            result = await loop.approve(sid, token)
        except ApprovalError:
            print("ApprovalError", flush=True)
            return
        print(result.status, result.final_text, flush=True)


if __name__ == "__main__":
    asyncio.run(approve(sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4])))
