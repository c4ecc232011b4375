"""The public test doubles (ScriptedLLM, ScriptedServer, the pytest fixture, the server process)
and the built-in offline model."""

from __future__ import annotations

import asyncio
import json
import select
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from power_loop import (
    LLMError,
    LLMRateLimitError,
    LLMRequest,
    LLMServerError,
    LLMStatusError,
    OfflineLLM,
    StreamCallbacks,
    ToolDefinition,
)
from power_loop.messages import (
    AssistantMessage,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
)
from power_loop.testing import (
    ScriptedLLM,
    ScriptedReply,
    ScriptedRequest,
    ScriptedServer,
    ScriptExhausted,
    error_reply,
    text_reply,
    tool_reply,
)

from .conftest import ServiceFactory

HTTP_TIMEOUT = 10.0

WEATHER = ToolDefinition(
    "get_weather",
    "Weather for a city",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


def ask(text: str, **kwargs: Any) -> LLMRequest:
    return LLMRequest(messages=[UserMessage(content=text)], **kwargs)


class Recorder:
    """StreamCallbacks that record everything, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    @property
    def callbacks(self) -> StreamCallbacks:
        return StreamCallbacks(
            on_stream_start=lambda: self.events.append(("start", "")),
            on_text_delta=lambda d: self.events.append(("text", d)),
            on_reasoning_delta=lambda d: self.events.append(("reasoning", d)),
            on_stream_end=lambda: self.events.append(("end", "")),
        )

    def of(self, kind: str) -> list[str]:
        return [value for k, value in self.events if k == kind]


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    """GET ``url`` directly (no proxy); returns status and decoded JSON body, 4xx included."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=HTTP_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def openai_client(server: ScriptedServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="k", max_retries=0, timeout=HTTP_TIMEOUT)


async def chat(server: ScriptedServer, text: str, **kwargs: Any) -> Any:
    async with openai_client(server) as client:
        return await client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": text}], **kwargs
        )


# =========================================================================== ScriptedLLM


async def test_scripted_llm_consumes_replies_in_order() -> None:
    llm = ScriptedLLM([text_reply("first"), text_reply("second"), tool_reply(("get_weather", {"city": "Oslo"}))])
    assert llm.remaining == 3
    r1 = await llm.complete(ask("a"))
    r2 = await llm.complete(ask("b"))
    r3 = await llm.complete(ask("c", tools=[WEATHER]))
    assert r1.message.text == "first"
    assert r1.finish_reason == "stop"
    assert r2.message.text == "second"
    assert r3.message.text == ""
    assert r3.finish_reason == "tool_calls"
    assert len(r3.message.tool_calls) == 1
    call = r3.message.tool_calls[0]
    assert call.name == "get_weather"
    assert call.parsed_arguments() == {"city": "Oslo"}
    assert llm.remaining == 0
    assert llm.calls == 3
    assert [r.request_id for r in (r1, r2, r3)] == ["scripted_1", "scripted_2", "scripted_3"]


async def test_scripted_llm_records_requests() -> None:
    llm = ScriptedLLM([text_reply("x"), text_reply("y")])
    first = ask("hello", system_prompt="Be kind.", tools=[WEATHER])
    second = ask("again", model="other-model")
    await llm.complete(first)
    response = await llm.complete(second)
    assert llm.requests == [first, second]
    assert llm.requests[0] is first
    assert llm.requests[0].system_prompt == "Be kind."
    assert response.model == "other-model"


async def test_scripted_llm_exhausted_raises() -> None:
    llm = ScriptedLLM([text_reply("only")])
    await llm.complete(ask("1"))
    with pytest.raises(ScriptExhausted, match="no reply left"):
        await llm.complete(ask("2"))
    # the failed call is still counted and recorded
    assert llm.calls == 2
    assert len(llm.requests) == 2


async def test_scripted_llm_empty_script_without_rule_raises() -> None:
    with pytest.raises(ScriptExhausted):
        await ScriptedLLM().complete(ask("x"))


async def test_scripted_llm_push_adds_replies() -> None:
    llm = ScriptedLLM()
    llm.push(text_reply("a"), text_reply("b"))
    assert llm.remaining == 2
    assert (await llm.complete(ask("1"))).message.text == "a"
    assert (await llm.complete(ask("2"))).message.text == "b"


