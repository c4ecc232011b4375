"""Both providers through the real openai / anthropic SDKs against the scripted server."""

from __future__ import annotations

import asyncio
import time

import pytest

from power_loop import (
    LLMConnectionError,
    LLMRateLimitError,
    LLMRequest,
    LLMRetryExhausted,
    LLMRetryPolicy,
    LLMServerError,
    LLMStatusError,
    LLMTimeout,
    StreamCallbacks,
    ToolDefinition,
)
from power_loop.messages import (
    AssistantMessage,
    ImagePart,
    TextPart,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from power_loop.providers.retry import complete_with_retry
from power_loop.testing import ScriptedServer, error_reply, hang_reply, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply

from .conftest import ServiceFactory

WEATHER = ToolDefinition(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def hi(**kwargs: object) -> LLMRequest:
    return LLMRequest(messages=[UserMessage(content="hi")], **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("stream", [True, False])
async def test_text_answer(
    scripted_server: ScriptedServer, protocol: str, stream: bool, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply("Hello there, friend."))
    llm = llm_factory(protocol, scripted_server)
    response = await llm.complete(hi(stream=stream, system_prompt="Be brief."))
    assert response.message.text == "Hello there, friend."
    assert response.message.tool_calls == ()
    assert response.finish_reason == "stop"
    assert response.request_id == "req_scripted_1"
    received = scripted_server.requests[0]
    assert received.stream is stream
    assert received.system_prompt == "Be brief."
    assert received.last_user_text == "hi"


async def test_stream_deltas_concatenate_to_the_text(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 5
    scripted_server.push(ScriptedReply(text=text, reasoning="Let me think about foxes.", chunk_chars=7))
    llm = llm_factory(protocol, scripted_server)
    deltas: list[str] = []
    thinking: list[str] = []
    marks: list[str] = []
    callbacks = StreamCallbacks(
        on_stream_start=lambda: marks.append("start"),
        on_text_delta=deltas.append,
        on_reasoning_delta=thinking.append,
        on_stream_end=lambda: marks.append("end"),
    )
    response = await llm.complete(hi(), callbacks=callbacks)
    assert len(deltas) > 5
    assert "".join(deltas) == text == response.message.text
    assert "".join(thinking) == "Let me think about foxes." == response.message.reasoning
    assert marks == ["start", "end"]


async def test_openai_stream_asks_for_usage(scripted_server: ScriptedServer, llm_factory: ServiceFactory) -> None:
    scripted_server.push(text_reply("ok"))
    await llm_factory("openai", scripted_server).complete(hi())
    body = scripted_server.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [True, False])
async def test_parallel_tool_calls(
    scripted_server: ScriptedServer, protocol: str, stream: bool, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(
        tool_reply(("get_weather", {"city": "Paris"}, "call_a"), ("get_weather", {"city": "Oslo"}, "call_b"))
    )
    llm = llm_factory(protocol, scripted_server)
    response = await llm.complete(hi(tools=[WEATHER], stream=stream))
    calls = response.message.tool_calls
    assert [c.id for c in calls] == ["call_a", "call_b"]
    assert [c.name for c in calls] == ["get_weather", "get_weather"]
    assert [c.parsed_arguments() for c in calls] == [{"city": "Paris"}, {"city": "Oslo"}]
    assert response.finish_reason == "tool_calls"
    assert scripted_server.requests[0].tools == ["get_weather"]


@pytest.mark.parametrize("stream", [True, False])
async def test_usage_with_cache_and_reasoning(
    scripted_server: ScriptedServer, protocol: str, stream: bool, llm_factory: ServiceFactory
) -> None:
    usage = Usage.of_call(prompt_tokens=120, completion_tokens=30, cache_read_tokens=100, reasoning_tokens=12)
    scripted_server.push(ScriptedReply(text="ok", usage=usage))
    response = await llm_factory(protocol, scripted_server).complete(hi(stream=stream))
    got = response.usage
    assert (got.calls, got.prompt_tokens, got.completion_tokens, got.cache_read_tokens) == (1, 120, 30, 100)
    assert got.total_tokens == 150
    if protocol == "openai":  # the Messages API has no separate reasoning count
        assert got.reasoning_tokens == 12


async def test_a_500_then_success_is_retried_once(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(error_reply(500, "boom"), text_reply("recovered"))
    llm = llm_factory(protocol, scripted_server)
    policy = LLMRetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.02)
    response = await complete_with_retry(llm, hi(), policy=policy)
    assert response.message.text == "recovered"
    assert scripted_server.request_count == 2
    # The SDK's own retry machinery is off: every request was a first attempt.
    assert {r.headers.get("x-stainless-retry-count") for r in scripted_server.requests} == {"0"}


async def test_a_400_is_sent_exactly_once(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(error_reply(400, "messages: bad shape"), text_reply("never"))
    llm = llm_factory(protocol, scripted_server)
    with pytest.raises(LLMStatusError) as info:
        await complete_with_retry(llm, hi(), policy=LLMRetryPolicy(max_attempts=5, backoff_initial=0.01))
    assert scripted_server.request_count == 1
    error = info.value
    assert error.status_code == 400
    assert error.retryable is False
    assert error.request_id == "req_scripted_1"
    assert "bad shape" in str(error)
    assert isinstance(error.__cause__, Exception)  # the SDK error is kept as the cause


async def test_retries_never_stack(scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory) -> None:
    scripted_server.push(*[error_reply(503, "down")] * 10)
    llm = llm_factory(protocol, scripted_server, max_retries=7)
    policy = LLMRetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.01)
    with pytest.raises(LLMRetryExhausted) as info:
        await complete_with_retry(llm, hi(), policy=policy)
    assert scripted_server.request_count == 3
    assert info.value.attempts == 3
    assert isinstance(info.value.last_error, LLMServerError)


async def test_default_policy_uses_the_providers_max_retries(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(*[error_reply(502, "bad gateway")] * 5)
    llm = llm_factory(protocol, scripted_server, max_retries=2)
    with pytest.raises(LLMRetryExhausted):
        await complete_with_retry(llm, hi())  # no policy: max_retries retries after the first try
    assert scripted_server.request_count == 3


async def test_hung_call_is_cut_by_total_timeout(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply("warm"), hang_reply(3600))
    llm = llm_factory(protocol, scripted_server, timeout_s=120)
    await complete_with_retry(llm, hi())  # loads the SDK first: its import is not part of the budget
    started = time.monotonic()
    with pytest.raises(LLMTimeout) as info:  # uncut, the call would take an hour
        await complete_with_retry(llm, hi(), policy=LLMRetryPolicy(max_attempts=3, total_timeout=1.0))
    assert time.monotonic() - started >= 0.9  # a lower bound: it waited, it did not fail at once
    assert "total_timeout" in str(info.value)
    assert scripted_server.request_count == 2  # the warm-up, then one hung attempt, not retried


async def test_retry_after_is_honoured(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(error_reply(429, "slow down", retry_after=0.4), text_reply("ok"))
    llm = llm_factory(protocol, scripted_server)
    started = time.monotonic()
    response = await complete_with_retry(
        llm, hi(), policy=LLMRetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.01)
    )
    assert response.message.text == "ok"
    assert time.monotonic() - started >= 0.4


async def test_rate_limit_error_carries_retry_after(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(error_reply(429, "slow down", retry_after=7))
    with pytest.raises(LLMRateLimitError) as info:
        await llm_factory(protocol, scripted_server).complete(hi())
    assert info.value.retryable is True
    assert info.value.retry_after == 7.0
    assert info.value.status_code == 429


async def test_connection_refused_is_a_retryable_connection_error(protocol: str, llm_factory: ServiceFactory) -> None:
    server = ScriptedServer().start()
    server.stop()  # the port is now closed
    with pytest.raises(LLMConnectionError) as info:
        await llm_factory(protocol, server).complete(hi())
    assert info.value.retryable is True


async def test_dropped_stream_is_retried(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(
        ScriptedReply(text="partial answer that never ends", chunk_chars=4, drop_after_chunks=3), text_reply("complete")
    )
    llm = llm_factory(protocol, scripted_server)
    response = await complete_with_retry(llm, hi(), policy=LLMRetryPolicy(max_attempts=2, backoff_initial=0.01))
    assert response.message.text == "complete"
    assert scripted_server.request_count == 2


async def test_request_body_carries_tools_limits_and_history(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply("done"))
    history = [
        UserMessage(content="weather in Paris and Oslo?"),
        AssistantMessage(
            content="",
            tool_calls=(
                ToolCall(id="c1", name="get_weather", arguments='{"city": "Paris"}'),
                ToolCall(id="c2", name="get_weather", arguments='{"city": "Oslo"}'),
            ),
        ),
        ToolResultMessage(tool_call_id="c1", name="get_weather", content="sunny"),
        ToolResultMessage(tool_call_id="c2", name="get_weather", content="rain", is_error=False),
    ]
    llm = llm_factory(protocol, scripted_server)
    await llm.complete(
        LLMRequest(messages=history, system_prompt="sys", tools=[WEATHER], max_tokens=321, temperature=0.25)
    )
    received = scripted_server.requests[0]
    body = received.body
    assert body["max_tokens"] == 321
    assert body["temperature"] == 0.25
    assert received.system_prompt == "sys"
    assert [type(m).__name__ for m in received.messages] == [
        "UserMessage",
        "AssistantMessage",
        "ToolResultMessage",
        "ToolResultMessage",
    ]
    assert [m.text for m in received.messages[2:]] == ["sunny", "rain"]
    if protocol == "anthropic":
        assert body["system"] == "sys"
        assert [t["role"] for t in body["messages"]] == ["user", "assistant", "user"]  # results merged in one turn
        assert body["tools"][0]["input_schema"]["required"] == ["city"]
    else:
        assert body["messages"][0] == {"role": "system", "content": "sys"}
        assert body["tools"][0]["function"]["parameters"]["required"] == ["city"]


async def test_multimodal_user_content(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply("a cat"))
    content = (TextPart(text="what is this?"), ImagePart(url="data:image/png;base64,iVBORw0KGgo="))
    await llm_factory(protocol, scripted_server).complete(LLMRequest(messages=[UserMessage(content=content)]))
    sent = scripted_server.requests[0].body["messages"][-1]["content"]
    if protocol == "anthropic":
        assert sent[1] == {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        }
    else:
        assert sent[1] == {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


async def test_anthropic_thinking_signature_is_echoed(
    scripted_server: ScriptedServer, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(
        ScriptedReply(
            reasoning="hmm", tool_calls=(ToolCall(id="t1", name="get_weather", arguments='{"city": "Rome"}'),)
        ),
        text_reply("done"),
    )
    llm = llm_factory("anthropic", scripted_server)
    first = await llm.complete(hi(tools=[WEATHER]))
    assert first.message.reasoning_signature == "scripted-signature"
    history = [
        UserMessage(content="hi"),
        first.message,
        ToolResultMessage(tool_call_id="t1", name="get_weather", content="warm"),
    ]
    await llm.complete(LLMRequest(messages=history, tools=[WEATHER]))
    blocks = scripted_server.requests[1].body["messages"][1]["content"]
    assert blocks[0] == {"type": "thinking", "thinking": "hmm", "signature": "scripted-signature"}
    assert blocks[1]["type"] == "tool_use"


async def test_cancelling_a_call_closes_the_request(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(hang_reply(60), text_reply("next"))
    llm = llm_factory(protocol, scripted_server)
    task = asyncio.ensure_future(llm.complete(hi()))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await llm.complete(hi())).message.text == "next"


@pytest.mark.parametrize("stream", [True, False])
async def test_prepared_requests_match_the_sdks_own(
    scripted_server: ScriptedServer, protocol: str, stream: bool, llm_factory: ServiceFactory
) -> None:
    """The first request goes through the SDK's post; later ones re-send the request the SDK
    prepared. Both must look the same on the wire, and errors must map the same way."""
    scripted_server.push(
        text_reply("one"), text_reply("two"), error_reply(400, "bad shape"), text_reply("three", delay_s=2)
    )
    llm = llm_factory(protocol, scripted_server)
    assert (await llm.complete(hi(stream=stream))).message.text == "one"
    assert (await llm.complete(hi(stream=stream))).message.text == "two"
    assert llm._holder._prepared is not None and llm._holder._prepared._templates  # type: ignore[attr-defined]
    first, second = scripted_server.requests[0], scripted_server.requests[1]
    assert first.headers == second.headers
    assert first.body == second.body and first.path == second.path
    assert "test-key" in (second.headers.get("authorization", "") + second.headers.get("x-api-key", ""))
    if protocol == "anthropic":
        assert second.headers["anthropic-version"]
    assert any(name.startswith("x-stainless-") for name in second.headers)  # the SDK's platform headers
    with pytest.raises(LLMStatusError) as info:
        await llm.complete(hi(stream=stream))
    assert info.value.status_code == 400 and info.value.request_id == "req_scripted_3"
    assert "bad shape" in str(info.value) and isinstance(info.value.__cause__, Exception)
    with pytest.raises(LLMTimeout):  # a per-request timeout gets its own prepared request
        await llm.complete(hi(stream=stream, timeout_s=0.3))


async def test_prepared_requests_can_be_turned_off(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply("one"), text_reply("two"))
    llm = llm_factory(protocol, scripted_server, prepared_requests=False)
    for _ in range(2):
        await llm.complete(hi())
    assert llm._holder._prepared is None  # type: ignore[attr-defined]
    assert scripted_server.requests[0].headers == scripted_server.requests[1].headers


def test_retry_after_is_read_defensively() -> None:
    from power_loop.providers._common import parse_retry_after

    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    for unusable in ("soon", "inf", "nan", "86400", "Fri, 01 Jan 2100 00:00:00 GMT"):
        assert parse_retry_after({"retry-after": unusable}) is None, unusable  # the policy's backoff applies


async def test_an_event_stream_with_broken_json_is_a_response_error() -> None:
    from power_loop import LLMResponseError
    from power_loop.providers._sse import iter_sse

    class Body:
        async def aiter_bytes(self):  # type: ignore[no-untyped-def]
            yield b'data: {"ok": 1}\n\ndata: {not json\n\n'

    events = []
    with pytest.raises(LLMResponseError, match="not JSON"):
        async for _, data in iter_sse(Body()):
            events.append(data)
    assert events == [{"ok": 1}]


async def test_closing_a_service_keeps_a_client_you_passed_in(scripted_server: ScriptedServer, protocol: str) -> None:
    import anthropic
    import openai

    from power_loop.providers.anthropic import AnthropicMessagesService
    from power_loop.providers.openai import OpenAIChatService

    scripted_server.push(text_reply("one"), text_reply("two"))
    if protocol == "openai":
        client = openai.AsyncOpenAI(base_url=scripted_server.openai_base_url, api_key="k", max_retries=0)
        llm = OpenAIChatService(model="m", client=client)
    else:
        client = anthropic.AsyncAnthropic(base_url=scripted_server.anthropic_base_url, api_key="k", max_retries=0)
        llm = AnthropicMessagesService(model="m", client=client)  # type: ignore[assignment]
    assert (await llm.complete(hi())).message.text == "one"
    await llm.aclose()  # the client is the caller's: not closed, not dropped
    assert (await llm.complete(hi())).message.text == "two"
    await client.close()


def test_send_sync_does_not_leave_the_loops_http_client_open(scripted_server: ScriptedServer, db_path: str) -> None:
    from power_loop import StatefulAgentLoop
    from power_loop.providers.openai import OpenAIChatService

    llm = OpenAIChatService(model="m", base_url=scripted_server.openai_base_url, api_key="k")
    loop = StatefulAgentLoop(llm=llm, db_path=db_path)
    sid = loop.new_session()
    for _ in range(3):
        loop.send_sync("hi", sid)
        assert llm._holder.client is None  # closed with its event loop  # type: ignore[attr-defined]
    assert scripted_server.request_count == 3
    loop.close()


async def test_a_transport_failure_on_a_prepared_request_is_the_sdks_error(
    protocol: str, llm_factory: ServiceFactory
) -> None:
    server = ScriptedServer([text_reply("one")]).start()
    llm = llm_factory(protocol, server, timeout_s=2.0)
    assert (await llm.complete(hi())).message.text == "one"
    await asyncio.to_thread(server.stop)  # the next (prepared) request finds nobody listening
    with pytest.raises(LLMConnectionError) as info:
        await llm.complete(hi())
    sdk = __import__(protocol)
    assert isinstance(info.value.__cause__, sdk.APIConnectionError)
    assert info.value.retryable
