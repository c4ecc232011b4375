"""A raw HTTP server on 127.0.0.1 that misbehaves on the wire, for the provider fault tests.

Unlike ``ScriptedServer``, it writes exactly the bytes a test gives it: truncated event
streams, HTML pages, broken UTF-8, HTTP/1.0 answers, dripping headers. It runs on the test's
own event loop, so the real SDK clients under test talk to it over real sockets.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

Handler = Callable[["WireServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class WireServer:
    """Each accepted connection is served by ``handler(server, reader, writer)``.

    Attributes:
        connections: Connections accepted so far.
        requests: Raw bodies of the requests read through :meth:`read_request`.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_for(self, protocol: str) -> str:
        return self.anthropic_url if protocol == "anthropic" else self.openai_url

    async def __aenter__(self) -> WireServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The body of the next request on this connection; None when the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length else b""
        self.requests.append(body)
        return body


def http_response(
    body: bytes,
    *,
    status: str = "200 OK",
    content_type: str = "text/event-stream",
    framing: str = "chunked",
    version: str = "HTTP/1.1",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """One complete HTTP response. ``framing``: ``chunked``, ``length`` or ``close`` (the body
    ends when the server closes the connection)."""
    lines = [f"{version} {status}", f"content-type: {content_type}"]
    if framing == "chunked":
        lines.append("transfer-encoding: chunked")
        payload = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    elif framing == "length":
        lines.append(f"content-length: {len(body)}")
        payload = body
    else:
        payload = body
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def answering(responses: Iterable[bytes], *, close_after: bool = False) -> Handler:
    """A handler answering the requests of each connection with ``responses`` in turn (shared
    across connections); ``close_after`` closes the connection after each answer."""
    queue = list(responses)

    async def handle(server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while queue:
            if await server.read_request(reader) is None:
                return
            writer.write(queue.pop(0))
            await writer.drain()
            if close_after:
                return

    return handle


def sse(*events: Any, done: bool = False, ascii_json: bool = True) -> bytes:
    """Server-sent events: each event is a dict (``data:`` JSON), a ``(name, dict)`` pair, or
    raw bytes put on the wire as they are."""
    out = b""
    for event in events:
        if isinstance(event, bytes):
            out += event
            continue
        name, data = event if isinstance(event, tuple) else (None, event)
        if name:
            out += b"event: " + name.encode() + b"\n"
        out += b"data: " + json.dumps(data, ensure_ascii=ascii_json).encode() + b"\n\n"
    if done:
        out += b"data: [DONE]\n\n"
    return out


def openai_chunk(
    content: str | None = None, *, finish: str | None = None, usage: dict[str, int] | None = None
) -> dict[str, Any]:
    delta = {"content": content} if content is not None else {}
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "wire-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["choices"] = []
        chunk["usage"] = usage
    return chunk


def openai_stream(*pieces: str, finish: bool = True, done: bool = True) -> bytes:
    """A Chat Completions stream of ``pieces``; ``finish``/``done`` control its terminal events."""
    events: list[Any] = [openai_chunk(piece) for piece in pieces]
    if finish:
        events.append(openai_chunk(finish="stop"))
        events.append(openai_chunk(usage={"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}))
    return sse(*events, done=done)


def anthropic_start(input_tokens: int = 7) -> tuple[str, dict[str, Any]]:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "wire-model",
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }
    return "message_start", {"type": "message_start", "message": message}


def anthropic_text(index: Any, text: str) -> tuple[str, dict[str, Any]]:
    return "content_block_delta", {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def anthropic_stream(*pieces: str, stop_reason: bool = True, message_stop: bool = True) -> bytes:
    """A Messages stream of ``pieces``; the flags control its terminal events."""
    events: list[Any] = [
        anthropic_start(),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
    ]
    events += [anthropic_text(0, piece) for piece in pieces]
    events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if stop_reason:
        events.append(
            (
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}},
            )
        )
    if message_stop:
        events.append(("message_stop", {"type": "message_stop"}))
    return sse(*events)


def text_stream(protocol: str, *pieces: str, terminal: bool = True) -> bytes:
    """A complete (or, with ``terminal=False``, cut short) text stream in ``protocol``."""
    if protocol == "anthropic":
        return anthropic_stream(*pieces, stop_reason=terminal, message_stop=terminal)
    return openai_stream(*pieces, finish=terminal, done=terminal)
