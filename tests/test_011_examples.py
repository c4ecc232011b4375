"""Programs written the way power-loop 0.11's README and docstrings show, run in a real
interpreter against the scripted server on 127.0.0.1: they finish, exit by themselves and
print nothing on stderr.

The programs are written for these tests (same API calls as the 0.11 examples). Fragments
that 0.11 shows with top-level ``await`` run the way ``python -m asyncio`` runs them: every
statement on the event loop's thread, then the loop ends (``asyncio.run`` semantics).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from power_loop.testing import ScriptedServer
from power_loop.testing.server import tool_round_trip_rule

HANG_GUARD_S = 120  # only a guard against a hang; each program exits in about a second

# Runs a file the way `python -m asyncio` runs what is typed into it: top-level await allowed,
# every statement on the event loop's thread.
TOP_LEVEL_AWAIT_RUNNER = """
import ast, asyncio, inspect, sys, types

source = open(sys.argv[1]).read()
code = compile(source, sys.argv[1], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


async def main() -> None:
    outcome = types.FunctionType(code, {"__name__": "__main__"})()
    if inspect.iscoroutine(outcome):
        await outcome


asyncio.run(main())
"""


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer(rule=tool_round_trip_rule) as srv:
        yield srv


def run_top_level(tmp_path: Path, server: ScriptedServer, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "runner.py").write_text(TOP_LEVEL_AWAIT_RUNNER)
    (tmp_path / "program.py").write_text(textwrap.dedent(body))
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "POWER_LOOP_BASE_URL": f"{server.url}/v1",
        "POWER_LOOP_API_KEY": "k",
        "POWER_LOOP_MODEL": "m",
    }
    return subprocess.run(
        [sys.executable, "runner.py", "program.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
    )


# A session with one tool, as the README fragments assume (`llm`, `loop`, `sid`).
SETUP = """
from power_loop import StatefulAgentLoop, ToolDefinition, ToolRegistry, create_llm_service_from_env

def forecast(city: str = "Oslo") -> str:
    return f"rain over {city}"

tools = ToolRegistry()
tools.register(
    ToolDefinition(
        name="forecast",
        description="Weather forecast",
        input_schema={"type": "object", "properties": {"city": {"type": "string"}}},
    ),
    forecast,
)
llm = create_llm_service_from_env()
loop = StatefulAgentLoop(llm=llm, db_path="agent.db", tool_registry=tools)
sid = loop.new_session()
"""


def test_a_timer_runner_left_running_when_the_program_ends_exits_quietly(
    tmp_path: Path, server: ScriptedServer
) -> None:
    # The README's durable-timers fragment starts a runner and never stops it: the event loop
    # ends while the runner's first scan is inside a store call.
    done = run_top_level(
        tmp_path,
        server,
        SETUP
        + """
from power_loop import HookPoint, TimerFireCtx, TimerRunner

loop.schedule_timer(sid, delay_s=900, note="look at the report")
runner = TimerRunner(loop)
await runner.start()

def hold_back(ctx: TimerFireCtx) -> None:
    ctx.postpone_s = 30

loop.hooks.register(HookPoint.TIMER_FIRE, hold_back)
print([t.status for t in loop.list_timers(sid)])
""",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['armed']"]
    assert done.stderr == ""


def test_readme_fragments_run_in_one_session(tmp_path: Path, server: ScriptedServer) -> None:
    # Per-send overrides, usage, budget, heal_pending, stats and the logging sink, as 0.11's
    # README shows them.
    done = run_top_level(
        tmp_path,
        server,
        SETUP
        + """
import json, logging, sys
from power_loop import AgentEventBus, AgentEventType, AgentLoopConfig
from power_loop.contrib.logging_sink import attach_logging_sink

first = await loop.send("weather?", session_id=sid, tools=["forecast"])
second = await loop.send("again", session_id=sid, system_prompt="Answer in one word.")
print(first.final_text, "|", second.status)
print(sorted(second.usage), second.usage["calls"])
capped = StatefulAgentLoop(llm=llm, db_path="agent.db", tool_registry=tools,
                           config=AgentLoopConfig(max_rounds=24, max_tokens_per_run=50_000))
print((await capped.send("one more", session_id=sid, heal_pending=True)).status)
print(loop.get_session_stats(sid).sends, len(loop.list_session_stats()))

bus = AgentEventBus(suppress_subscriber_errors=True)
attach_logging_sink(bus, events={AgentEventType.USAGE_UPDATED})
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
logged = StatefulAgentLoop(llm=llm, event_bus=bus, db_path="agent.db")
await logged.send("plain", session_id=logged.new_session())
""",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "done: rain over Oslo | completed"
    assert lines[1].split("] ")[1] == "2" and "total_tokens" in lines[1]
    assert lines[2] == "completed"
    assert lines[3] == "3 1"
    logged = [json.loads(line) for line in lines[4:] if line.startswith("{")]
    assert len(logged) == 1, lines[4:]
    logged = logged[0]
    assert logged["event"] == "usage_updated" and logged["payload"]["usage"]["input"] > 0
    assert done.stderr == ""


def test_a_phase_without_an_error_hook_lets_its_exception_through(tmp_path: Path, server: ScriptedServer) -> None:
    # 0.11's @phase example: a pipeline subclass whose phase calls the provider. A phase with
    # no error hook point raises what its method raised (0.11 did not turn it into a result).
    done = run_top_level(
        tmp_path,
        server,
        """
from typing import Any
from power_loop import (
    AgentEventBus, AgentEventType, AgentHooks, AgentLoopConfig, AgentPipeline, HookPoint,
    LLMRequest, PhaseContext, UserMessage, create_llm_service_from_env, phase,
)

class Asking(AgentPipeline):
    @phase(
        before=HookPoint.LLM_BEFORE,
        after=HookPoint.LLM_AFTER,
        start_event=AgentEventType.STREAM_STARTED,
        end_event=AgentEventType.STREAM_COMPLETED,
    )
    async def call_llm(self, ctx: PhaseContext) -> Any:
        question = ctx.values["question"]
        if question is None:
            raise LookupError("no question given")
        reply = await self.llm.complete(LLMRequest(messages=[UserMessage(content=question)]))
        return reply.message.content

seen = []
bus = AgentEventBus()
bus.subscribe(AgentEventType.STREAM_COMPLETED, lambda e: seen.append(e.type.value))
asking = Asking(llm=create_llm_service_from_env(), config=AgentLoopConfig(), hooks=AgentHooks(), bus=bus, ctx=None)
answered = await asking.call_llm(PhaseContext(values={"question": "ping"}))
print(answered.output, answered.directive.value, seen)
try:
    await asking.call_llm(PhaseContext(values={"question": None}))
except LookupError as exc:
    print("raised:", exc)
""",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["echo: ping continue ['stream_completed']", "raised: no question given"]
    assert done.stderr == ""


async def test_a_phase_reports_the_directive_its_after_hook_returned() -> None:
    # 0.11 handed back whatever directive the after hook chose, not only BREAK.
    from power_loop import AgentPipeline, HookContext, HookDirective, HookPoint, HookResult, PhaseContext, phase
    from power_loop.testing import ScriptedLLM

    class Counting(AgentPipeline):
        @phase(after=HookPoint.ROUND_END)
        async def count(self, ctx: PhaseContext) -> int:
            return len(ctx.values)

    counting = Counting(llm=ScriptedLLM())
    counting.hooks.register(
        HookPoint.ROUND_END, lambda c: HookResult(HookContext(dict(c.values)), HookDirective.SHORT_CIRCUIT)
    )
    result = await counting.count(PhaseContext(values={"a": 1, "b": 2}))
    assert result.output == 2 and result.is_short_circuit
