"""OpenTelemetry instrumentation: spans, links and metrics of real runs.

Model traffic goes through the real SDKs to the scripted server; spans are read from the SDK's
in-memory exporter and metrics from its in-memory reader.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from power_loop import (
    AgentEvent,
    AgentLoopConfig,
    LLMRetryPolicy,
    RateLimit,
    SessionBusyError,
    SessionNotFoundError,
    SessionPausedError,
    StatefulAgentLoop,
    StoreError,
    TimerRunner,
    TimerToolLimits,
    ToolRegistry,
    register_spawn_agent,
    register_timer_tools,
    request_user_input,
    tool,
)
from power_loop.contrib.otel import instrument
from power_loop.testing import ScriptedServer
from power_loop.testing.script import ScriptedReply, ScriptedRequest, error_reply, text_reply, tool_reply

CHILD_MARK = "You are a sub-agent"


@dataclass
class Telemetry:
    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider
    reader: InMemoryMetricReader
    meter_provider: MeterProvider

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, prefix: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name.startswith(prefix)]

    def points(self, name: str) -> list[HistogramDataPoint]:
        data = self.reader.get_metrics_data()
        found: list[HistogramDataPoint] = []
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [p for p in metric.data.data_points if isinstance(p, HistogramDataPoint)]
        return found


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, tracer_provider, reader, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


@tool
def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: City name.
    """
    return f"sunny in {city}"


@tool
def explode(reason: str) -> str:
    """Always fails.

    Args:
        reason: Why.
    """
    raise RuntimeError(f"boom: {reason}")


def weather_rule(request: ScriptedRequest) -> ScriptedReply:
    if request.tool_results:
        return text_reply(f"It is {request.tool_results[0].text}.")
    return tool_reply(("get_weather", {"city": "Paris"}, "call_w"))


def instrumented(loop: StatefulAgentLoop, telemetry: Telemetry, **options: Any) -> Any:
    return instrument(
        loop, tracer_provider=telemetry.tracer_provider, meter_provider=telemetry.meter_provider, **options
    )


# --------------------------------------------------------------------------- the span tree


async def test_a_run_is_a_tree_of_rounds_model_calls_and_tool_calls(
    db_path: str, llm_factory: Any, protocol: str, otel: Telemetry
) -> None:
    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory(protocol, server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([get_weather])) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            result = await loop.send("Weather in Paris?", session_id=sid)

    assert result.status == "completed"
    (run,) = otel.named("invoke_agent")
    rounds = sorted(otel.named("round"), key=lambda s: s.start_time or 0)
    chats = sorted(otel.named("chat"), key=lambda s: s.start_time or 0)
    (tool_span,) = otel.named("execute_tool")
    assert run.name == "invoke_agent power_loop"
    assert [s.name for s in rounds] == ["round 0", "round 1"]
    assert [s.name for s in chats] == ["chat test-model", "chat test-model"]
    assert tool_span.name == "execute_tool get_weather"

    # Nesting: the run is a root; rounds under it; model and tool calls under their round.
    assert run.parent is None
    assert [parent_id(s) for s in rounds] == [span_id(run)] * 2
    assert [parent_id(s) for s in chats] == [span_id(r) for r in rounds]
    assert parent_id(tool_span) == span_id(rounds[0])
    assert {s.context.trace_id for s in otel.spans() if s.context is not None} == {run.context.trace_id}  # type: ignore[union-attr]

    run_attrs = attrs(run)
    assert run_attrs["gen_ai.operation.name"] == "invoke_agent"
    assert run_attrs["gen_ai.agent.name"] == "power_loop"
    assert run_attrs["gen_ai.conversation.id"] == sid
    assert run_attrs["power_loop.run.id"] == result.run_id
    assert run_attrs["power_loop.run.status"] == "completed"
    assert run_attrs["power_loop.run.kind"] == "send"
    assert run.status.status_code is StatusCode.UNSET
    assert [attrs(r)["power_loop.round.index"] for r in rounds] == [0, 1]

    for chat, call_usage in zip(chats, server.requests, strict=True):
        a = attrs(chat)
        assert chat.kind is trace.SpanKind.CLIENT
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == a["gen_ai.system"] == protocol
        assert a["gen_ai.request.model"] == "test-model"
        assert a["gen_ai.response.model"] == "test-model"
        assert a["gen_ai.conversation.id"] == sid
        assert a["power_loop.model_call.purpose"] == "round"
        assert call_usage.model == "test-model"
    assert sum(attrs(c)["gen_ai.usage.input_tokens"] for c in chats) == result.usage["prompt_tokens"]
    assert sum(attrs(c)["gen_ai.usage.output_tokens"] for c in chats) == result.usage["completion_tokens"]

    t = attrs(tool_span)
    assert t["gen_ai.operation.name"] == "execute_tool"
    assert t["gen_ai.tool.name"] == "get_weather"
    assert t["gen_ai.tool.call.id"] == "call_w"
    assert t["power_loop.round.index"] == 0
    assert tool_span.status.status_code is StatusCode.UNSET

    # Content is off by default: no arguments, results, prompts or answers anywhere.
    recorded = json.dumps([attrs(s) for s in otel.spans()]) + json.dumps(
        [dict(e.attributes or {}) for s in otel.spans() for e in s.events]
    )
    for text in ("Paris", "sunny", "Weather in"):
        assert text not in recorded


