"""OpenAI-compatible Chat Completions through ``openai.AsyncOpenAI``.

* The SDK is imported on first use (in a worker thread) and built with ``max_retries=0``:
  retries belong to :mod:`power_loop.providers.retry`.
* Request bodies are assembled from per-message JSON fragments cached on the (immutable)
  message objects and sent as pre-encoded bytes through ``AsyncOpenAI.post``. The SDK's
  per-message parameter transform (about 200 µs a message) is therefore never paid, and a
  round on a long history costs a byte join, not a re-encode.
* Streaming asks for ``stream_options.include_usage``; tool-call deltas are merged by
  ``index``; reasoning deltas are read from ``reasoning_content`` or ``reasoning`` where an
  OpenAI-compatible server sends them. ``stream=False`` uses the plain JSON response.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import ModuleType
from typing import Any

from .._types import HttpTransport
from ..errors import LLMResponseError
from ..messages import (
    AssistantMessage,
    Message,
    ToolCall,
    ToolResultMessage,
    Usage,
    message_json,
    message_to_dict,
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

__all__ = ["OpenAIChatService", "build_chat_body", "message_fragment"]

_FINISH = {"function_call": "tool_calls"}
_MEMO_KEY = "_power_loop_openai_wire"


def _message_wire(message: Message) -> bytes:
    if _wire_is_canonical(message):
        return message_json(message).encode()
    data = message_to_dict(message)
    data.pop("reasoning", None)
    data.pop("reasoning_signature", None)
    data.pop("is_error", None)
    if isinstance(message, AssistantMessage) and not message.content:
        data["content"] = None  # a tool-call turn: null, not "" (some compatible servers reject "")
    return dumps(data)


def _wire_is_canonical(message: Message) -> bool:
    """True when the Chat Completions form of ``message`` is exactly its stored dict view."""
    if isinstance(message, AssistantMessage):
        return not (message.reasoning or message.reasoning_signature or (message.tool_calls and not message.content))
    if isinstance(message, ToolResultMessage):
        return not message.is_error
    return True


def _tool_wire(tool: ToolDefinition) -> bytes:
    return dumps(tool.to_openai_tool())


def message_fragment(message: Message) -> bytes:
    """The cached Chat Completions JSON of one message."""
    return memo(message, _MEMO_KEY, lambda: _message_wire(message))


def build_chat_body(
    request: LLMRequest,
    *,
    model: str,
    max_tokens: int | None,
    temperature: float | None,
    max_tokens_param: str = "max_tokens",
) -> bytes:
    """Encode a Chat Completions request body from ``request``."""
    frags: list[bytes] = []
    if request.system_prompt:
        frags.append(dumps({"role": "system", "content": request.system_prompt}))
    frags.extend(message_fragment(m) for m in request.messages)
    head: dict[str, Any] = {"model": model}
    if request.stream:
        head["stream"] = True
        head["stream_options"] = {"include_usage": True}
    if max_tokens is not None:
        head[max_tokens_param] = max_tokens
    if temperature is not None:
        head["temperature"] = temperature
    if request.tools and request.tool_choice != "none" and request.tool_choice:
        head["tool_choice"] = request.tool_choice
    if request.response_format is not None:
        head["response_format"] = dict(request.response_format)
    if request.extra_body:
        head.update(request.extra_body)
    parts = [dumps(head)[:-1], b',"messages":[', b",".join(frags), b"]"]
    if request.tools and request.tool_choice != "none":
        tools = b",".join(memo(t, _MEMO_KEY, lambda t=t: _tool_wire(t)) for t in request.tools)  # type: ignore[misc]
        parts += [b',"tools":[', tools, b"]"]
    parts.append(b"}")
    return b"".join(parts)


@dataclass
class _ToolCallBuffer:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class _StreamAccumulator:
    """Folds Chat Completions chunks into one response.

    Deltas meant for the stream callbacks are queued in ``deltas`` and passed on by the
    caller (see :class:`~power_loop.providers._sse.PendingDeltas`).
    """

    def __init__(self, callbacks: StreamCallbacks | None) -> None:
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, _ToolCallBuffer] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.deltas = PendingDeltas(callbacks) if callbacks else None

    def add(self, chunk: Mapping[str, Any]) -> None:
        if chunk.get("model"):
            self.model = str(chunk["model"])
        if chunk.get("usage"):
            self.usage = _usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta")
            if not delta:
                continue
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                self.reasoning.append(reasoning)
                if self.deltas is not None:
                    self.deltas.items.append((True, reasoning))
            content = delta.get("content")
            if content:
                if not isinstance(content, str):
                    raise TypeError(f"delta content is a {type(content).__name__}, not a string")
                self.text.append(content)
                if self.deltas is not None:
                    self.deltas.items.append((False, content))
            for position, tc in enumerate(delta.get("tool_calls") or ()):
                index = tc.get("index")
                buf = self.calls.setdefault(position if index is None else int(index), _ToolCallBuffer())
                if tc.get("id"):
                    buf.id = str(tc["id"])
                fn = tc.get("function") or {}
                name = fn.get("name")
                if name and name != buf.name:
                    # Most servers send the whole name once; a few split it across deltas.
                    buf.name += str(name)
                arguments = fn.get("arguments")
                if arguments:
                    if not isinstance(arguments, str):
                        raise TypeError(f"tool call arguments are a {type(arguments).__name__}, not a string")
                    buf.arguments.append(arguments)

    @property
    def finished(self) -> bool:
        """A choice reported why it finished: the answer is complete even without ``[DONE]``."""
        return self.finish_reason is not None

    def response(self, request_id: str | None) -> LLMResponse:
        calls = tuple(
            ToolCall(
                id=b.id or f"call_{i}",
                name=fix_surrogates(b.name),
                arguments=fix_surrogates("".join(b.arguments)) or "{}",
            )
            for i, b in sorted(self.calls.items())
        )
        message = AssistantMessage(
            content=fix_surrogates("".join(self.text)),
            tool_calls=calls,
            reasoning=fix_surrogates("".join(self.reasoning)) or None,
        )
        return LLMResponse(
            message=message,
            usage=self.usage or Usage(calls=1),
            finish_reason=_finish(self.finish_reason, calls),
            model=self.model,
            request_id=request_id,
        )


def _finish(reason: str | None, calls: Sequence[ToolCall]) -> str | None:
    if reason is None:
        return "tool_calls" if calls else None
    return _FINISH.get(reason, reason)


def _usage(raw: Mapping[str, Any] | None) -> Usage:
    if not raw:
        return Usage(calls=1)
    total = raw.get("total_tokens")
    prompt_details = raw.get("prompt_tokens_details") or {}
    completion_details = raw.get("completion_tokens_details") or {}
    return Usage.of_call(
        prompt_tokens=int(raw.get("prompt_tokens") or 0),
        completion_tokens=int(raw.get("completion_tokens") or 0),
        cache_read_tokens=int(prompt_details.get("cached_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
        total_tokens=int(total) if total is not None else None,
    )


class OpenAIChatService(SDKService):
    """An :class:`~power_loop.providers.base.LLMService` for OpenAI-compatible Chat Completions.

    Args:
        model: Model name sent with every request.
        api_key: API key (sent as a bearer token).
        base_url: Server base URL, e.g. ``https://api.openai.com/v1``.
        timeout_s: Time limit of each attempt, in seconds: connecting, sending the request and
            receiving the whole answer (a stream included), on every HTTP transport.
        max_retries: Retries the engine may make when no ``LLMRetryPolicy`` is set.
        max_tokens: Upper bound on any request's completion tokens (None = no cap).
        temperature: Temperature used when a request does not set one.
        stream: Stream responses (False uses the non-streaming endpoint form).
        context_window: The model's context window in tokens, if known.
        max_tokens_param: Body field for the completion cap (``max_completion_tokens`` for
            OpenAI's reasoning models).
        default_headers: Extra headers sent with every request.
        client: A ready ``openai.AsyncOpenAI`` to use instead of building one (its own retry
            setting is then the caller's responsibility).
        http_transport: ``"native"`` (default: power_loop's probe-free keep-alive pool),
            ``"httpx"`` (the SDK's default transport; used anyway when a proxy is configured)
            or ``"aiohttp"`` (the SDK's aiohttp-based client; ``pip install power-loop[aiohttp]``).
        prepared_requests: Let the SDK prepare each endpoint's request once and re-send it
            with a new body (default), instead of running the SDK's per-request option
            handling every time (about 150 µs per request on the event-loop thread). Only
            for the client power_loop builds; a ``client`` you pass is always called through
            its ``post``. See ``docs/providers.md``.
    """

    provider = "openai"
    _sdk_name = "openai"
    _client_class = "AsyncOpenAI"

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool = True,
        context_window: int | None = None,
        max_tokens_param: str = "max_tokens",
        default_headers: Mapping[str, str] | None = None,
        client: Any = None,
        http_transport: HttpTransport = "native",
        prepared_requests: bool = True,
    ) -> None:
        super().__init__(
            model=model,
            api_key=api_key,
            base_url=base_url,
            timeout_s=timeout_s,
            max_retries=max_retries,
            max_tokens=max_tokens,
            temperature=temperature,
            stream=stream,
            context_window=context_window,
            default_headers=default_headers,
            client=client,
            http_transport=http_transport,
            prepared_requests=prepared_requests,
        )
        self.max_tokens_param = max_tokens_param

    async def complete(self, request: LLMRequest, *, callbacks: StreamCallbacks | None = None) -> LLMResponse:
        """Make one Chat Completions request. See :class:`~power_loop.providers.base.LLMService`."""
        client, sdk = await self._client()
        stream = request.stream and self.stream
        if stream != request.stream:
            request = replace(request, stream=stream)
        max_tokens = request.max_tokens
        if self.max_tokens is not None:
            max_tokens = self.max_tokens if max_tokens is None else min(max_tokens, self.max_tokens)
        temperature = request.temperature if request.temperature is not None else self.temperature
        body = build_chat_body(
            request,
            model=request.model or self.model,
            max_tokens=max_tokens,
            temperature=temperature,
            max_tokens_param=self.max_tokens_param,
        )
        options: dict[str, Any] = {"security": {"bearer_auth": True}}
        timeout = self.timeout_s
        if request.timeout_s is not None:
            options["timeout"] = timeout = request.timeout_s
        if stream:
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
        # successful response is decoded here (see _sse.py), one dict per chunk.
        response = await self._holder.post(client, sdk, "/chat/completions", body, options, stream=True)
        request_id = response.headers.get("x-request-id")
        acc = _StreamAccumulator(callbacks)
        events = EventStream(response, self.provider)
        try:
            if callbacks and callbacks.on_stream_start:
                callbacks.on_stream_start()
            async for _, chunk in events.events():
                if not isinstance(chunk, Mapping):
                    continue
                if chunk.get("error"):
                    raise stream_error(self.provider, chunk["error"], request_id)
                try:
                    acc.add(chunk)
                except DECODING_FAULTS as exc:
                    raise response_fault(self.provider, "a stream chunk", chunk, exc) from exc
                if acc.deltas is not None and acc.deltas.items:
                    acc.deltas.pass_on()
        except LLMResponseError as exc:
            exc.provider = exc.provider or self.provider
            if exc.usage is None:
                exc.usage = acc.usage
            raise
        finally:
            await response.aclose()
        if events.document is not None:
            # The server answered with the complete, non-streamed answer.
            return self._decode_completion(events.document, request_id, callbacks, started=True)
        if not (events.saw_done or acc.finished):
            raise truncated_stream(self.provider, client, "no [DONE] and no finish_reason")
        if acc.deltas is not None:
            acc.deltas.pass_on(final=True)
        if callbacks and callbacks.on_stream_end:
            callbacks.on_stream_end()
        return acc.response(request_id)

    async def _plain(
        self, client: Any, sdk: ModuleType, body: bytes, options: dict[str, Any], callbacks: StreamCallbacks | None
    ) -> LLMResponse:
        raw = await self._holder.post(client, sdk, "/chat/completions", body, options, stream=False)
        completion = json_answer(raw, self.provider)
        return self._decode_completion(completion, raw.headers.get("x-request-id"), callbacks, started=False)

    def _decode_completion(
        self, completion: Any, request_id: str | None, callbacks: StreamCallbacks | None, *, started: bool
    ) -> LLMResponse:
        """An LLMResponse from a ``chat.completion`` object; LLMResponseError for anything else."""
        if isinstance(completion, Mapping) and completion.get("error") and not completion.get("choices"):
            raise stream_error(self.provider, completion["error"], request_id)
        try:
            response = _completion(completion, request_id)
        except DECODING_FAULTS as exc:
            raise response_fault(self.provider, "the answer", completion, exc) from exc
        if callbacks:
            message = response.message
            if callbacks.on_stream_start and not started:
                callbacks.on_stream_start()
            if message.reasoning and callbacks.on_reasoning_delta:
                callbacks.on_reasoning_delta(message.reasoning)
            if message.text and callbacks.on_text_delta:
                callbacks.on_text_delta(message.text)
            if callbacks.on_stream_end:
                callbacks.on_stream_end()
        return response


def _completion(completion: Any, request_id: str | None) -> LLMResponse:
    """Decode a ``chat.completion`` object (raises TypeError/ValueError on a wrong shape)."""
    if not isinstance(completion, Mapping):
        raise TypeError(f"the answer is a JSON {type(completion).__name__}, not a chat.completion object")
    choices = completion.get("choices")
    if not choices or not isinstance(choices, Sequence) or not isinstance(choices[0], Mapping):
        raise ValueError("the answer has no choices")
    choice = choices[0]
    msg = choice.get("message")
    if not isinstance(msg, Mapping):
        raise ValueError("the first choice has no message")
    calls = tuple(
        ToolCall(
            id=str(tc.get("id") or f"call_{i}"),
            name=str(tc["function"].get("name") or ""),
            arguments=_arguments(tc["function"].get("arguments")),
        )
        for i, tc in enumerate(msg.get("tool_calls") or ())
    )
    reasoning = msg.get("reasoning_content") or msg.get("reasoning")
    text = msg.get("content") or ""
    if not isinstance(text, str) or not isinstance(reasoning or "", str):
        raise TypeError("the message content is not a string")
    return LLMResponse(
        message=AssistantMessage(content=text, tool_calls=calls, reasoning=reasoning or None),
        usage=_usage(completion.get("usage")),
        finish_reason=_finish(choice.get("finish_reason"), calls),
        model=completion.get("model"),
        request_id=request_id,
    )


def _arguments(raw: Any) -> str:
    if raw is None or raw == "":
        return "{}"
    if isinstance(raw, str):
        return raw
    return dumps(raw).decode()  # a server that sends the arguments as an object