async def test_scripted_llm_rule_answers_once_the_script_is_empty() -> None:
    seen: list[ScriptedRequest] = []

    def rule(request: ScriptedRequest) -> ScriptedReply:
        seen.append(request)
        return text_reply(f"rule saw {request.last_user_text!r} with tools {list(request.tools)}")

    llm = ScriptedLLM([text_reply("scripted first")], rule=rule)
    assert (await llm.complete(ask("one"))).message.text == "scripted first"
    assert seen == []
    response = await llm.complete(ask("two", tools=[WEATHER], system_prompt="sys"))
    assert response.message.text == "rule saw 'two' with tools ['get_weather']"
    response = await llm.complete(ask("three"))
    assert response.message.text == "rule saw 'three' with tools []"
    assert len(seen) == 2
    assert seen[0].protocol == "inprocess"
    assert seen[0].system_prompt == "sys"


async def test_scripted_llm_rate_limit_error() -> None:
    llm = ScriptedLLM([error_reply(429, "slow down", retry_after=2.5)])
    with pytest.raises(LLMRateLimitError) as info:
        await llm.complete(ask("x"))
    err = info.value
    assert isinstance(err, LLMStatusError)
    assert err.retryable is True
    assert err.retry_after == 2.5
    assert err.status_code == 429
    assert "slow down" in str(err)


async def test_scripted_llm_bad_request_error_is_not_retryable() -> None:
    llm = ScriptedLLM([error_reply(400, "bad schema")])
    with pytest.raises(LLMStatusError) as info:
        await llm.complete(ask("x"))
    err = info.value
    assert type(err) is LLMStatusError
    assert err.retryable is False
    assert err.status_code == 400
    assert err.retry_after is None
    assert "bad schema" in str(err)


async def test_scripted_llm_server_error_is_retryable() -> None:
    llm = ScriptedLLM([error_reply(503, "overloaded")])
    with pytest.raises(LLMServerError) as info:
        await llm.complete(ask("x"))
    assert info.value.retryable is True
    assert info.value.status_code == 503


@pytest.mark.parametrize("status", [400, 401, 404, 409, 429, 500, 503])
async def test_scripted_llm_errors_match_the_real_provider(
    status: int, scripted_server: ScriptedServer, llm_factory: ServiceFactory, protocol: str
) -> None:
    """The same scripted failure raises the same error class in-process and through a real SDK."""
    reply = error_reply(status, "scripted failure", retry_after=1.5)
    scripted_server.push(reply)
    real = llm_factory(protocol, scripted_server)
    with pytest.raises(LLMError) as real_info:
        await real.complete(ask("x", stream=False))
    with pytest.raises(LLMError) as fake_info:
        await ScriptedLLM([reply]).complete(ask("x"))
    assert type(fake_info.value) is type(real_info.value)
    assert fake_info.value.retryable == real_info.value.retryable
    assert fake_info.value.status_code == real_info.value.status_code == status
    assert fake_info.value.retry_after == real_info.value.retry_after == 1.5


async def test_scripted_llm_error_does_not_call_stream_callbacks() -> None:
    recorder = Recorder()
    with pytest.raises(LLMServerError):
        await ScriptedLLM([error_reply(500)]).complete(ask("x"), callbacks=recorder.callbacks)
    assert recorder.events == []


async def test_scripted_llm_streams_text_through_callbacks() -> None:
    text = "The quick brown fox jumps over the lazy dog."
    llm = ScriptedLLM([ScriptedReply(text=text, reasoning="thinking hard", chunk_chars=5)])
    recorder = Recorder()
    response = await llm.complete(ask("x"), callbacks=recorder.callbacks)
    assert response.message.text == text
    assert response.message.reasoning == "thinking hard"
    texts = recorder.of("text")
    assert "".join(texts) == text
    assert len(texts) == 9  # ceil(44 / 5)
    assert all(len(piece) <= 5 for piece in texts)
    assert "".join(recorder.of("reasoning")) == "thinking hard"
    kinds = [k for k, _ in recorder.events]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    # reasoning arrives before the answer
    assert kinds.index("reasoning") < kinds.index("text")


async def test_scripted_llm_usage() -> None:
    explicit = Usage.of_call(prompt_tokens=7, completion_tokens=3)
    llm = ScriptedLLM([text_reply("a", usage=explicit), text_reply("b" * 40)])
    assert (await llm.complete(ask("x"))).usage == explicit
    estimated = (await llm.complete(ask("y" * 80))).usage
    assert estimated.calls == 1
    assert estimated.prompt_tokens == 20
    assert estimated.completion_tokens == 10
    assert estimated.total_tokens == 30


async def test_scripted_llm_delay() -> None:
    llm = ScriptedLLM([ScriptedReply(text="late", delay_s=30)])
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(llm.complete(ask("x")), timeout=0.05)


