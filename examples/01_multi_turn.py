"""Multi-turn sessions survive restarts: the history lives in the SQLite file.

A first loop talks to a session and is closed; a second loop on the same file continues the
same conversation. Runs offline with the built-in model.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import StatefulAgentLoop, create_llm_service_from_env


async def main() -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "multi_turn.db")

    async with StatefulAgentLoop(llm=llm, db_path=db) as loop:
        sid = await loop.new_session_async(metadata={"customer": "c-42"})
        print((await loop.send("My name is Ada.", session_id=sid)).final_text)
        print((await loop.send("My city is Lyon.", session_id=sid)).final_text)

    # A new process (or a restart) opens the same file and carries on.
    async with StatefulAgentLoop(llm=llm, db_path=db) as loop:
        print((await loop.send("What is my city?", session_id=sid)).final_text)
        print(f"{len(await loop.get_messages_async(sid))} messages stored for {sid}")


if __name__ == "__main__":
    asyncio.run(main())
