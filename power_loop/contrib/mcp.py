"""Tools from MCP servers: an MCP ``ClientSession``'s tools registered in a ``ToolRegistry``.

    from power_loop.contrib.mcp import open_stdio_session, register_mcp_tools

    async with open_stdio_session("my-mcp-server", ["--flag"]) as session:
        names = await register_mcp_tools(registry, session, prefix="fs_")
        async with StatefulAgentLoop(..., tool_registry=registry) as loop:
            ...

Needs the ``mcp`` extra (``pip install "power-loop[mcp]"``: the official MCP Python SDK, 2.x).
The SDK is imported when a function of this module runs, never by ``import power_loop``.

Guarantees:

* **The host owns the connection.** The registry holds a reference to the session and
  nothing else: no process, no task, no socket. The session must stay open for as long as a
  loop may call the tools; a call after it closed is answered to the model as a tool error.
* **A call never ends the run.** A result with ``isError``, a JSON-RPC error, a timeout or a
  broken transport (the server process died) becomes a tool error message the model reads
  (``Error: MCP tool 'x' ...``); the call is recorded ``failed`` and the run goes on.
* **Names are valid everywhere.** Registered names match ``[A-Za-z0-9_-]{1,64}``, the rule
  of both OpenAI and Anthropic: see :func:`mcp_tool_name`.
* **Registration is all or nothing.** Every name is checked before the first tool is added.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from os import PathLike
from typing import TYPE_CHECKING, Any

from .._version import __version__
from ..errors import ToolError
from ..tools.definition import ToolDefinition
from ..tools.registry import ToolRegistry

if TYPE_CHECKING:
    from mcp import ClientSession
    from mcp.types import CallToolResult, ContentBlock, Tool

__all__ = [
    "MCPToolError",
    "mcp_tool_name",
    "open_http_session",
    "open_stdio_session",
    "register_mcp_tools",
    "render_mcp_result",
]

logger = logging.getLogger(__name__)

_MAX_NAME = 64
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_EXTRA_HINT = 'power_loop.contrib.mcp needs the MCP SDK: pip install "power-loop[mcp]"'


class MCPToolError(ToolError):
    """An MCP tool call failed: the server answered ``isError``, a protocol error, or the
    connection broke. Raised inside the tool's handler, so the model reads its message."""


def _require_mcp() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError as exc:
        raise ImportError(_EXTRA_HINT) from exc


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def mcp_tool_name(name: str, prefix: str | None = None) -> str:
    """The registry name of the MCP tool ``name``: valid for OpenAI and Anthropic alike.

    ``prefix + name`` with every character outside ``[A-Za-z0-9_-]`` replaced by ``_``
    (``files.read`` → ``files_read``). A result longer than 64 characters keeps its first 55
    and ends with ``_`` and 8 hex digits of a hash of the original, so distinct long names
    stay distinct and the same name always maps to the same registry name.

    Args:
        name: The tool's name on the MCP server.
        prefix: Prepended before sanitizing, e.g. ``"fs_"``.
    """
    full = f"{prefix or ''}{name}"
    cleaned = _INVALID_NAME_CHARS.sub("_", full) or "_"
    if len(cleaned) > _MAX_NAME:
        cleaned = f"{cleaned[: _MAX_NAME - 9]}_{_short_hash(full)}"
    return cleaned


def _decoded_size(data: str) -> int | None:
    """The bytes a base64 payload stands for, from its length (decoding megabytes of media
    on the event loop just to say how large they are would stall it); None when it is not
    whole base64."""
    body = data.strip()
    length = len(body) - body.count("\n") - body.count("\r")
    if length % 4:
        return None
    return length // 4 * 3 - (len(body) - len(body.rstrip("=")))


def _binary_note(kind: str, mime_type: str | None, data: str) -> str:
    size = _decoded_size(data)
    what = ", ".join(part for part in (mime_type, f"{size} bytes" if size is not None else None) if part)
    return f"[{kind}{': ' + what if what else ''}; not shown]"


