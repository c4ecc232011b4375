"""Notes and skills: the agent keeps durable notes and loads instructions when it needs them.

* ``note_add`` / ``note_update`` / ``note_delete`` write notes into the session store;
  ``SQLiteNoteMemory`` shows them to the model at the start of every later send.
* ``NotesPolicy`` bounds them: here at most three notes, refused (not forgotten) when full.
* A ``skills/<name>/SKILL.md`` folder holds instructions; the system prompt lists the skills
  and the model reads one with ``load_skill``.

The model is scripted (``power_loop.testing.ScriptedLLM``) so the example runs offline and
shows exactly which calls a real model would make.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import (
    AgentLoopConfig,
    NotesPolicy,
    SQLiteNoteMemory,
    SQLiteSessionStore,
    StatefulAgentLoop,
    ToolRegistry,
    register_note_tools,
    register_skill_tools,
)
from power_loop.testing import ScriptedLLM, text_reply, tool_reply

SKILL = """---
name: trip-planning
description: Plan a trip day by day from the traveller's notes.
---
1. Read your notes for dates, budget and preferences.
2. Propose one activity per half day.
"""


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        skills = Path(tmp, "skills")
        (skills / "trip-planning").mkdir(parents=True)
        (skills / "trip-planning" / "SKILL.md").write_text(SKILL, encoding="utf-8")

        registry = ToolRegistry()
        register_note_tools(registry)
        loader = register_skill_tools(registry, skills_dir=skills)

        llm = ScriptedLLM(
            [
                tool_reply(("note_add", {"content": "Trip to Lisbon, 3-5 May, budget 600 EUR", "pinned": True})),
                text_reply("Noted your trip."),
                tool_reply(("load_skill", {"name": "trip-planning"})),
                text_reply("Day 1 morning: Alfama walk. Day 1 afternoon: tram 28. ..."),
            ]
        )
        policy = NotesPolicy(max_notes=3)
        store = SQLiteSessionStore(f"{tmp}/sessions.db")
        config = AgentLoopConfig(
            system_prompt="You are a travel assistant.\n\n" + loader.build_system_prompt_section(),
            memory=SQLiteNoteMemory(store, policy=policy),
            notes_policy=policy,
        )
        async with store, StatefulAgentLoop(llm=llm, store=store, config=config, tool_registry=registry) as loop:
            sid = await loop.new_session_async()
            first = await loop.send("I'm going to Lisbon from 3 to 5 May with 600 EUR.", session_id=sid)
            print("1:", first.final_text)
            for note in await store.list_notes_async(sid):
                print(f"   note #{note.note_id} (pinned={note.pinned}): {note.content}")

            second = await loop.send("Plan my trip.", session_id=sid)
            print("2:", second.final_text)
            prompt = llm.requests[-2].system_prompt or ""
            print("   the model saw its notes:", "[#1, pinned] Trip to Lisbon" in prompt)
            print("   and loaded the skill:", '<skill name="trip-planning">' in str(await loop.get_messages_async(sid)))


if __name__ == "__main__":
    asyncio.run(main())
