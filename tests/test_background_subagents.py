"""Background delegation: ``spawn_agent(background=true)`` returns a receipt, the child runs on
its own, and its answer reaches the parent's inbox exactly once, across a crash too."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from power_loop import StatefulAgentLoop, TimerRunner, ToolRegistry, register_spawn_agent, tool
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

from .helpers import EventLog, history_is_valid

CHILD_MARK = "You are a sub-agent"
WORKER = Path(__file__).with_name("background_worker.py")


def is_child(request: ScriptedRequest) -> bool:
    return CHILD_MARK in (request.system_prompt or "")


def last(request: ScriptedRequest) -> str:
    return request.messages[-1].text  # type: ignore[no-any-return]


def subagent_messages(messages: list[dict[str, object]]) -> list[str]:
    return [str(m["content"]) for m in messages if str(m.get("content", "")).startswith("<subagent ")]


async def ended(log: EventLog, session_id: str, count: int) -> None:
    """Wait until ``session_id`` has ended ``count`` runs (a hang guard, not a speed bound)."""

    async def poll() -> None:
        while sum(1 for e in log.of("session_ended") if e.session_id == session_id) < count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout=60)


def registry(*tools: object) -> ToolRegistry:
    reg = ToolRegistry()
    for t in tools:
        reg.register(t)  # type: ignore[arg-type]
    return register_spawn_agent(reg, include_run_agent=False)


@tool
def measure(thing: str) -> str:
    """Measure a thing.

    Args:
        thing: What to measure.
    """
    return f"{thing} is 42 cm"


async def test_a_background_child_answers_into_an_idle_parent_exactly_once(db_path: str) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        text = last(request)
        if is_child(request):
            if request.messages[-1].role == "tool":
                return text_reply(f"Measured: {text}")
            return tool_reply(("measure", {"thing": "the table"}))
        if text.startswith("<subagent "):
            return text_reply("Thanks, noted: " + text.splitlines()[1])
        if request.messages[-1].role == "tool":
            return text_reply("I asked a helper; I will tell you when it answers.")
        return tool_reply(("spawn_agent", {"task": "Measure the table.", "background": True}, "call_bg"))

    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=registry(measure)) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        first = await loop.send("How long is the table?", session_id=sid)
        await ended(log, sid, 2)  # the parent was woken by the child's answer
        messages = await loop.get_messages_async(sid)
        tasks = await loop.store.execute_fetchall("SELECT status FROM subagent_tasks")
        children = await loop.store.list_background_children(sid)
    receipt = messages[2]["content"]
    assert first.status == "completed" and "in the background" in str(receipt)
    assert subagent_messages(messages) == [
        f'<subagent session="{children[0].session_id}" status="completed">\nMeasured: the table is 42 cm\n</subagent>'
    ]
    assert messages[-1]["content"] == "Thanks, noted: Measured: the table is 42 cm"
    assert tasks == [("delivered",)]
    assert children[0].status == "delivered" and children[0].ended_at is not None
    assert history_is_valid(messages)


async def test_a_busy_parent_reads_the_answer_at_its_next_round(db_path: str) -> None:
    child_done = asyncio.Event()

    @tool
    async def wait_for_helper() -> str:
        """Wait until the helper is done."""
        await child_done.wait()
        return "waited"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        text = last(request)
        if is_child(request):
            return text_reply("the answer is 7")
        if request.messages[-1].role == "tool" and text == "waited":
            return text_reply("waited, but saw no answer")
        if text.startswith("<subagent "):
            return text_reply("got it within the same run")
        if request.messages[-1].role == "tool":  # the receipt
            return tool_reply(("wait_for_helper", {}, "call_w"))
        return tool_reply(("spawn_agent", {"task": "Find the answer.", "background": True}, "call_bg"))

    llm = ScriptedLLM(rule=rule)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(wait_for_helper)) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        loop.event_bus.subscribe(
            None, lambda e: child_done.set() if e.type.value == "session_ended" and e.session_id != sid else None
        )
        result = await loop.send("go", session_id=sid)
        messages = await loop.get_messages_async(sid)
    # The answer was drained into the running run after the tool results: one run saw it.
    assert subagent_messages(messages) and len(subagent_messages(messages)) == 1
    assert result.final_text == "got it within the same run"
    assert sum(1 for e in log.of("session_ended") if e.session_id == sid) == 1
    assert history_is_valid(messages)


async def test_listing_and_stopping_background_children(db_path: str) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    @tool
    async def slow() -> str:
        """Work slowly."""
        started.set()
        await release.wait()
        return "never seen"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        text = last(request)
        if is_child(request):
            return tool_reply(("slow", {}))
        if request.messages[-1].role == "tool":
            return text_reply(text)
        return tool_reply(*[(name, json.loads(args)) for name, args in json.loads(text)])

    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=registry(slow)) as loop:
        sid = await loop.new_session_async()
        await loop.send(json.dumps([["spawn_agent", json.dumps({"task": "t", "background": True})]]), session_id=sid)
        await started.wait()
        children = await loop.store.list_background_children(sid)
        child = children[0].session_id
        listed = await loop.send(json.dumps([["list_background_agents", "{}"]]), session_id=sid)
        stopped = await loop.send(
            json.dumps([["stop_background_agent", json.dumps({"session_id": child})]]), session_id=sid
        )
        again = await loop.send(
            json.dumps([["stop_background_agent", json.dumps({"session_id": child})]]), session_id=sid
        )
        runs = await loop.store.execute_fetchall(
            "SELECT r.status FROM runs r JOIN sessions s ON s.id = r.session WHERE s.session_id = ?", (child,)
        )
        after = await loop.store.list_background_children(sid)
        messages = await loop.get_messages_async(sid)
    assert listed.final_text == f"{child} (subagent): running"
    assert stopped.final_text == f"Stopped sub-agent {child}; its answer will not be delivered."
    assert "is not one of your running background sub-agents" in again.final_text
    assert runs == [("cancelled",)]
    assert after[0].status == "stopped"
    assert subagent_messages(messages) == []


async def test_a_child_killed_with_its_process_is_resumed_and_delivers_once(tmp_path: Path) -> None:
    db = str(tmp_path / "bg.db")
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent)}
    proc = subprocess.Popen([sys.executable, str(WORKER), db, "parent"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "HANGING"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()

    from .background_worker import rule as worker_rule

    @tool
    async def hang() -> str:
        """Work (quickly, this time)."""
        return "finished after the restart"

    async with StatefulAgentLoop(llm=ScriptedLLM(rule=worker_rule), db_path=db, tool_registry=registry(hang)) as loop:
        log = EventLog(loop.event_bus)
        before = await loop.store.list_background_children("parent")
        runner = TimerRunner(loop, scan_interval_s=0.05)
        await runner.scan_once()  # finds the orphan child and resumes it
        await ended(log, "parent", 1)  # the parent, woken by the answer
        await runner.scan_once()  # nothing more to do: no second delivery
        await runner.stop()
        messages = await loop.get_messages_async("parent")
        after = await loop.store.list_background_children("parent")
    assert [c.status for c in before] == ["running"]
    assert [c.status for c in after] == ["delivered"]
    delivered = subagent_messages(messages)
    assert len(delivered) == 1 and "child answer: finished after the restart" in delivered[0]
    assert messages[-1]["content"].startswith("parent got: <subagent")
    assert history_is_valid(messages)


async def test_a_detached_child_outlives_its_parent(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda request: text_reply("done"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        detached = await loop.run_subagent(
            "keep me", parent_session_id=sid, spawn_tool_call_id="a", lifecycle="detached"
        )
        linked = await loop.run_subagent("drop me", parent_session_id=sid, spawn_tool_call_id="b", lifecycle="linked")
        deleted = await loop.close_session_async(sid)
        kept = await loop.store.get_session_async(detached.session_id)
        gone = await loop.store.get_session_async(linked.session_id)
    assert deleted == 2  # the parent and its linked child
    assert kept is not None and kept.parent_session_id is None
    assert gone is None
