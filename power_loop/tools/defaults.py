"""The default tools and ``create_default_tool_registry``.

The default tools are ready-made tools for an agent that works on files: ``read_file``,
``write_file``, ``edit_file``, ``apply_patch``, ``glob``, ``grep``, ``bash``,
``request_user_input``, ``load_skill`` (the skills of the environment's ``skills_dir``), the
note tools (``note_add`` / ``note_update`` / ``note_delete``, see :mod:`power_loop.notes`) and
the wake-up tools (``schedule_wakeup``, ``list_wakeups``, ``cancel_wakeup``,
``current_time``), ``todo`` (:mod:`power_loop.tools.todo`) and the background commands
(``background_run`` / ``check_background``, :mod:`power_loop.tools.background`).

Invariants:

* Every file tool and ``bash`` act only in the workspace of the runtime environment of the
  call (:mod:`power_loop.tools.runtime_env`). A registry created with ``bind=True`` (the
  default) carries one environment; with ``bind=False`` it carries none and each call uses
  the environment the host bound with ``runtime_env_context``, failing closed without one.
* The file tools are sync handlers (their I/O runs in the kernel's tool threads); ``bash``,
  the background tools, ``todo`` and ``request_user_input`` are async and never block the
  event loop.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..human import request_user_input as _ask_user
from ..notes import note_tools
from ..skills import LOAD_SKILL_DEFINITION, SkillLoader
from ..timers.tools import timer_tools
from .background import background_tools
from .context import current_tool_context
from .definition import FunctionTool, ToolDefinition
from .files import edit_file, glob_files, grep_files, read_file, write_file
from .patch import apply_patch
from .registry import ToolRegistry
from .runtime_env import RuntimeEnv, require_runtime_env, runtime_env_context, shell_target
from .shell import run_shell_command
from .todo import todo_tool

__all__ = [
    "CORE_TOOL_NAMES",
    "DEFAULT_TOOL_HANDLERS",
    "EXPLORE_TOOL_NAMES",
    "FULL_TOOL_NAMES",
    "TOOL_PRESETS",
    "create_default_tool_registry",
    "default_tools",
]

CORE_TOOL_NAMES: tuple[str, ...] = (
    "apply_patch", "bash", "edit_file", "glob", "grep", "load_skill", "read_file", "request_user_input",
    "write_file",
)  # fmt: skip
"""The ``core`` preset: files, shell, skills and asking the user."""

EXPLORE_TOOL_NAMES: tuple[str, ...] = ("bash", "glob", "grep", "load_skill", "read_file", "request_user_input")
"""The ``explore`` preset: read-only exploration (``bash`` can still write: see docs/workspaces.md)."""

FULL_TOOL_NAMES: tuple[str, ...] = (
    "apply_patch", "background_run", "bash", "cancel_wakeup", "check_background", "current_time", "edit_file",
    "glob", "grep", "list_wakeups", "load_skill", "note_add", "note_delete", "note_update", "read_file",
    "request_user_input", "schedule_wakeup", "todo", "write_file",
)  # fmt: skip
"""The ``full`` preset: every default tool."""

TOOL_PRESETS: dict[str, tuple[str, ...]] = {
    "core": CORE_TOOL_NAMES,
    "explore": EXPLORE_TOOL_NAMES,
    "full": FULL_TOOL_NAMES,
}
"""Preset name → tool names."""

MAX_BASH_TIMEOUT_S = 600


async def bash(command: str, timeout: int = 120) -> str:
    """Run a shell command in the workspace and return its output and exit code.

    The command runs in the workspace directory with a minimal environment; it is killed,
    with every process it started, when the time limit passes.

    Args:
        command: The command line (run by bash).
        timeout: Seconds before the command is killed (1 to 600).
    """
    workspace, backend = shell_target()
    limit = min(max(int(timeout), 1), MAX_BASH_TIMEOUT_S)
    try:
        result = await run_shell_command(command, workspace_dir=workspace, backend=backend, timeout_s=limit)
    except OSError as exc:
        raise RuntimeError(f"the command could not be started: {exc.strerror or exc}") from exc
    return result.to_text(limit)


async def request_user_input(prompt: str, kind: str = "text", options: list[str] | None = None) -> str:
    """Ask the user a question and wait for the answer (the run pauses until it comes).

    Args:
        prompt: The question, written for the user.
        kind: "text" for a free answer, "choice" to pick one of options, "confirm" for yes/no.
        options: The choices of a "choice" question.
    """
    _ask_user(prompt=prompt, kind=kind, options=options)


def load_skill(name: str) -> str:
    """The ``load_skill`` tool over the skills of the bound environment's ``skills_dir``, else
    of the calling loop's ``AgentLoopConfig.skills_dir``.

    Synchronous: the registry runs it in a worker thread, where the skills folder is read.
    """
    skills_dir: str | os.PathLike[str] | None = require_runtime_env().skills_dir
    if skills_dir is None:
        ctx = current_tool_context()
        skills_dir = getattr(getattr(ctx.loop if ctx else None, "config", None), "skills_dir", None)
    if skills_dir is None:
        return "Error: no skills are available here (neither the environment nor the loop names a skills_dir)."
    return SkillLoader(skills_dir).handle_load_skill(name)


def default_tools() -> dict[str, FunctionTool]:
    """The default tools of this version, by name (each call builds fresh objects)."""
    tools = [
        FunctionTool(LOAD_SKILL_DEFINITION, load_skill),
        *note_tools(),
        FunctionTool(ToolDefinition.from_function(read_file), read_file),
        FunctionTool(ToolDefinition.from_function(write_file), write_file),
        FunctionTool(ToolDefinition.from_function(edit_file), edit_file),
        FunctionTool(ToolDefinition.from_function(apply_patch), apply_patch),
        FunctionTool(ToolDefinition.from_function(glob_files, name="glob"), glob_files),
        FunctionTool(ToolDefinition.from_function(grep_files, name="grep"), grep_files),
        FunctionTool(ToolDefinition.from_function(bash), bash),
        FunctionTool(ToolDefinition.from_function(request_user_input), request_user_input),
        todo_tool(),
        *background_tools(),
        *timer_tools(),
    ]
    return {t.name: t for t in tools}


DEFAULT_TOOL_HANDLERS: dict[str, Callable[..., Any]] = {name: t.handler for name, t in default_tools().items()}
"""Tool name → handler (called ``handler(**args)``), reading the environment bound at call time."""


def _bind(handler: Callable[..., Any], env: RuntimeEnv) -> Callable[..., Any]:
    """``handler`` running inside ``runtime_env_context(env)``."""
    if inspect.iscoroutinefunction(handler):

        @functools.wraps(handler)
        async def bound_async(*args: Any, **kwargs: Any) -> Any:
            with runtime_env_context(env):
                return await handler(*args, **kwargs)

        return bound_async

    @functools.wraps(handler)
    def bound(*args: Any, **kwargs: Any) -> Any:
        with runtime_env_context(env):
            return handler(*args, **kwargs)

    return bound


def _select(
    available: dict[str, FunctionTool],
    preset: str | None,
    include: Sequence[str] | None,
    exclude: Iterable[str] | None,
) -> list[str]:
    if include is not None:
        names = list(dict.fromkeys(include))
        unknown = [name for name in names if name not in available]
        if unknown:
            raise ValueError(f"unknown default tool {unknown[0]!r}; default tools: {', '.join(sorted(available))}")
    else:
        key = preset if preset is not None else "full"
        if key not in TOOL_PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(TOOL_PRESETS)}")
        names = [n for n in TOOL_PRESETS[key] if n in available]
    dropped = set(exclude or ())
    return [n for n in names if n not in dropped]


def create_default_tool_registry(
    *,
    preset: str | None = None,
    include: Sequence[str] | None = None,
    exclude: Iterable[str] | None = None,
    workspace_dir: str | os.PathLike[str] | None = None,
    home_dir: str | os.PathLike[str] | None = None,
    skills_dir: str | os.PathLike[str] | None = None,
    bind: bool = True,
) -> ToolRegistry:
    """A registry of the default tools.

    ``include`` wins over ``preset``, which wins over "every default tool"; ``exclude`` is
    applied last.

    Args:
        preset: ``"core"``, ``"explore"`` or ``"full"`` (see :data:`TOOL_PRESETS`).
        include: Exactly these tools.
        exclude: Tools to leave out.
        workspace_dir: The workspace of a bound registry (else ``POWER_LOOP_WORKSPACE``, else
            the current directory when the registry is created).
        home_dir: The home of a bound registry (else ``POWER_LOOP_HOME``, else the workspace).
        skills_dir: The skills directory (else ``POWER_LOOP_SKILLS_DIR``).
        bind: True: every call uses the environment above. False: every call uses the
            environment bound with ``runtime_env_context`` at call time (one registry for many
            tenants) and fails closed when none is.

    Raises:
        ValueError: An unknown preset, or an ``include`` name that is not a default tool.
    """
    available = default_tools()
    names = _select(available, preset, include, exclude)
    env: RuntimeEnv | None = None
    if bind:
        env = RuntimeEnv.from_env(workspace_dir=workspace_dir, home_dir=home_dir, skills_dir=skills_dir)
        if env.workspace_dir is None:
            env = replace(env, workspace_dir=Path.cwd())
    registry = ToolRegistry()
    for name in names:
        fn_tool = available[name]
        handler = fn_tool.handler if env is None else _bind(fn_tool.handler, env)
        registry.register(FunctionTool(fn_tool.definition, handler, fn_tool.timeout_s))
    return registry
