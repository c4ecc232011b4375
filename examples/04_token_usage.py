"""Token usage: per result, per model call (events), and per session (stats)."""

import asyncio
import tempfile
from pathlib import Path

from power_loop import AgentEvent, AgentEventType, StatefulAgentLoop, create_llm_service_from_env


async def main() -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "usage.db")
    async with StatefulAgentLoop(llm=llm, db_path=db) as loop:

        def on_usage(event: AgentEvent) -> None:
            print(
                f"  model call used {event.payload['usage']['total_tokens']} tokens "
                f"(run so far: {event.payload['run_usage']['total_tokens']})"
            )

        loop.event_bus.subscribe(AgentEventType.USAGE_UPDATED, on_usage)
        sid = await loop.new_session_async()
        for text in ("Hello!", "My plan is to learn Rust.", "What is my plan?"):
            result = await loop.send(text, session_id=sid)
            print(f"{text!r} -> {result.final_text!r}: {result.usage}")
        stats = await loop.get_session_stats_async(sid)
        assert stats is not None
        print(f"session totals: {stats.sends} sends, {stats.llm_calls} calls, {stats.total_tokens} tokens")
        for row in await loop.list_session_stats_async():
            print(f"  {row.session_id}: last active {row.last_send_at}")


if __name__ == "__main__":
    asyncio.run(main())
