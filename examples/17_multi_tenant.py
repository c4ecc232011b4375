"""Two tenants at once on one loop and one tool registry, each confined to its own workspace.

The registry is created with ``bind=False``: it carries no workspace. Each request runs inside
``runtime_env_context(RuntimeEnv(workspace_dir=...))`` for its tenant, so the file tools and
``bash`` see only that tenant's files, even while both run at the same time. The offline model
calls a tool when the message contains call syntax such as ``read_file(path="plan.txt")``.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import (
    RuntimeEnv,
    StatefulAgentLoop,
    create_default_tool_registry,
    create_llm_service_from_env,
    runtime_env_context,
)


async def handle(loop: StatefulAgentLoop, tenant: str, workspace: Path, message: str) -> str:
    """One request of one tenant: its own session, its own workspace."""
    sid = await loop.new_session_async(metadata={"tenant": tenant})
    with runtime_env_context(RuntimeEnv(workspace_dir=workspace)):
        result = await loop.send(message, session_id=sid)
    return f"{tenant}: {result.final_text}"


async def main() -> None:
    root = Path(tempfile.mkdtemp())
    workspaces = {}
    for tenant, plan in (("acme", "ship the rocket"), ("globex", "buy the volcano")):
        workspaces[tenant] = root / tenant
        workspaces[tenant].mkdir()
        (workspaces[tenant] / "plan.txt").write_text(plan)

    registry = create_default_tool_registry(preset="core", bind=False)
    llm = create_llm_service_from_env(offline_fallback=True)
    async with StatefulAgentLoop(llm=llm, db_path=str(root / "tenants.db"), tool_registry=registry) as loop:
        answers = await asyncio.gather(
            handle(loop, "acme", workspaces["acme"], 'read_file(path="plan.txt")'),
            handle(loop, "globex", workspaces["globex"], 'read_file(path="plan.txt")'),
            # A path that leaves the workspace is refused, with a message the model can act on.
            handle(loop, "acme", workspaces["acme"], 'read_file(path="../globex/plan.txt")'),
        )
    for answer in answers:
        print(answer)


if __name__ == "__main__":
    asyncio.run(main())
