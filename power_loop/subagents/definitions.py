"""What the model is told about the delegation tools: ``spawn_agent`` and ``run_agent``.

These are tool definitions only (name, description, JSON schema of the arguments); the
handlers are attached when the tools are registered in a registry. The schemas are closed
(``additionalProperties: false``) so a misspelled argument comes back to the model as an
error it can fix instead of being ignored.
"""

from __future__ import annotations

from ..tools.definition import ToolDefinition

__all__ = [
    "LIST_BACKGROUND_AGENTS_DEFINITION",
    "RUN_AGENT_DEFINITION",
    "SPAWN_AGENT_DEFINITION",
    "STOP_BACKGROUND_AGENT_DEFINITION",
]

SPAWN_AGENT_DEFINITION = ToolDefinition(
    name="spawn_agent",
    description=(
        "Delegate a self-contained task to a sub-agent: a fresh assistant with its own "
        "conversation that sees only what you write in `task`, works with its own tools and "
        "returns its final answer as this tool's result. Use it for work that can be done on "
        "its own (research, a review, one part of a larger job). Several spawn_agent calls in "
        "one turn run in parallel. With background=true the call returns a receipt at once and "
        "the sub-agent's answer arrives later as a <subagent> message; meanwhile you can go on."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "task": {
                "type": "string",
                "minLength": 1,
                "description": (
                    "Everything the sub-agent needs: the goal, the context it cannot see, and "
                    "what its answer should contain."
                ),
            },
            "system_prompt": {
                "type": "string",
                "description": "Instructions that set the sub-agent's role. Omit for a general-purpose sub-agent.",
            },
            "tools": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "uniqueItems": True,
                "description": "Names of the tools the sub-agent may use, chosen among yours. Omit to give it yours.",
            },
            "max_rounds": {
                "type": "integer",
                "minimum": 1,
                "description": "Most model turns the sub-agent may take; small tasks need few.",
            },
            "background": {
                "type": "boolean",
                "default": False,
                "description": (
                    "If true, return a receipt at once; the sub-agent's answer arrives later as a message."
                ),
            },
        },
        "required": ["task"],
        "additionalProperties": False,
    },
)
"""The ``spawn_agent(task, system_prompt?, tools?, max_rounds?, background?)`` tool."""

RUN_AGENT_DEFINITION = ToolDefinition(
    name="run_agent",
    description=(
        "Run one of the predefined agents (each declared by the host with its own role, tools "
        "and limits) on an input and return its final answer. Give it the whole task: the "
        "agent does not see this conversation."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "spec": {"type": "string", "minLength": 1, "description": "Name of the predefined agent to run."},
            "input": {
                "type": "string",
                "minLength": 1,
                "description": "What the agent should work on, with the context it needs.",
            },
        },
        "required": ["spec", "input"],
        "additionalProperties": False,
    },
)
"""The ``run_agent(spec, input)`` tool: run a declared :class:`AgentSpec` by name."""

LIST_BACKGROUND_AGENTS_DEFINITION = ToolDefinition(
    name="list_background_agents",
    description=(
        "List the sub-agents you started in the background: their session id, name and status "
        "(running, delivered: its answer was given to you, or stopped)."
    ),
    input_schema={"type": "object", "properties": {}, "additionalProperties": False},
)
"""The ``list_background_agents()`` tool."""

STOP_BACKGROUND_AGENT_DEFINITION = ToolDefinition(
    name="stop_background_agent",
    description=(
        "Stop a sub-agent you started in the background, when its work is no longer needed. "
        "Its answer will not be delivered."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "session_id": {
                "type": "string",
                "minLength": 1,
                "description": "The sub-agent's session id, from its receipt or list_background_agents.",
            }
        },
        "required": ["session_id"],
        "additionalProperties": False,
    },
)
"""The ``stop_background_agent(session_id)`` tool."""
