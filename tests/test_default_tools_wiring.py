"""The default registry ships every default tool; the note tools and load_skill work in a real run."""

from __future__ import annotations

from pathlib import Path

from power_loop import FULL_TOOL_NAMES, StatefulAgentLoop, create_default_tool_registry
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest


def test_the_full_preset_holds_every_default_tool(tmp_path: Path) -> None:
    registry = create_default_tool_registry(preset="full", workspace_dir=tmp_path)
    assert sorted(registry.names()) == sorted(FULL_TOOL_NAMES)


async def test_load_skill_and_notes_in_a_run(tmp_path: Path, db_path: str) -> None:
    workspace, skills = tmp_path / "ws", tmp_path / "skills"
    workspace.mkdir()
    (skills / "deploy").mkdir(parents=True)
    (skills / "deploy" / "SKILL.md").write_text(
        "---\nname: deploy\ndescription: How to deploy.\n---\nRun make deploy, then check /health.\n"
    )
    registry = create_default_tool_registry(preset="full", workspace_dir=workspace, skills_dir=skills)

    def rule(request: ScriptedRequest) -> ScriptedReply:
        last = request.messages[-1]
        if last.role == "tool":
            return text_reply(last.text)
        if last.text == "skill":
            return tool_reply(("load_skill", {"name": "deploy"}))
        return tool_reply(("note_add", {"content": "The user deploys on Fridays."}))

    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        skill = await loop.send("skill", session_id=sid)
        noted = await loop.send("note", session_id=sid)
        notes = await loop.store.list_notes_async(sid)
    assert skill.final_text == '<skill name="deploy">\nRun make deploy, then check /health.\n</skill>'
    assert "Error" not in noted.final_text
    assert [n.content for n in notes] == ["The user deploys on Fridays."]
