"""Anthropic Messages through ``anthropic.AsyncAnthropic``.

* The system prompt travels as the ``system`` parameter; tool calls are ``tool_use`` blocks
  and tool results ``tool_result`` blocks inside a user turn; consecutive turns of the same
  role are merged (the API expects alternation). System messages (such as a compaction
  summary) join the ``system`` parameter; when the remaining history starts with the
  assistant, a user turn ``(continued)`` is put first (the API wants a user message first).
* Only fields of the Messages API are sent (model, max_tokens, messages, system, tools,
  tool_choice, temperature, stream, output_config), as pre-encoded bytes through ``AsyncAnthropic.post``,
  with the SDK's retries off. Per-message block fragments are cached on the messages.
* Streaming events: ``message_start`` (input usage), ``content_block_start`` /
  ``content_block_delta`` (text, tool input JSON, thinking, signature), ``message_delta``
  (stop reason, output usage). Thinking blocks are kept with their signature and echoed back
  on later turns, as the API requires for tool use with extended thinking.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from ..errors import LLMResponseError
from ..messages import (
    AssistantMessage,
    ImagePart,
    Message,
    RawPart,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolResultMessage,
    Usage,
)
from ..tools.definition import ToolDefinition
from ._common import (
    DECODING_FAULTS,
    dumps,
    json_answer,
    memo,
    response_fault,
    stream_error,
    truncated_stream,
)
from ._sdk_service import SDKService
from ._sse import EventStream, PendingDeltas, fix_surrogates
from .base import LLMRequest, LLMResponse, StreamCallbacks

__all__ = ["AnthropicMessagesService", "build_messages_body"]

_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "tool_use": "tool_calls", "max_tokens": "length"}
_MEMO_KEY = "_power_loop_anthropic_wire"
_DEFAULT_MAX_TOKENS = 4096
_ANTHROPIC_PART_TYPES = frozenset({"text", "image", "document", "tool_use", "tool_result", "thinking"})
_CONTINUED = dumps({"type": "text", "text": "(continued)"})
"""The user turn put first when a history would start with the assistant."""


def _image_block(part: ImagePart) -> dict[str, Any]:
    if part.url.startswith("data:") and ";base64," in part.url:
        media_type, data = part.url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": part.url}}


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, TextPart):
            if part.text:
                blocks.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            blocks.append(_image_block(part))
        elif isinstance(part, RawPart) and part.type in _ANTHROPIC_PART_TYPES:
            blocks.append(dict(part.data))
        elif isinstance(part, RawPart):
            # A part only another provider understands: keep its text, if any, so nothing the
            # user said silently disappears.
            text = part.data.get("text")
            if isinstance(text, str) and text:
                blocks.append({"type": "text", "text": text})
    return blocks


def _tool_input(call: ToolCall) -> dict[str, Any]:
    try:
        return call.parsed_arguments()
    except ValueError:
        # The API needs an object; keep what the model said so the history stays honest.
        return {"_unparsed_arguments": call.arguments}


def _turn(message: Message) -> tuple[str, bytes]:
    """(role, comma-joined JSON content blocks) of one message."""
    if isinstance(message, AssistantMessage):
        blocks: list[dict[str, Any]] = []
        if message.reasoning and message.reasoning_signature:
            blocks.append({"type": "thinking", "thinking": message.reasoning, "signature": message.reasoning_signature})
        blocks += _content_blocks(message.content)
        blocks += [
            {"type": "tool_use", "id": c.id, "name": c.name, "input": _tool_input(c)} for c in message.tool_calls
        ]
        return "assistant", b",".join(dumps(b) for b in blocks)
    if isinstance(message, ToolResultMessage):
        result: dict[str, Any] = {
            "type": "tool_result",
            "tool_use_id": message.tool_call_id,
            "content": _content_blocks(message.content) or [{"type": "text", "text": "(no output)"}],
        }
        if message.is_error:
            result["is_error"] = True
        return "user", dumps(result)
    blocks = _content_blocks(message.content) or [{"type": "text", "text": "(empty)"}]
    return "user", b",".join(dumps(b) for b in blocks)


def build_messages_body(request: LLMRequest, *, model: str, max_tokens: int, temperature: float | None) -> bytes:
    """Encode a Messages API request body from ``request``."""
    system_parts = [request.system_prompt] if request.system_prompt else []
    turns: list[tuple[str, list[bytes]]] = []
    for message in request.messages:
        if isinstance(message, SystemMessage):
            system_parts.append(message.content)
            continue
        role, blocks = memo(message, _MEMO_KEY, lambda m=message: _turn(m))  # type: ignore[misc]
        if not blocks:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].append(blocks)
        else:
            turns.append((role, [blocks]))
    if turns and turns[0][0] == "assistant":
        # The API wants the first message from the user. A history can start with the
        # assistant once its head (a compaction summary) has moved to ``system``.
        turns.insert(0, ("user", [_CONTINUED]))
    head: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if request.stream:
        head["stream"] = True
    if system_parts:
        head["system"] = "\n\n".join(system_parts)
    if temperature is not None:
        head["temperature"] = temperature
    if request.tools and request.tool_choice:
        head["tool_choice"] = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}[
            request.tool_choice
        ]
    output_format = _output_format(request.response_format)
    if output_format is not None:
        head["output_config"] = {"format": output_format}
    if request.extra_body:
        head.update(request.extra_body)
    encoded_turns = b",".join(
        b'{"role":' + dumps(role) + b',"content":[' + b",".join(blocks) + b"]}" for role, blocks in turns
    )
    parts = [dumps(head)[:-1], b',"messages":[', encoded_turns, b"]"]
    if request.tools:
        tools = b",".join(memo(t, _MEMO_KEY, lambda t=t: _tool_wire(t)) for t in request.tools)  # type: ignore[misc]
        parts += [b',"tools":[', tools, b"]"]
    parts.append(b"}")
    return b"".join(parts)


def _output_format(response_format: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The Messages API's native structured output (``output_config.format``) for a
    Chat Completions-shaped ``json_schema`` request; None for anything else."""
    if response_format is None or response_format.get("type") != "json_schema":
        return None
    inner = response_format.get("json_schema")
    if not isinstance(inner, Mapping) or not isinstance(inner.get("schema"), Mapping):
        return None
    return {"type": "json_schema", "schema": dict(inner["schema"])}


