"""``ScriptedServer``: an OpenAI- and Anthropic-compatible HTTP server on 127.0.0.1.

It answers ``POST /v1/chat/completions`` (Chat Completions) and ``POST /v1/messages``
(Messages), streaming (SSE) and not, from a script or a rule, so the real ``openai`` and
``anthropic`` SDKs can be exercised end to end: text, reasoning, parallel tool calls, usage,
error statuses with ``Retry-After``, hung calls and dropped connections.

Use it as a context manager (it runs its own event loop in a daemon thread, so it serves
sync and async tests alike), through the pytest fixture in
:mod:`power_loop.testing.pytest_plugin`, or as a process: ``python -m power_loop.testing``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ControlSignal
from .script import (
    Rule,
    ScriptedReply,
    ScriptedRequest,
    ScriptExhausted,
    prompt_chars,
    request_from_anthropic,
    request_from_openai,
    text_reply,
)

__all__ = ["ScriptedServer", "echo_rule"]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}


def echo_rule(request: ScriptedRequest) -> ScriptedReply:
    """Default rule: answer ``"echo: <last user text>"``."""
    return text_reply(f"echo: {request.last_user_text}")


def tool_round_trip_rule(request: ScriptedRequest) -> ScriptedReply:
    """Call the first offered tool once per user message, then answer with its result.

    After tool results: ``"done: <results>"``. Otherwise, when tools are offered: a call of
    the first tool with ``{}`` arguments. Otherwise: echo.
    """
    results = request.tool_results
    if results:
        return text_reply("done: " + "; ".join(r.text for r in results))
    if request.tools:
        from ..messages import ToolCall

        call = ToolCall(id=f"call_{len(request.messages)}", name=request.tools[0], arguments="{}")
        return ScriptedReply(tool_calls=(call,))
    return echo_rule(request)


RULES: dict[str, Rule] = {"echo": echo_rule, "tools": tool_round_trip_rule}


class _HTTPError(ControlSignal):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ScriptedServer:
    """A scripted model server on 127.0.0.1.

    Args:
        script: Replies consumed one per model request, in order.
        rule: Function answering requests once the script is empty (default: echo).
        host: Interface to bind (loopback by default).
        port: Port (0 picks a free one).
        keep_requests: Keep every request in :attr:`requests` (the default, for tests that
            look at them). A long-running server nobody inspects (``python -m
            power_loop.testing``) passes False, so its memory stays flat.

    Attributes:
        requests: Every model request received, in order (empty with ``keep_requests=False``).
    """

    def __init__(
        self,
        script: Iterable[ScriptedReply] = (),
        *,
        rule: Rule | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_requests: bool = True,
    ) -> None:
        self._script: deque[ScriptedReply] = deque(script)
        # Once given a script, running past its end is a test bug worth a loud 500; a server
        # started without one echoes (handy for `python -m power_loop.testing`).
        self._scripted = bool(self._script)
        self.rule: Rule | None = rule
        self.host = host
        self.port = port
        self.requests: list[ScriptedRequest] = []
        self.keep_requests = keep_requests
        self._received = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._counter = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{self.host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """Base URL for ``openai.AsyncOpenAI`` (``.../v1``)."""
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        """Base URL for ``anthropic.AsyncAnthropic``."""
        return self.url

    def start(self) -> ScriptedServer:
        """Start serving in a background thread; returns once the port is bound."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._bind())
            except BaseException as exc:  # report bind failures to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name="power-loop-scripted-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread = None
            raise failure[0]
        return self

    async def _bind(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        """Stop serving and join the thread (hung replies are cancelled)."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ScriptedServer:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------------------ script

    def push(self, *replies: ScriptedReply) -> None:
        """Append replies to the script."""
        with self._lock:
            self._script.extend(replies)
            self._scripted = True

    @property
    def remaining(self) -> int:
        """Replies not yet consumed."""
        return len(self._script)

    @property
    def request_count(self) -> int:
        """Model requests received so far."""
        return self._received

    def _next(self, request: ScriptedRequest) -> ScriptedReply:
        with self._lock:
            self._received += 1
            if self.keep_requests:
                self.requests.append(request)
            if self._script:
                return self._script.popleft()
        if self.rule is not None:
            return self.rule(request)
        if self._scripted:
            raise ScriptExhausted(f"ScriptedServer: no reply left for request #{self._received}")
        return echo_rule(request)

    # ------------------------------------------------------------------ HTTP

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, path, headers = _parse_head(head)
                length = int(headers.get("content-length", "0") or 0)
                raw = await reader.readexactly(length) if length else b""
                keep = await self._dispatch(method, path, headers, raw, writer)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _dispatch(
        self, method: str, path: str, headers: Mapping[str, str], raw: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        route = path.split("?", 1)[0].rstrip("/")
        if method == "GET" and route in ("", "/health"):
            await _send_json(writer, 200, {"status": "ok"}, {})
            return True
        if method != "POST" or not (route.endswith("/chat/completions") or route.endswith("/messages")):
            await _send_json(writer, 404, {"error": {"message": f"no route {method} {path}"}}, {})
            return True
        protocol = "anthropic" if route.endswith("/messages") else "openai"
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise _HTTPError(400, "request body must be a JSON object")
            decode = request_from_anthropic if protocol == "anthropic" else request_from_openai
            request = decode(body, headers, path)
            reply = self._next(request)
        except (ValueError, KeyError, TypeError, AttributeError, _HTTPError, ScriptExhausted) as exc:
            status = exc.status if isinstance(exc, _HTTPError) else 500 if isinstance(exc, ScriptExhausted) else 400
            self.errors.append(str(exc))
            await _send_json(writer, status, {"error": {"message": str(exc), "type": "invalid_request_error"}}, {})
            return True
        with self._lock:
            self._counter += 1
            request_id = f"req_scripted_{self._counter}"
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        extra = {"x-request-id": request_id, "request-id": request_id}
        if reply.status is not None:
            if reply.retry_after is not None:
                extra["retry-after"] = str(reply.retry_after)
            error_type = "rate_limit_error" if reply.status == 429 else "api_error"
            payload: dict[str, Any] = {"error": {"message": reply.error_message, "type": error_type}}
            if protocol == "anthropic":
                payload = {"type": "error", **payload}
            await _send_json(writer, reply.status, payload, extra)
            return True
        if protocol == "openai":
            if request.stream:
                return await _stream_openai(writer, reply, request, extra)
            await _send_json(writer, 200, _openai_completion(reply, request), extra)
            return True
        if request.stream:
            return await _stream_anthropic(writer, reply, request, extra)
        await _send_json(writer, 200, _anthropic_message(reply, request), extra)
        return True


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) < 2:
        raise ConnectionError("malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            key, value = line.split(":", 1)
            headers[key.strip().lower()] = value.strip()
    return parts[0].upper(), parts[1], headers


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send_json(writer: asyncio.StreamWriter, status: int, payload: Any, extra: Mapping[str, str]) -> None:
    body = json.dumps(payload).encode()
    headers = {"content-type": "application/json", "content-length": str(len(body)), **extra}
    writer.write(_head(status, headers) + body)
    await writer.drain()


class _SSE:
    """Writes server-sent events as HTTP chunks; stops (drops the connection) on request."""

    def __init__(self, writer: asyncio.StreamWriter, reply: ScriptedReply) -> None:
        self.writer = writer
        self.reply = reply
        self.sent = 0

    async def start(self, extra: Mapping[str, str]) -> None:
        headers = {"content-type": "text/event-stream", "transfer-encoding": "chunked", "cache-control": "no-cache"}
        self.writer.write(_head(200, {**headers, **extra}))

    async def event(self, data: Any, name: str | None = None) -> bool:
        """Send one event; False when the script says the connection drops here."""
        if self.reply.drop_after_chunks is not None and self.sent >= self.reply.drop_after_chunks:
            await self.writer.drain()
            self.writer.transport.abort()
            return False
        text = data if isinstance(data, str) else json.dumps(data)
        frame = (f"event: {name}\n" if name else "") + f"data: {text}\n\n"
        encoded = frame.encode()
        self.writer.write(b"%x\r\n%s\r\n" % (len(encoded), encoded))
        self.sent += 1
        if self.reply.chunk_delay_s:
            await self.writer.drain()
            await asyncio.sleep(self.reply.chunk_delay_s)
        return True

    async def end(self) -> None:
        self.writer.write(b"0\r\n\r\n")
        await self.writer.drain()


def _openai_usage(reply: ScriptedReply, request: ScriptedRequest) -> dict[str, Any]:
    usage = reply.usage_for(prompt_chars(request))
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def _finish_openai(reply: ScriptedReply) -> str:
    return reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")


async def _stream_openai(
    writer: asyncio.StreamWriter, reply: ScriptedReply, request: ScriptedRequest, extra: Mapping[str, str]
) -> bool:
    sse = _SSE(writer, reply)
    await sse.start(extra)
    base = {
        "id": extra["x-request-id"],
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": request.model or "scripted-model",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    events: list[dict[str, Any]] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"reasoning_content": piece}) for piece in reply.chunks(reply.reasoning or "")]
    events += [chunk({"content": piece}) for piece in reply.chunks()]
    for index, call in enumerate(reply.tool_calls):
        half = len(call.arguments) // 2
        events.append(
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": call.id,
                            "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments[:half]},
                        }
                    ]
                }
            )
        )
        events.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": call.arguments[half:]}}]}))
    events.append(chunk({}, _finish_openai(reply)))
    events.append({**base, "choices": [], "usage": _openai_usage(reply, request)})
    for event in events:
        if not await sse.event(event):
            return False
    if not await sse.event("[DONE]"):
        return False
    await sse.end()
    return True


def _openai_completion(reply: ScriptedReply, request: ScriptedRequest) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
    if reply.reasoning:
        message["reasoning_content"] = reply.reasoning
    if reply.tool_calls:
        message["tool_calls"] = [c.to_dict() for c in reply.tool_calls]
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model or "scripted-model",
        "choices": [{"index": 0, "message": message, "finish_reason": _finish_openai(reply)}],
        "usage": _openai_usage(reply, request),
    }


_STOP_REASONS = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}


def _anthropic_usage(reply: ScriptedReply, request: ScriptedRequest) -> dict[str, int]:
    usage = reply.usage_for(prompt_chars(request))
    return {
        "input_tokens": usage.prompt_tokens - usage.cache_read_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": usage.cache_read_tokens,
        "cache_creation_input_tokens": 0,
    }


def _stop_reason(reply: ScriptedReply) -> str:
    return _STOP_REASONS.get(_finish_openai(reply), reply.finish_reason or "end_turn")


def _anthropic_blocks(reply: ScriptedReply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.reasoning:
        blocks.append({"type": "thinking", "thinking": reply.reasoning, "signature": "scripted-signature"})
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    for call in reply.tool_calls:
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError:
            args = {"_unparsed_arguments": call.arguments}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": args})
    return blocks


def _anthropic_message(reply: ScriptedReply, request: ScriptedRequest) -> dict[str, Any]:
    return {
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": request.model or "scripted-model",
        "content": _anthropic_blocks(reply),
        "stop_reason": _stop_reason(reply),
        "stop_sequence": None,
        "usage": _anthropic_usage(reply, request),
    }


async def _stream_anthropic(
    writer: asyncio.StreamWriter, reply: ScriptedReply, request: ScriptedRequest, extra: Mapping[str, str]
) -> bool:
    sse = _SSE(writer, reply)
    await sse.start(extra)
    usage = _anthropic_usage(reply, request)
    start_usage = {**usage, "output_tokens": 1}
    message: dict[str, Any] = {
        "id": "msg_scripted",
        "type": "message",
        "role": "assistant",
        "model": request.model or "scripted-model",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    events: list[tuple[str, dict[str, Any]]] = [("message_start", {"type": "message_start", "message": message})]
    index = 0

    def block(start: dict[str, Any], deltas: list[dict[str, Any]]) -> None:
        nonlocal index
        events.append(("content_block_start", {"type": "content_block_start", "index": index, "content_block": start}))
        for delta in deltas:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        index += 1

    if reply.reasoning:
        block(
            {"type": "thinking", "thinking": "", "signature": ""},
            [{"type": "thinking_delta", "thinking": p} for p in reply.chunks(reply.reasoning)]
            + [{"type": "signature_delta", "signature": "scripted-signature"}],
        )
    if reply.text:
        block({"type": "text", "text": ""}, [{"type": "text_delta", "text": p} for p in reply.chunks()])
    for call in reply.tool_calls:
        arguments = call.arguments or "{}"
        half = len(arguments) // 2
        block(
            {"type": "tool_use", "id": call.id, "name": call.name, "input": {}},
            [
                {"type": "input_json_delta", "partial_json": arguments[:half]},
                {"type": "input_json_delta", "partial_json": arguments[half:]},
            ],
        )
    events.append(
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _stop_reason(reply), "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
    )
    events.append(("message_stop", {"type": "message_stop"}))
    for name, data in events:
        if not await sse.event(data, name):
            return False
    await sse.end()
    return True
