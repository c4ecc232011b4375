"""MCP tools: a real MCP server process (power_loop.testing.mcp_server) over stdio and over
streamable HTTP on 127.0.0.1, its tools registered in a ToolRegistry and called by a real
StatefulAgentLoop whose model traffic goes through the real SDKs to the scripted server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import ClientSession, MCPError
from mcp.server import Server
from mcp.shared.memory import create_client_server_memory_streams
from mcp.types import (
    CallToolRequestParams,
    CallToolResult,
    EmbeddedResource,
    ListToolsResult,
    ResourceLink,
    TextContent,
    TextResourceContents,
    Tool,
)

from power_loop import AgentEventType, AgentLoopConfig, StatefulAgentLoop, ToolRegistry, ToolValidationError, tool
from power_loop.contrib.mcp import (
    MCPToolError,
    mcp_tool_name,
    open_http_session,
    open_stdio_session,
    register_mcp_tools,
    render_mcp_result,
)
from power_loop.testing import ScriptedServer, text_reply, tool_reply

from .conftest import ServiceFactory
from .helpers import history_is_valid

ROOT = Path(__file__).resolve().parent.parent
# The child imports this checkout's power_loop; the SDK passes it only the variables we name.
SERVER_ENV = {"PYTHONPATH": str(ROOT)}
SERVER_ARGS = ["-m", "power_loop.testing.mcp_server"]
# The SDK's per-request read timeout: a guard that turns a hang into an error, never a bound.
READ_TIMEOUT_S = 60.0
TRANSPORTS = ("stdio", "http")


class HttpServer:
    """The test MCP server as a process serving streamable HTTP on 127.0.0.1 (a free port)."""

    def __init__(self) -> None:
        env = {**os.environ, **SERVER_ENV}
        self.process = subprocess.Popen(
            [sys.executable, *SERVER_ARGS, "--http", "0"], stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.process.stdout is not None
        # The first line is the endpoint, printed once the socket listens.
        self.url = self.process.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), self.url

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.wait()
        assert self.process.stdout is not None
        self.process.stdout.close()


@pytest.fixture
def http_server() -> Iterator[HttpServer]:
    server = HttpServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@asynccontextmanager
async def open_session(transport: str, request: pytest.FixtureRequest) -> AsyncIterator[ClientSession]:
    """An initialized session to a fresh test server over ``transport``."""
    if transport == "stdio":
        async with open_stdio_session(
            sys.executable, SERVER_ARGS, env=SERVER_ENV, read_timeout_s=READ_TIMEOUT_S
        ) as session:
            yield session
    else:
        server: HttpServer = request.getfixturevalue("http_server")
        async with open_http_session(server.url, read_timeout_s=READ_TIMEOUT_S) as session:
            yield session


async def run_loop(
    registry: ToolRegistry, llm: Any, db_path: str, text: str = "go", **send: Any
) -> tuple[Any, list[dict[str, Any]]]:
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        result = await loop.send(text, session_id=sid, **send)
        messages = await loop.get_messages_async(sid)
    assert history_is_valid(messages)
    return result, messages


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_a_loop_calls_an_mcp_tool(
    transport: str,
    protocol: str,
    request: pytest.FixtureRequest,
    scripted_server: ScriptedServer,
    llm_factory: ServiceFactory,
    db_path: str,
) -> None:
    scripted_server.push(tool_reply(("mcp_add", {"a": 2, "b": 3})), text_reply("2 + 3 = 5"))
    registry = ToolRegistry()
    async with open_session(transport, request) as session:
        names = await register_mcp_tools(registry, session, prefix="mcp_")
        assert names == ["mcp_add", "mcp_echo", "mcp_fail", "mcp_picture", "mcp_slow", "mcp_pid", "mcp_crash"]
        result, messages = await run_loop(registry, llm_factory(protocol, scripted_server), db_path, "Add 2 and 3")

    assert result.status == "completed"
    assert result.final_text == "2 + 3 = 5"
    assert result.tool_calls == 1
    tool_message = messages[2]
    assert tool_message["role"] == "tool"
    assert tool_message["content"] == "5"
    assert "is_error" not in tool_message
    # The model saw the result, and the server's input schema was offered as the tool's.
    assert scripted_server.requests[1].tool_results[0].text == "5"
    assert "mcp_add" in scripted_server.requests[0].tools
    body = scripted_server.requests[0].body
    if protocol == "openai":
        schema = next(t["function"]["parameters"] for t in body["tools"] if t["function"]["name"] == "mcp_add")
    else:
        schema = next(t["input_schema"] for t in body["tools"] if t["name"] == "mcp_add")
    assert schema["required"] == ["a", "b"]
    assert schema["properties"]["a"]["type"] == "integer"


async def test_a_server_error_goes_back_to_the_model(
    transport: str,
    request: pytest.FixtureRequest,
    scripted_server: ScriptedServer,
    llm_factory: ServiceFactory,
    db_path: str,
) -> None:
    scripted_server.push(
        tool_reply(("mcp_fail", {"message": "disk full"}), ("mcp_nosuch", {})),
        text_reply("The tool failed."),
    )
    registry = ToolRegistry()
    async with open_session(transport, request) as session:
        await register_mcp_tools(registry, session, prefix="mcp_")
        result, messages = await run_loop(registry, llm_factory("openai", scripted_server), db_path)

    assert result.status == "completed"
    assert result.final_text == "The tool failed."
    failed, unknown = messages[2], messages[3]
    assert failed["is_error"] is True
    assert failed["content"] == "Error: MCP tool 'fail' failed: Error executing tool fail: disk full"
    assert unknown["is_error"] is True
    assert unknown["content"].startswith("Unknown tool: mcp_nosuch")
    assert scripted_server.requests[1].tool_results[0].text == failed["content"]


async def test_invalid_arguments_are_caught_before_the_server(
    scripted_server: ScriptedServer, llm_factory: ServiceFactory, db_path: str, request: pytest.FixtureRequest
) -> None:
    scripted_server.push(tool_reply(("mcp_add", {"a": "two", "b": 3})), text_reply("ok"))
    registry = ToolRegistry()
    async with open_session("stdio", request) as session:
        await register_mcp_tools(registry, session, prefix="mcp_")
        _, messages = await run_loop(registry, llm_factory("openai", scripted_server), db_path)
    assert messages[2]["content"] == "Error: invalid arguments for tool 'mcp_add': a: expected integer, got string"


@pytest.mark.parametrize("how", ["crash", "kill"])
async def test_a_dead_server_is_a_tool_error_not_a_hang(
    transport: str,
    how: str,
    request: pytest.FixtureRequest,
    scripted_server: ScriptedServer,
    llm_factory: ServiceFactory,
    db_path: str,
) -> None:
    registry = ToolRegistry()
    async with open_session(transport, request) as session:
        await register_mcp_tools(registry, session, prefix="mcp_")
        if how == "crash":  # the process exits in the middle of the call
            scripted_server.push(tool_reply(("mcp_crash", {})))
        else:  # the process is killed from outside between two calls
            pid = int(await registry.invoke_async("mcp_pid", {}))
            if transport == "http":
                assert pid == request.getfixturevalue("http_server").process.pid
            os.kill(pid, signal.SIGKILL)
        scripted_server.push(tool_reply(("mcp_add", {"a": 1, "b": 1})), text_reply("The server is gone."))
        result, messages = await run_loop(registry, llm_factory("openai", scripted_server), db_path)

    assert result.status == "completed"
    assert result.final_text == "The server is gone."
    results = [m for m in messages if m["role"] == "tool"]
    assert len(results) == (2 if how == "crash" else 1)
    assert all(message["is_error"] is True for message in results)
    if how == "crash":  # the transport's own words for a reply that never came
        assert results[0]["content"].startswith("Error: MCP tool 'crash' could not be called: ")
    assert results[-1]["content"] == "Error: MCP tool 'add' could not be called: Connection closed"


async def test_the_sdk_timeout_is_a_tool_error(
    transport: str,
    request: pytest.FixtureRequest,
    scripted_server: ScriptedServer,
    llm_factory: ServiceFactory,
    db_path: str,
) -> None:
    # The call would take an hour; the SDK's read timeout ends it and the run goes on.
    scripted_server.push(tool_reply(("slow", {"seconds": 3600})), text_reply("It took too long."))
    registry = ToolRegistry()
    async with open_session(transport, request) as session:
        await register_mcp_tools(registry, session, include=["slow", "echo"], timeout_s=0.2)
        result, messages = await run_loop(registry, llm_factory("openai", scripted_server), db_path)
        # The session is still usable afterwards.
        assert await registry.invoke_async("echo", {"text": "still here"}) == "still here"
    assert result.final_text == "It took too long."
    assert messages[2]["is_error"] is True
    assert messages[2]["content"].startswith("Error: MCP tool 'slow' could not be called: ")
    assert "timed out" in messages[2]["content"]


async def test_a_call_after_the_session_closed_is_a_tool_error(request: pytest.FixtureRequest) -> None:
    registry = ToolRegistry()
    async with open_session("stdio", request) as session:
        await register_mcp_tools(registry, session)
        assert await registry.invoke_async("echo", {"text": "hi"}) == "hi"
    with pytest.raises(MCPToolError, match="MCP tool 'echo'"):
        await registry.invoke_async("echo", {"text": "hi"})


async def test_a_failed_opening_raises_from_the_block() -> None:
    with pytest.raises(FileNotFoundError):
        async with open_stdio_session(str(ROOT / "no-such-server")):
            pass
    # A process that exits before the handshake.
    with pytest.raises(MCPError, match="Connection closed"):
        async with open_stdio_session(sys.executable, ["-c", "pass"], read_timeout_s=READ_TIMEOUT_S):
            pass
    # Nothing listens on the port any more.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(httpx2.ConnectError):
        async with open_http_session(f"http://127.0.0.1:{port}/mcp", read_timeout_s=READ_TIMEOUT_S):
            pass


async def test_include_and_prefix(request: pytest.FixtureRequest) -> None:
    async with open_session("stdio", request) as session:
        registry = ToolRegistry()
        assert await register_mcp_tools(registry, session, prefix="fs.", include=["echo", "add"]) == [
            "fs_add",
            "fs_echo",
        ]
        assert registry.names() == ["fs_add", "fs_echo"]
        assert registry.get("fs_add").definition.description == "Add two integers."  # type: ignore[union-attr]
        assert await registry.invoke_async("fs_add", {"a": 40, "b": 2}) == "42"

        by_predicate = ToolRegistry()
        names = await register_mcp_tools(by_predicate, session, include=lambda t: t.name.startswith("p"))
        assert names == ["picture", "pid"]

        # A typo in include= fails loudly, and nothing is registered.
        untouched = ToolRegistry()
        with pytest.raises(ValueError, match=r"include= names unknown MCP tool\(s\): ech \(offered: add, echo"):
            await register_mcp_tools(untouched, session, include=["ech", "add"])
        with pytest.raises(TypeError, match="not a single string"):
            await register_mcp_tools(untouched, session, include="add")
        assert len(untouched) == 0

        # A taken name fails the whole registration unless overwrite=True.
        @tool
        def fs_echo(text: str) -> str:
            """A local tool of the same name."""
            return text

        taken = ToolRegistry([fs_echo])
        with pytest.raises(ValueError, match="Tool already registered: fs_echo"):
            await register_mcp_tools(taken, session, prefix="fs_")
        assert taken.names() == ["fs_echo"]
        assert len(await register_mcp_tools(taken, session, prefix="fs_", overwrite=True)) == 7
        assert await taken.invoke_async("fs_echo", {"text": "from the server"}) == "from the server"


def test_names_are_valid_for_every_provider() -> None:
    assert mcp_tool_name("add") == "add"
    assert mcp_tool_name("add", "mcp_") == "mcp_add"
    assert mcp_tool_name("files/read.text", "my server:") == "my_server_files_read_text"
    long_a, long_b = mcp_tool_name("x" * 100 + "a"), mcp_tool_name("x" * 100 + "b")
    assert len(long_a) == len(long_b) == 64
    assert long_a != long_b
    assert long_a == mcp_tool_name("x" * 100 + "a")  # stable
    assert mcp_tool_name("") == "_"


async def test_tools_are_narrowed_per_call_like_local_ones(
    request: pytest.FixtureRequest, scripted_server: ScriptedServer, llm_factory: ServiceFactory, db_path: str
) -> None:
    @tool
    def local_echo(text: str) -> str:
        """Return the text."""
        return text

    registry = ToolRegistry([local_echo])
    async with open_session("stdio", request) as session:
        await register_mcp_tools(registry, session, prefix="mcp_")
        llm = llm_factory("openai", scripted_server)
        # Narrowed away: the model is offered neither tool, and a call to either runs nothing.
        scripted_server.push(
            tool_reply(("mcp_echo", {"text": "a"}), ("local_echo", {"text": "b"})), text_reply("narrowed")
        )
        result, messages = await run_loop(registry, llm, db_path, tools=["mcp_add"])
        assert result.final_text == "narrowed"
        assert scripted_server.requests[0].tools == ["mcp_add"]
        mcp_result, local_result = messages[2], messages[3]
        assert mcp_result["content"] == "Unknown tool: mcp_echo (available tools: mcp_add)"
        assert local_result["content"] == "Unknown tool: local_echo (available tools: mcp_add)"
        assert mcp_result["is_error"] is local_result["is_error"] is True

        # Offered again on the next call: nothing was stored about the narrowing.
        scripted_server.push(tool_reply(("mcp_echo", {"text": "a"})), text_reply("echoed"))
        result, messages = await run_loop(registry, llm, db_path)
        assert messages[2]["content"] == "a"
        assert "mcp_echo" in scripted_server.requests[2].tools and "local_echo" in scripted_server.requests[2].tools


async def test_each_tenant_calls_its_own_server(
    request: pytest.FixtureRequest, scripted_server: ScriptedServer, llm_factory: ServiceFactory, db_path: str
) -> None:
    async with open_session("stdio", request) as first, open_session("http", request) as second:
        tenants = {"acme": ToolRegistry(), "globex": ToolRegistry()}
        await register_mcp_tools(tenants["acme"], first, include=["pid"])
        await register_mcp_tools(tenants["globex"], second, include=["pid"])
        pids = {name: await registry.invoke_async("pid", {}) for name, registry in tenants.items()}
        assert pids["acme"] != pids["globex"]
        assert int(pids["globex"]) == request.getfixturevalue("http_server").process.pid

        llm = llm_factory("openai", scripted_server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
            for name, registry in tenants.items():
                scripted_server.push(tool_reply(("pid", {})), text_reply(f"done for {name}"))
                sid = await loop.new_session_async(metadata={"tenant": name})
                result = await loop.send("which server?", session_id=sid, tools=registry)
                assert result.final_text == f"done for {name}"
                messages = await loop.get_messages_async(sid)
                assert messages[2]["content"] == pids[name]


async def test_non_text_content_becomes_a_note(request: pytest.FixtureRequest) -> None:
    async with open_session("stdio", request) as session:
        registry = ToolRegistry()
        await register_mcp_tools(registry, session, include=["picture"])
        text = await registry.invoke_async("picture", {})
    assert text == "a transparent pixel\n[image content: image/png, 70 bytes; not shown]"


def test_render_mcp_result() -> None:
    resource = EmbeddedResource(
        type="resource", resource=TextResourceContents(uri="file:///notes.txt", mime_type="text/plain", text="hello")
    )
    link = ResourceLink(type="resource_link", uri="file:///big.csv", name="big.csv", mime_type="text/csv")
    result = CallToolResult(content=[TextContent(type="text", text="see:"), resource, link])
    assert render_mcp_result(result) == (
        "see:\n[resource file:///notes.txt]\nhello\n[resource link: file:///big.csv (big.csv, text/csv)]"
    )
    # Structured content is shown when no text block mirrors it.
    assert render_mcp_result(CallToolResult(content=[], structured_content={"total": 3})) == '{"total": 3}'
    mirrored = CallToolResult(content=[TextContent(type="text", text='{"total": 3}')], structured_content={"total": 3})
    assert render_mcp_result(mirrored) == '{"total": 3}'
    assert render_mcp_result(CallToolResult(content=[])) == "[no content]"


@asynccontextmanager
async def in_memory_session(tools: list[Tool], call: Any = None) -> AsyncIterator[ClientSession]:
    """A session to an in-process low-level SDK server offering ``tools`` (any schema); its
    calls answer ``{"tool": name, "args": arguments}`` unless ``call`` answers them."""

    async def list_tools(ctx: Any, params: Any) -> ListToolsResult:
        return ListToolsResult(tools=tools)

    async def echo_call(ctx: Any, params: CallToolRequestParams) -> CallToolResult:
        text = json.dumps({"tool": params.name, "args": params.arguments})
        return CallToolResult(content=[TextContent(type="text", text=text)])

    server = Server("in-memory", on_list_tools=list_tools, on_call_tool=call or echo_call)
    async with create_client_server_memory_streams() as (client_streams, server_streams):
        serving = asyncio.ensure_future(server.run(*server_streams, server.create_initialization_options()))
        try:
            async with ClientSession(*client_streams) as session:
                await session.initialize()
                yield session
        finally:
            serving.cancel()
            await asyncio.gather(serving, return_exceptions=True)


async def test_schemas_with_defs_and_names_that_collide() -> None:
    point = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    tools = [
        Tool(name="files.read", input_schema={"type": "object"}),
        Tool(name="files_read", input_schema={"type": "object"}),
        Tool(
            name="move",
            input_schema={
                "type": "object",
                "properties": {"to": {"$ref": "#/$defs/Point"}, "a-b": {"type": "string"}, "ctx": {"type": "string"}},
                "required": ["to"],
                "$defs": {"Point": point},
            },
        ),
    ]
    async with in_memory_session(tools) as session:
        registry = ToolRegistry()
        with pytest.raises(ValueError, match="'files.read' and 'files_read' both map to the tool name 'files_read'"):
            await register_mcp_tools(registry, session)
        assert len(registry) == 0
        assert await register_mcp_tools(registry, session, include=["files_read", "move"]) == ["files_read", "move"]
        # $defs travel with the schema; arguments are checked through the $ref.
        assert registry.get("move").definition.parameters["$defs"] == {"Point": point}  # type: ignore[union-attr]
        with pytest.raises(ToolValidationError, match=r"to.x: expected integer, got string"):
            await registry.invoke_async("move", {"to": {"x": "far"}})
        # Argument names that are no Python names (or are ours elsewhere) reach the server as given.
        answer = await registry.invoke_async("move", {"to": {"x": 1}, "a-b": "y", "ctx": "z"})
        assert json.loads(answer) == {"tool": "move", "args": {"to": {"x": 1}, "a-b": "y", "ctx": "z"}}


async def test_cancelling_a_send_cancels_its_mcp_call_on_the_server(
    scripted_server: ScriptedServer, llm_factory: ServiceFactory, db_path: str
) -> None:
    handler_started, handler_cancelled = asyncio.Event(), asyncio.Event()

    async def hang(ctx: Any, params: CallToolRequestParams) -> CallToolResult:
        handler_started.set()
        try:
            await asyncio.Event().wait()  # never answers
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise
        raise AssertionError("unreachable")

    scripted_server.push(tool_reply(("hang", {}, "call_hang")))
    async with in_memory_session([Tool(name="hang", input_schema={"type": "object"})], hang) as session:
        registry = ToolRegistry()
        await register_mcp_tools(registry, session)
        async with StatefulAgentLoop(
            llm=llm_factory("openai", scripted_server), db_path=db_path, tool_registry=registry
        ) as loop:
            sid = await loop.new_session_async()
            sending = asyncio.ensure_future(loop.send("go", session_id=sid))
            await handler_started.wait()
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            await asyncio.wait_for(handler_cancelled.wait(), timeout=60)  # a hang guard only
            # The call's result is unknown: the next send answers it, once.
            scripted_server.push(text_reply("after"))
            result = await loop.send("again", session_id=sid, heal_pending=True)
            messages = await loop.get_messages_async(sid)
    assert result.final_text == "after"
    assert history_is_valid(messages)
    assert [m["tool_call_id"] for m in messages if m["role"] == "tool"] == ["call_hang"]


async def test_concurrent_calls_share_one_session(
    transport: str,
    request: pytest.FixtureRequest,
    scripted_server: ScriptedServer,
    llm_factory: ServiceFactory,
    db_path: str,
) -> None:
    calls = [("slow", {"seconds": 0.2}, "call_slow")]
    calls += [("add", {"a": i, "b": 1}, f"call_add_{i}") for i in range(8)]
    calls += [("echo", {"text": f"text {i}"}, f"call_echo_{i}") for i in range(8)]
    scripted_server.push(tool_reply(*calls), text_reply("done"))
    registry = ToolRegistry()
    async with open_session(transport, request) as session:
        await register_mcp_tools(registry, session)
        config = AgentLoopConfig(tool_concurrency=len(calls))
        llm = llm_factory("openai", scripted_server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry, config=config) as loop:
            in_flight: list[str] = []
            loop.event_bus.subscribe(AgentEventType.TOOL_CALL_STARTED, lambda e: in_flight.append(e.data.tool_call_id))
            sid = await loop.new_session_async()
            await loop.send("go", session_id=sid)
            results = {
                m["tool_call_id"]: m["content"] for m in await loop.get_messages_async(sid) if m["role"] == "tool"
            }
    assert len(in_flight) == len(calls)
    assert results["call_slow"] == "slept 0.2s"
    assert all(results[f"call_add_{i}"] == str(i + 1) for i in range(8))
    assert all(results[f"call_echo_{i}"] == f"text {i}" for i in range(8))


async def test_the_server_process_ends_when_the_block_raises() -> None:
    registry = ToolRegistry()
    with pytest.raises(RuntimeError, match="the host failed"):
        async with open_stdio_session(sys.executable, SERVER_ARGS, env=SERVER_ENV, read_timeout_s=READ_TIMEOUT_S) as s:
            await register_mcp_tools(registry, s, include=["pid"])
            pid = int(await registry.invoke_async("pid", {}))
            raise RuntimeError("the host failed")
    # Ended and reaped: neither running nor a zombie.
    assert not Path(f"/proc/{pid}").exists()


def test_power_loop_imports_without_the_mcp_sdk(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['mcp'] = None  # as if the extra were not installed\n"
        "import power_loop, power_loop.testing, power_loop.testing.mcp_server, power_loop.contrib.mcp as m\n"
        "import asyncio\n"
        "try:\n"
        "    asyncio.run(m.register_mcp_tools(power_loop.ToolRegistry(), None))\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, **SERVER_ENV}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'power_loop.contrib.mcp needs the MCP SDK: pip install "power-loop[mcp]"'


def test_the_test_server_is_not_imported_by_power_loop(tmp_path: Path) -> None:
    code = "import sys, power_loop, power_loop.testing; print('mcp' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={**os.environ, **SERVER_ENV}, capture_output=True, text=True
    )
    assert done.stdout.strip() == "False", done.stderr


def test_a_media_payloads_size_is_read_from_its_length() -> None:
    import base64

    from power_loop.contrib.mcp import _decoded_size

    for size in range(12):
        assert _decoded_size(base64.b64encode(b"x" * size).decode()) == size
    assert _decoded_size(base64.encodebytes(b"y" * 1000).decode()) == 1000  # wrapped lines
    assert _decoded_size("abc") is None  # not whole base64: no size claimed
