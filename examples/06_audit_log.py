"""An audit trail: every event of a run in a JSONL file, replayed as typed events.

``JsonlEventSink`` appends each event as one JSON line from a writer thread (the event loop
never waits on the disk); ``read_events`` replays the file. ``attach_logging_sink`` sends
events to stdlib logging, here only the tool calls, shortened.
"""

import asyncio
import logging
import sys
import tempfile
from pathlib import Path

from power_loop import AgentEvent, StatefulAgentLoop, ToolRegistry, create_llm_service_from_env, tool
from power_loop.contrib.jsonl import JsonlEventSink, read_events
from power_loop.contrib.logging_sink import attach_logging_sink


@tool
def lookup_order(order_id: str) -> dict[str, str]:
    """Look up an order.

    Args:
        order_id: The order number.
    """
    return {"order_id": order_id, "status": "shipped", "carrier": "DHL"}


def summary(event: AgentEvent) -> str:
    """The payload fields worth a column in the trail."""
    p, kind = event.payload, event.type.value
    if kind == "tool_call_started":
        return f"{p['name']}({p['tool_input']}) id={p['tool_call_id']}"
    if kind in ("tool_call_completed", "tool_call_failed"):
        return f"{p['name']} -> {p['output']!r} ({p['duration_ms']} ms)"
    if kind == "round_tools_present":
        return f"{p['count']} tool call(s)"
    if kind == "status_changed":
        return p["kind"]
    if kind == "usage_updated":
        return f"{p['usage']['total_tokens']} tokens (run: {p['run_usage']['total_tokens']})"
    if kind == "stream_delta":
        return repr(p["text"])
    if kind in ("session_started", "session_ended"):
        return " ".join(f"{k}={v!r}" for k, v in p.items() if k in ("run_id", "status", "final_text"))
    return ""


async def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="  log %(name)s: %(message)s")
    registry = ToolRegistry([lookup_order])
    llm = create_llm_service_from_env(offline_fallback=True)
    workdir = Path(tempfile.mkdtemp())
    audit = workdir / "audit" / "events.jsonl"
    async with StatefulAgentLoop(llm=llm, db_path=str(workdir / "audit.db"), tool_registry=registry) as loop:
        sink = JsonlEventSink(audit).attach(loop.event_bus)
        logged = attach_logging_sink(
            loop.event_bus,
            logger=logging.getLogger("audit"),
            events=["tool_call_started", "tool_call_completed", "tool_call_failed"],
            max_field_len=40,
        )
        sid = await loop.new_session_async(metadata={"customer": "c-42"})
        result = await loop.send('Where is my order? lookup_order(order_id="A-17")', session_id=sid)
        print(f"answer: {result.final_text}")
        # Unsubscribe and wait until every queued line is on disk.
        await sink.aclose()
        logged.detach()

    print(f"replaying {audit.name}:")
    for event in read_events(audit):  # typed AgentEvents again: event.data is the payload dataclass
        round_ = "-" if event.round_index is None else event.round_index
        print(f"  {event.seq:>3} r{round_} {event.type.value:<20} {summary(event)}")


if __name__ == "__main__":
    asyncio.run(main())
