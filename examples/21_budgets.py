"""Budgets checked before every call: tokens, dollars, wall-clock and tool calls.

Each model call first reserves its worst case (the prompt estimate plus its completion cap)
and its cap is clamped to what the budget has left, so a run never spends past its limit; the
call that cannot fit is never sent and the run ends ``budget_exceeded`` with
``result.budget`` saying which limit and by how much. The scripted model here reports heavy
usage so the limits are reached in a few calls; a real model's usage is counted the same way.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import AgentLoopConfig, Budget, Price, StatefulAgentLoop, ToolRegistry, tool
from power_loop.messages import Usage
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest


@tool
def lookup(city: str) -> str:
    """Look up the weather of a city."""
    return f"{city}: sunny, 21 C"


async def main() -> None:
    db = str(Path(tempfile.mkdtemp()) / "budgets.db")

    # A model that keeps looking things up, each call billed 2,000 prompt tokens and up to 300
    # completion tokens (fewer when the call's completion cap is lower, as a provider does).
    def keep_looking(request: ScriptedRequest) -> ScriptedReply:
        usage = Usage.of_call(prompt_tokens=2_000, completion_tokens=min(300, request.max_tokens or 300))
        return tool_reply(("lookup", {"city": f"city-{len(request.tool_results)}"}), usage=usage)

    llm = ScriptedLLM(rule=keep_looking)
    config = AgentLoopConfig(
        pricing={"scripted-model": Price(input_per_mtok=3.0, output_per_mtok=15.0)},
        max_cost_usd_per_run=0.03,  # about three of those calls
        max_tool_calls_per_run=10,
        max_wall_s_per_run=60.0,
    )
    async with StatefulAgentLoop(llm=llm, db_path=db, config=config, tool_registry=ToolRegistry([lookup])) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("Compare the weather everywhere.", session_id=sid)
        print("status:  ", result.status)
        print("calls:   ", result.usage["calls"], "model calls,", result.tool_calls, "tool calls")
        print("cost:    ", f"${result.usage['cost_usd']:.4f}")
        assert result.budget is not None
        print("stopped: ", result.budget.describe())
        print("caps:    ", [r.max_tokens for r in llm.requests], "(completion caps, clamped to what was left)")

        # A token budget: the same limits apply to the whole run, sub-agents included.
        short = Usage.of_call(prompt_tokens=50, completion_tokens=5)
        llm.rule = lambda request: text_reply("Short answer.", usage=short)
        tight = AgentLoopConfig(max_tokens_per_run=1_000)
    async with StatefulAgentLoop(llm=llm, db_path=db, config=tight) as loop:
        result = await loop.send("One line, please.", session_id=sid)
        print("tokens:  ", result.status, result.usage["total_tokens"], "of 1000;", "cap", llm.requests[-1].max_tokens)

    # A budget shared by every session of a tenant, kept in the store: runs in any process
    # draw on the same ledger, and together they never pass it.
    shared = AgentLoopConfig(max_tokens=100, budgets=[Budget(scope="tenant", tokens=300, window_s=3600)])
    async with StatefulAgentLoop(llm=llm, db_path=db, config=shared) as loop:
        alice = await loop.new_session_async(metadata={"tenant_id": "acme"})
        bob = await loop.new_session_async(metadata={"tenant_id": "acme"})
        statuses = [(await loop.send("hi", session_id=sid)).status for sid in (alice, bob) * 4]
        print("tenant:  ", statuses)


if __name__ == "__main__":
    asyncio.run(main())
