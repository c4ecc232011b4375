"""Malformed answers from a model server, through the real SDKs and the real loop.

Each test points a real provider at a loopback server that writes exactly the faulty bytes
(``tests/wire_server.py``): streams cut before their final event, HTML or JSON bodies where an
event stream belongs, bytes that are not UTF-8, values of the wrong type, an emoji split in two
escaped halves. None of them may end as a ``completed`` answer with missing text, or escape
``send`` as a raw exception.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from power_loop import (
    AgentLoopConfig,
    LLMConnectionError,
    LLMRequest,
    LLMResponseError,
    LLMRetryPolicy,
    StatefulAgentLoop,
    StreamCallbacks,
)
from power_loop.messages import UserMessage
from power_loop.providers.anthropic import AnthropicMessagesService
from power_loop.providers.openai import OpenAIChatService

from .wire_server import (
    WireServer,
    answering,
    anthropic_start,
    anthropic_text,
    http_response,
    openai_chunk,
    sse,
    text_stream,
)

Service = OpenAIChatService | AnthropicMessagesService


def hi() -> LLMRequest:
    return LLMRequest(messages=[UserMessage(content="hi")])


@pytest.fixture
async def services() -> AsyncIterator[list[Service]]:
    made: list[Service] = []
    yield made
    for service in made:
        await service.aclose()


def build(made: list[Service], protocol: str, server: WireServer, **options: Any) -> Service:
    options.setdefault("timeout_s", 10.0)  # a hang guard only
    cls = AnthropicMessagesService if protocol == "anthropic" else OpenAIChatService
    service = cls(model="wire-model", api_key="k", base_url=server.url_for(protocol), **options)
    made.append(service)
    return service


def one_attempt() -> AgentLoopConfig:
    return AgentLoopConfig(retry_policy=LLMRetryPolicy(max_attempts=1))


async def run_once(
    llm: Service, db_path: str, config: AgentLoopConfig | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """One send through a real loop; the result and the stored history."""
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config or one_attempt()) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("hi", session_id=sid)
        history = await loop.get_messages_async(sid)
    return result, history


def assistant_texts(history: list[dict[str, Any]]) -> list[str]:
    return [m.get("content") or "" for m in history if m["role"] == "assistant"]


# --------------------------------------------------------------------------- item 11: terminal events


@pytest.mark.parametrize("framing", ["chunked", "length", "close"])
async def test_a_stream_cut_before_its_final_event_is_a_retryable_connection_error(
    protocol: str, framing: str, services: list[Service]
) -> None:
    cut = http_response(text_stream(protocol, "Hello, ", "wor", terminal=False), framing=framing)
    async with WireServer(answering([cut], close_after=True)) as server:
        llm = build(services, protocol, server)
        with pytest.raises(LLMConnectionError, match="ended before its final event") as info:
            await llm.complete(hi())
    assert info.value.retryable
    assert f"127.0.0.1:{server.port}" in str(info.value)


async def test_a_cut_stream_is_retried_and_never_stored_as_an_answer(
    protocol: str, db_path: str, services: list[Service]
) -> None:
    cut = http_response(text_stream(protocol, "Hello, ", "wor", terminal=False))
    whole = http_response(text_stream(protocol, "Hello, ", "world."))
    async with WireServer(answering([cut, whole])) as server:
        llm = build(services, protocol, server)
        config = AgentLoopConfig(retry_policy=LLMRetryPolicy(max_attempts=2, backoff_initial=0.0))
        result, history = await run_once(llm, db_path, config)
    assert result.status == "completed"
    assert result.final_text == "Hello, world."
    assert assistant_texts(history) == ["Hello, world."]
    assert len(server.requests) == 2


async def test_a_cut_stream_without_retries_degrades_the_run(
    protocol: str, db_path: str, services: list[Service]
) -> None:
    cut = http_response(text_stream(protocol, "Hello, ", "wor", terminal=False))
    async with WireServer(answering([cut])) as server:
        result, history = await run_once(build(services, protocol, server), db_path)
    assert result.status == "degraded"
    assert "LLMConnectionError" in result.final_text
    assert all("wor" not in text for text in assistant_texts(history))


async def test_openai_stream_without_done_is_complete_once_a_choice_finished(services: list[Service]) -> None:
    # Some compatible servers never send [DONE]: a finish_reason is terminal enough.
    body = sse(openai_chunk("Hi "), openai_chunk("there"), openai_chunk(finish="stop"))
    async with WireServer(answering([http_response(body)])) as server:
        response = await build(services, "openai", server).complete(hi())
    assert response.message.text == "Hi there"
    assert response.finish_reason == "stop"


async def test_openai_stream_with_done_but_no_finish_reason_is_complete(services: list[Service]) -> None:
    body = sse(openai_chunk("Hi "), openai_chunk("there"), done=True)
    async with WireServer(answering([http_response(body)])) as server:
        response = await build(services, "openai", server).complete(hi())
    assert response.message.text == "Hi there"


async def test_anthropic_stream_with_a_stop_reason_but_no_message_stop_is_complete(services: list[Service]) -> None:
    from .wire_server import anthropic_stream

    body = anthropic_stream("Hi ", "there", stop_reason=True, message_stop=False)
    async with WireServer(answering([http_response(body)])) as server:
        response = await build(services, "anthropic", server).complete(hi())
    assert response.message.text == "Hi there"
    assert response.finish_reason == "stop"


async def test_anthropic_stream_with_only_message_stop_is_complete(services: list[Service]) -> None:
    from .wire_server import anthropic_stream

    body = anthropic_stream("Hi ", "there", stop_reason=False, message_stop=True)
    async with WireServer(answering([http_response(body)])) as server:
        response = await build(services, "anthropic", server).complete(hi())
    assert response.message.text == "Hi there"


# --------------------------------------------------------------------------- item 12: not an event stream

HTML = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>"


@pytest.mark.parametrize("content_type", ["text/html", "text/event-stream"])
async def test_an_html_page_instead_of_a_stream_is_a_response_error(
    protocol: str, content_type: str, db_path: str, services: list[Service]
) -> None:
    page = http_response(HTML, content_type=content_type, framing="length")
    async with WireServer(answering([page, page])) as server:
        llm = build(services, protocol, server)
        with pytest.raises(LLMResponseError):
            await llm.complete(hi())
        result, history = await run_once(llm, db_path)
    assert result.status == "degraded"
    assert "LLMResponseError" in result.final_text
    assert not [text for text in assistant_texts(history) if not text.startswith("[degraded")]


def openai_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "wire-model",
        "choices": [
            {
                "index": 0,
                "finish_reason": "tool_calls",
                "message": {
                    "role": "assistant",
                    "content": "Let me look.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a":1}'}}
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16},
    }


def anthropic_message() -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "wire-model",
        "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "call_1", "name": "add", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 11, "output_tokens": 5},
    }


async def test_a_complete_json_answer_to_a_streaming_request_is_decoded(protocol: str, services: list[Service]) -> None:
    # LiteLLM's mock models answer a streaming Messages request with one message object.
    answer = openai_completion() if protocol == "openai" else anthropic_message()
    body = http_response(json.dumps(answer).encode(), content_type="application/json", framing="length")
    deltas: list[str] = []
    ends: list[bool] = []
    callbacks = StreamCallbacks(on_text_delta=deltas.append, on_stream_end=lambda: ends.append(True))
    async with WireServer(answering([body])) as server:
        response = await build(services, protocol, server).complete(hi(), callbacks=callbacks)
    assert response.message.text == "Let me look."
    assert [(c.id, c.name, json.loads(c.arguments)) for c in response.message.tool_calls] == [
        ("call_1", "add", {"a": 1})
    ]
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (11, 5)
    assert response.finish_reason == "tool_calls"
    assert deltas == ["Let me look."] and ends == [True]


@pytest.mark.parametrize(
    "document",
    [b'{"hello": "world"}', b'{"choices": [], "content": "nope"}', b"{not json", b'{"text": "\xff\xfe"}'],
)
async def test_a_json_body_that_is_not_an_answer_is_a_response_error(
    protocol: str, document: bytes, services: list[Service]
) -> None:
    body = http_response(document, content_type="application/json", framing="length")
    async with WireServer(answering([body])) as server:
        with pytest.raises(LLMResponseError):
            await build(services, protocol, server).complete(hi())


# --------------------------------------------------------------------------- item 13: decoding faults


async def test_invalid_utf8_in_an_event_degrades_the_run(protocol: str, db_path: str, services: list[Service]) -> None:
    good = text_stream(protocol, "Hi", terminal=False)
    bad = b'data: {"broken": "\xff\xfe"}\n\n'
    body = http_response(good + bad + text_stream(protocol, "!"))
    async with WireServer(answering([body, body])) as server:
        llm = build(services, protocol, server)
        with pytest.raises(LLMResponseError, match="UTF-8"):
            await llm.complete(hi())
        result, _ = await run_once(llm, db_path)
    assert result.status == "degraded"


async def test_a_null_choice_degrades_the_run(db_path: str, services: list[Service]) -> None:
    body = http_response(sse(openai_chunk("Hi"), {"id": "x", "choices": [None]}, done=True))
    async with WireServer(answering([body, body])) as server:
        llm = build(services, "openai", server)
        with pytest.raises(LLMResponseError, match="cannot be decoded"):
            await llm.complete(hi())
        result, history = await run_once(llm, db_path)
    assert result.status == "degraded"
    assert "LLMResponseError" in result.final_text
    assert len(history) == 2  # the user turn and the marker; no half answer


@pytest.mark.parametrize("index", ["zero", None, 1.5, [0]])
async def test_a_non_integer_anthropic_index_degrades_the_run_and_keeps_the_usage(
    index: Any, db_path: str, services: list[Service]
) -> None:
    body = http_response(sse(anthropic_start(input_tokens=42), anthropic_text(index, "Hi")))
    async with WireServer(answering([body, body])) as server:
        llm = build(services, "anthropic", server)
        with pytest.raises(LLMResponseError, match="cannot be decoded") as info:
            await llm.complete(hi())
        result, _ = await run_once(llm, db_path)
    assert info.value.usage is not None and info.value.usage.prompt_tokens == 42  # the call was billed
    assert result.status == "degraded"
    assert result.usage["prompt_tokens"] == 42


def split_emoji_stream(protocol: str) -> bytes:
    # json.dumps escapes U+1F600 as the pair \ud83d\ude00; the server splits it across deltas.
    halves = ["ok \ud83d", "\ude00!"]
    if protocol == "openai":
        return sse(openai_chunk(halves[0]), openai_chunk(halves[1]), openai_chunk(finish="stop"), done=True)
    from .wire_server import anthropic_stream

    return anthropic_stream(*halves)


async def test_an_emoji_split_into_escaped_surrogate_halves_is_joined(
    protocol: str, db_path: str, services: list[Service]
) -> None:
    body = http_response(split_emoji_stream(protocol))
    deltas: list[str] = []
    async with WireServer(answering([body, body])) as server:
        llm = build(services, protocol, server)
        response = await llm.complete(hi(), callbacks=StreamCallbacks(on_text_delta=deltas.append))
        result, history = await run_once(llm, db_path)
    assert response.message.text == "ok \U0001f600!"
    assert deltas == ["ok ", "\U0001f600!"]  # no callback ever sees half a character
    assert result.status == "completed"
    assert assistant_texts(history) == ["ok \U0001f600!"]


@pytest.mark.parametrize(
    "document",
    [
        b'{"choices": [null]}',
        b'{"choices": [{"message": {"content": 5}}]}',
        b'{"type": "message", "content": [{"type": "text", "text": 5}]}',
        b'{"type": "message", "content": [null]}',
        b"<html>gateway</html>",
    ],
)
async def test_a_malformed_non_streamed_answer_is_a_response_error(
    protocol: str, document: bytes, services: list[Service]
) -> None:
    body = http_response(document, content_type="application/json", framing="length")
    async with WireServer(answering([body])) as server:
        llm = build(services, protocol, server, stream=False)
        with pytest.raises(LLMResponseError):
            await llm.complete(hi())


async def test_an_error_body_with_status_200_is_the_error_it_names(protocol: str, services: list[Service]) -> None:
    from power_loop import LLMServerError

    error = {"type": "overloaded_error", "message": "try later"}
    document = {"type": "error", "error": error} if protocol == "anthropic" else {"error": error}
    body = http_response(json.dumps(document).encode(), content_type="application/json", framing="length")
    async with WireServer(answering([body])) as server:
        with pytest.raises(LLMServerError, match="try later") as info:
            await build(services, protocol, server).complete(hi())
    assert info.value.retryable


# --------------------------------------------------------------------------- event-stream syntax


def _chunked_bytewise(body: bytes) -> bytes:
    """An event stream sent as one-byte HTTP chunks (every CR and LF in its own read)."""
    chunks = b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body)))
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + chunks + b"0\r\n\r\n"


@pytest.mark.parametrize("bytewise", [False, True], ids=["whole", "one-byte-chunks"])
async def test_events_separated_by_lone_carriage_returns_are_decoded(
    protocol: str, bytewise: bool, services: list[Service]
) -> None:
    # The SSE grammar ends lines with CRLF, LF or a lone CR; a stream using lone CRs is a
    # complete answer, also when every CR arrives in a read of its own.
    body = text_stream(protocol, "Hello, ", "world.").replace(b"\n", b"\r")
    answer = _chunked_bytewise(body) if bytewise else http_response(body)
    async with WireServer(answering([answer])) as server:
        response = await build(services, protocol, server).complete(hi())
    assert response.message.text == "Hello, world."
    assert response.usage.completion_tokens == 3


async def test_crlf_split_between_reads_is_one_line_ending(protocol: str, services: list[Service]) -> None:
    body = text_stream(protocol, "Hello, ", "world.").replace(b"\n", b"\r\n")
    async with WireServer(answering([_chunked_bytewise(body)])) as server:
        response = await build(services, protocol, server).complete(hi())
    assert response.message.text == "Hello, world."


# --------------------------------------------------------------------------- error chunks of compatible servers


@pytest.mark.parametrize(
    "error",
    [
        {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"},
        {"message": "Rate limit reached", "type": None, "code": "429"},
        {"message": "Rate limit reached", "type": None, "code": 429},
    ],
    ids=["code-name", "code-string", "code-number"],
)
async def test_an_openai_rate_limit_error_chunk_is_a_rate_limit_error(
    error: dict[str, Any], services: list[Service]
) -> None:
    from power_loop import LLMRateLimitError

    body = sse(openai_chunk("Hi"), {"error": error})
    async with WireServer(answering([http_response(body)])) as server:
        with pytest.raises(LLMRateLimitError) as info:
            await build(services, "openai", server).complete(hi())
    assert info.value.retryable


@pytest.mark.parametrize(
    "error",
    [
        {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"},
        {"message": "bad request", "type": None, "code": "400"},
    ],
    ids=["insufficient-quota", "code-400"],
)
async def test_an_openai_error_chunk_that_retrying_cannot_fix_is_not_retried(
    error: dict[str, Any], db_path: str, services: list[Service]
) -> None:
    from power_loop import LLMStatusError

    body = sse(openai_chunk("Hi"), {"error": error})
    async with WireServer(answering([http_response(body), http_response(body)])) as server:
        llm = build(services, "openai", server)
        with pytest.raises(LLMStatusError) as info:
            await llm.complete(hi())
        assert not info.value.retryable
        config = AgentLoopConfig(retry_policy=LLMRetryPolicy(max_attempts=3, backoff_initial=0.0))
        result, _ = await run_once(llm, db_path, config)
    assert result.status == "degraded"
    assert len(server.requests) == 2  # one direct call, one attempt by the loop: no retries
