"""The HTTP layer under the providers: timeouts, connection reuse and error wording, the same
on every transport (``http_transport="native"``, ``"httpx"`` and, where installed, ``"aiohttp"``).

The servers are raw loopback sockets (``tests/wire_server.py``) that drip bytes, answer in
HTTP/1.0 or send ``Connection: close`` and then keep the socket open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from power_loop import (
    AgentLoopConfig,
    ConfigurationError,
    LLMConnectionError,
    LLMRequest,
    LLMRetryPolicy,
    LLMTimeout,
    StatefulAgentLoop,
)
from power_loop.messages import UserMessage
from power_loop.providers.anthropic import AnthropicMessagesService
from power_loop.providers.factory import create_llm_service_from_env
from power_loop.providers.openai import OpenAIChatService

from .wire_server import WireServer, answering, http_response, text_stream

Service = OpenAIChatService | AnthropicMessagesService


def _transports() -> tuple[str, ...]:
    """The HTTP transports to compare: aiohttp only where the SDKs' aiohttp client is usable."""
    import importlib.util

    import anthropic
    import openai

    usable = importlib.util.find_spec("aiohttp") is not None and all(
        hasattr(sdk, "DefaultAioHttpClient") for sdk in (openai, anthropic)
    )
    return ("native", "httpx", "aiohttp") if usable else ("native", "httpx")


TRANSPORTS = _transports()


def hi(**options: Any) -> LLMRequest:
    return LLMRequest(messages=[UserMessage(content="hi")], **options)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def services() -> AsyncIterator[list[Service]]:
    made: list[Service] = []
    yield made
    for service in made:
        await service.aclose()


def build(made: list[Service], protocol: str, server: WireServer, **options: Any) -> Service:
    cls = AnthropicMessagesService if protocol == "anthropic" else OpenAIChatService
    service = cls(model="wire-model", api_key="k", base_url=server.url_for(protocol), **options)
    made.append(service)
    return service


# --------------------------------------------------------------------------- item 14: timeout_s