# =========================================================================== ScriptedServer


def test_server_context_manager_binds_loopback_on_a_free_port() -> None:
    with ScriptedServer() as server, ScriptedServer() as other:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert other.port > 0
        assert server.port != other.port
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.openai_base_url == f"{server.url}/v1"
        assert server.anthropic_base_url == server.url
        status, body = http_get(f"{server.url}/health")
        assert (status, body) == (200, {"status": "ok"})
    # stopped: the port no longer answers
    with pytest.raises(urllib.error.URLError):
        http_get(f"{server.url}/health")


def test_server_unknown_route_is_404() -> None:
    with ScriptedServer() as server:
        status, body = http_get(f"{server.url}/v1/nothing-here")
        assert status == 404
        assert "no route" in body["error"]["message"]
        # the model routes only answer POST
        status, _ = http_get(f"{server.openai_base_url}/chat/completions")
        assert status == 404
        assert server.requests == []


async def test_server_echoes_without_a_script() -> None:
    async with ScriptedServer() as server:
        completion = await chat(server, "hello there")
        assert completion.choices[0].message.content == "echo: hello there"
        completion = await chat(server, "and again")
        assert completion.choices[0].message.content == "echo: and again"
        assert server.request_count == 2


async def test_a_server_that_keeps_no_requests_still_counts_and_answers() -> None:
    """What ``python -m power_loop.testing`` runs: a long-lived server nobody inspects keeps
    no request objects, so its memory stays flat however many it serves."""
    async with ScriptedServer([text_reply("one")], keep_requests=False) as server:
        assert (await chat(server, "first")).choices[0].message.content == "one"
        server.rule = None
        with pytest.raises(openai.InternalServerError, match="no reply left"):
            await chat(server, "second")
        assert server.request_count == 2
        assert server.requests == []
        assert "no reply left for request #2" in server.errors[0]


async def test_server_exhausted_script_answers_500() -> None:
    async with ScriptedServer([text_reply("only one")]) as server:
        completion = await chat(server, "first")
        assert completion.choices[0].message.content == "only one"
        with pytest.raises(openai.InternalServerError) as info:
            await chat(server, "second")
        assert info.value.status_code == 500
        assert "no reply left" in str(info.value)
        assert len(server.errors) == 1
        assert "no reply left for request #2" in server.errors[0]


async def test_server_records_decoded_openai_requests() -> None:
    async with ScriptedServer([text_reply("ok")]) as server, openai_client(server) as client:
        await client.chat.completions.create(
            model="test-model",
            messages=[
                {"role": "system", "content": "Be terse."},
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            ],
            tools=[
                {
                    "type": "function",
                    "function": {"name": "get_weather", "parameters": dict(WEATHER.parameters)},
                }
            ],
        )
    assert server.request_count == 1
    request = server.requests[0]
    assert request.protocol == "openai"
    assert request.path == "/v1/chat/completions"
    assert request.model == "test-model"
    assert request.stream is False
    assert request.system_prompt == "Be terse."
    assert list(request.tools) == ["get_weather"]
    assert request.headers["authorization"] == "Bearer k"
    assert request.body["model"] == "test-model"
    assert request.last_user_text == "Weather in Paris?"
    assert [m.role for m in request.messages] == ["user", "assistant", "tool"]
    assistant = request.messages[1]
    assert isinstance(assistant, AssistantMessage)
    assert assistant.tool_calls == (ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}'),)
    assert request.tool_results == [ToolResultMessage(tool_call_id="call_1", content="sunny")]


async def test_server_records_decoded_anthropic_requests() -> None:
    async with ScriptedServer([text_reply("bonjour")]) as server:
        async with anthropic.AsyncAnthropic(
            base_url=server.anthropic_base_url, api_key="k", max_retries=0, timeout=HTTP_TIMEOUT
        ) as client:
            message = await client.messages.create(
                model="claude-test",
                max_tokens=50,
                system="Speak French.",
                messages=[{"role": "user", "content": "hello"}],
                tools=[{"name": "get_weather", "input_schema": dict(WEATHER.parameters)}],
            )
        assert message.content[0].type == "text"
        assert message.content[0].text == "bonjour"
    request = server.requests[0]
    assert request.protocol == "anthropic"
    assert request.path == "/v1/messages"
    assert request.system_prompt == "Speak French."
    assert list(request.tools) == ["get_weather"]
    assert request.model == "claude-test"
    assert request.messages == [UserMessage(content="hello")]
    assert "anthropic-version" in request.headers
    # the SDK sends the key as x-api-key or as a bearer token, depending on its version
    assert request.headers.get("x-api-key") == "k" or request.headers.get("authorization") == "Bearer k"


