"""System prompts assembled from named sections.

A :class:`SystemPromptBuilder` holds an ordered list of sections, each a name and a renderer
(``SystemPromptContext -> str``). :meth:`SystemPromptBuilder.build` renders them in order and
joins the non-empty ones with a blank line. :func:`build_agent_system_prompt` and the two
sub-agent builders put a base prompt (``DEFAULT_*_SYSTEM_PROMPT``) in front and an optional
extra text at the end.

Invariants: building is pure. The output depends only on the context and the builder (no
clock, no environment, no file reads), so the same inputs give the same text byte for byte,
which keeps provider prompt caches warm. A section that renders to whitespace is left out
entirely, heading included. Sections keep the order they were added in unless moved with
``before=``/``after=`` or chosen with :meth:`SystemPromptBuilder.use`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import ConfigurationError
from .tools.compat import format_tool_catalog
from .tools.definition import ToolDefinition
from .tools.registry import ToolRegistry

__all__ = [
    "BUILTIN_SECTIONS",
    "DEFAULT_AGENT_SYSTEM_PROMPT",
    "DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT",
    "DEFAULT_SUBAGENT_SYSTEM_PROMPT",
    "SectionRenderer",
    "SystemPromptBuilder",
    "SystemPromptContext",
    "build_agent_system_prompt",
    "build_explore_subagent_system_prompt",
    "build_subagent_system_prompt",
]

DEFAULT_AGENT_SYSTEM_PROMPT = """\
You are an autonomous assistant that completes tasks with the tools you are given.

- Work in small steps you can check: look before you change something, and verify the \
outcome of each action.
- Read every tool result. When a tool reports an error, correct the call rather than \
repeating it unchanged.
- Stay within the workspace and the task; do not take actions nobody asked for.
- When you are done, reply with a short account of what you did and what you found. If you \
could not finish, say what stopped you and what is still needed."""
"""The base of :func:`build_agent_system_prompt`: a general agent that uses tools."""

DEFAULT_SUBAGENT_SYSTEM_PROMPT = """\
You are a sub-agent. Another agent gave you one task. You cannot see its conversation and \
it cannot see yours: the only thing it receives is your final answer.

- Do the task you were given, using the tools you have, and nothing beyond it.
- Do not ask questions back. If something is unclear, choose the most reasonable reading \
and say which one you chose.
- End with one self-contained answer: the result first, then the evidence the other agent \
needs to rely on it (file paths, commands run, sources)."""
"""The base of :func:`build_subagent_system_prompt`: a child that reports back to its parent."""

DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT = """\
You are an exploration sub-agent. Another agent asked you to find something out. You read \
and search; you never change anything.

