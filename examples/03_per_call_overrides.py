"""One loop, many tenants: tools and system prompt narrowed per call, never stored.

Two tenants send concurrently; each gets only its own tools and prompt.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import StatefulAgentLoop, ToolRegistry, create_llm_service_from_env, tool


@tool
def lookup_order(order_id: str) -> str:
    """Look up an order.

    Args:
        order_id: The order number.
    """
    return f"order {order_id}: shipped"


@tool
def book_meeting(day: str) -> str:
    """Book a meeting.

    Args:
        day: Day of the week.
    """
    return f"meeting booked on {day}"


TENANTS = {
    "shop": (["lookup_order"], "You are the shop's support agent."),
    "office": (["book_meeting"], "You are the office assistant."),
}


async def main() -> None:
    registry = ToolRegistry()
    registry.register(lookup_order)
    registry.register(book_meeting)
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "tenants.db")
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        sessions = {name: await loop.new_session_async(metadata={"tenant": name}) for name in TENANTS}

        async def ask(tenant: str, text: str) -> str:
            tools, prompt = TENANTS[tenant]
            result = await loop.send(text, session_id=sessions[tenant], tools=tools, system_prompt=prompt)
            return f"{tenant}: {result.final_text}"

        answers = await asyncio.gather(
            ask("shop", "lookup_order(order_id='A-17')"),
            ask("office", "book_meeting(day='Tuesday')"),
            # The office tenant is not offered lookup_order: the model never sees it (and a call to
            # it would be answered "Unknown tool", never executed).
            ask("office", "lookup_order(order_id='A-17')"),
        )
        print("\n".join(answers))
        print("stored prompt of the shop session:", loop.store.get_session(sessions["shop"]).system_prompt)


if __name__ == "__main__":
    asyncio.run(main())