async def test_server_streams_to_the_openai_sdk() -> None:
    text = "streamed answer in several pieces"
    async with ScriptedServer([ScriptedReply(text=text, chunk_chars=4)]) as server, openai_client(server) as client:
        stream = await client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "go"}], stream=True
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert "".join(pieces) == text
    assert len(pieces) == 9
    assert server.requests[0].stream is True


async def test_server_push_adds_replies_and_turns_on_strict_mode() -> None:
    async with ScriptedServer() as server:
        server.push(text_reply("a"), tool_reply(("get_weather", {"city": "Rome"}, "call_x")))
        assert server.remaining == 2
        first = await chat(server, "1")
        assert first.choices[0].message.content == "a"
        second = await chat(server, "2")
        assert second.choices[0].finish_reason == "tool_calls"
        call = second.choices[0].message.tool_calls[0]
        assert call.id == "call_x"
        assert call.function.name == "get_weather"
        assert json.loads(call.function.arguments) == {"city": "Rome"}
        assert server.remaining == 0
        # a pushed script, once used up, is an error rather than an echo
        with pytest.raises(openai.InternalServerError):
            await chat(server, "3")


async def test_server_rule() -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        return text_reply(request.last_user_text.upper())

    async with ScriptedServer([text_reply("scripted")], rule=rule) as server:
        assert (await chat(server, "x")).choices[0].message.content == "scripted"
        assert (await chat(server, "shout")).choices[0].message.content == "SHOUT"
        assert server.errors == []


async def test_server_error_status_reaches_the_sdk() -> None:
    async with ScriptedServer([error_reply(429, "too fast", retry_after=3)]) as server:
        with pytest.raises(openai.RateLimitError) as info:
            await chat(server, "x")
        assert info.value.status_code == 429
        assert info.value.response.headers["retry-after"] == "3"
        assert "too fast" in str(info.value)


# =========================================================================== pytest fixture


async def test_scripted_server_fixture(scripted_server: ScriptedServer) -> None:
    assert scripted_server.host == "127.0.0.1"
    assert scripted_server.port > 0
    status, _ = await asyncio.to_thread(http_get, f"{scripted_server.url}/health")
    assert status == 200
    assert (await chat(scripted_server, "ping")).choices[0].message.content == "echo: ping"
    scripted_server.push(text_reply("pushed"))
    assert (await chat(scripted_server, "ping")).choices[0].message.content == "pushed"
    assert scripted_server.request_count == 2


# =========================================================================== server process


def _start_server_process(*args: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "power_loop.testing", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        if not ready:
            return proc, ""
        return proc, proc.stdout.readline().strip()
    except BaseException:
        _stop_server_process(proc)
        raise


def _stop_server_process(proc: subprocess.Popen[str]) -> int:
    try:
        if proc.poll() is None:
            proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(timeout=10)
    finally:
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def test_server_process_prints_its_url_and_serves() -> None:
    proc, url = _start_server_process()  # stops the process itself if reading the URL fails
    try:
        assert url.startswith("http://127.0.0.1:"), url
        port = int(url.rsplit(":", 1)[1])
        assert port > 0
        status, body = http_get(f"{url}/health")
        assert (status, body) == (200, {"status": "ok"})
        assert proc.poll() is None
    finally:
        code = _stop_server_process(proc)
    assert code == 0  # SIGTERM is a clean shutdown


async def test_server_process_echoes_and_follows_a_script(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(
        json.dumps(
            [
                {"text": "from the script"},
                {"tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": '{"city": "Lima"}'}]},
            ]
        )
    )
    proc, url = await asyncio.to_thread(_start_server_process, "--script", str(script))
    try:
        assert url.startswith("http://127.0.0.1:"), url
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=HTTP_TIMEOUT) as c:
            messages: Any = [{"role": "user", "content": "hi"}]
            first = await c.chat.completions.create(model="m", messages=messages)
            assert first.choices[0].message.content == "from the script"
            second = await c.chat.completions.create(model="m", messages=messages)
            call = second.choices[0].message.tool_calls[0]
            assert (call.id, call.function.name, call.function.arguments) == (
                "call_1",
                "get_weather",
                '{"city": "Lima"}',
            )
            with pytest.raises(openai.InternalServerError):
                await c.chat.completions.create(model="m", messages=messages)
    finally:
        await asyncio.to_thread(_stop_server_process, proc)


# =========================================================================== OfflineLLM


