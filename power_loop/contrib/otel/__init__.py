"""OpenTelemetry traces and metrics from a loop's events (``pip install "power-loop[otel]"``).

    from power_loop.contrib.otel import instrument

    handle = instrument(loop, tracer_provider=provider, meter_provider=meters)
    ...
    handle.uninstrument()

The instrumentation is an event subscriber (plus, with ``capture_content``, a
``MESSAGE_APPEND`` hook and a timer listener): it turns the typed events of every run into
spans that follow the OpenTelemetry GenAI semantic conventions.

Span tree::

    invoke_agent {agent}          one per run (the caller's current span is its parent)
      round {i}                   one per round
        chat {model}              one per model call (made from its usage_updated or
                                  llm_degraded event, timed by the call's duration)
        execute_tool {name}       one per tool call
          invoke_agent {agent}    a foreground sub-agent's run

A background sub-agent's run is a root span with a Link to the spawning tool call's span; a
run started by a timer's wake-up has a Link to the run that scheduled the timer, when a tool
of a run instrumented in this process scheduled it.

Guarantees: span work is in memory and synchronous (exporting is the span processor's
business, which the host chooses); no error of the tracer, the meter or this module ever
reaches a run (it is logged on ``power_loop.contrib.otel``); message content (user input,
final text, tool arguments and results, error texts) is recorded only with
``capture_content=True``. While a run or a tool call goes on, its span is the current span of
the task running it, so spans the host's own code starts there (in a tool, in an HTTP
client) nest under it.
"""

from __future__ import annotations

try:
    import opentelemetry.metrics
    import opentelemetry.trace  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError('power_loop.contrib.otel needs the OpenTelemetry API: pip install "power-loop[otel]"') from exc

from typing import TYPE_CHECKING

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ._instrumentation import OtelInstrumentation
from ._parts import DEFAULT_AGENT_NAME

if TYPE_CHECKING:
    from ...loop import StatefulAgentLoop

__all__ = ["OtelInstrumentation", "instrument"]


def instrument(
    loop: StatefulAgentLoop,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    capture_content: bool = False,
    agent_name: str = DEFAULT_AGENT_NAME,
) -> OtelInstrumentation:
    """Trace ``loop``'s runs and record their metrics with OpenTelemetry.

    Args:
        loop: The loop to observe (its event bus, hooks and timer listeners).
        tracer_provider: Where spans go (default: the global tracer provider).
        meter_provider: Where metrics go (default: the global meter provider).
        capture_content: Also record message content: the runs' user input and final text,
            tool arguments and results, error texts. Off by default: content may hold
            personal data.
        agent_name: ``gen_ai.agent.name`` of main sessions' runs (sub-agents' runs carry
            their spec's name).

    Returns:
        The installed instrumentation; ``handle.uninstrument()`` removes it.

    Raises:
        RuntimeError: ``loop`` is instrumented already (one instrumentation per loop).
    """
    return OtelInstrumentation(
        loop,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        capture_content=capture_content,
        agent_name=agent_name,
    )
