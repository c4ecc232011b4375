"""Tools from an MCP server: start one over stdio, register its tools, let the model call them.

Needs the ``mcp`` extra (``pip install "power-loop[mcp]"``). The server is power_loop's own test
server (``python -m power_loop.testing.mcp_server``); any MCP server works the same way. The
offline model calls a tool when the message contains call syntax such as ``mcp_add(a=2, b=3)``;
a real model decides by itself.
"""

import asyncio
import os
import sys
import tempfile
from pathlib import Path

from power_loop import StatefulAgentLoop, ToolRegistry, create_llm_service_from_env
from power_loop.contrib.mcp import open_stdio_session, register_mcp_tools


async def main() -> None:
    # The server process gets only a minimal environment: pass on where power_loop is found.
    env = {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else None
    registry = ToolRegistry()
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "mcp.db")
    # The session belongs to this block: the loop must be done with the tools before it closes.
    async with open_stdio_session(sys.executable, ["-m", "power_loop.testing.mcp_server"], env=env) as session:
        names = await register_mcp_tools(registry, session, prefix="mcp_", include=["add", "echo", "fail"])
        print("registered:", ", ".join(names))
        async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
            sid = await loop.new_session_async()
            result = await loop.send("What is 2 + 3? mcp_add(a=2, b=3)", session_id=sid)
            print(result.final_text, f"({result.tool_calls} tool call)")
            # A failing MCP tool is an error message for the model; the run goes on.
            result = await loop.send('mcp_fail(message="disk full")', session_id=sid)
            print(result.status, "-", result.final_text)
            for message in await loop.get_messages_async(sid):
                if message["role"] == "tool":
                    print("  tool result:", message["content"])


if __name__ == "__main__":
    asyncio.run(main())