def _render_block(block: ContentBlock) -> str:
    from mcp.types import AudioContent, EmbeddedResource, ImageContent, ResourceLink, TextContent

    if isinstance(block, TextContent):
        return block.text
    if isinstance(block, ImageContent | AudioContent):
        return _binary_note(f"{block.type} content", block.mime_type, block.data)
    if isinstance(block, ResourceLink):
        details = ", ".join(x for x in (block.name, block.mime_type) if x)
        return f"[resource link: {block.uri}{' (' + details + ')' if details else ''}]"
    if isinstance(block, EmbeddedResource):
        resource = block.resource
        if hasattr(resource, "text"):
            return f"[resource {resource.uri}]\n{resource.text}"
        return _binary_note(f"resource {resource.uri}", resource.mime_type, resource.blob)
    return f"[{getattr(block, 'type', 'unknown')} content; not shown]"


def render_mcp_result(result: CallToolResult) -> str:
    """The text the model reads for an MCP tool result.

    Text blocks as they are; images, audio and binary resources as a one-line note (kind,
    MIME type, size); embedded text resources with a ``[resource <uri>]`` header; resource
    links as ``[resource link: <uri> (name, type)]``. ``structuredContent`` is added as JSON
    only when the result has no text block (servers are asked to mirror it in a text block,
    which is then not repeated). Parts are joined by newlines; ``[no content]`` when empty.
    """
    parts = [_render_block(block) for block in result.content]
    has_text = any(getattr(block, "type", None) == "text" for block in result.content)
    if result.structured_content is not None and not has_text:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, default=str))
    return "\n".join(parts) if parts else "[no content]"


def _wants(include: Collection[str] | Callable[[Tool], bool] | None, tool: Tool) -> bool:
    if include is None:
        return True
    if callable(include):
        return bool(include(tool))
    return tool.name in include


async def _list_all_tools(session: ClientSession) -> list[Tool]:
    from mcp.types import PaginatedRequestParams

    tools: list[Tool] = []
    cursor: str | None = None
    while True:
        params = PaginatedRequestParams(cursor=cursor) if cursor is not None else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


def _make_handler(session: ClientSession, server_name: str, timeout_s: float | None) -> Callable[..., Any]:
    from mcp import MCPError

    async def call_mcp_tool(**arguments: Any) -> str:
        try:
            result = await session.call_tool(server_name, arguments, read_timeout_seconds=timeout_s)
        except MCPError as exc:
            raise MCPToolError(f"MCP tool {server_name!r} could not be called: {exc}") from exc
        except Exception as exc:  # a closed session, a broken transport, an unexpected result kind
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise MCPToolError(f"MCP tool {server_name!r} could not be called: {reason}") from exc
        text = render_mcp_result(result)
        if result.is_error:
            raise MCPToolError(f"MCP tool {server_name!r} failed: {text}")
        return text

    call_mcp_tool.__name__ = f"mcp_{_INVALID_NAME_CHARS.sub('_', server_name)}"
    return call_mcp_tool


def _definition(tool: Tool, name: str) -> ToolDefinition | None:
    schema: Mapping[str, Any] = tool.input_schema or {"type": "object", "properties": {}}
    if schema.get("type", "object") != "object":
        logger.warning("MCP tool %r skipped: its input schema is not an object schema", tool.name)
        return None
    description = tool.description or tool.title or f"The MCP tool {tool.name}."
    return ToolDefinition(name=name, description=description, input_schema=dict(schema))


