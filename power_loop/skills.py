"""Skills: instructions for one kind of task, loaded by the model when it needs them.

A skill is a folder holding a ``SKILL.md`` file: YAML front matter between ``---`` lines
(``name``, ``description``; other keys are kept as metadata), then the instructions::

    ---
    name: release-notes
    description: Write release notes from a list of merged changes.
    ---
    1. Group the changes by area ...

The system prompt lists the skills (:meth:`SkillLoader.build_system_prompt_section`); the
model reads one with the ``load_skill`` tool (:data:`LOAD_SKILL_DEFINITION`).

Invariants:

* One malformed ``SKILL.md`` never hides the others: it is left out and reported in
  :attr:`SkillLoader.errors` with its file and line.
* Loading reads the folder once (at construction and on :meth:`SkillLoader.reload`);
  ``load_skill`` serves what was read and never opens a path the model names.
* pyyaml is imported on first load, not with :mod:`power_loop`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .tools.definition import ToolDefinition
from .tools.registry import ToolRegistry

__all__ = [
    "LOAD_SKILL_DEFINITION",
    "Skill",
    "SkillLoader",
    "get_default_loader",
    "register_skill_tools",
]

SKILLS_DIR_ENV = "POWER_LOOP_SKILLS_DIR"
"""The environment variable naming the default skills folder."""

LOAD_SKILL_DEFINITION = ToolDefinition(
    "load_skill",
    "Load the full instructions of a skill by its name (the skills are listed in your system "
    "prompt). Load a skill before starting a task it covers.",
    {
        "type": "object",
        "properties": {"name": {"type": "string", "description": "The skill's name, as listed."}},
        "required": ["name"],
    },
)
"""The ``load_skill`` tool: ``name`` → the skill's instructions."""


@dataclass(frozen=True)
class Skill:
    """One loaded skill.

    Attributes:
        name: Its name (front matter ``name``, else the folder's name).
        description: One line saying when to use it.
        content: The instructions (the file after the front matter).
        path: The ``SKILL.md`` file.
        metadata: The other front-matter keys.
    """

    name: str
    description: str
    content: str
    path: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)


class SkillFormatError(ValueError):
    """A ``SKILL.md`` that cannot be read as a skill; ``str()`` names the file and line."""


