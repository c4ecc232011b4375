"""Hello world: one loop, one session, two turns.

Runs offline with the built-in model; set POWER_LOOP_BASE_URL / _API_KEY / _MODEL to use a
real provider instead.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import AgentLoopConfig, StatefulAgentLoop, create_llm_service_from_env


async def main() -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    db = Path(tempfile.mkdtemp()) / "hello.db"
    loop = StatefulAgentLoop(
        llm=llm,
        db_path=str(db),
        config=AgentLoopConfig(system_prompt="You are a concise assistant.", max_rounds=4),
    )
    sid = loop.new_session(metadata={"user_id": "demo"})
    first = await loop.send("My favorite color is teal.", session_id=sid)
    second = await loop.send("What is my favorite color?", session_id=sid)
    print(first.final_text)
    print(second.final_text)
    await loop.aclose()


if __name__ == "__main__":
    asyncio.run(main())
