"""Sub-agents: the model hands two tasks to two children that run in parallel.

``register_spawn_agent`` adds the ``spawn_agent`` tool. Each call starts a child session with
its own prompt and limits; the child may use only tools its parent was offered, its tokens
count in the parent's usage, and stopping the parent stops it. Ephemeral children (the
default) are deleted once their answer is read.

The offline model calls every tool written with call syntax, so one message starts both
children; a real model decides by itself.
"""

import ast
import asyncio
import operator
import tempfile
from pathlib import Path

from power_loop import (
    AgentEvent,
    StatefulAgentLoop,
    ToolRegistry,
    create_llm_service_from_env,
    register_spawn_agent,
    tool,
)

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    raise ValueError("only numbers and + - * / are allowed")


@tool
def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers and + - * /, e.g. "2 + 3 * 4".
    """
    return _evaluate(ast.parse(expression, mode="eval").body)


def show(event: AgentEvent) -> None:
    if event.type.value.startswith("subagent_"):
        child = event.payload["sub_session_id"][:13]
        print(f"  [{event.type.value}] child {child}", event.payload.get("task") or event.payload.get("status"))


async def main() -> None:
    registry = ToolRegistry()
    registry.register(calculate)
    register_spawn_agent(registry, include_run_agent=False)
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "subagents.db")
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        loop.event_bus.subscribe(None, show)
        sid = await loop.new_session_async()
        result = await loop.send(
            'Split the work: spawn_agent(task="Compute 19 * 23") and spawn_agent(task="Compute 1000 / 8")',
            session_id=sid,
        )
        print(result.final_text)
        print("usage of the parent run, children included:", result.usage["total_tokens"], "tokens")
        children = await loop.store.execute_fetchall("SELECT COUNT(*) FROM sessions WHERE kind = 'subagent'")
        print("child sessions left (ephemeral ones are deleted):", children[0][0])


if __name__ == "__main__":
    asyncio.run(main())