- Start broad (list, search), then read closely only what matters.
- Do not create, edit or delete files, and run no command with side effects.
- Answer the question first, then list the places that support the answer (paths, line \
numbers, names), one line each. Say plainly what you looked for and did not find."""
"""The base of :func:`build_explore_subagent_system_prompt`: a read-only investigator."""


@dataclass(frozen=True)
class SystemPromptContext:
    """What the prompt sections may mention. Every field is optional; empty ones are skipped.

    Attributes:
        model: The model's name.
        workspace_dir: The directory the agent's file and shell tools work in.
        agent_dir: The directory of the agent's own files (configuration, notes).
        skills_dir: The directory skills are loaded from.
        skill_descriptions: The available skills, already formatted (one per line).
        tool_names: Names of the offered tools, used when ``tool_definitions`` is None.
        extra: Free text rendered as the last built-in section.
        tool_definitions: The offered tools (definitions or a registry), listed with their
            descriptions under ``tool_catalog_header``. Leave it None when the loop already
            appends the catalog (``AgentLoopConfig.inject_tool_descriptions``), or the tools
            are listed twice.
        tool_catalog_header: First line of the tools section.
    """

    model: str = ""
    workspace_dir: str = ""
    agent_dir: str = ""
    skills_dir: str = ""
    skill_descriptions: str = ""
    tool_names: Sequence[str] = ()
    extra: str = ""
    tool_definitions: Sequence[ToolDefinition] | ToolRegistry | None = None
    tool_catalog_header: str = "# Available Tools"


SectionRenderer = Callable[[SystemPromptContext], str]
"""A section: renders the context to text; ``""`` leaves the section out."""


def _environment_section(ctx: SystemPromptContext) -> str:
    lines = []
    if ctx.model:
        lines.append(f"- Model: {ctx.model}")
    if ctx.workspace_dir:
        lines.append(f"- Workspace: {ctx.workspace_dir} (relative paths start here)")
    if ctx.agent_dir:
        lines.append(f"- Agent directory: {ctx.agent_dir}")
    return "# Environment\n\n" + "\n".join(lines) if lines else ""


def _tools_section(ctx: SystemPromptContext) -> str:
    if ctx.tool_definitions is not None:
        return format_tool_catalog(ctx.tool_definitions, header=ctx.tool_catalog_header)
    if not ctx.tool_names:
        return ""
    return f"{ctx.tool_catalog_header}\n\n" + "\n".join(f"- **{name}**" for name in ctx.tool_names)


def _skills_section(ctx: SystemPromptContext) -> str:
    descriptions = ctx.skill_descriptions.strip()
    if not descriptions and not ctx.skills_dir:
        return ""
    parts = ["# Skills"]
    if descriptions:
        parts.append(
            "A skill is a set of instructions for one kind of task. When a task matches a "
            "skill below, load it with the `load_skill` tool before you start.\n\n" + descriptions
        )
    if ctx.skills_dir:
        parts.append(f"Skills directory: {ctx.skills_dir}")
    return "\n\n".join(parts)


def _extra_section(ctx: SystemPromptContext) -> str:
    return ctx.extra


BUILTIN_SECTIONS: OrderedDict[str, SectionRenderer] = OrderedDict(
    [
        ("environment", _environment_section),
        ("tools", _tools_section),
        ("skills", _skills_section),
        ("extra", _extra_section),
    ]
)
"""The sections a new :class:`SystemPromptBuilder` starts with, in order: ``environment``
(model, workspace, agent directory), ``tools`` (the catalog), ``skills``, ``extra``."""


class SystemPromptBuilder:
    """An ordered set of named prompt sections.

    Methods that change the builder return it, so calls chain::

        builder = SystemPromptBuilder().remove("skills").add("policy", render_policy, before="tools")

    Args:
        use_defaults: Start with :data:`BUILTIN_SECTIONS` (a copy); False starts empty.

    Raises:
        ConfigurationError: (from the methods) an unknown section name, a name that is not
            a non-empty string, a renderer that is not callable or returns something other
            than a string.
    """

    def __init__(self, *, use_defaults: bool = True) -> None:
        self._sections: OrderedDict[str, SectionRenderer] = (
            OrderedDict(BUILTIN_SECTIONS) if use_defaults else OrderedDict()
        )

    def __repr__(self) -> str:
        return f"SystemPromptBuilder(sections={self.section_names()!r})"

    def section_names(self) -> list[str]:
        """The section names, in the order they are rendered."""
        return list(self._sections)

    def add(
        self, name: str, renderer: SectionRenderer, *, before: str | None = None, after: str | None = None
    ) -> SystemPromptBuilder:
        """Add a section, or replace the renderer of an existing one.

        A new section goes last unless ``before`` or ``after`` names the section to put it
        next to. Replacing keeps the section's place unless ``before``/``after`` moves it.

        Raises:
            ConfigurationError: Both ``before`` and ``after``, an unknown anchor, an anchor
                equal to ``name``, a bad name, or a renderer that is not callable.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"a prompt section name must be a non-empty string, got {name!r}")
        if not callable(renderer):
            raise ConfigurationError(f"prompt section {name!r}: the renderer must be callable, got {renderer!r}")
        if before is not None and after is not None:
            raise ConfigurationError(f"prompt section {name!r}: give before= or after=, not both")
        anchor = before if before is not None else after
        if anchor is None:
            self._sections[name] = renderer
            return self
        if anchor == name:
            raise ConfigurationError(f"prompt section {name!r} cannot be placed next to itself")
        self._require(anchor)
        self._sections.pop(name, None)
        items = list(self._sections.items())
        at = self.section_names().index(anchor) + (0 if before is not None else 1)
        items.insert(at, (name, renderer))
        self._sections = OrderedDict(items)
        return self

    def remove(self, *names: str) -> SystemPromptBuilder:
        """Remove sections by name.

        Raises:
            ConfigurationError: A name is not a section of this builder (nothing is removed).
        """
        for name in names:
            self._require(name)
        for name in names:
            self._sections.pop(name, None)
        return self

    def use(self, *names: str) -> SystemPromptBuilder:
        """Keep only the named sections, rendered in the order given.

        Raises:
            ConfigurationError: A name is unknown or given twice (the builder is unchanged).
        """
        if len(set(names)) != len(names):
            raise ConfigurationError(f"use() got a section name twice: {list(names)!r}")
        for name in names:
            self._require(name)
        self._sections = OrderedDict((name, self._sections[name]) for name in names)
        return self

    def build(self, ctx: SystemPromptContext | None = None) -> str:
        """Render the sections in order and join the non-empty ones with a blank line.

        Args:
            ctx: The context; None renders an empty :class:`SystemPromptContext`.

        Returns:
            The text, stripped; ``""`` when every section is empty.

        Raises:
            ConfigurationError: A renderer returned something other than a string.
        """
        ctx = ctx if ctx is not None else SystemPromptContext()
        parts: list[str] = []
        for name, renderer in self._sections.items():
            text = renderer(ctx)
            if not isinstance(text, str):
                raise ConfigurationError(
                    f"prompt section {name!r} rendered {type(text).__name__}; a renderer must return a str"
                )
            if text.strip():
                parts.append(text.strip())
        return "\n\n".join(parts)

    def _require(self, name: str) -> None:
        if name not in self._sections:
            known = ", ".join(self._sections) or "none"
            raise ConfigurationError(f"no prompt section named {name!r}; sections: {known}")