async def register_mcp_tools(
    registry: ToolRegistry,
    session: ClientSession,
    *,
    prefix: str | None = None,
    include: Collection[str] | Callable[[Tool], bool] | None = None,
    timeout_s: float | None = None,
    overwrite: bool = False,
) -> list[str]:
    """Register the tools of an initialized MCP ``session`` in ``registry``.

    Lists the server's tools once (every page) and registers each as a tool whose schema is
    the server's ``inputSchema`` and whose handler forwards the call with
    ``session.call_tool(name, arguments)``. The result becomes the tool output (see
    :func:`render_mcp_result`); an ``isError`` result, a protocol error, a timeout or a broken
    connection becomes a tool error the model reads (:class:`MCPToolError`). Tools whose input
    schema is not an object schema are skipped with a warning.

    The session must outlive every run that may call these tools: the registry holds no
    process or connection of its own. Call again with ``overwrite=True`` to pick up a
    changed tool list.

    Args:
        registry: Where to register.
        session: An initialized ``mcp.ClientSession`` (see :func:`open_stdio_session`,
            :func:`open_http_session`), used on the loop's event loop.
        prefix: Prepended to each name, e.g. ``"fs_"``; see :func:`mcp_tool_name`.
        include: Server tool names to register, or a predicate on each ``mcp.types.Tool``;
            None registers every tool.
        timeout_s: The SDK's read timeout for each call (None: the session's own).
        overwrite: Replace registry tools of the same name instead of failing.

    Returns:
        The registered names, in the server's order.

    Raises:
        ImportError: The ``mcp`` extra is not installed.
        ValueError: ``include`` names a tool the server does not offer, two server tools map
            to one name, or a name is taken in ``registry`` (without ``overwrite``). Nothing
            is registered then.
        mcp.MCPError: Listing the tools failed.
    """
    _require_mcp()
    tools = await _list_all_tools(session)
    if include is not None and not callable(include):
        if isinstance(include, str):
            raise TypeError("include= takes a collection of tool names, not a single string")
        unknown = sorted(set(include) - {tool.name for tool in tools})
        if unknown:
            offered = ", ".join(tool.name for tool in tools) or "none"
            raise ValueError(f"include= names unknown MCP tool(s): {', '.join(unknown)} (offered: {offered})")
    planned: list[tuple[ToolDefinition, str]] = []
    taken: dict[str, str] = {}
    for tool in tools:
        if not _wants(include, tool):
            continue
        name = mcp_tool_name(tool.name, prefix)
        if name in taken:
            raise ValueError(f"MCP tools {taken[name]!r} and {tool.name!r} both map to the tool name {name!r}")
        if name in registry and not overwrite:
            raise ValueError(f"Tool already registered: {name} (MCP tool {tool.name!r}; pass overwrite=True)")
        definition = _definition(tool, name)
        if definition is not None:
            taken[name] = tool.name
            planned.append((definition, tool.name))
    for definition, server_name in planned:
        registry.register(definition, _make_handler(session, server_name, timeout_s), overwrite=overwrite)
    return [definition.name for definition, _ in planned]


def _client_session(read_stream: Any, write_stream: Any, read_timeout_s: float | None) -> ClientSession:
    """A ``ClientSession`` over a transport's streams, introducing itself as power-loop."""
    from mcp import ClientSession
    from mcp.types import Implementation

    info = Implementation(name="power-loop", version=__version__)
    return ClientSession(read_stream, write_stream, read_timeout_seconds=read_timeout_s, client_info=info)


