"""Skills: SKILL.md folders, malformed front matter reported, load_skill in a real run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from power_loop import (
    LOAD_SKILL_DEFINITION,
    SkillLoader,
    StatefulAgentLoop,
    ToolRegistry,
    get_default_loader,
    register_skill_tools,
)
from power_loop.testing import ScriptedServer
from power_loop.testing.script import text_reply, tool_reply


def write_skills(root: Path) -> Path:
    (root / "release-notes").mkdir(parents=True)
    (root / "release-notes" / "SKILL.md").write_text(
        "---\nname: release-notes\ndescription: Write release notes\n  from merged changes.\nowner: docs\n---\n"
        "Group the changes by area.\n",
        encoding="utf-8",
    )
    (root / "broken").mkdir()
    (root / "broken" / "SKILL.md").write_text("---\nname: broken\ndescription: : : bad\n  - x\n---\nbody\n")
    (root / "unclosed").mkdir()
    (root / "unclosed" / "SKILL.md").write_text("---\nname: unclosed\n")
    (root / "plain").mkdir()
    (root / "plain" / "SKILL.md").write_text("---\n---\nNo name given: the folder names it.\n")
    (root / "not-a-skill.md").write_text("ignored")
    return root


def test_loader_reads_good_skills_and_reports_bad_ones(tmp_path: Path) -> None:
    loader = SkillLoader(write_skills(tmp_path / "skills"))
    assert loader.names == ["plain", "release-notes"]
    skill = loader.get("release-notes")
    assert skill is not None and skill.description == "Write release notes from merged changes."
    assert dict(skill.metadata) == {"owner": "docs"}
    assert loader.get_content("release-notes") == "Group the changes by area."
    assert loader.get_descriptions() == "- plain\n- release-notes: Write release notes from merged changes."
    assert sorted(e.split(":")[0].rsplit("/", 2)[-2] for e in loader.errors) == ["broken", "unclosed"]
    broken = next(e for e in loader.errors if "broken" in e)
    assert broken.startswith(f"{tmp_path / 'skills' / 'broken' / 'SKILL.md'}:") and "invalid YAML" in broken
    line = int(broken.split("SKILL.md:")[1].split(":")[0])
    assert 2 <= line <= 4  # a line of the front matter, counted in the file
    assert "never closed" in next(e for e in loader.errors if "unclosed" in e)
    assert loader.handle_load_skill("release-notes") == (
        '<skill name="release-notes">\nGroup the changes by area.\n</skill>'
    )
    assert loader.handle_load_skill("nope") == "Error: unknown skill 'nope'. Available skills: plain, release-notes."
    section = loader.build_system_prompt_section()
    assert section.startswith("# Skills") and "- release-notes: Write release notes" in section


def test_reload_and_missing_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loader = SkillLoader(tmp_path / "none")
    assert loader.names == [] and loader.errors == [] and loader.build_system_prompt_section() == ""
    write_skills(tmp_path / "none")
    loader.reload()
    assert "release-notes" in loader.names
    monkeypatch.setenv("POWER_LOOP_SKILLS_DIR", str(tmp_path / "none"))
    assert get_default_loader().names == loader.names
    monkeypatch.delenv("POWER_LOOP_SKILLS_DIR")
    assert get_default_loader().skills_dir == Path("skills")


async def test_load_skill_in_a_run(
    tmp_path: Path, db_path: str, scripted_server: ScriptedServer, llm_factory: Any, protocol: str
) -> None:
    registry = ToolRegistry()
    loader = register_skill_tools(registry, skills_dir=write_skills(tmp_path / "skills"))
    assert registry.get("load_skill").definition == LOAD_SKILL_DEFINITION  # type: ignore[union-attr]
    scripted_server.push(tool_reply(("load_skill", {"name": "release-notes"})), text_reply("done"))
    async with StatefulAgentLoop(llm=llm_factory(protocol, scripted_server), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        result = await loop.send(
            "Write the notes.", session_id=sid, tools=registry, system_prompt=loader.build_system_prompt_section()
        )
        assert result.final_text == "done"
        tool_results = [m["content"] for m in await loop.get_messages_async(sid) if m["role"] == "tool"]
    assert tool_results == ['<skill name="release-notes">\nGroup the changes by area.\n</skill>']
    assert "- release-notes: Write release notes" in (scripted_server.requests[0].system_prompt or "")
