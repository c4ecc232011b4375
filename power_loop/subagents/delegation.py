"""The delegation tools (``spawn_agent``, ``run_agent``) and ``run_agent_spec``.

The tools hand a task to a child run through the calling run's ``ctx.subagents`` (see
:mod:`power_loop.engine.subagents`): the child inherits the run's cancellation, budget, hooks,
event bus and model, and may use only tools the run's round was offered. What the model gets
back is the child's answer, headed by one line saying how the child ended when it did not
simply complete, so the model can decide what to do next.

A refusal (depth limit, a tool the parent does not have, an unknown predefined agent) is the
tool's error result, worded for the model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import AgentSpecError, SubagentRefused
from ..results import SubagentResult
from ..tools.context import ToolContext, current_tool_context
from ..tools.definition import ToolDefinition
from ..tools.registry import ToolRegistry
from .definitions import (
    LIST_BACKGROUND_AGENTS_DEFINITION,
    RUN_AGENT_DEFINITION,
    SPAWN_AGENT_DEFINITION,
    STOP_BACKGROUND_AGENT_DEFINITION,
)
from .spec import AgentSpec, load_agent_specs

__all__ = ["register_spawn_agent", "run_agent_spec"]

SpecSource = Mapping[str, AgentSpec] | Iterable[AgentSpec] | str | Path


def register_spawn_agent(
    registry: ToolRegistry,
    *,
    include_run_agent: bool = True,
    overwrite: bool = False,
    specs: SpecSource | None = None,
    include_background: bool = True,
) -> ToolRegistry:
    """Add the delegation tools to ``registry`` and return it.

    ``spawn_agent(task, system_prompt?, tools?, max_rounds?, background?)`` runs an ad-hoc
    child (with ``background=true``: started on its own, its answer delivered later as a
    message); ``run_agent(spec, input)`` (with ``include_run_agent``) runs one of the
    predefined agents in ``specs``: a mapping of names to :class:`AgentSpec`, specs, or a
    directory of spec files (see :func:`load_agent_specs`). The ``run_agent`` description
    lists their names and roles, so the model knows what it can call. With
    ``include_background``, ``list_background_agents()`` and ``stop_background_agent(session_id)``
    come too.

    Raises:
        ValueError: A tool of the same name is registered and not ``overwrite``.
        AgentSpecError: ``specs`` names a directory that cannot be loaded, or two specs share
            a name.
    """
    registry.register(SPAWN_AGENT_DEFINITION, _spawn_agent, overwrite=overwrite)
    if include_background:
        registry.register(LIST_BACKGROUND_AGENTS_DEFINITION, _list_background_agents, overwrite=overwrite)
        registry.register(STOP_BACKGROUND_AGENT_DEFINITION, _stop_background_agent, overwrite=overwrite)
    if include_run_agent:
        catalog = _catalog(specs)
        definition = _run_agent_definition(catalog)

        async def run_agent(spec: str, input: str, ctx: ToolContext) -> str:
            found = catalog.get(spec)
            if found is None:
                known = ", ".join(sorted(catalog)) or "none are defined"
                raise SubagentRefused(f"no predefined agent is named {spec!r} (available: {known})")
            return _for_model(await _run_spec(ctx, found, input))

        registry.register(definition, run_agent, overwrite=overwrite)
    return registry


async def run_agent_spec(
    spec: AgentSpec | Mapping[str, Any],
    user_input: str,
    *,
    parent_loop: Any,
    spawn_tool_call_id: str | None = None,
) -> dict[str, Any]:
    """Run ``spec`` on ``user_input`` as a sub-agent of ``parent_loop``; return 0.11's dict
    (``session_id``, ``status``, ``final_text``, ``rounds``, ``depth``).

    Called from a tool running in one of ``parent_loop``'s runs, the child belongs to that run
    (see ``StatefulAgentLoop.run_subagent``). From host code it is a child of no session
    (or of the session of the tool call named by ``spawn_tool_call_id`` when one is running).

    Raises:
        SpecValidationError: ``spec`` is a mapping that is not a valid spec.
        SubagentRefused: The depth limit is reached, or the spec asks for tools the calling
            run does not have.
    """
    if not isinstance(spec, AgentSpec):
        spec = AgentSpec.from_dict(spec)
    ctx = current_tool_context()
    parent_session_id = ctx.session_id if ctx is not None and ctx.loop is parent_loop else None
    result: SubagentResult = await parent_loop.run_subagent(
        user_input,
        parent_session_id=parent_session_id,
        spawn_tool_call_id=spawn_tool_call_id,
        **_spec_fields(spec),
    )
    return result.to_dict()


# ---------------------------------------------------------------------------- handlers


async def _spawn_agent(
    task: str,
    ctx: ToolContext,
    system_prompt: str | None = None,
    tools: list[str] | None = None,
    max_rounds: int | None = None,
    background: bool = False,
) -> str:
    if background:
        receipt = await ctx.subagents.start(task, system_prompt=system_prompt, tools=tools, max_rounds=max_rounds)
        if not receipt.started:
            return (
                f"Sub-agent {receipt.session_id} was already started for this call; its answer will arrive "
                "as a message."
            )
        return (
            f"Started sub-agent {receipt.session_id} in the background. Its answer will arrive as a "
            "<subagent> message; go on with other work meanwhile."
        )
    result = await ctx.subagents.run(task, system_prompt=system_prompt, tools=tools, max_rounds=max_rounds)
    return _for_model(result)


async def _list_background_agents(ctx: ToolContext) -> str:
    children = await ctx.subagents.background()
    if not children:
        return "You have no background sub-agents."
    return "\n".join(f"{c.session_id} ({c.name}): {c.status}" for c in children)


async def _stop_background_agent(session_id: str, ctx: ToolContext) -> str:
    if await ctx.subagents.stop(session_id):
        return f"Stopped sub-agent {session_id}; its answer will not be delivered."
    return f"{session_id} is not one of your running background sub-agents (see list_background_agents)."


async def _run_spec(ctx: ToolContext, spec: AgentSpec, task: str) -> SubagentResult:
    return await ctx.subagents.run(task, **_spec_fields(spec))


def _spec_fields(spec: AgentSpec) -> dict[str, Any]:
    return {
        "system_prompt": spec.system_prompt,
        "name": spec.name,
        "tools": spec.tools,
        "max_rounds": spec.max_rounds,
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "model": spec.model,
        "lifecycle": str(getattr(spec.lifecycle, "value", spec.lifecycle)),
        "metadata": spec.metadata,
    }


def _for_model(result: SubagentResult) -> str:
    """The child's answer as the tool result: plain when it completed, else headed by how it
    ended (so the model can retry, narrow the task or do it itself)."""
    if result.status == "completed":
        return result.final_text
    return f"[sub-agent {result.session_id} ended {result.status} after {result.rounds} rounds]\n{result.final_text}"


def _catalog(specs: SpecSource | None) -> dict[str, AgentSpec]:
    if specs is None:
        return {}
    if isinstance(specs, (str, Path)):
        return load_agent_specs(specs)
    if isinstance(specs, Mapping):
        return {str(name): spec for name, spec in specs.items()}
    catalog: dict[str, AgentSpec] = {}
    for spec in specs:
        if spec.name in catalog:
            raise AgentSpecError(f"two agent specs are named {spec.name!r}", field="name")
        catalog[spec.name] = spec
    return catalog


def _run_agent_definition(catalog: Mapping[str, AgentSpec]) -> ToolDefinition:
    """``run_agent``'s definition, its description listing the predefined agents."""
    if not catalog:
        return RUN_AGENT_DEFINITION
    lines = [RUN_AGENT_DEFINITION.description, "", "Predefined agents:"]
    for name in sorted(catalog):
        role = " ".join(catalog[name].system_prompt.split())
        lines.append(f"- {name}: {role[:160]}")
    schema = dict(RUN_AGENT_DEFINITION.input_schema)
    properties = dict(schema["properties"])
    properties["spec"] = {**properties["spec"], "enum": sorted(catalog)}
    schema["properties"] = properties
    return ToolDefinition(name=RUN_AGENT_DEFINITION.name, description="\n".join(lines), input_schema=schema)
