"""Human approval: a TOOL_BEFORE hook gates dangerous tools.

The gate answers an unapproved call with a refusal instead of running the tool: the model
sees the refusal as the tool's result, and the handler never runs. Once a human approves the
tool, the same request goes through.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import (
    HookDirective,
    HookPoint,
    StatefulAgentLoop,
    ToolBeforeCtx,
    ToolRegistry,
    create_llm_service_from_env,
    tool,
)

FILES = {"notes.txt": "buy milk", "report.txt": "Q3 numbers"}
DANGEROUS = {"delete_file"}


@tool
def delete_file(path: str) -> str:
    """Delete a file.

    Args:
        path: The file to delete.
    """
    del FILES[path]
    return f"deleted {path}"


class ApprovalGate:
    """Refuses dangerous tools until a human approves them."""

    def __init__(self) -> None:
        self.approved: set[str] = set()

    def __call__(self, ctx: ToolBeforeCtx) -> HookDirective | None:
        if ctx.tool_name in DANGEROUS and ctx.tool_name not in self.approved:
            # SKIP: ctx.output becomes the tool result; the handler is not called.
            ctx.output = f"Refused: {ctx.tool_name}({ctx.tool_args}) needs human approval"
            return HookDirective.SKIP
        return None  # CONTINUE: run the tool


async def main() -> None:
    registry = ToolRegistry([delete_file])
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "approval.db")
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        gate = ApprovalGate()
        loop.hooks.register(HookPoint.TOOL_BEFORE, gate)
        sid = await loop.new_session_async()

        denied = await loop.send('Clean up: delete_file(path="notes.txt")', session_id=sid)
        print("without approval:", denied.final_text)
        print("  files:", sorted(FILES))

        gate.approved.add("delete_file")  # a human said yes
        approved = await loop.send('Clean up: delete_file(path="notes.txt")', session_id=sid)
        print("with approval:   ", approved.final_text)
        print("  files:", sorted(FILES))

        # The refusal is stored like any tool result, so the history stays valid.
        for message in await loop.get_messages_async(sid):
            if message["role"] == "tool":
                print(f"  tool result {message['tool_call_id']}: {message['content']}")


if __name__ == "__main__":
    asyncio.run(main())