def _compose(base: str, ctx: SystemPromptContext | None, extra: str | None, builder: SystemPromptBuilder | None) -> str:
    body = (builder if builder is not None else SystemPromptBuilder()).build(ctx)
    return "\n\n".join(part.strip() for part in (base, body, extra or "") if part and part.strip())


def build_agent_system_prompt(
    ctx: SystemPromptContext | None, extra: str | None = None, *, builder: SystemPromptBuilder | None = None
) -> str:
    """The system prompt of a top-level agent.

    :data:`DEFAULT_AGENT_SYSTEM_PROMPT`, then the builder's sections rendered for ``ctx``,
    then ``extra``; empty parts are left out.

    Args:
        ctx: What the sections may mention (None: nothing).
        extra: Text appended last, e.g. host instructions for this tenant.
        builder: The sections to render; a default :class:`SystemPromptBuilder` when None.
    """
    return _compose(DEFAULT_AGENT_SYSTEM_PROMPT, ctx, extra, builder)


def build_subagent_system_prompt(
    ctx: SystemPromptContext | None, extra: str | None = None, *, builder: SystemPromptBuilder | None = None
) -> str:
    """The system prompt of a sub-agent: :data:`DEFAULT_SUBAGENT_SYSTEM_PROMPT`, the
    sections for ``ctx``, then ``extra`` (see :func:`build_agent_system_prompt`)."""
    return _compose(DEFAULT_SUBAGENT_SYSTEM_PROMPT, ctx, extra, builder)


def build_explore_subagent_system_prompt(
    ctx: SystemPromptContext | None, extra: str | None = None, *, builder: SystemPromptBuilder | None = None
) -> str:
    """The system prompt of a read-only exploring sub-agent:
    :data:`DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT`, the sections for ``ctx``, then ``extra``
    (see :func:`build_agent_system_prompt`)."""
    return _compose(DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT, ctx, extra, builder)
