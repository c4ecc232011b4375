"""Pending tool calls: what an interrupted run leaves, and the three ways out.

A run interrupted while a tool runs (here: the task awaiting ``send`` is cancelled; a crash
leaves the same state) keeps the model's tool calls, each with a status: ``done`` calls keep
their stored result, a ``running`` call has an unknown outcome. ``send`` then refuses with
``SessionPendingError`` until the calls are answered:

* ``resume``: reuse finished results, run the unfinished calls again (same
  ``ToolContext.idempotency_key``), continue the run;
* ``abort_pending``: answer the unfinished calls with ``<aborted: reason>``;
* ``send(..., heal_pending=True)``: abort them and send at once.

Last, a tool that asks the user (``request_user_input``) pauses the run until ``submit_input``.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import (
    AgentLoopConfig,
    SessionPendingError,
    StatefulAgentLoop,
    ToolContext,
    ToolRegistry,
    create_llm_service_from_env,
    request_user_input,
    tool,
)
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

LEDGER: dict[str, str] = {}  # the "external system" slow_write writes to, keyed for dedupe
entered = asyncio.Event()  # slow_write has started
release = asyncio.Event()  # let slow_write finish


@tool
def read_config(name: str) -> str:
    """Read a configuration value.

    Args:
        name: The setting.
    """
    print(f"    read_config: reading {name}")
    return f"{name}=42"


@tool
async def slow_write(key: str, ctx: ToolContext) -> str:
    """Write a key to an external system (slowly).

    Args:
        key: The key.
    """
    # The idempotency key is the same when resume runs this call again: do the work once.
    if ctx.idempotency_key in LEDGER:
        print(f"    slow_write: {ctx.idempotency_key} already written, not writing twice")
    else:
        LEDGER[ctx.idempotency_key] = key
        print(f"    slow_write: wrote {key!r} under {ctx.idempotency_key}")
    entered.set()
    await release.wait()  # ... waiting for the external system's acknowledgement
    return f"wrote {key}"


@tool
def confirm_payment(amount: int) -> str:
    """Charge the customer after they confirm.

    Args:
        amount: Amount in cents.
    """
    request_user_input(prompt=f"Pay {amount} cents?", kind="confirm", options=["yes", "no"])


def rule(request: ScriptedRequest) -> ScriptedReply:
    # The offline model makes one tool call per turn; two calls in one turn need the scripted
    # model users test with (power_loop.testing).
    if request.tool_results:
        return text_reply("; ".join(f"{r.name}: {r.text}" for r in request.tool_results))
    if request.last_user_text.startswith("configure"):
        return tool_reply(("read_config", {"name": "retries"}, "c1"), ("slow_write", {"key": "a"}, "c2"))
    return text_reply(f"ok: {request.last_user_text}")


async def interrupted(loop: StatefulAgentLoop) -> str:
    """A session whose run was cancelled while slow_write ran."""
    sid = await loop.new_session_async()
    entered.clear()
    task = asyncio.ensure_future(loop.send("configure and write", session_id=sid))
    await asyncio.wait_for(entered.wait(), 5)
    task.cancel()  # like Ctrl-C, a request timeout, or a crash at this instant
    try:
        await task
    except asyncio.CancelledError:
        pass
    return sid


async def show_tail(loop: StatefulAgentLoop, sid: str) -> None:
    """Print the history after the interrupted assistant message."""
    for message in (await loop.get_messages_async(sid))[2:]:
        print(f"    {message['role']:9} {message.get('tool_call_id', ''):3} {message.get('content')}")


async def main() -> None:
    db = str(Path(tempfile.mkdtemp()) / "pending.db")
    registry = ToolRegistry([read_config, slow_write])
    config = AgentLoopConfig(tool_concurrency=1)  # c1 finishes before c2 starts
    llm = ScriptedLLM(rule=rule)
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry, config=config) as loop:
        print("1. Interrupted while slow_write runs")
        sid = await interrupted(loop)
        pending = await loop.get_pending_async(sid)
        assert pending is not None
        print("  statuses:", pending["statuses"], "assistant_seq:", pending["assistant_seq"])
        try:
            await loop.send("hello?", session_id=sid)
        except SessionPendingError as error:
            print("  send refused:", error)

        print("\n2. resume: c1 keeps its stored result, c2 runs again with the same key")
        release.set()  # this time the external system answers
        result = await loop.resume(sid)
        print(f"  {result.status}: {result.final_text}")
        release.clear()

        print("\n3. abort_pending on a second interrupted session")
        sid = await interrupted(loop)
        answered = await loop.abort_pending_async(sid, reason="operator cancelled")
        print(f"  answered {answered} call(s)")
        await show_tail(loop, sid)

        print("\n4. send(heal_pending=True) on a third")
        sid = await interrupted(loop)
        await loop.send("never mind, go on", session_id=sid, heal_pending=True)
        await show_tail(loop, sid)

    print("\n5. A tool asks the user: waiting_for_input, then submit_input")
    llm = create_llm_service_from_env(offline_fallback=True)  # the built-in offline model
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=ToolRegistry([confirm_payment])) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("Pay the invoice: confirm_payment(amount=500)", session_id=sid)
        question = result.pending_interactions[0]
        print(f"  {result.status}: {question['prompt']} options={[o['value'] for o in question['options']]}")
        pending = await loop.get_pending_async(sid)  # the call stays unanswered until submit_input
        assert pending is not None
        print("  statuses:", pending["statuses"])
        result = await loop.submit_input(sid, question["interaction_id"], "yes")
        print(f"  {result.status}: {result.final_text}")


if __name__ == "__main__":
    asyncio.run(main())
