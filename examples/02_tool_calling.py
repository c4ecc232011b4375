"""Tools from type hints, validated arguments, parallel calls.

The offline model calls a tool when the message contains call syntax such as
``get_weather(city="Paris")``; a real model decides by itself.
"""

import asyncio
import tempfile
from pathlib import Path
from typing import Literal

from power_loop import StatefulAgentLoop, ToolRegistry, create_llm_service_from_env, tool


@tool
def get_weather(city: str, unit: Literal["C", "F"] = "C") -> dict[str, object]:
    """Current weather for a city.

    Args:
        city: City name, e.g. "Paris".
        unit: Temperature unit.
    """
    return {"city": city, "temperature": 21 if unit == "C" else 70, "unit": unit, "sky": "clear"}


@tool
async def convert(amount: float, rate: float) -> float:
    """Multiply an amount by an exchange rate.

    Args:
        amount: The amount.
        rate: The exchange rate.
    """
    return round(amount * rate, 2)


async def main() -> None:
    registry = ToolRegistry()
    registry.register(get_weather)
    registry.register(convert)
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "tools.db")
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        result = await loop.send('What is the weather? get_weather(city="Paris")', session_id=sid)
        print(result.final_text, f"({result.tool_calls} tool call)")
        # A wrong argument type goes back to the model as a message it can fix.
        result = await loop.send('convert(amount="lots", rate=1.1)', session_id=sid)
        print(result.final_text)
        for message in await loop.get_messages_async(sid):
            print(" ", message["role"], message.get("content") or message.get("tool_calls"))


if __name__ == "__main__":
    asyncio.run(main())
