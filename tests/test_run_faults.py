"""Run faults: cancellation at any point, failures after the commit, the degraded marker."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from typing import Any

import pytest

from power_loop import (
    AgentEvent,
    AgentEventBus,
    AgentEventType,
    AgentHooks,
    AgentLoopConfig,
    HookPoint,
    StatefulAgentLoop,
)
from power_loop.testing import ScriptedLLM, ScriptedServer, error_reply, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

from .conftest import ServiceFactory
from .helpers import EventLog, history_is_valid, is_valid_history, registry

# A lease that outlives the test (a leak cannot expire) and a contender that never waits.
HELD = AgentLoopConfig(lease_ttl_s=600.0, session_wait_s=0.0)


class WriteLock:
    """Holds the database's write lock from a second connection, so that a transaction of
    the loop waits (in aiosqlite's worker thread) until :meth:`release`."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)

    def hold(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.release()
        self.conn.close()


def tool_then_text(request: ScriptedRequest) -> ScriptedReply:
    if request.tool_results:
        return text_reply("sum done")
    return tool_reply(("add", {"a": 1, "b": 2}))


async def running_runs(loop: StatefulAgentLoop) -> list[tuple[Any, ...]]:
    return await loop.store.execute_fetchall("SELECT run_id, kind FROM runs WHERE status = 'running'")


async def assert_session_free(loop: StatefulAgentLoop, other: StatefulAgentLoop, sid: str, text: str) -> None:
    """No run of ``loop`` holds or claims the session: ``other`` (another owner, no waiting)
    gets it at once, and no run row is left ``running``."""
    await loop.store.execute_fetchall("SELECT 1")  # after whatever ``loop`` had queued on its connection
    result = await other.send(text, session_id=sid, heal_pending=True)
    assert result.status == "completed"
    assert await running_runs(loop) == []
    assert history_is_valid(await other.get_messages_async(sid))


# ------------------------------------------------------------------ cancellation while a transaction is in flight


@pytest.mark.parametrize("step", ["begin", "model_turn", "finish"])
async def test_cancel_while_a_transaction_is_in_flight(db_path: str, step: str) -> None:
    """The task awaiting send is cancelled while one of the run's transactions waits for the
    write lock; the transaction commits after the cancellation. The run still ends recorded,
    the lease is released, and the next send of the same loop sees a well-formed history."""
    lock = WriteLock(db_path)
    reached = asyncio.Event()
    hooks = AgentHooks()

    def block_next_transaction(ctx: Any) -> None:
        if not reached.is_set():
            lock.hold()
            reached.set()

    if step == "begin":
        hooks.register(HookPoint.MESSAGE_APPEND, block_next_transaction)  # fires right before begin
    else:
        hooks.register(HookPoint.LLM_AFTER, block_next_transaction)  # right before the model turn commits
    script = {"begin": [], "model_turn": [tool_reply(("add", {"a": 1, "b": 2}))], "finish": [text_reply("first")]}[step]
    llm = ScriptedLLM([*script, text_reply("second")])
    try:
        async with (
            StatefulAgentLoop(llm=llm, db_path=db_path, config=HELD, hooks=hooks, tool_registry=registry()) as a,
            StatefulAgentLoop(llm=ScriptedLLM(rule=lambda r: text_reply("other")), db_path=db_path, config=HELD) as b,
        ):
            log = EventLog(a.event_bus)
            sid = await a.new_session_async()
            task = asyncio.ensure_future(a.send("go", session_id=sid))
            await asyncio.wait_for(reached.wait(), 10)
            task.cancel()
            lock.release()
            with pytest.raises(asyncio.CancelledError):
                await task
            await a.store.execute_fetchall("SELECT 1")  # the blocked transaction has run
            assert await running_runs(a) == []
            status = {"begin": "cancelled", "model_turn": "cancelled", "finish": "completed"}[step]
            assert [r[0] for r in await a.store.execute_fetchall("SELECT status FROM runs")] == [status]
            # session_ended (none when the run never started) tells the status the run is recorded with
            assert [e.payload["status"] for e in log.of("session_ended")] == ([] if step == "begin" else [status])
            # The same loop continues at once, on a history that includes what was committed.
            again = await a.send("next", session_id=sid, heal_pending=True)
            assert (again.status, again.final_text) == ("completed", "second")
            assert is_valid_history(llm.requests[-1].messages)
            assert [m.text for m in llm.requests[-1].messages if m.role == "user"][-1] == "next"
            await assert_session_free(a, b, sid, "from b")
    finally:
        lock.close()


async def test_cancel_at_every_point_of_a_send_leaks_nothing(db_path: str) -> None:
    """Cancel sends at many points (event-loop iterations, and each event of a tool round);
    after each, another owner gets the session at once and no run is left running."""
    async with (
        StatefulAgentLoop(
            llm=ScriptedLLM(rule=tool_then_text), db_path=db_path, config=HELD, tool_registry=registry()
        ) as a,
        StatefulAgentLoop(llm=ScriptedLLM(rule=lambda r: text_reply("b")), db_path=db_path, config=HELD) as b,
    ):
        sid = await a.new_session_async()
        cancelled = 0

        async def cancel_after(iterations: int | None, at_event: int | None) -> None:
            nonlocal cancelled
            task = asyncio.ensure_future(a.send("go", session_id=sid, heal_pending=True))
            seen = 0

            def count(event: AgentEvent) -> None:
                nonlocal seen
                seen += 1
                if seen == at_event:
                    task.cancel()

            if at_event is not None:
                a.event_bus.subscribe(None, count)
            for _ in range(iterations or 0):
                await asyncio.sleep(0)
            if iterations is not None:
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                cancelled += 1
            finally:
                a.event_bus.unsubscribe(count)
            await assert_session_free(a, b, sid, "b")

        for iterations in range(40):
            await cancel_after(iterations, None)
        for at_event in range(1, 20):
            await cancel_after(None, at_event)
        assert cancelled > 20
        assert history_is_valid(await a.get_messages_async(sid))


# ------------------------------------------------------------------ failures after the commit


@pytest.mark.parametrize("where", ["session.end hook", "session_ended subscriber", "round.end hook"])
async def test_a_failure_after_the_commit_is_reported_not_raised(
    db_path: str, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = AgentHooks()
    bus = AgentEventBus()
    log = EventLog(bus)

    def broken(_: Any) -> None:
        raise RuntimeError("audit sink is down")

    if where == "session.end hook":
        hooks.register(HookPoint.SESSION_END, broken)
    elif where == "round.end hook":
        hooks.register(HookPoint.ROUND_END, broken)
    else:
        bus.subscribe(AgentEventType.SESSION_ENDED, broken)
    llm = ScriptedLLM([text_reply("the answer")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, hooks=hooks, event_bus=bus) as loop:
        sid = await loop.new_session_async()
        with caplog.at_level(logging.ERROR, logger="power_loop"):
            result = await loop.send("the question", session_id=sid)
        assert (result.status, result.final_text) == ("completed", "the answer")
        assert len(result.post_commit_errors) == 1
        assert "RuntimeError: audit sink is down" in result.post_commit_errors[0]
        assert "audit sink is down" in caplog.text
        messages = await loop.get_messages_async(sid)
        assert [m["role"] for m in messages] == ["user", "assistant"]
        runs = await loop.store.execute_fetchall(
            "SELECT status FROM runs WHERE session = (SELECT id FROM sessions WHERE session_id = ?)", (sid,)
        )
        assert [r[0] for r in runs] == ["completed"]
    assert len(log.of("session_ended")) == 1
    assert "agent_error" not in log.types
    reports = [e for e in log.of("system_log") if e.payload["level"] == "error"]
    assert len(reports) == 1 and "audit sink is down" in reports[0].payload["message"]


async def test_results_without_post_commit_failures_report_none(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM([text_reply("ok")]), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("hi", session_id=sid)
    assert result.post_commit_errors == []


# ------------------------------------------------------------------ the degraded marker


async def test_the_degraded_marker_is_kept_but_not_sent_to_the_model(
    scripted_server: ScriptedServer, db_path: str, llm_factory: ServiceFactory, protocol: str
) -> None:
    scripted_server.push(error_reply(400, "the server refused"), text_reply("back again"), text_reply("third"))
    llm = llm_factory(protocol, scripted_server)
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        first = await loop.send("first question", session_id=sid)
        assert first.status == "degraded"
        second = await loop.send("second question", session_id=sid)  # the history cached by the loop
        assert (second.status, second.final_text) == ("completed", "back again")
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        third = await loop.send("third question", session_id=sid)  # the history loaded from the file
        assert third.final_text == "third"
        stored = await loop.get_messages_async(sid)
    assert [m["role"] for m in stored] == ["user", "assistant"] * 3
    assert stored[1]["content"].startswith("[degraded: LLM error")
    # Anthropic sends consecutive user messages as one turn; Chat Completions as they are.
    expected = {
        "openai": (["user", "user"], ["user", "user", "assistant", "user"]),
        "anthropic": (["user"], ["user", "assistant", "user"]),
    }[protocol]
    for request, roles in zip(scripted_server.requests[1:], expected, strict=True):
        wire = json.dumps(request.body["messages"], ensure_ascii=False)
        assert "[degraded" not in wire and "the server refused" not in wire
        assert "first question" in wire and "second question" in wire
        assert [m["role"] for m in request.body["messages"] if m["role"] != "system"] == roles
    assert stored[1]["name"] == "degraded"  # marked for the application


def test_the_model_view_of_a_transcript_is_kept_incrementally() -> None:
    from power_loop.engine.history import Transcript
    from power_loop.messages import AssistantMessage, UserMessage

    transcript = Transcript()
    transcript.messages += [UserMessage(content="a"), AssistantMessage(content="fine")]
    assert transcript.for_model() is transcript.messages  # nothing hidden: no copy
    legacy = AssistantMessage(content="[degraded: LLM timeout — LLMTimeout: slow]")  # stored before the name
    transcript.messages += [UserMessage(content="b"), legacy, UserMessage(content="c")]
    assert [m.text for m in transcript.for_model()] == ["a", "fine", "b", "c"]
    transcript.messages.append(AssistantMessage(content="[degraded: x]", name="degraded"))
    transcript.messages.append(AssistantMessage(content="[degraded: said by the model]", name="bot"))
    assert [m.text for m in transcript.for_model()] == ["a", "fine", "b", "c", "[degraded: said by the model]"]
    transcript.replace([UserMessage(content="summary")], [9])
    assert transcript.for_model() is transcript.messages