def _split_front_matter(text: str, path: Path) -> tuple[str, str, int]:
    """(front matter, body, line number where the front matter starts)."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise SkillFormatError(f"{path}:1: SKILL.md must start with a '---' line opening its YAML front matter")
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return "".join(lines[1:index]), "".join(lines[index + 1 :]), 2
    raise SkillFormatError(f"{path}:1: the YAML front matter opened on line 1 is never closed by a '---' line")


def parse_skill(path: Path) -> Skill:
    """Read one ``SKILL.md``.

    Raises:
        SkillFormatError: Missing or malformed front matter (the message names file and line).
        OSError: The file cannot be read.
    """
    import yaml  # deferred: only hosts that use skills pay for the import

    text = path.read_text(encoding="utf-8")
    head, body, first_line = _split_front_matter(text, path)
    try:
        data = yaml.safe_load(head) if head.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = first_line + (mark.line if mark is not None else 0)
        problem = getattr(exc, "problem", None) or str(exc)
        raise SkillFormatError(f"{path}:{line}: invalid YAML front matter: {problem}") from exc
    if not isinstance(data, dict):
        raise SkillFormatError(f"{path}:{first_line}: the front matter must be a mapping (name: ..., description: ...)")
    name = data.get("name", path.parent.name)
    description = data.get("description", "")
    if not isinstance(name, str) or not name.strip():
        raise SkillFormatError(f"{path}:{first_line}: 'name' must be a non-empty string")
    if not isinstance(description, str):
        raise SkillFormatError(f"{path}:{first_line}: 'description' must be a string")
    extra = {str(k): v for k, v in data.items() if k not in ("name", "description")}
    return Skill(name.strip(), " ".join(description.split()), body.strip(), path, extra)


def default_skills_dir() -> Path:
    """``$POWER_LOOP_SKILLS_DIR``, else ``./skills``."""
    return Path(os.environ.get(SKILLS_DIR_ENV) or "skills")


class SkillLoader:
    """The skills of one folder: every ``*/SKILL.md`` directly below it.

    Args:
        skills_dir: The folder; None uses :func:`default_skills_dir`. A missing folder
            simply has no skills.

    Attributes:
        skills_dir: The folder, as a ``Path``.
        errors: One message per skill left out (file, line and problem), from the last load.
    """

    def __init__(self, skills_dir: str | os.PathLike[str] | None = None) -> None:
        self.skills_dir = Path(skills_dir) if skills_dir is not None else default_skills_dir()
        self.errors: list[str] = []
        self._skills: dict[str, Skill] = {}
        self.reload()

    def reload(self) -> None:
        """Read the folder again (blocking file I/O: call it off the event loop in a server)."""
        skills: dict[str, Skill] = {}
        errors: list[str] = []
        paths = sorted(self.skills_dir.glob("*/SKILL.md")) if self.skills_dir.is_dir() else []
        for path in paths:
            try:
                skill = parse_skill(path)
            except (SkillFormatError, OSError, UnicodeDecodeError) as exc:
                errors.append(str(exc) if isinstance(exc, SkillFormatError) else f"{path}:1: cannot read: {exc}")
                continue
            if skill.name in skills:
                errors.append(f"{path}:1: skill name {skill.name!r} is already used by {skills[skill.name].path}")
                continue
            skills[skill.name] = skill
        self._skills = skills
        self.errors = errors

    @property
    def names(self) -> list[str]:
        """The skill names, sorted."""
        return sorted(self._skills)

    def get(self, name: str) -> Skill | None:
        """One skill, or None."""
        return self._skills.get(name)

    def get_descriptions(self) -> str:
        """One line per skill, ``- name: description``, sorted by name ("" with no skills)."""
        return "\n".join(
            f"- {s.name}: {s.description}" if s.description else f"- {s.name}"
            for s in sorted(self._skills.values(), key=lambda s: s.name)
        )

    def get_content(self, name: str) -> str | None:
        """A skill's instructions, or None for an unknown name."""
        skill = self._skills.get(name)
        return skill.content if skill is not None else None

    def handle_load_skill(self, name: str) -> str:
        """The ``load_skill`` tool's answer: the skill wrapped in ``<skill name="...">``, or an
        error naming the available skills."""
        skill = self._skills.get(str(name).strip())
        if skill is None:
            available = ", ".join(self.names) or "none"
            return f"Error: unknown skill {name!r}. Available skills: {available}."
        return f'<skill name="{skill.name}">\n{skill.content}\n</skill>'

    def build_system_prompt_section(self) -> str:
        """The ``# Skills`` section listing the skills, or "" when there are none."""
        descriptions = self.get_descriptions()
        if not descriptions:
            return ""
        return (
            "# Skills\nA skill is a set of instructions for one kind of task. When a task matches a "
            "skill below, load it with the `load_skill` tool before you start.\n\n" + descriptions
        )


def get_default_loader() -> SkillLoader:
    """A :class:`SkillLoader` over the default folder (``$POWER_LOOP_SKILLS_DIR``, else
    ``./skills``). Each call reads the folder afresh."""
    return SkillLoader()


def register_skill_tools(
    registry: ToolRegistry, *, skills_dir: str | os.PathLike[str] | None = None, overwrite: bool = False
) -> SkillLoader:
    """Register ``load_skill`` over the skills of ``skills_dir`` and return the loader (use
    its :meth:`~SkillLoader.build_system_prompt_section` in the system prompt).

    The handler is synchronous and serves what the loader read, so the registry runs it in
    a worker thread and nothing is read from disk during a call.
    """
    loader = SkillLoader(skills_dir)

    def load_skill(name: str) -> str:
        return loader.handle_load_skill(name)

    registry.register(LOAD_SKILL_DEFINITION, load_skill, overwrite=overwrite)
    return loader