def _sole_exception(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups, else ``exc`` itself."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


async def _hold_session(
    connect: Callable[[], AbstractAsyncContextManager[ClientSession]],
    opened: asyncio.Future[ClientSession],
    release: asyncio.Event,
) -> None:
    """Open, initialize and hold one session until ``release`` is set, all in this task.

    The SDK's transports run their I/O in a task group entered where the session is opened;
    when the connection breaks (a POST to a server that went away), that group fails and
    cancels whatever runs inside it. Holding the session in a task of its own keeps that
    cancellation away from the host's code (a ``send`` in progress): callers get an error
    from the call instead.
    """
    try:
        async with connect() as unopened, unopened as session:
            await session.initialize()
            opened.set_result(session)
            await release.wait()
    except BaseException as exc:
        if not opened.done():  # the opening failed: the host's ``async with`` raises it
            if isinstance(exc, asyncio.CancelledError):
                opened.cancel()
                raise
            opened.set_exception(_sole_exception(exc))
            return
        if not isinstance(exc, Exception):  # cancelled from outside, KeyboardInterrupt, SystemExit
            raise
        # The connection broke while open; its calls already failed as tool errors.
        logger.warning("MCP session ended with an error: %r", exc)


@asynccontextmanager
async def _held_session(
    connect: Callable[[], AbstractAsyncContextManager[ClientSession]],
) -> AsyncIterator[ClientSession]:
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[ClientSession] = loop.create_future()
    release = asyncio.Event()
    holder = asyncio.create_task(_hold_session(connect, opened, release), name="power_loop-mcp-session")
    try:
        session = await asyncio.shield(opened)
    except BaseException:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        raise
    try:
        yield session
    finally:
        release.set()
        await asyncio.gather(holder, return_exceptions=True)


@asynccontextmanager
async def open_stdio_session(
    command: str,
    args: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | PathLike[str] | None = None,
    read_timeout_s: float | None = None,
) -> AsyncIterator[ClientSession]:
    """Start an MCP server process and yield an initialized ``ClientSession`` over its stdio.

    On exit the session closes and the SDK ends the process. The process gets the SDK's
    default environment (``HOME``, ``PATH``, ``USER`` and a few more), plus ``env``; pass
    anything else it needs (``PYTHONPATH``, API keys) in ``env``. Its stderr is this
    process's stderr. The connection lives in a task of its own (see the module docs), so a
    dying server fails its calls and never cancels the code inside this block.

    Args:
        command: The executable.
        args: Its arguments.
        env: Extra environment variables for the process.
        cwd: Its working directory.
        read_timeout_s: How long any request waits for its answer (None: no limit). A dead
            process is noticed without it; a server that hangs is not.

    Raises:
        ImportError: The ``mcp`` extra is not installed.
        OSError: The process could not be started.
        mcp.MCPError: The server did not complete the MCP handshake.
    """
    _require_mcp()
    from mcp import StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=command,
        args=list(args),
        env=dict(env) if env is not None else None,
        cwd=cwd if cwd is None else str(cwd),
    )

    @asynccontextmanager
    async def connect() -> AsyncIterator[ClientSession]:
        async with stdio_client(params) as (read_stream, write_stream):
            yield _client_session(read_stream, write_stream, read_timeout_s)

    async with _held_session(connect) as session:
        yield session


@asynccontextmanager
async def open_http_session(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    read_timeout_s: float | None = None,
) -> AsyncIterator[ClientSession]:
    """Connect to an MCP server over streamable HTTP and yield an initialized ``ClientSession``.

    The HTTP client (the SDK's ``httpx2``) is created here and closed on exit, together with
    the MCP session (a ``DELETE`` tells the server it ended). The connection lives in a task
    of its own (see the module docs), so a server that goes away fails its calls and never
    cancels the code inside this block.

    Args:
        url: The server's endpoint, e.g. ``http://127.0.0.1:8000/mcp``.
        headers: Sent with every request, e.g. ``{"Authorization": "Bearer ..."}``.
        read_timeout_s: How long any request waits for its answer (None: the HTTP client's
            read timeout, 300 seconds).

    Raises:
        ImportError: The ``mcp`` extra is not installed.
        httpx2.HTTPError: The server could not be reached.
        mcp.MCPError: The server did not complete the MCP handshake.
    """
    _require_mcp()
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    @asynccontextmanager
    async def connect() -> AsyncIterator[ClientSession]:
        timeout = httpx2.Timeout(30.0, read=300.0)
        async with AsyncExitStack() as stack:
            http_client = await stack.enter_async_context(
                httpx2.AsyncClient(headers=dict(headers or {}), timeout=timeout)
            )
            streams = await stack.enter_async_context(streamable_http_client(url, http_client=http_client))
            yield _client_session(*streams, read_timeout_s)

    async with _held_session(connect) as session:
        yield session