def _tool_wire(tool: ToolDefinition) -> bytes:
    return dumps({"name": tool.name, "description": tool.description, "input_schema": tool.parameters})


@dataclass
class _Block:
    kind: str
    id: str = ""
    name: str = ""
    parts: list[str] = field(default_factory=list)
    signature: str = ""


class _EventAccumulator:
    """Folds Messages stream events into one response.

    Deltas meant for the stream callbacks are queued in ``deltas`` and passed on by the
    caller (see :class:`~power_loop.providers._sse.PendingDeltas`).
    """

    def __init__(self, callbacks: StreamCallbacks | None) -> None:
        self.blocks: dict[int, _Block] = {}
        self.input_tokens = 0
        self.cache_read = 0
        self.cache_write = 0
        self.output_tokens = 0
        self.saw_usage = False
        self.stop_reason: str | None = None
        self.stopped = False
        self.model: str | None = None
        self.deltas = PendingDeltas(callbacks) if callbacks else None

    def add(self, event: Mapping[str, Any]) -> None:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            if message.get("model"):
                self.model = str(message["model"])
            self._usage(message.get("usage"))
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            index = _index(event.get("index", len(self.blocks)))
            self.blocks[index] = _Block(
                kind=str(block.get("type", "text")), id=str(block.get("id") or ""), name=str(block.get("name") or "")
            )
            if block.get("type") == "text" and block.get("text"):
                self._text(index, block["text"])
        elif kind == "content_block_delta":
            self._delta(_index(event.get("index", 0)), event.get("delta") or {})
        elif kind == "message_delta":
            delta = event.get("delta") or {}
            if delta.get("stop_reason"):
                self.stop_reason = str(delta["stop_reason"])
            self._usage(event.get("usage"))
        elif kind == "message_stop":
            self.stopped = True

    @property
    def finished(self) -> bool:
        """The stream reached its end: ``message_stop``, or a ``message_delta`` with a stop reason."""
        return self.stopped or self.stop_reason is not None

    def _usage(self, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        for attr, name in (
            ("input_tokens", "input_tokens"),
            ("cache_read", "cache_read_input_tokens"),
            ("cache_write", "cache_creation_input_tokens"),
            ("output_tokens", "output_tokens"),
        ):
            value = usage.get(name)
            if value is not None:
                setattr(self, attr, int(value))
                self.saw_usage = True

    def _text(self, index: int, text: Any) -> None:
        if not isinstance(text, str):
            raise TypeError(f"text is a {type(text).__name__}, not a string")
        self.blocks[index].parts.append(text)
        if self.deltas is not None:
            self.deltas.items.append((False, text))

    def _delta(self, index: int, delta: Mapping[str, Any]) -> None:
        block = self.blocks.setdefault(index, _Block(kind="text"))
        kind = delta.get("type")
        if kind == "text_delta":
            self._text(index, delta.get("text", ""))
        elif kind == "input_json_delta":
            block.parts.append(_string(delta.get("partial_json", "")))
        elif kind == "thinking_delta":
            thinking = _string(delta.get("thinking", ""))
            block.parts.append(thinking)
            if self.deltas is not None:
                self.deltas.items.append((True, thinking))
        elif kind == "signature_delta":
            block.signature += _string(delta.get("signature", ""))

    def usage(self) -> Usage:
        """Usage so far (``prompt_tokens`` counts cache reads and writes)."""
        prompt = self.input_tokens + self.cache_read + self.cache_write
        return Usage.of_call(
            prompt_tokens=prompt, completion_tokens=self.output_tokens, cache_read_tokens=self.cache_read
        )

    def response(self, request_id: str | None) -> LLMResponse:
        text: list[str] = []
        thinking: list[str] = []
        signature = ""
        calls: list[ToolCall] = []
        for _, block in sorted(self.blocks.items()):
            if block.kind == "text":
                text.append("".join(block.parts))
            elif block.kind == "thinking":
                thinking.append("".join(block.parts))
                signature = block.signature or signature
            elif block.kind == "tool_use":
                calls.append(
                    ToolCall(
                        id=block.id,
                        name=fix_surrogates(block.name),
                        arguments=fix_surrogates("".join(block.parts)) or "{}",
                    )
                )
        message = AssistantMessage(
            content=fix_surrogates("".join(text)),
            tool_calls=tuple(calls),
            reasoning=fix_surrogates("".join(thinking)) or None,
            reasoning_signature=signature or None,
        )
        reason = _FINISH.get(self.stop_reason or "", self.stop_reason)
        return LLMResponse(
            message=message, usage=self.usage(), finish_reason=reason, model=self.model, request_id=request_id
        )


def _index(value: Any) -> int:
    """A block index: an integer (``True`` or ``1.5`` are not indexes)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"block index {value!r} is not an integer")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _message(msg: Any, request_id: str | None) -> LLMResponse:
    """Decode a Messages API ``message`` object (raises TypeError/ValueError on a wrong shape)."""
    if not isinstance(msg, Mapping):
        raise TypeError(f"the answer is a JSON {type(msg).__name__}, not a message object")
    content = msg.get("content")
    if msg.get("type", "message") != "message" or not isinstance(content, list):
        raise ValueError("the answer is not a message object with a content list")
    acc = _EventAccumulator(None)
    acc.model = msg.get("model")
    acc.stop_reason = msg.get("stop_reason")
    acc._usage(msg.get("usage"))
    for index, block in enumerate(content):
        kind = str(block.get("type", ""))
        acc.blocks[index] = _Block(kind=kind, id=str(block.get("id") or ""), name=str(block.get("name") or ""))
        if kind == "text":
            acc.blocks[index].parts.append(_string(block.get("text", "")))
        elif kind == "tool_use":
            acc.blocks[index].parts.append(json.dumps(block.get("input", {})))
        elif kind == "thinking":
            acc.blocks[index].parts.append(_string(block.get("thinking", "")))
            acc.blocks[index].signature = _string(block.get("signature") or "")
    return acc.response(request_id)


class AnthropicMessagesService(SDKService):
    """An :class:`~power_loop.providers.base.LLMService` for the Anthropic Messages API.

    Args:
        model: Model name sent with every request.
        api_key: API key (``x-api-key``).
        base_url: Server base URL (default: Anthropic's).
        timeout_s: Time limit of each attempt, in seconds: connecting, sending the request and
            receiving the whole answer (a stream included), on every HTTP transport.
        max_retries: Retries the engine may make when no ``LLMRetryPolicy`` is set.
        max_tokens: Upper bound on any request's completion tokens; also the value sent when
            a request sets none (the API requires one; default 4096).
        temperature: Temperature used when a request does not set one.
        stream: Stream responses.
        context_window: The model's context window in tokens, if known.
        default_headers: Extra headers sent with every request.
        client: A ready ``anthropic.AsyncAnthropic`` to use instead of building one.
        http_transport: ``"native"`` (default: power_loop's probe-free keep-alive pool),
            ``"httpx"`` (the SDK's default transport; used anyway when a proxy is configured)
            or ``"aiohttp"`` (the SDK's aiohttp-based client; ``pip install power-loop[aiohttp]``).
        prepared_requests: Let the SDK prepare each endpoint's request once and re-send it
            with a new body (default), instead of running the SDK's per-request option
            handling every time (about 150 µs per request on the event-loop thread). Only
            for the client power_loop builds; a ``client`` you pass is always called through
            its ``post``. See ``docs/providers.md``.
    """

    provider = "anthropic"
    _sdk_name = "anthropic"
    _client_class = "AsyncAnthropic"

    async def complete(self, request: LLMRequest, *, callbacks: StreamCallbacks | None = None) -> LLMResponse:
        """Make one Messages request. See :class:`~power_loop.providers.base.LLMService`."""
        client, sdk = await self._client()
        if request.stream and not self.stream:
            request = replace(request, stream=False)
        max_tokens = request.max_tokens or self.max_tokens or _DEFAULT_MAX_TOKENS
        if self.max_tokens is not None:
            max_tokens = min(max_tokens, self.max_tokens)
        temperature = request.temperature if request.temperature is not None else self.temperature
        body = build_messages_body(
            request, model=request.model or self.model, max_tokens=max_tokens, temperature=temperature
        )
        options: dict[str, Any] = {"headers": {"Content-Type": "application/json"}}
        timeout = self.timeout_s
        if request.timeout_s is not None:
            options["timeout"] = timeout = request.timeout_s
        if request.stream:
            return await self._mapped(
                sdk, lambda: self._stream(client, sdk, body, options, callbacks), client=client, timeout=timeout
            )
        return await self._mapped(
            sdk, lambda: self._plain(client, sdk, body, options, callbacks), client=client, timeout=timeout
        )

    async def _stream(
        self, client: Any, sdk: ModuleType, body: bytes, options: dict[str, Any], callbacks: StreamCallbacks | None
    ) -> LLMResponse:
        # The SDK sends the request and raises for error statuses; the event stream of a
        # successful response is decoded here (see _sse.py), one dict per event.
        response = await self._holder.post(client, sdk, "/v1/messages", body, options, stream=True)
        request_id = response.headers.get("request-id")
        acc = _EventAccumulator(callbacks)
        events = EventStream(response, self.provider)
        try:
            if callbacks and callbacks.on_stream_start:
                callbacks.on_stream_start()
            async for name, event in events.events():
                if not isinstance(event, Mapping):
                    continue
                if name == "error" or event.get("type") == "error":
                    raise stream_error(self.provider, event.get("error", event), request_id)
                try:
                    acc.add(event)
                except DECODING_FAULTS as exc:
                    raise response_fault(self.provider, "a stream event", event, exc) from exc
                if acc.deltas is not None and acc.deltas.items:
                    acc.deltas.pass_on()
        except LLMResponseError as exc:
            exc.provider = exc.provider or self.provider
            if exc.usage is None and acc.saw_usage:
                exc.usage = acc.usage()
            raise
        finally:
            await response.aclose()
        if events.document is not None:
            # The server answered with the complete, non-streamed message.
            return self._decode_message(events.document, request_id, callbacks, started=True)
        if not acc.finished:
            raise truncated_stream(self.provider, client, "no message_stop and no stop_reason")
        if acc.deltas is not None:
            acc.deltas.pass_on(final=True)
        if callbacks and callbacks.on_stream_end:
            callbacks.on_stream_end()
        return acc.response(request_id)

    async def _plain(
        self, client: Any, sdk: ModuleType, body: bytes, options: dict[str, Any], callbacks: StreamCallbacks | None
    ) -> LLMResponse:
        raw = await self._holder.post(client, sdk, "/v1/messages", body, options, stream=False)
        msg = json_answer(raw, self.provider)
        return self._decode_message(msg, raw.headers.get("request-id"), callbacks, started=False)

    def _decode_message(
        self, msg: Any, request_id: str | None, callbacks: StreamCallbacks | None, *, started: bool
    ) -> LLMResponse:
        """An LLMResponse from a ``message`` object; LLMResponseError for anything else."""
        if isinstance(msg, Mapping) and msg.get("type") == "error":
            raise stream_error(self.provider, msg.get("error", msg), request_id)
        try:
            response = _message(msg, request_id)
        except DECODING_FAULTS as exc:
            raise response_fault(self.provider, "the answer", msg, exc) from exc
        if callbacks:
            if callbacks.on_stream_start and not started:
                callbacks.on_stream_start()
            if response.message.reasoning and callbacks.on_reasoning_delta:
                callbacks.on_reasoning_delta(response.message.reasoning)
            if response.message.text and callbacks.on_text_delta:
                callbacks.on_text_delta(response.message.text)
            if callbacks.on_stream_end:
                callbacks.on_stream_end()
        return response
