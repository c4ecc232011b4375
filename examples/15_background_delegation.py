"""Background delegation: the agent starts a sub-agent and carries on; the answer arrives later.

``spawn_agent(..., background=true)`` returns a receipt at once. The child runs on its own
(here, in this process; after a crash, the ``TimerRunner`` of any process on the same
database resumes it). When it ends, its answer enters the parent's inbox exactly once, in the
transaction that ends the child's run, and the parent is woken to read it: a running parent
reads it at its next round, an idle one gets a new run.

The offline model calls every tool written with call syntax; a real model decides by itself.
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
async def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression (slowly: a long job worth delegating).

    Args:
        expression: Numbers and + - * /, e.g. "6 * 7".
    """
    await asyncio.sleep(0.2)
    return _evaluate(ast.parse(expression, mode="eval").body)


async def main() -> None:
    registry = ToolRegistry()
    registry.register(calculate)
    register_spawn_agent(registry, include_run_agent=False)
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "background.db")
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        runs_ended: list[AgentEvent] = []
        answered = asyncio.Event()

        def on_event(event: AgentEvent) -> None:
            if event.type.value == "session_ended" and event.session_id == sid:
                runs_ended.append(event)
                if len(runs_ended) == 2:  # the run that read the answer
                    answered.set()

        loop.event_bus.subscribe(None, on_event)
        result = await loop.send('spawn_agent(task="Compute 6 * 7", background=True)', session_id=sid)
        print("right away:", result.final_text)
        for child in await loop.store.list_background_children(sid):
            print("background child:", child.session_id, child.status)

        await asyncio.wait_for(answered.wait(), timeout=30)
        messages = await loop.get_messages_async(sid)
        print("later, delivered into the conversation:")
        print(" ", messages[-2]["content"].replace("\n", " "))
        print("the parent's reply:", messages[-1]["content"])
        for child in await loop.store.list_background_children(sid):
            print("background child:", child.session_id, child.status)


if __name__ == "__main__":
    asyncio.run(main())
