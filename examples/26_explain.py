"""Explaining runs and replaying the event log.

Three sessions end three ways (completed, over budget, waiting for the user). For each,
``result.recommended_action`` says what to do next and ``loop.explain(sid)`` writes the whole
story: how the run ended and why, its rounds, tokens and tool calls against the loop's
limits, what is pending, and the call to make next. With ``persist_events=True`` every event
(but stream deltas) is stored too: after the loop is closed, a new one replays them with
``loop.iter_events(sid)``, seqs and typed payloads included.

The model is scripted (``power_loop.testing.ScriptedLLM``) so each ending is reproducible.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import AgentLoopConfig, StatefulAgentLoop, ToolRegistry, request_user_input, tool
from power_loop.messages import Usage
from power_loop.testing import ScriptedLLM, text_reply, tool_reply


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First addend.
        b: Second addend.
    """
    return a + b


@tool
def confirm(question: str) -> str:
    """Ask the user to confirm something.

    Args:
        question: What to ask.
    """
    request_user_input(prompt=question, kind="confirm", options=["yes", "no"])
    return ""


async def main() -> None:
    db = str(Path(tempfile.mkdtemp()) / "explain.db")
    heavy = Usage.of_call(prompt_tokens=900, completion_tokens=20)
    llm = ScriptedLLM(
        [
            tool_reply(("add", {"a": 2, "b": 3})),  # session "sum": a tool call, then the answer
            text_reply("2 + 3 = 5."),
            tool_reply(("add", {"a": 1, "b": 1}), usage=heavy),  # session "costly": over budget
            tool_reply(("confirm", {"question": "Delete the draft?"})),  # session "ask": a question
        ]
    )
    config = AgentLoopConfig(persist_events=True, max_tokens_per_run=800)
    tools = ToolRegistry([add, confirm])
    async with StatefulAgentLoop(llm=llm, db_path=db, config=config, tool_registry=tools) as loop:
        for sid, text in (("sum", "What is 2 + 3?"), ("costly", "Add 1 and 1."), ("ask", "Tidy up my drafts.")):
            await loop.new_session_async(session_id=sid)
            result = await loop.send(text, sid)
            print(f"== {sid}: {result.status} (resumable={result.resumable}, next={result.recommended_action})")
            print(await loop.explain(sid))
            print()

    # A new loop on the same file, as after a restart (or in another process).
    async with StatefulAgentLoop(llm=llm, db_path=db) as reopened:
        print("== the event log of 'sum', replayed after reopening")
        async for event in reopened.iter_events("sum"):
            print(f"  {event.seq:3d} {event.type.value:22s} {type(event.data).__name__}")
        last = [e async for e in reopened.iter_events("sum")][-1]
        print(f"  ... resume a replay with iter_events('sum', after_seq={last.seq})")


if __name__ == "__main__":
    asyncio.run(main())