async def test_metrics_equal_the_usage_the_loop_reports(
    db_path: str, llm_factory: Any, protocol: str, otel: Telemetry
) -> None:
    config = AgentLoopConfig(rate_limit=RateLimit(requests_per_s=1000.0))  # the service is wrapped by a limiter
    registry = ToolRegistry([get_weather])
    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory(protocol, server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry, config=config) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            first = await loop.send("Weather in Paris?", session_id=sid)
            second = await loop.send("And again?", session_id=sid)

    tokens = otel.points("gen_ai.client.token.usage")
    by_type = {p.attributes["gen_ai.token.type"]: p for p in tokens}  # type: ignore[index]
    assert set(by_type) == {"input", "output"}
    assert by_type["input"].sum == first.usage["prompt_tokens"] + second.usage["prompt_tokens"]
    assert by_type["output"].sum == first.usage["completion_tokens"] + second.usage["completion_tokens"]
    assert by_type["input"].count == first.usage["calls"] + second.usage["calls"] == 4
    assert dict(by_type["input"].attributes or {})["gen_ai.provider.name"] == protocol
    assert dict(by_type["input"].attributes or {})["gen_ai.request.model"] == "test-model"

    (calls,) = otel.points("gen_ai.client.operation.duration")
    assert calls.count == 4 and calls.sum >= 0
    (runs,) = otel.points("power_loop.run.duration")
    assert runs.count == 2 and dict(runs.attributes or {})["power_loop.run.status"] == "completed"
    (tools,) = otel.points("power_loop.tool.duration")
    assert tools.count == 2 and dict(tools.attributes or {})["gen_ai.tool.name"] == "get_weather"
    # No per-session or per-run values in metric attributes: their series stay few.
    data = otel.reader.get_metrics_data()
    assert data is not None
    exported = data.to_json()
    assert sid not in exported and first.run_id not in exported and "call_w" not in exported


async def test_content_is_recorded_only_with_capture_content(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([get_weather])) as loop:
            instrumented(loop, otel, capture_content=True)
            sid = await loop.new_session_async()
            result = await loop.send("Weather in Paris?", session_id=sid)

    (run,) = otel.named("invoke_agent")
    (tool_span,) = otel.named("execute_tool")
    inputs = json.loads(attrs(run)["gen_ai.input.messages"])
    outputs = json.loads(attrs(run)["gen_ai.output.messages"])
    assert inputs == [{"role": "user", "parts": [{"type": "text", "content": "Weather in Paris?"}]}]
    assert outputs[0]["role"] == "assistant"
    assert outputs[0]["parts"] == [{"type": "text", "content": result.final_text}]
    assert json.loads(attrs(tool_span)["gen_ai.tool.call.arguments"]) == {"city": "Paris"}
    assert attrs(tool_span)["gen_ai.tool.call.result"] == "sunny in Paris"


