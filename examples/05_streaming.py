"""Streaming: print the model's text as it arrives.

Subscribe to ``stream_delta`` and each piece of text is delivered while the model is still
answering. The built-in offline model streams word by word; a real provider streams tokens.
Nothing is streamed unless something subscribes to a stream event.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import AgentEvent, AgentEventType, StatefulAgentLoop, create_llm_service_from_env


async def main() -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "streaming.db")
    async with StatefulAgentLoop(llm=llm, db_path=db) as loop:
        received: list[str] = []

        def on_start(event: AgentEvent) -> None:
            # A retried model call starts a new stream: drop what the failed attempt sent.
            received.clear()
            print(f"[round {event.round_index}] ", end="", flush=True)

        def on_delta(event: AgentEvent) -> None:
            received.append(event.payload["text"])
            print(event.payload["text"], end="", flush=True)

        def on_end(event: AgentEvent) -> None:
            print(" [done]")

        loop.event_bus.subscribe(AgentEventType.STREAM_STARTED, on_start)
        loop.event_bus.subscribe(AgentEventType.STREAM_DELTA, on_delta)
        loop.event_bus.subscribe(AgentEventType.STREAM_COMPLETED, on_end)

        sid = await loop.new_session_async()
        for text in ("My favorite language is Python.", "What is my favorite language?"):
            result = await loop.send(text, session_id=sid)
            # The deltas of the answering call concatenate to the final text.
            streamed = "".join(received)
            assert streamed == result.final_text
            print(f"  {len(received)} deltas == final_text: {streamed == result.final_text}")


if __name__ == "__main__":
    asyncio.run(main())