def dripping(phase: str, protocol: str, *, interval: float = 0.05) -> Any:
    """A handler that drips its answer one byte every ``interval`` seconds: the head
    (``phase="head"``) or the body (``phase="body"``). Each byte comes well within any
    idle timeout; the whole answer would take far longer than the tests' ``timeout_s``."""
    body = text_stream(protocol, *(["word "] * 40))
    answer = http_response(body, framing="length")
    split = answer.index(b"\r\n\r\n") + 4
    head, rest = (b"", answer) if phase == "head" else (answer[:split], answer[split:])

    async def handle(server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(head)
        for i in range(len(rest)):
            writer.write(rest[i : i + 1])
            await writer.drain()
            await asyncio.sleep(interval)

    return handle


@pytest.mark.parametrize("phase", ["head", "body"])
async def test_timeout_s_bounds_the_whole_attempt_on_every_transport(
    protocol: str, transport: str, phase: str, services: list[Service]
) -> None:
    async with WireServer(dripping(phase, protocol)) as server:
        llm = build(services, protocol, server, timeout_s=0.5, http_transport=transport)
        with pytest.raises(LLMTimeout) as info:
            await asyncio.wait_for(llm.complete(hi()), 30)  # hang guard only
    message = str(info.value)
    assert "timed out after 0.5s" in message
    assert f"127.0.0.1:{server.port}" in message
    assert "raise timeout_s" in message
    assert info.value.retryable


async def test_a_request_timeout_overrides_the_services(protocol: str, services: list[Service]) -> None:
    async with WireServer(dripping("body", protocol)) as server:
        llm = build(services, protocol, server, timeout_s=60.0)
        with pytest.raises(LLMTimeout, match=r"after 0\.5s"):
            await asyncio.wait_for(llm.complete(hi(timeout_s=0.5)), 30)


async def test_a_timed_out_attempt_degrades_the_run(protocol: str, db_path: str, services: list[Service]) -> None:
    async with WireServer(dripping("body", protocol)) as server:
        llm = build(services, protocol, server, timeout_s=0.5)
        config = AgentLoopConfig(retry_policy=LLMRetryPolicy(max_attempts=1))
        async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
            sid = await loop.new_session_async()
            result = await asyncio.wait_for(loop.send("hi", session_id=sid), 30)
    assert result.status == "degraded"
    assert "LLMTimeout" in result.final_text


# --------------------------------------------------------------------------- item 15: persistence


def lingering(response: bytes) -> Any:
    """Answer one request per connection with ``response``, then keep the socket open and
    read nothing more (as an HTTP/1.0 server, or one that said ``Connection: close``, may)."""

    async def handle(server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(response)
        await writer.drain()
        await asyncio.Event().wait()  # until the server stops

    return handle


@pytest.mark.parametrize(
    ("version", "headers"),
    [
        ("HTTP/1.0", ()),
        ("HTTP/1.1", (("Connection", "close"),)),
        ("HTTP/1.1", (("Connection", "Upgrade, Close"),)),
    ],
    ids=["http-1.0", "connection-close", "close-among-options"],
)
@pytest.mark.parametrize("stream", [True, False])
async def test_a_connection_the_server_will_not_reuse_is_not_reused(
    protocol: str, version: str, headers: tuple[tuple[str, str], ...], stream: bool, services: list[Service]
) -> None:
    if stream:
        answer = http_response(text_stream(protocol, "hello"), framing="length", version=version, headers=headers)
    else:
        body = (
            b'{"type":"message","role":"assistant","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn"}'
            if protocol == "anthropic"
            else b'{"choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}'
        )
        answer = http_response(
            body, content_type="application/json", framing="length", version=version, headers=headers
        )
    async with WireServer(lingering(answer)) as server:
        llm = build(services, protocol, server, timeout_s=5.0, http_transport="native")
        for _ in range(3):
            response = await llm.complete(hi(stream=stream))
            assert response.message.text == "hello"
    assert server.connections == 3


async def test_http_1_0_keep_alive_and_http_1_1_connections_are_reused(protocol: str, services: list[Service]) -> None:
    answers = [
        http_response(
            text_stream(protocol, "one"), framing="length", version="HTTP/1.0", headers=[("Connection", "keep-alive")]
        ),
        http_response(text_stream(protocol, "two"), framing="length"),
        http_response(text_stream(protocol, "three")),  # chunked
    ]
    async with WireServer(answering(answers)) as server:
        llm = build(services, protocol, server, timeout_s=5.0, http_transport="native")
        texts = [(await llm.complete(hi())).message.text for _ in range(3)]
    assert texts == ["one", "two", "three"]
    assert server.connections == 1


# --------------------------------------------------------------------------- item 16: same errors


def silent_after_head(protocol: str) -> Any:
    """Send the head of an event stream, then nothing."""

    async def handle(server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(http_response(b"")[: -len(b"0\r\n\r\n")])
        await writer.drain()
        await asyncio.Event().wait()

    return handle


async def test_a_read_timeout_reads_the_same_on_every_transport(protocol: str, services: list[Service]) -> None:
    messages = {}
    async with WireServer(silent_after_head(protocol)) as server:
        for transport in TRANSPORTS:
            llm = build(services, protocol, server, timeout_s=0.5, http_transport=transport)
            with pytest.raises(LLMTimeout) as info:
                await asyncio.wait_for(llm.complete(hi()), 30)
            messages[transport] = str(info.value)
    assert len(set(messages.values())) == 1, messages
    assert "ReadTimeout" not in messages["httpx"]
    assert f"{protocol} request to 127.0.0.1:{server.port} timed out after 0.5s" in messages["httpx"]


async def test_a_refused_connection_reads_alike_on_every_transport(protocol: str, services: list[Service]) -> None:
    async with WireServer(answering([])) as server:
        port = server.port
    errors = {}
    for transport in TRANSPORTS:
        cls = AnthropicMessagesService if protocol == "anthropic" else OpenAIChatService
        llm = cls(model="m", api_key="k", base_url=f"http://127.0.0.1:{port}", timeout_s=5.0, http_transport=transport)
        services.append(llm)
        with pytest.raises(LLMConnectionError) as info:
            await llm.complete(hi())
        errors[transport] = str(info.value)
    for message in errors.values():
        assert message.startswith(f"connection to {protocol} at 127.0.0.1:{port} failed: ")
        assert "check that the server is running" in message


@pytest.mark.parametrize("prefix", ["POWER_LOOP", "OPENAI_COMPAT"])
@pytest.mark.parametrize("value", ["httpx", "HTTPX", "native"])
def test_the_transport_can_be_chosen_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, prefix: str, value: str
) -> None:
    monkeypatch.setenv("POWER_LOOP_MODEL", "m")
    monkeypatch.setenv("POWER_LOOP_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("POWER_LOOP_API_KEY", "k")
    monkeypatch.setenv(f"{prefix}_HTTP_TRANSPORT", value)
    service = create_llm_service_from_env()
    assert isinstance(service, OpenAIChatService)
    assert service.http_transport == value.lower()


def test_the_default_transport_is_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWER_LOOP_MODEL", "m")
    monkeypatch.setenv("POWER_LOOP_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("POWER_LOOP_API_KEY", "k")
    service = create_llm_service_from_env()
    assert isinstance(service, OpenAIChatService)
    assert service.http_transport == "native"


def test_an_unknown_transport_in_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWER_LOOP_MODEL", "m")
    monkeypatch.setenv("POWER_LOOP_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("POWER_LOOP_API_KEY", "k")
    monkeypatch.setenv("OPENAI_COMPAT_HTTP_TRANSPORT", "curl")
    with pytest.raises(ConfigurationError, match="OPENAI_COMPAT_HTTP_TRANSPORT='curl'"):
        create_llm_service_from_env()


# --------------------------------------------------------------------------- framing faults


async def test_a_body_longer_than_its_content_length_does_not_poison_the_next_request(
    protocol: str, services: list[Service]
) -> None:
    # The server sends more bytes than its Content-Length announced. The extra bytes must
    # not be read as the head of the next response on a reused connection.
    body = text_stream(protocol, "one")
    overlong = http_response(body + b"GARBAGE", framing="length").replace(
        b"content-length: %d" % (len(body) + 7), b"content-length: %d" % len(body)
    )
    answers = [overlong, http_response(text_stream(protocol, "two"), framing="length")]
    async with WireServer(answering(answers)) as server:
        llm = build(services, protocol, server, timeout_s=5.0, http_transport="native")
        texts = [(await llm.complete(hi())).message.text for _ in range(2)]
    assert texts == ["one", "two"]
    assert server.connections == 2


def closing_mid_head(server: WireServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
    async def handle() -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-ty")
        await writer.drain()

    return handle()


async def test_a_server_closing_mid_headers_reads_as_a_closed_connection(
    protocol: str, services: list[Service]
) -> None:
    async with WireServer(closing_mid_head) as server:
        llm = build(services, protocol, server, timeout_s=5.0, http_transport="native")
        with pytest.raises(LLMConnectionError) as info:
            await llm.complete(hi())
    message = str(info.value)
    assert f"connection to {protocol} at 127.0.0.1:{server.port} failed: the server closed the connection" in message
    assert "bytes read" not in message  # not asyncio's IncompleteReadError wording