async def test_a_run_inside_an_active_span_is_its_child(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    tracer = otel.tracer_provider.get_tracer("host")
    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory("anthropic", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([get_weather])) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            with tracer.start_as_current_span("handle request") as outer:
                await loop.send("Weather in Paris?", session_id=sid)
                # The caller's context is its own again once send returned.
                assert trace.get_current_span() is outer
            assert not trace.get_current_span().get_span_context().is_valid

    (request_span,) = otel.named("handle request")
    (run,) = otel.named("invoke_agent")
    assert parent_id(run) == span_id(request_span)
    assert run.context.trace_id == request_span.context.trace_id  # type: ignore[union-attr]


async def test_a_tools_own_spans_nest_under_its_tool_call(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    tracer = otel.tracer_provider.get_tracer("host")

    @tool
    async def lookup(key: str) -> str:
        """Look a key up.

        Args:
            key: The key.
        """
        with tracer.start_as_current_span("database query"):
            return f"value of {key}"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.tool_results:
            return text_reply("found")
        return tool_reply(("lookup", {"key": "k"}, "call_l"))

    with ScriptedServer(rule=rule) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([lookup])) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            await loop.send("look it up", session_id=sid)

    (query,) = otel.named("database query")
    (tool_span,) = otel.named("execute_tool")
    assert parent_id(query) == span_id(tool_span)


# --------------------------------------------------------------------------- errors


async def test_a_raising_tool_marks_its_span_as_an_error(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.tool_results:
            return text_reply("that failed")
        return tool_reply(("explode", {"reason": "secret-reason"}, "call_x"))

    with ScriptedServer(rule=rule) as server:
        llm = llm_factory("anthropic", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([explode])) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            result = await loop.send("go", session_id=sid)

    assert result.status == "completed"
    (tool_span,) = otel.named("execute_tool")
    assert tool_span.status.status_code is StatusCode.ERROR
    assert attrs(tool_span)["error.type"] == "tool_error"
    assert "secret-reason" not in (tool_span.status.description or "")  # content is off
    (run,) = otel.named("invoke_agent")
    assert run.status.status_code is StatusCode.UNSET  # the model dealt with it: the run completed
    (tools,) = otel.points("power_loop.tool.duration")
    assert dict(tools.attributes or {})["error.type"] == "tool_error"


@pytest.mark.parametrize("capture_content", [False, True])
async def test_a_tool_name_the_model_made_up_is_no_span_name_or_metric_series(
    db_path: str, llm_factory: Any, otel: Telemetry, capture_content: bool
) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.tool_results:
            return text_reply("sorry")
        return tool_reply(("lookup_customer_jane_doe", {}, "call_u"), ("get_weather", {"city": "Rome"}, "call_w"))

    with ScriptedServer(rule=rule) as server:
        async with StatefulAgentLoop(
            llm=llm_factory("openai", server), db_path=db_path, tool_registry=ToolRegistry([get_weather])
        ) as loop:
            instrumented(loop, otel, capture_content=capture_content)
            result = await loop.send("go", await loop.new_session_async())

    assert result.status == "completed"
    spans = {attrs(s)["gen_ai.tool.call.id"]: s for s in otel.named("execute_tool")}
    made_up, known = spans["call_u"], spans["call_w"]
    assert known.name == "execute_tool get_weather"
    assert made_up.status.status_code is StatusCode.ERROR and attrs(made_up)["error.type"] == "tool_error"
    metrics = {dict(p.attributes or {})["gen_ai.tool.name"] for p in otel.points("power_loop.tool.duration")}
    assert metrics == {"get_weather", "_OTHER"}
    if capture_content:
        assert made_up.name == "execute_tool lookup_customer_jane_doe"
    else:
        assert made_up.name == "execute_tool"
        assert attrs(made_up)["gen_ai.tool.name"] == "_OTHER"
        assert "jane_doe" not in "".join(s.to_json() for s in otel.spans())
    data = otel.reader.get_metrics_data()
    assert data is not None and "jane_doe" not in data.to_json()


async def test_a_provider_500_marks_the_model_call_and_the_run_as_errors(
    db_path: str, llm_factory: Any, protocol: str, otel: Telemetry
) -> None:
    config = AgentLoopConfig(retry_policy=LLMRetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.01))
    with ScriptedServer([error_reply(500, "upstream down"), error_reply(500, "upstream down")]) as server:
        llm = llm_factory(protocol, server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            result = await loop.send("hello", session_id=sid)

    assert result.status == "degraded"
    (chat,) = otel.named("chat")
    assert chat.status.status_code is StatusCode.ERROR
    assert attrs(chat)["error.type"] == "LLMServerError"
    assert attrs(chat)["power_loop.llm.attempts"] == 2
    assert attrs(chat)["gen_ai.provider.name"] == protocol
    assert [e.name for e in chat.events] == ["power_loop.llm.retry"]
    (round_span,) = otel.named("round")
    assert parent_id(chat) == span_id(round_span)
    (run,) = otel.named("invoke_agent")
    assert run.status.status_code is StatusCode.ERROR
    assert attrs(run)["error.type"] == "degraded"
    assert attrs(run)["power_loop.run.status"] == "degraded"
    (calls,) = otel.points("gen_ai.client.operation.duration")
    assert dict(calls.attributes or {})["error.type"] == "LLMServerError"
    assert otel.points("gen_ai.client.token.usage") == []
    (runs,) = otel.points("power_loop.run.duration")
    assert dict(runs.attributes or {})["power_loop.run.status"] == "degraded"


async def test_a_run_that_waits_is_no_error_and_one_that_hits_a_limit_is(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    @tool(requires_approval=True)
    def wire_money(amount: int) -> str:
        """Send money.

        Args:
            amount: How much.
        """
        return f"sent {amount}"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        return tool_reply(("wire_money", {"amount": 5}, f"call_{len(request.messages)}"))

    with ScriptedServer(rule=rule) as server:
        llm = llm_factory("openai", server)
        registry = ToolRegistry([wire_money, get_weather])
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
            handle = instrumented(loop, otel)
            waiting = await loop.send("pay", session_id=await loop.new_session_async())
            handle.uninstrument()
        config = AgentLoopConfig(max_rounds=1)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry, config=config) as loop:
            instrumented(loop, otel)
            limited = await loop.send("pay", session_id=await loop.new_session_async(), tools=["get_weather"])

    assert (waiting.status, limited.status) == ("awaiting_approval", "hit_round_limit")
    by_status = {attrs(s)["power_loop.run.status"]: s for s in otel.named("invoke_agent")}
    assert by_status["awaiting_approval"].status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs(by_status["awaiting_approval"])
    assert by_status["hit_round_limit"].status.status_code is StatusCode.ERROR
    assert attrs(by_status["hit_round_limit"])["error.type"] == "hit_round_limit"


async def test_a_tool_call_that_asks_the_user_is_no_error(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    @tool
    def ask_user() -> str:
        """Ask the user which account to use."""
        request_user_input(prompt="Which account?")

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.tool_results:
            return text_reply(f"Using {request.tool_results[0].text}.")
        return tool_reply(("ask_user", {}, "call_ask"))

    with ScriptedServer(rule=rule) as server:
        async with StatefulAgentLoop(
            llm=llm_factory("openai", server), db_path=db_path, tool_registry=ToolRegistry([ask_user])
        ) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            waiting = await loop.send("pay the bill", session_id=sid)

    assert waiting.status == "waiting_for_input"
    (tool_span,) = otel.named("execute_tool ask_user")
    assert tool_span.status.status_code is StatusCode.UNSET
    assert "error.type" not in attrs(tool_span)
    assert all(s.status.status_code is StatusCode.UNSET for s in otel.spans())


async def test_invalid_structured_output_fails_the_run_not_a_model_call(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    with ScriptedServer([text_reply("not json"), text_reply("[1]")]) as server:
        async with StatefulAgentLoop(llm=llm_factory("openai", server), db_path=db_path) as loop:
            instrumented(loop, otel)
            result = await loop.send("Which city?", await loop.new_session_async(), response_format=schema)

    assert result.status == "degraded"
    chats = otel.named("chat")
    assert len(chats) == 2  # the two calls that answered, nothing for the give-up
    assert all(c.status.status_code is StatusCode.UNSET for c in chats)
    (run,) = otel.named("invoke_agent")
    assert run.status.status_code is StatusCode.ERROR and attrs(run)["error.type"] == "degraded"


async def test_a_raising_tracer_never_breaks_a_run(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    class BrokenTracer(trace.Tracer):
        def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
            raise RuntimeError("tracer down")

        def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("tracer down")

    class BrokenProvider(trace.TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
            return BrokenTracer()

    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([get_weather])) as loop:
            instrument(loop, tracer_provider=BrokenProvider(), meter_provider=otel.meter_provider)
            sid = await loop.new_session_async()
            result = await loop.send("Weather in Paris?", session_id=sid)

    assert result.status == "completed" and result.final_text == "It is sunny in Paris."


async def test_a_raising_span_processor_leaves_no_span_open_or_current(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    class BrokenProcessor(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("processor down")

    otel.tracer_provider.add_span_processor(BrokenProcessor())  # after the exporter's: it sees every span
    started, release = asyncio.Event(), asyncio.Event()
    registry = ToolRegistry([holding_tool(started, release)])
    with ScriptedServer(rule=hold_rule) as server:
        async with StatefulAgentLoop(
            llm=llm_factory("openai", server), db_path=db_path, tool_registry=registry
        ) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()

            async def caller() -> trace.Span:
                with pytest.raises(asyncio.CancelledError):
                    await loop.send("go", session_id=sid)
                return trace.get_current_span()

            task = asyncio.ensure_future(caller())
            await started.wait()
            task.cancel()  # the run ends with its tool call open
            current = await task

    assert not current.get_span_context().is_valid, current
    assert sorted(s.name for s in otel.spans()) == [
        "chat test-model",
        "execute_tool hold",
        "invoke_agent power_loop",
        "round 0",
    ]
    (runs,) = otel.points("power_loop.run.duration")
    assert dict(runs.attributes or {})["power_loop.run.status"] == "cancelled"


async def test_uninstrument_stops_spans_and_is_idempotent(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([get_weather])) as loop:
            handle = instrumented(loop, otel, capture_content=True)
            sid = await loop.new_session_async()
            await loop.send("Weather in Paris?", session_id=sid)
            before = len(otel.spans())
            handle.uninstrument()
            handle.uninstrument()
            assert not handle.installed
            await loop.send("Weather in Paris?", session_id=sid)

    assert before == 6 and len(otel.spans()) == before


def holding_tool(started: asyncio.Event, release: asyncio.Event) -> Any:
    @tool
    async def hold() -> str:
        """Wait until the test releases the call."""
        started.set()
        await release.wait()
        return "held"

    return hold


def hold_rule(request: ScriptedRequest) -> ScriptedReply:
    if request.tool_results:
        return text_reply("done")
    return tool_reply(("hold", {}, f"call_{len(request.messages)}"))


async def test_uninstrument_while_a_run_goes_on_leaves_no_span_current_in_its_caller(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    registry = ToolRegistry([holding_tool(started, release)])
    with ScriptedServer(rule=hold_rule) as server:
        async with StatefulAgentLoop(
            llm=llm_factory("openai", server), db_path=db_path, tool_registry=registry
        ) as loop:
            handle = instrumented(loop, otel)
            sid = await loop.new_session_async()

            async def caller() -> trace.Span:
                await loop.send("go", session_id=sid)
                return trace.get_current_span()

            task = asyncio.ensure_future(caller())
            await started.wait()
            handle.uninstrument()  # the run's spans end here, while its tool call waits
            release.set()
            current = await task

    assert not current.get_span_context().is_valid, current
    assert {s.name for s in otel.spans()} == {
        "invoke_agent power_loop",
        "round 0",
        "chat test-model",
        "execute_tool hold",
    }


async def test_a_busy_session_or_a_store_fault_leaves_no_span_open_or_current(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    registry = ToolRegistry([holding_tool(started, release)])
    with ScriptedServer(rule=hold_rule) as server:
        llm = llm_factory("openai", server)
        holder = StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry)
        other = StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(session_wait_s=0.0))
        async with holder, other:
            instrumented(holder, otel)
            handle = instrumented(other, otel, capture_content=True)
            sid = await holder.new_session_async()
            running = asyncio.ensure_future(holder.send("go", session_id=sid))
            await started.wait()
            with pytest.raises(SessionBusyError):  # another loop's run holds the session
                await other.send("me too", session_id=sid)
            assert not trace.get_current_span().get_span_context().is_valid
            assert handle._runs == {}
            await holder.aclose()  # the store closes under the run: its next write fails
            release.set()
            with pytest.raises(StoreError):
                await running
            assert not trace.get_current_span().get_span_context().is_valid

    (run,) = otel.named("invoke_agent")
    assert attrs(run)["power_loop.run.status"] == "failed" and attrs(run)["error.type"] == "StoreError"
    (tool_span,) = otel.named("execute_tool")
    assert tool_span.status.status_code is StatusCode.ERROR
    assert len(otel.spans()) == 4  # the run, its round, its model call and its tool call: all ended


async def test_a_second_instrument_on_one_loop_is_refused(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([get_weather])) as loop:
            first = instrumented(loop, otel)
            with pytest.raises(RuntimeError, match="instrumented already"):
                instrumented(loop, otel)
            sid = await loop.new_session_async()
            await loop.send("Weather in Paris?", session_id=sid)
            assert not trace.get_current_span().get_span_context().is_valid
            first.uninstrument()
            instrumented(loop, otel)  # once uninstrumented, the loop takes a new one
            await loop.send("Weather in Paris?", session_id=sid)
            assert not trace.get_current_span().get_span_context().is_valid

    runs = otel.named("invoke_agent")
    assert len(runs) == 2 and all(r.parent is None for r in runs)


async def test_an_instrumented_loop_is_not_kept_alive(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory("openai", server)
        refs = []
        # The first loop imports the SDK, after which power_loop freezes what exists (gc.freeze):
        # only the loops after it can be collected.
        for with_instrumentation in (False, False, True):
            async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([get_weather])) as loop:
                if with_instrumentation:
                    instrumented(loop, otel)  # never uninstrumented: it goes with its loop
                await loop.send("Weather in Paris?", session_id=await loop.new_session_async())
            refs.append(weakref.ref(loop))
            del loop
    gc.collect()
    assert [ref() for ref in refs[1:]] == [None, None]


async def test_the_input_of_a_refused_send_is_no_later_runs_input(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    with ScriptedServer(rule=lambda request: text_reply("ok")) as server:
        async with StatefulAgentLoop(llm=llm_factory("openai", server), db_path=db_path) as loop:
            instrumented(loop, otel, capture_content=True)
            sid = await loop.new_session_async()
            await loop.pause(sid)
            with pytest.raises(SessionPausedError):
                await loop.send("refused text", session_id=sid)
            await loop.resume(sid)  # a run of its own, with no input
            await loop.send("hello", session_id=sid)
            messages = await loop.get_messages_async(sid)

    assert "refused text" not in json.dumps(messages)
    inputs = {
        attrs(r)["power_loop.run.kind"]: attrs(r).get("gen_ai.input.messages") for r in otel.named("invoke_agent")
    }
    assert inputs["resume"] is None
    assert json.loads(inputs["send"]) == [{"role": "user", "parts": [{"type": "text", "content": "hello"}]}]


async def test_many_sessions_leave_nothing_behind(db_path: str, llm_factory: Any, otel: Telemetry) -> None:
    with ScriptedServer(rule=weather_rule) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([get_weather])) as loop:
            handle = instrumented(loop, otel, capture_content=True)

            async def one() -> None:
                sid = await loop.new_session_async()
                await loop.send("Weather in Paris?", session_id=sid)

            async def refused(index: int) -> None:
                with pytest.raises(SessionNotFoundError):
                    await loop.send(f"a long input {index} " * 100, session_id=f"sess_unknown_{index}")

            for _ in range(10):
                await asyncio.gather(*(one() for _ in range(20)), *(refused(i) for i in range(20)))
            await asyncio.sleep(0)  # the event loop lets go of the last tasks
            gc.collect()
            # White-box on purpose: what the instrumentation keeps once every run has ended.
            assert handle._runs == {} and handle._live_tools == {} and handle._agent_names == {}
            assert len(handle._pending_inputs) == 0  # no input of a refused send is kept
            assert len(handle._tool_spans) == 200  # bounded (MAX_REMEMBERED), for late children

    # Concurrent runs never mix: every trace holds one run of one session, with its 5 children.
    runs = otel.named("invoke_agent")
    assert len(runs) == 200
    by_trace: dict[int, list[ReadableSpan]] = {}
    for s in otel.spans():
        by_trace.setdefault(s.context.trace_id, []).append(s)  # type: ignore[union-attr]
    assert len(by_trace) == 200
    for spans in by_trace.values():
        assert len(spans) == 6
        assert len({attrs(s).get("gen_ai.conversation.id") for s in spans} - {None}) == 1


# --------------------------------------------------------------------------- sub-agents and timers


def delegating_rule(background: bool) -> Any:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        if CHILD_MARK in (request.system_prompt or ""):
            return text_reply("child done")
        if request.last_user_text.startswith("<subagent "):
            return text_reply("noted")
        if request.tool_results:
            return text_reply("parent done")
        return tool_reply(("spawn_agent", {"task": "Do the thing.", "background": background}, "call_spawn"))

    return rule


async def test_a_foreground_sub_agent_runs_under_its_spawning_tool_call(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    registry = register_spawn_agent(ToolRegistry(), include_run_agent=False)
    with ScriptedServer(rule=delegating_rule(background=False)) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            result = await loop.send("delegate it", session_id=sid)

    assert result.final_text == "parent done"
    runs = otel.named("invoke_agent")
    (parent,) = [r for r in runs if attrs(r)["gen_ai.conversation.id"] == sid]
    (child,) = [r for r in runs if r is not parent]
    (spawn,) = otel.named("execute_tool spawn_agent")
    assert parent_id(spawn) is not None
    assert parent_id(child) == span_id(spawn)
    assert child.context.trace_id == parent.context.trace_id  # type: ignore[union-attr]
    c = attrs(child)
    assert c["power_loop.session.scope"] == "subagent"
    assert c["power_loop.parent_session.id"] == sid
    assert c["power_loop.spawn.tool_call_id"] == "call_spawn"
    (child_chat,) = [s for s in otel.named("chat") if attrs(s)["gen_ai.conversation.id"] == c["gen_ai.conversation.id"]]
    (child_round,) = [s for s in otel.named("round") if parent_id(s) == span_id(child)]
    assert parent_id(child_chat) == span_id(child_round)


async def test_a_background_sub_agent_is_a_trace_of_its_own_linked_to_its_spawn(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    release = asyncio.Event()

    @tool
    async def hold() -> str:
        """Wait until the test lets the child answer (so its parent is idle by then)."""
        await release.wait()
        return "released"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if CHILD_MARK in (request.system_prompt or ""):
            if request.tool_results:
                return text_reply("child done")
            return tool_reply(("hold", {}, "call_hold"))
        return delegating_rule(background=True)(request)

    registry = register_spawn_agent(ToolRegistry([hold]), include_run_agent=False)
    with ScriptedServer(rule=rule) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            ended: list[str] = []
            parent_woken = asyncio.Event()

            def on_end(event: AgentEvent) -> None:
                ended.append(event.session_id or "")
                if ended.count(sid) == 2:
                    parent_woken.set()

            loop.event_bus.subscribe("session_ended", on_end)
            await loop.send("delegate it", session_id=sid)
            release.set()  # the parent is idle: the child's answer wakes it
            await asyncio.wait_for(parent_woken.wait(), timeout=60)  # a hang guard only
        spans = otel.spans()

    (spawn,) = otel.named("execute_tool spawn_agent")
    children = [r for r in otel.named("invoke_agent") if attrs(r)["power_loop.session.scope"] == "subagent"]
    assert len(children) == 1, [attrs(s) for s in spans]
    (child,) = children
    assert child.parent is None
    assert child.context.trace_id != spawn.context.trace_id  # type: ignore[union-attr]
    assert [(link.context.span_id, dict(link.attributes or {})) for link in child.links] == [
        (span_id(spawn), {"power_loop.link": "spawned_by"})
    ]
    # The parent, woken by the child's answer, runs in a trace of its own linked to the child's run.
    parent_runs = sorted(
        (r for r in otel.named("invoke_agent") if attrs(r)["gen_ai.conversation.id"] == sid),
        key=lambda s: s.start_time or 0,
    )
    assert [attrs(r)["power_loop.run.kind"] for r in parent_runs] == ["send", "wake"]
    woken = parent_runs[1]
    assert woken.parent is None
    assert [(link.context.span_id, dict(link.attributes or {})) for link in woken.links] == [
        (span_id(child), {"power_loop.link": "subagent_answer"})
    ]


async def test_a_timer_wake_up_run_links_to_the_run_that_scheduled_it(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    registry = register_timer_tools(ToolRegistry(), limits=TimerToolLimits(min_delay_s=0))

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.last_user_text.startswith("<timer "):
            return text_reply("I woke up")
        if request.tool_results:
            return text_reply("scheduled")
        return tool_reply(("schedule_wakeup", {"delay_seconds": 0, "note": "check the oven"}, "call_t"))

    with ScriptedServer(rule=rule) as server:
        llm = llm_factory("anthropic", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            await loop.send("remind me", session_id=sid)
            with otel.tracer_provider.get_tracer("host").start_as_current_span("worker"):
                runner = TimerRunner(loop)
                assert await runner.scan_once() == 1
                await runner.drain()
            messages = await loop.get_messages_async(sid)

    assert messages[-1]["content"] == "I woke up"
    first, woken = sorted(otel.named("invoke_agent"), key=lambda s: s.start_time or 0)
    assert attrs(first)["power_loop.run.kind"] == "send"
    w = attrs(woken)
    assert w["power_loop.run.kind"] == "wake"
    assert woken.parent is None  # nobody waits for a wake-up run: a trace of its own, linked
    assert w["power_loop.timer.id"] == 1
    assert "power_loop.timer.note" not in w  # content is off
    assert [(link.context.span_id, dict(link.attributes or {})) for link in woken.links] == [
        (span_id(first), {"power_loop.link": "timer", "power_loop.timer.id": 1})
    ]


async def test_a_wake_up_read_by_another_run_is_no_later_wake_up_runs(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        return text_reply(f"read {request.last_user_text[:40]}")

    with ScriptedServer(rule=rule) as server:
        async with StatefulAgentLoop(llm=llm_factory("openai", server), db_path=db_path) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async()
            runner = TimerRunner(loop)
            # Delivered to an idle but paused session: its wake-up run is refused, and the run
            # that lifts the pause reads the timer's message.
            await loop.pause(sid)
            first = (await loop.schedule_timer_async(sid, delay_s=0, note="first")).timer_id
            assert await runner.scan_once() == 1
            await runner.drain()
            resumed = await loop.resume(sid)
            second = (await loop.schedule_timer_async(sid, delay_s=0, note="second")).timer_id
            assert await runner.scan_once() == 1
            await runner.drain()

    assert f"<timer id={first}>" in resumed.final_text  # the resumed run read the first timer
    runs = sorted(otel.named("invoke_agent"), key=lambda s: s.start_time or 0)
    assert [attrs(r)["power_loop.run.kind"] for r in runs] == ["resume", "wake"]
    woken = attrs(runs[1])
    assert (woken["power_loop.timer.id"], list(woken["power_loop.timer.ids"])) == (second, [second])
    assert first != second


async def test_without_capture_content_no_content_is_exported_anywhere(
    db_path: str, llm_factory: Any, otel: Telemetry
) -> None:
    secret = "SECRET-7f3a"

    @tool
    def lookup(key: str) -> str:
        """Always fails, naming its input.

        Args:
            key: The key.
        """
        raise RuntimeError(f"no record for {key}")

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if CHILD_MARK in (request.system_prompt or ""):
            return text_reply(f"child found {secret}")
        if request.last_user_text.startswith("<timer "):
            return error_reply(500, f"upstream failed on {secret}")
        if request.tool_results:
            return text_reply(f"final answer {secret}")
        return tool_reply(
            ("lookup", {"key": secret}, "call_l"),
            ("spawn_agent", {"task": f"find {secret}"}, "call_s"),
            ("schedule_wakeup", {"delay_seconds": 0, "note": f"remember {secret}"}, "call_t"),
        )

    registry = register_timer_tools(
        register_spawn_agent(ToolRegistry([lookup]), include_run_agent=False), limits=TimerToolLimits(min_delay_s=0)
    )
    config = AgentLoopConfig(
        system_prompt=f"You serve {secret}.",
        retry_policy=LLMRetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.01),
    )
    with ScriptedServer(rule=rule) as server:
        llm = llm_factory("openai", server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry, config=config) as loop:
            instrumented(loop, otel)
            sid = await loop.new_session_async(metadata={"user": secret})
            first = await loop.send(f"look up {secret}", session_id=sid)
            runner = TimerRunner(loop)
            assert await runner.scan_once() == 1
            await runner.drain()
            messages = await loop.get_messages_async(sid)

    assert first.final_text == f"final answer {secret}"
    assert messages[-1]["content"].startswith("[degraded")  # the wake-up run's model call failed
    assert {s.name for s in otel.named("invoke_agent")} == {"invoke_agent power_loop", "invoke_agent subagent"}
    # Names, statuses, attributes, events and links of every span, and every metric.
    exported = "".join(s.to_json() for s in otel.spans())
    assert len(otel.spans()) >= 10 and "ERROR" in exported
    assert secret not in exported
    data = otel.reader.get_metrics_data()
    assert data is not None and secret not in data.to_json()


def test_without_the_api_the_import_error_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None\n"
        "try:\n"
        "    import power_loop.contrib.otel\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "power-loop[otel]"' in done.stdout
