"""A small real MCP server for tests and examples, built on the official ``mcp`` SDK.

Run it as a process::

    python -m power_loop.testing.mcp_server              # over stdio
    python -m power_loop.testing.mcp_server --http 0     # streamable HTTP on 127.0.0.1, a free port

Over HTTP the first line printed is the endpoint URL (``http://127.0.0.1:<port>/mcp``); the
socket is already listening when it is printed, so a client may connect at once. The process
stops on SIGTERM or Ctrl-C (over stdio: also when its stdin closes).

Its tools:

* ``add(a, b)``: the sum of two integers (text and structured content).
* ``echo(text)``: the text back.
* ``fail(message)``: a tool error (the result has ``isError`` set).
* ``picture()``: a one-pixel PNG image and a caption.
* ``slow(seconds)``: answers after ``seconds`` (to test timeouts).
* ``pid()``: the server's process id, so a test can kill the process from outside.
* ``crash()``: the process exits at once, in the middle of the call.

The ``mcp`` SDK is imported only when the server is built, so ``import power_loop.testing``
works without the ``mcp`` extra.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = ["SERVER_NAME", "build_server", "main"]

SERVER_NAME = "power-loop-test"

# A 1x1 transparent PNG.
_PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="
)


def build_server() -> MCPServer:
    """The test server with its tools registered (raises ImportError without the ``mcp`` extra)."""
    try:
        import anyio
        from mcp.server.mcpserver import Image, MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError('power_loop.testing.mcp_server needs the MCP SDK: pip install "power-loop[mcp]"') from exc

    server = MCPServer(SERVER_NAME, log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def fail(message: str = "the tool failed on purpose") -> str:
        """Always fail with a tool error carrying ``message``."""
        raise ToolError(message)

    @server.tool(structured_output=False)
    def picture() -> list[object]:
        """A one-pixel PNG with a caption."""
        return ["a transparent pixel", Image(data=_PIXEL_PNG, format="png")]

    @server.tool()
    async def slow(seconds: float) -> str:
        """Answer after ``seconds``."""
        await anyio.sleep(seconds)
        return f"slept {seconds}s"

    @server.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    @server.tool()
    def crash() -> str:
        """Exit the server process at once, without answering."""
        os._exit(3)

    return server


def _serve_http(server: MCPServer, port: int) -> None:
    """Serve streamable HTTP on 127.0.0.1:``port`` (0: a free port), printing the URL first."""
    import anyio
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/mcp"
    app = server.streamable_http_app(host="127.0.0.1")
    config = uvicorn.Config(app, log_level="warning")
    print(url, flush=True)
    anyio.run(uvicorn.Server(config).serve, [sock])


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: serve over stdio, or over streamable HTTP with ``--http PORT``."""
    parser = argparse.ArgumentParser(
        prog="python -m power_loop.testing.mcp_server", description="A small MCP server for tests and examples."
    )
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT (0: free)")
    args = parser.parse_args(argv)
    server = build_server()
    try:
        if args.http is None:
            server.run("stdio")
        else:
            _serve_http(server, args.http)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
