"""Steering a running session with ``follow_up``.

While a run holds the session, ``follow_up`` stores the message in the session's durable inbox
and returns ``FollowUpQueued`` at once. The run picks the inbox up at its next round boundary
(after the current tools' results), merging everything queued into one ``<follow_up>`` user
message, so the model sees the steering before it answers. On an idle session, ``follow_up``
is simply ``send``.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import FollowUpQueued, StatefulAgentLoop, ToolRegistry, create_llm_service_from_env, tool

busy = asyncio.Event()  # set once the slow tool is running


@tool
async def search(query: str) -> str:
    """Search the web (slowly).

    Args:
        query: What to look for.
    """
    busy.set()
    await asyncio.sleep(0.5)
    return f"3 results for {query!r}"


async def main() -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "steering.db")
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=ToolRegistry([search])) as loop:
        sid = await loop.new_session_async()

        # A long run: the offline model calls search(...) and waits for it.
        run = asyncio.ensure_future(loop.send('Plan a trip: search(query="flights to Lisbon")', session_id=sid))
        await asyncio.wait_for(busy.wait(), 5)

        # Steer it while it is busy: each message is queued, nothing waits for the run.
        for text in ('Also: search(query="hotels in Lisbon")', "Prefer places near the river."):
            queued = await loop.follow_up(text, session_id=sid)
            assert isinstance(queued, FollowUpQueued)
            print(f"queued (depth {queued.queue_depth}): {text}")

        # Both follow-ups reach the model as one message after the first search's result; the
        # offline model acts on the first call syntax in it and searches for hotels too.
        result = await run
        print(f"run: {result.status} after {result.rounds} rounds: {result.final_text}")

        # On an idle session, follow_up is a send and returns the run's result.
        result = await loop.follow_up("My budget is 900 euros.", session_id=sid)
        print(f"idle follow_up: {type(result).__name__} {result.status}: {result.final_text}")

        print("\nStored transcript:")
        for m in await loop.get_messages_async(sid):
            calls = [f"{c['function']['name']}{c['function']['arguments']}" for c in m.get("tool_calls", [])]
            name = f" ({m['name']})" if m["role"] == "user" and "name" in m else ""
            body = m.get("content") or " ".join(calls)
            print(f"  {m['role']}{name}: {body}".replace("\n", "\n      "))


if __name__ == "__main__":
    asyncio.run(main())
