"""Durable approvals: a payment waits for a person's yes, across a restart.

The ``pay`` tool needs approval above 100 (``requires_approval`` as a callable), so the run
stops ``awaiting_approval`` while the small payment of the same turn goes through. The loop
is closed, as if the process restarted; a new loop on the same file lists the request and
approves it, and the run goes on. A second request is denied with a note the model reads.
The scripted model keeps the example offline and deterministic.
"""

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from power_loop import StatefulAgentLoop, ToolContext, ToolRegistry, tool
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import text_reply, tool_reply

PAID: list[str] = []


def above_100(args: Any, ctx: ToolContext) -> bool:
    """Payments above 100 need a person's approval."""
    return bool(args["amount"] > 100)


@tool(requires_approval=above_100, approval_ttl_s=3600)
def pay(amount: int, to: str) -> str:
    """Pay an amount.

    Args:
        amount: Amount in euros.
        to: Who gets it.
    """
    PAID.append(f"{amount} to {to}")
    return f"paid {amount} to {to}"


def model() -> ScriptedLLM:
    return ScriptedLLM(
        [
            tool_reply(("pay", {"amount": 40, "to": "Bob"}), ("pay", {"amount": 900, "to": "ACME"})),
            text_reply("Bob got 40 and ACME got 900."),
            tool_reply(("pay", {"amount": 5000, "to": "Unknown Ltd"})),
            text_reply("I did not pay Unknown Ltd: the reviewer said it looks like fraud."),
        ]
    )


async def main() -> None:
    db = str(Path(tempfile.mkdtemp()) / "approvals.db")
    llm = model()
    registry = ToolRegistry([pay])

    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("Pay Bob 40 and ACME 900", session_id=sid)
        print("status:", result.status)
        print("paid at once:", PAID)
        for request in result.approvals:
            print(f"  waiting: {request.tool_name}({dict(request.arguments)}) token={request.token[:8]}...")

    # A restart: a new loop (or another process) on the same store finds the request.
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        (request,) = await loop.list_approvals()
        done = await loop.approve(request.session_id, request.token)
        print("after approval:", done.status, "-", done.final_text)
        print("paid:", PAID)

        again = await loop.send("Now pay Unknown Ltd 5000", session_id=sid)
        (request,) = again.approvals
        denied = await loop.approve(sid, request.token, approved=False, note="looks like fraud")
        print("after denial:", denied.status, "-", denied.final_text)
        print("paid:", PAID)


if __name__ == "__main__":
    asyncio.run(main())
