"""The default tools: files, search, patches and a shell, confined to one workspace.

``create_default_tool_registry(workspace_dir=...)`` binds the tools to a workspace: every path
is relative to it, nothing outside it can be read or written, and ``bash`` runs there with a
minimal environment and a time limit. The offline model calls a tool when the message
contains call syntax such as ``read_file(path="todo.txt")``; a real model decides by itself.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import StatefulAgentLoop, create_default_tool_registry, create_llm_service_from_env


async def main() -> None:
    root = Path(tempfile.mkdtemp())
    workspace = root / "workspace"
    workspace.mkdir()
    registry = create_default_tool_registry(preset="core", workspace_dir=workspace)
    print("tools:", ", ".join(registry.names()))

    llm = create_llm_service_from_env(offline_fallback=True)
    async with StatefulAgentLoop(llm=llm, db_path=str(root / "tools.db"), tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        steps = [
            'write_file(path="todo.txt", content="buy milk")',
            'edit_file(path="todo.txt", old_string="milk", new_string="oat milk")',
            'read_file(path="todo.txt")',
            'grep(pattern="oat")',
            'bash(command="ls && wc -c todo.txt")',
            'read_file(path="/etc/passwd")',  # refused: outside the workspace
        ]
        for step in steps:
            result = await loop.send(step, session_id=sid)
            print(">", step)
            print(" ", result.final_text)


if __name__ == "__main__":
    asyncio.run(main())
