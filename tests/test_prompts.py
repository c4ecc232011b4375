"""The system prompt builder: sections in order, empty ones left out, deterministic output,
and the three prompt builders with their base texts."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict

import pytest

import power_loop
from power_loop import (
    BUILTIN_SECTIONS,
    DEFAULT_AGENT_SYSTEM_PROMPT,
    DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT,
    DEFAULT_SUBAGENT_SYSTEM_PROMPT,
    ConfigurationError,
    SystemPromptBuilder,
    SystemPromptContext,
    ToolDefinition,
    ToolRegistry,
    build_agent_system_prompt,
    build_explore_subagent_system_prompt,
    build_subagent_system_prompt,
)

TOOLS = [
    ToolDefinition("read_file", "Read a file of the workspace."),
    ToolDefinition("grep", "Search file contents."),
]

FULL = SystemPromptContext(
    model="small-model",
    workspace_dir="/srv/tenant-a",
    agent_dir="/srv/tenant-a/.agent",
    skills_dir="/srv/skills",
    skill_descriptions="- pdf: fill PDF forms\n- csv: clean CSV files",
    extra="Answer in French.",
    tool_definitions=TOOLS,
)


def test_builtin_sections_in_order() -> None:
    assert isinstance(BUILTIN_SECTIONS, OrderedDict)
    assert list(BUILTIN_SECTIONS) == ["environment", "tools", "skills", "extra"]
    assert SystemPromptBuilder().section_names() == ["environment", "tools", "skills", "extra"]
    assert SystemPromptBuilder(use_defaults=False).section_names() == []


def test_context_defaults() -> None:
    ctx = SystemPromptContext()
    assert (ctx.model, ctx.workspace_dir, ctx.agent_dir, ctx.skills_dir, ctx.skill_descriptions, ctx.extra) == (
        "", "", "", "", "", ""
    )  # fmt: skip
    assert ctx.tool_names == () and ctx.tool_definitions is None
    assert ctx.tool_catalog_header == "# Available Tools"


def test_an_empty_context_renders_nothing() -> None:
    assert SystemPromptBuilder().build(SystemPromptContext()) == ""
    assert SystemPromptBuilder().build() == ""
    assert SystemPromptBuilder(use_defaults=False).build(FULL) == ""


def test_a_full_context_renders_every_section_in_order() -> None:
    text = SystemPromptBuilder().build(FULL)
    heads = [text.index(h) for h in ("# Environment", "# Available Tools", "# Skills", "Answer in French.")]
    assert heads == sorted(heads)
    assert "- Model: small-model" in text
    assert "- Workspace: /srv/tenant-a" in text
    assert "- Agent directory: /srv/tenant-a/.agent" in text
    assert "- **read_file**: Read a file of the workspace.\n- **grep**: Search file contents." in text
    assert "- pdf: fill PDF forms" in text and "load_skill" in text and "/srv/skills" in text
    assert text == text.strip() and "\n\n\n" not in text


def test_output_is_deterministic() -> None:
    first = build_agent_system_prompt(FULL, "Tenant rules.")
    assert all(build_agent_system_prompt(FULL, "Tenant rules.") == first for _ in range(5))
    code = (
        "from power_loop import SystemPromptContext, ToolDefinition, build_agent_system_prompt\n"
        "ctx = SystemPromptContext(model='m', workspace_dir='/w', tool_names=('b', 'a'), extra='x')\n"
        "print(build_agent_system_prompt(ctx, 'y'), end='')\n"
    )
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout
        for _ in range(2)
    }
    assert len(runs) == 1
    expected = build_agent_system_prompt(
        SystemPromptContext(model="m", workspace_dir="/w", tool_names=("b", "a"), extra="x"), "y"
    )
    assert runs == {expected}


def test_empty_sections_are_left_out_with_their_heading() -> None:
    text = SystemPromptBuilder().build(SystemPromptContext(model="m"))
    assert text == "# Environment\n\n- Model: m"
    assert "# Skills" not in SystemPromptBuilder().build(SystemPromptContext(skill_descriptions="   "))
    only_dir = SystemPromptBuilder().build(SystemPromptContext(skills_dir="/s"))
    assert only_dir == "# Skills\n\nSkills directory: /s"


def test_the_tools_section() -> None:
    by_names = SystemPromptBuilder().build(SystemPromptContext(tool_names=["grep", "bash"]))
    assert by_names == "# Available Tools\n\n- **grep**\n- **bash**"
    header = SystemPromptContext(tool_definitions=TOOLS, tool_catalog_header="## Tools", tool_names=["ignored"])
    text = SystemPromptBuilder().build(header)
    assert text.startswith("## Tools\n\n- **read_file**") and "ignored" not in text
    registry = ToolRegistry()
    for d in TOOLS:
        registry.register(d, lambda: "ok")
    assert SystemPromptBuilder().build(SystemPromptContext(tool_definitions=registry)) == SystemPromptBuilder().build(
        SystemPromptContext(tool_definitions=TOOLS)
    )
    assert SystemPromptBuilder().build(SystemPromptContext(tool_definitions=[])) == ""


def test_add_places_sections() -> None:
    builder = SystemPromptBuilder()
    assert builder.add("policy", lambda ctx: "# Policy\n\nBe careful.") is builder
    assert builder.section_names()[-1] == "policy"
    builder.add("first", lambda ctx: "FIRST", before="environment")
    builder.add("after_tools", lambda ctx: "AFTER TOOLS", after="tools")
    assert builder.section_names() == ["first", "environment", "tools", "after_tools", "skills", "extra", "policy"]
    text = builder.build(FULL)
    assert text.startswith("FIRST\n\n# Environment")
    assert text.index("AFTER TOOLS") < text.index("# Skills")
    assert text.endswith("Answer in French.\n\n# Policy\n\nBe careful.")


def test_add_replaces_in_place_or_moves() -> None:
    builder = SystemPromptBuilder().add("tools", lambda ctx: "TOOLS HERE")
    assert builder.section_names() == ["environment", "tools", "skills", "extra"]
    assert "TOOLS HERE" in builder.build(FULL) and "read_file" not in builder.build(FULL)
    builder.add("tools", lambda ctx: "MOVED", after="extra")
    assert builder.section_names() == ["environment", "skills", "extra", "tools"]
    assert builder.build(FULL).endswith("MOVED")


def test_remove_and_use() -> None:
    builder = SystemPromptBuilder().remove("skills", "environment")
    assert builder.section_names() == ["tools", "extra"]
    assert "# Skills" not in builder.build(FULL) and "# Environment" not in builder.build(FULL)
    reordered = SystemPromptBuilder().use("extra", "environment")
    assert reordered.section_names() == ["extra", "environment"]
    assert reordered.build(FULL).startswith("Answer in French.\n\n# Environment")


def test_builders_do_not_share_state_or_change_the_defaults() -> None:
    one, two = SystemPromptBuilder(), SystemPromptBuilder()
    one.remove("tools").add("x", lambda ctx: "x")
    assert two.section_names() == ["environment", "tools", "skills", "extra"]
    assert list(BUILTIN_SECTIONS) == ["environment", "tools", "skills", "extra"]


def test_builder_misuse_is_a_clear_error() -> None:
    builder = SystemPromptBuilder()
    for call, words in (
        (lambda: builder.add("x", lambda ctx: "", before="tools", after="skills"), "not both"),
        (lambda: builder.add("x", lambda ctx: "", before="nope"), "no prompt section named 'nope'"),
        (lambda: builder.add("x", lambda ctx: "", after="x"), "itself"),
        (lambda: builder.add("", lambda ctx: ""), "non-empty"),
        (lambda: builder.add("x", "not callable"), "callable"),  # type: ignore[arg-type]
        (lambda: builder.remove("tools", "nope"), "'nope'"),
        (lambda: builder.use("tools", "nope"), "'nope'"),
        (lambda: builder.use("tools", "tools"), "twice"),
    ):
        with pytest.raises(ConfigurationError, match=words):
            call()
    assert builder.section_names() == ["environment", "tools", "skills", "extra"]  # nothing half-done
    bad = SystemPromptBuilder(use_defaults=False).add("bad", lambda ctx: 42)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="'bad' rendered int"):
        bad.build(FULL)


def test_build_agent_system_prompt() -> None:
    assert build_agent_system_prompt(SystemPromptContext()) == DEFAULT_AGENT_SYSTEM_PROMPT
    assert build_agent_system_prompt(None) == DEFAULT_AGENT_SYSTEM_PROMPT
    text = build_agent_system_prompt(FULL, "Tenant: ACME.")
    assert text.startswith(DEFAULT_AGENT_SYSTEM_PROMPT + "\n\n# Environment")
    assert text.endswith("Answer in French.\n\nTenant: ACME.")
    assert build_agent_system_prompt(SystemPromptContext(), "  ") == DEFAULT_AGENT_SYSTEM_PROMPT
    custom = SystemPromptBuilder(use_defaults=False).add("rules", lambda ctx: f"Work in {ctx.workspace_dir}.")
    assert build_agent_system_prompt(FULL, builder=custom) == f"{DEFAULT_AGENT_SYSTEM_PROMPT}\n\nWork in /srv/tenant-a."


def test_the_sub_agent_builders_use_their_own_base() -> None:
    bases = {DEFAULT_AGENT_SYSTEM_PROMPT, DEFAULT_SUBAGENT_SYSTEM_PROMPT, DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT}
    assert len(bases) == 3 and all(b == b.strip() and len(b) > 100 for b in bases)
    sub = build_subagent_system_prompt(FULL, "Be brief.")
    assert sub.startswith(DEFAULT_SUBAGENT_SYSTEM_PROMPT + "\n\n# Environment") and sub.endswith("Be brief.")
    explore = build_explore_subagent_system_prompt(FULL)
    assert explore.startswith(DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT) and "# Available Tools" in explore
    assert build_subagent_system_prompt(SystemPromptContext()) == DEFAULT_SUBAGENT_SYSTEM_PROMPT
    assert build_explore_subagent_system_prompt(SystemPromptContext()) == DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT


def test_the_prompt_names_are_exported() -> None:
    for name in (
        "SystemPromptBuilder",
        "SystemPromptContext",
        "BUILTIN_SECTIONS",
        "build_agent_system_prompt",
        "build_subagent_system_prompt",
        "build_explore_subagent_system_prompt",
        "DEFAULT_AGENT_SYSTEM_PROMPT",
        "DEFAULT_SUBAGENT_SYSTEM_PROMPT",
        "DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT",
    ):
        assert name in power_loop.__all__, name