ADD = ToolDefinition(
    "add",
    "Add two numbers",
    {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]},
)
CALCULATOR = ToolDefinition(
    "calculate",
    "Evaluate arithmetic",
    {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]},
)


async def test_offline_remembers_facts() -> None:
    llm = OfflineLLM()
    first = await llm.complete(ask("Hi! My favorite color is teal."))
    assert first.message.text == "Noted: your favorite color is teal."
    history = [
        UserMessage(content="Hi! My favorite color is teal."),
        first.message,
        UserMessage(content="what is my favorite color?"),
    ]
    answer = await llm.complete(LLMRequest(messages=history))
    assert answer.message.text == "Your favorite color is teal."
    assert answer.finish_reason == "stop"


async def test_offline_does_not_invent_facts() -> None:
    response = await OfflineLLM().complete(ask("what is my favorite color?"))
    assert "teal" not in response.message.text
    assert "don't know your favorite color" in response.message.text


async def test_offline_calls_a_tool_from_positional_call_syntax() -> None:
    response = await OfflineLLM().complete(ask("please add(2, 3)", tools=[CALCULATOR, ADD]))
    assert response.finish_reason == "tool_calls"
    assert response.message.text == ""
    assert len(response.message.tool_calls) == 1
    call = response.message.tool_calls[0]
    assert call.name == "add"
    assert call.parsed_arguments() == {"x": 2, "y": 3}  # positional args follow the schema's property order
    assert call.id


async def test_offline_calls_a_tool_from_keyword_call_syntax() -> None:
    response = await OfflineLLM().complete(ask('get_weather(city="Paris")', tools=[WEATHER]))
    (call,) = response.message.tool_calls
    assert call.name == "get_weather"
    assert call.parsed_arguments() == {"city": "Paris"}


async def test_offline_calls_the_expression_tool_for_arithmetic() -> None:
    response = await OfflineLLM().complete(ask("What is 12 * 7 + 3?", tools=[WEATHER, CALCULATOR]))
    (call,) = response.message.tool_calls
    assert call.name == "calculate"
    assert call.parsed_arguments() == {"expression": "12 * 7 + 3"}


async def test_offline_without_tools_does_not_call_any() -> None:
    response = await OfflineLLM().complete(ask("add(2, 3)"))
    assert response.message.tool_calls == ()
    assert response.message.text == "(offline model) You said: add(2, 3)"


async def test_offline_reports_tool_results() -> None:
    history = [
        UserMessage(content="add(2, 3) and weather"),
        AssistantMessage(
            tool_calls=(
                ToolCall(id="c1", name="add", arguments='{"x": 2, "y": 3}'),
                ToolCall(id="c2", name="get_weather", arguments='{"city": "Paris"}'),
            )
        ),
        ToolResultMessage(tool_call_id="c1", content="5", name="add"),
        ToolResultMessage(tool_call_id="c2", content="sunny", name="get_weather"),
    ]
    response = await OfflineLLM().complete(LLMRequest(messages=history, tools=[ADD, WEATHER]))
    assert response.message.tool_calls == ()
    assert response.message.text == "add returned: 5; get_weather returned: sunny."


async def test_offline_summarises_when_asked() -> None:
    history = [
        UserMessage(content="I live in Oslo."),
        AssistantMessage(content="Noted."),
        UserMessage(content="I like skiing."),
        AssistantMessage(content="Nice."),
        UserMessage(content="Please summarize our conversation."),
    ]
    response = await OfflineLLM().complete(LLMRequest(messages=history))
    text = response.message.text
    assert text.startswith("Summary of the conversation so far")
    assert '"I live in Oslo."' in text
    assert '"I like skiing."' in text
    assert "Please summarize" not in text


async def test_offline_streams_words_and_reports_usage() -> None:
    recorder = Recorder()
    response = await OfflineLLM().complete(ask("tell me something nice please"), callbacks=recorder.callbacks)
    text = response.message.text
    words = recorder.of("text")
    assert "".join(words) == text
    assert len(words) == len(text.split())
    assert all(w.strip() and " " not in w.strip() for w in words)
    kinds = [k for k, _ in recorder.events]
    assert kinds[0] == "start"
    assert kinds[-1] == "end"
    usage = response.usage
    assert usage.calls == 1
    assert usage.prompt_tokens >= 1
    assert usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert response.model == "power-loop-offline"


async def test_offline_tool_call_usage_counts_one_call() -> None:
    response = await OfflineLLM().complete(ask("add(1, 1)", tools=[ADD]))
    assert response.usage.calls == 1
    assert response.usage.completion_tokens >= 1
