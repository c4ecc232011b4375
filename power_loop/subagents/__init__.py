"""Sub-agents: child agents a parent hands a task to.

* :mod:`.lifecycle`: the vocabulary the store shares (:class:`SubagentLifecycle`,
  :data:`MAX_SPAWN_DEPTH`); it imports nothing else from power_loop.
* :mod:`.spec`: :class:`AgentSpec`, the declarative description of a child, with strict
  loaders from dicts, JSON, YAML, files and directories.
* :mod:`.definitions`: what the model is told about ``spawn_agent`` and ``run_agent``.
* :mod:`.delegation`: those tools' handlers (:func:`register_spawn_agent`) and
  :func:`run_agent_spec`, over the engine's sub-agent runs (:mod:`power_loop.engine.subagents`).
"""

from __future__ import annotations

from .definitions import (
    LIST_BACKGROUND_AGENTS_DEFINITION,
    RUN_AGENT_DEFINITION,
    SPAWN_AGENT_DEFINITION,
    STOP_BACKGROUND_AGENT_DEFINITION,
)
from .delegation import register_spawn_agent, run_agent_spec
from .lifecycle import MAX_SPAWN_DEPTH, SubagentLifecycle
from .spec import SPEC_FILE_SUFFIXES, AgentSpec, load_agent_specs, load_agent_specs_async

__all__ = [
    "LIST_BACKGROUND_AGENTS_DEFINITION",
    "MAX_SPAWN_DEPTH",
    "RUN_AGENT_DEFINITION",
    "SPAWN_AGENT_DEFINITION",
    "SPEC_FILE_SUFFIXES",
    "STOP_BACKGROUND_AGENT_DEFINITION",
    "AgentSpec",
    "SubagentLifecycle",
    "load_agent_specs",
    "load_agent_specs_async",
    "register_spawn_agent",
    "run_agent_spec",
]
