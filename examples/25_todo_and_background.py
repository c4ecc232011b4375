"""A todo list and a background command, kept in the session store.

The model keeps its task list with ``todo`` (shown back to it at every round) and starts a
long command with ``background_run``: the call returns at once, the command runs on, and its
result is shown to the model at its next round, once. The offline model calls a tool when
the message contains call syntax; a real model decides by itself.
"""

import asyncio
import re
import tempfile
from pathlib import Path

from power_loop import (
    AgentLoopConfig,
    HookPoint,
    StatefulAgentLoop,
    create_default_tool_registry,
    create_llm_service_from_env,
)


async def main() -> None:
    root = Path(tempfile.mkdtemp())
    workspace = root / "workspace"
    workspace.mkdir()
    registry = create_default_tool_registry(
        include=["todo", "background_run", "check_background"], workspace_dir=workspace
    )
    llm = create_llm_service_from_env(offline_fallback=True)
    seen_prompts: list[str] = []
    config = AgentLoopConfig()  # runtime_projectors: the todo list and background updates

    async with StatefulAgentLoop(
        llm=llm, db_path=str(root / "agent.db"), tool_registry=registry, config=config
    ) as loop:
        loop.hooks.register(HookPoint.LLM_BEFORE, lambda ctx: seen_prompts.append(ctx.system_prompt))
        sid = await loop.new_session_async()

        plan = (
            'todo(items=[{"content": "run the tests", "status": "in_progress"}, '
            '{"content": "report", "status": "pending"}])'
        )
        print((await loop.send(plan, session_id=sid)).final_text)

        started = await loop.send('background_run(command="sleep 0.2; echo 12 passed")', session_id=sid)
        print(started.final_text.splitlines()[0])
        task_id = re.search(r"bg_[0-9a-f]+", started.final_text).group()  # type: ignore[union-attr]

        while (row := await loop.store.get_background_task_async(sid, task_id)) and row.status == "running":
            await asyncio.sleep(0.05)
        await loop.send("How did the tests go?", session_id=sid)
        print("\nWhat the model was shown beside the conversation in that round:")
        print(seen_prompts[-1][seen_prompts[-1].index("# Todo") :])


if __name__ == "__main__":
    asyncio.run(main())
