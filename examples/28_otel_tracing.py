"""OpenTelemetry tracing: a span per run, round, model call and tool call.

Needs the ``otel`` extra for the API and the OpenTelemetry SDK for the exporter
(``pip install "power-loop[otel]" opentelemetry-sdk``). The spans go to an in-memory
exporter here and are printed as a tree; a service would export them to its collector
instead (see docs/observability.md).
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import StatefulAgentLoop, ToolRegistry, create_llm_service_from_env, tool
from power_loop.contrib.otel import instrument

try:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError as exc:  # the otel extra brings the API only; a service brings the SDK
    hint = 'This example needs the OpenTelemetry SDK: pip install "power-loop[otel]" opentelemetry-sdk'
    raise SystemExit(hint) from exc


@tool
def get_weather(city: str) -> str:
    """Current weather for a city.

    Args:
        city: City name.
    """
    return f"sunny in {city}"


def print_tree(spans: tuple[ReadableSpan, ...]) -> None:
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        parent = span.parent.span_id if span.parent is not None else None
        children.setdefault(parent, []).append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        attrs = span.attributes or {}
        keys = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.tool.call.id")
        keys += ("power_loop.run.status",)
        extra = ", ".join(f"{key.split('.')[-1]}={attrs[key]}" for key in keys if key in attrs)
        print("  " * depth + f"{span.name}" + (f"  [{extra}]" if extra else ""))
        for child in sorted(children.get(span.context.span_id, []), key=lambda s: s.start_time or 0):
            show(child, depth + 1)

    for root in children.get(None, []):
        show(root, 0)


async def main() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    db = str(Path(tempfile.mkdtemp()) / "otel.db")
    llm = create_llm_service_from_env(offline_fallback=True)
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=ToolRegistry([get_weather])) as loop:
        handle = instrument(loop, tracer_provider=tracer_provider, meter_provider=meter_provider)
        sid = await loop.new_session_async()
        result = await loop.send('Weather? get_weather(city="Paris")', session_id=sid)
        handle.uninstrument()

    print(result.final_text)
    print_tree(exporter.get_finished_spans())
    data = reader.get_metrics_data()
    assert data is not None
    for metric in data.resource_metrics[0].scope_metrics[0].metrics:
        for point in metric.data.data_points:
            label = dict(point.attributes or {}).get("gen_ai.token.type", "")
            name = f"{metric.name} ({label})" if label else metric.name
            total, count = point.sum, point.count  # type: ignore[union-attr]
            print(f"{name}: {total:g} {metric.unit} over {count} records")
    usage = result.usage
    print(f"the loop counted {usage['prompt_tokens']} input and {usage['completion_tokens']} output tokens")


asyncio.run(main())
