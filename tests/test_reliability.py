"""Pending tool calls, resume, user input, durable follow-ups, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from power_loop import (
    AgentLoopConfig,
    CancellationToken,
    FollowUpQueued,
    LLMRetryPolicy,
    SessionPendingError,
    StatefulAgentLoop,
    ToolContext,
    request_user_input,
    tool,
)
from power_loop.testing import ScriptedLLM, error_reply, hang_reply, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

from .helpers import EventLog, history_is_valid, registry


class Gate:
    """A tool that blocks until released, to stop a run in the middle of a tool."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.calls: list[str] = []

    def tool(self) -> Any:
        gate = self

        @tool
        async def slow_write(key: str, ctx: ToolContext) -> str:
            """Writes a key (slowly).

            Args:
                key: The key.
            """
            gate.calls.append(ctx.idempotency_key)
            gate.entered.set()
            await gate.release.wait()
            return f"wrote {key}"

        return slow_write


async def cancel_in_tool(db_path: str) -> tuple[StatefulAgentLoop, ScriptedLLM, str, Gate]:
    """A session whose run was cancelled (task cancel) while a tool ran: its calls are pending."""
    gate = Gate()
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 1}, "c1"), ("slow_write", {"key": "k"}, "c2"))])
    loop = StatefulAgentLoop(
        llm=llm, db_path=db_path, tool_registry=registry(gate.tool()), config=AgentLoopConfig(tool_concurrency=1)
    )  # c1 finishes before c2 starts
    sid = await loop.new_session_async()
    task = asyncio.ensure_future(loop.send("go", session_id=sid))
    await asyncio.wait_for(gate.entered.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return loop, llm, sid, gate


async def test_task_cancelled_during_a_tool_leaves_the_calls_pending(db_path: str) -> None:
    loop, llm, sid, gate = await cancel_in_tool(db_path)
    pending = await loop.get_pending_async(sid)
    assert pending is not None
    assert pending["assistant_seq"] == 2
    assert pending["tool_call_ids"] == ["c1", "c2"]
    assert pending["statuses"] == {"c1": "done", "c2": "running"}
    with pytest.raises(SessionPendingError) as info:
        await loop.send("next", session_id=sid)
    error = info.value
    assert error.assistant_seq == 2 and [c["id"] for c in error.pending_tool_calls] == ["c1", "c2"]
    message = str(error)
    assert "add (c1)" in message and "slow_write (c2)" in message
    assert "resume" in message and "abort_pending" in message and "heal_pending=True" in message
    await loop.aclose()


async def test_resume_reruns_only_what_never_finished(db_path: str) -> None:
    loop, llm, sid, gate = await cancel_in_tool(db_path)
    gate.release.set()
    llm.push(text_reply("all written"))
    result = await loop.resume(sid)
    assert (result.status, result.final_text) == ("completed", "all written")
    messages = await loop.get_messages_async(sid)
    assert [m.get("content") for m in messages[2:4]] == ["2", "wrote k"]  # add's stored result is reused
    assert gate.calls == [f"{sid}:c2", f"{sid}:c2"]  # the same idempotency key both times
    assert history_is_valid(messages)
    rows = await loop.store.execute_fetchall(
        "SELECT tool_call_id, status FROM tool_calls "
        "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY position",
        (sid,),
    )
    assert rows == [("c1", "done"), ("c2", "done")]
    await loop.aclose()


async def test_heal_pending_answers_and_sends(db_path: str) -> None:
    loop, llm, sid, gate = await cancel_in_tool(db_path)
    llm.push(text_reply("moving on"))
    result = await loop.send("forget it", session_id=sid, heal_pending=True)
    assert result.final_text == "moving on"
    messages = await loop.get_messages_async(sid)
    assert messages[2]["content"] == "2"  # finished call: its real result
    assert messages[3]["content"] == "<aborted: auto-healed by send(heal_pending=True)>"
    assert messages[4] == {"role": "user", "content": "forget it"}
    assert history_is_valid(messages)
    await loop.aclose()


async def test_abort_pending(db_path: str) -> None:
    loop, llm, sid, gate = await cancel_in_tool(db_path)
    assert loop.abort_pending(sid, reason="operator said no") == 2
    messages = loop.get_messages(sid)
    assert messages[3]["content"] == "<aborted: operator said no>"
    assert loop.get_pending(sid) is None
    assert loop.abort_pending(sid) == 0
    llm.push(text_reply("ok"))
    assert (await loop.send("next", session_id=sid)).status == "completed"
    await loop.aclose()


async def test_resume_with_nothing_pending_runs_one_more_round(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("first"), text_reply("second thoughts")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        await loop.send("hi", session_id=sid)
        result = await loop.resume(sid)
    assert (result.status, result.final_text) == ("completed", "second thoughts")


async def test_request_user_input_and_submit_input(db_path: str) -> None:
    @tool
    def confirm_payment(amount: int) -> str:
        """Ask the user to confirm a payment.

        Args:
            amount: Amount in cents.
        """
        request_user_input(prompt=f"Pay {amount} cents?", kind="confirm", options=["yes", "no"])

    llm = ScriptedLLM(
        [tool_reply(("confirm_payment", {"amount": 500}, "p1"), ("add", {"a": 2, "b": 2}, "p2")), text_reply("paid")]
    )
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(confirm_payment)) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("pay the invoice", session_id=sid)
        assert result.status == "waiting_for_input"
        interaction = result.pending_interactions[0]
        assert (interaction["prompt"], interaction["kind"], interaction["tool_call_id"]) == (
            "Pay 500 cents?",
            "confirm",
            "p1",
        )
        assert [c["id"] for c in result.pending_tool_calls] == ["p1", "p2"]
        with pytest.raises(SessionPendingError):
            await loop.send("hello?", session_id=sid)
        with pytest.raises(ValueError, match="pending interaction not found"):
            await loop.submit_input(sid, "input_nope", "yes")
        done = await loop.submit_input(sid, interaction["interaction_id"], "yes")
        assert (done.status, done.final_text) == ("completed", "paid")
        messages = await loop.get_messages_async(sid)
    assert [m.get("content") for m in messages[2:4]] == ["yes", "4"]
    assert history_is_valid(messages)


async def test_follow_ups_while_busy_are_merged_at_the_next_boundary(db_path: str) -> None:
    gate = Gate()
    llm = ScriptedLLM([tool_reply(("slow_write", {"key": "a"})), text_reply("handled everything")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(gate.tool())) as loop:
        sid = await loop.new_session_async()
        run = asyncio.ensure_future(loop.send("start", session_id=sid))
        await asyncio.wait_for(gate.entered.wait(), 5)
        first = await loop.follow_up("also do b", session_id=sid)
        second = await loop.follow_up({"content": "and c"}, session_id=sid)
        assert first == FollowUpQueued(session_id=sid, queue_depth=1)
        assert second == FollowUpQueued(session_id=sid, queue_depth=2)
        gate.release.set()
        result = await run
        messages = await loop.get_messages_async(sid)
    assert result.final_text == "handled everything"
    assert messages[3] == {
        "role": "user",
        "name": "follow_up",
        "content": "<follow_up>\nalso do b\n\nand c\n</follow_up>",
    }
    assert llm.requests[1].messages[-1].text == "<follow_up>\nalso do b\n\nand c\n</follow_up>"  # type: ignore[union-attr]
    assert history_is_valid(messages)


async def test_a_follow_up_during_the_last_round_is_not_left_behind(db_path: str) -> None:
    arrived = asyncio.Event()
    proceed = asyncio.Event()

    class SlowLast(ScriptedLLM):
        async def complete(self, request: Any, *, callbacks: Any = None) -> Any:
            if self.calls == 0:
                arrived.set()
                await proceed.wait()
            return await super().complete(request, callbacks=callbacks)

    llm = SlowLast([text_reply("first answer"), text_reply("answer to the follow-up")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        run = asyncio.ensure_future(loop.send("question", session_id=sid))
        await asyncio.wait_for(arrived.wait(), 5)
        queued = await loop.follow_up("one more thing", session_id=sid)
        assert isinstance(queued, FollowUpQueued)
        proceed.set()
        result = await run
        assert await loop.store.inbox_depth(sid) == 0
        contents = [m["content"] for m in await loop.get_messages_async(sid)]
    assert result.final_text == "answer to the follow-up"
    assert contents == [
        "question",
        "first answer",
        "<follow_up>\none more thing\n</follow_up>",
        "answer to the follow-up",
    ]


async def test_an_idle_follow_up_is_a_send(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("direct")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        result = await loop.follow_up("hello", session_id=sid)
    assert not isinstance(result, FollowUpQueued) and result.final_text == "direct"


async def test_an_inbox_left_behind_is_delivered_by_the_next_run(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("got both")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        await loop.store.enqueue(sid, "queued before a crash")  # as a crashed process would leave it
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        await loop.send("new message", session_id=sid)
        contents = [m["content"] for m in await loop.get_messages_async(sid)]
    assert contents == ["<follow_up>\nqueued before a crash\n</follow_up>", "new message", "got both"]


# --------------------------------------------------------------------------- cancellation


def stop_sources() -> list[tuple[str, Any, Any]]:
    token = CancellationToken()
    aio = asyncio.Event()
    thread_event = threading.Event()
    flag = {"stop": False}
    return [
        ("token", token, lambda: token.cancel("user hit stop")),
        ("asyncio.Event", aio, aio.set),
        ("threading.Event", thread_event, thread_event.set),
        ("callable", lambda: flag["stop"], lambda: flag.update(stop=True)),
    ]


@pytest.mark.parametrize("kind", ["token", "asyncio.Event", "threading.Event", "callable"])
async def test_stop_event_interrupts_a_model_call(db_path: str, kind: str) -> None:
    name, source, fire = next(s for s in stop_sources() if s[0] == kind)
    llm = ScriptedLLM([hang_reply(3600), text_reply("next send works")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        run = asyncio.ensure_future(loop.send("long question", session_id=sid, stop_event=source))
        await asyncio.sleep(0.2)
        fire()
        result = await asyncio.wait_for(run, 60)  # a hang guard: uninterrupted, the call takes an hour
        assert (result.status, result.final_text) == ("cancelled", "[cancelled by user]")
        assert await loop.get_pending_async(sid) is None
        cancelled = log.of("loop_cancelled")[0].payload
        if kind == "token":
            assert cancelled["reason"] == "user hit stop"
        assert (await loop.send("again", session_id=sid)).final_text == "next send works"


async def test_stop_before_each_tool_answers_the_rest_cancelled(db_path: str) -> None:
    token = CancellationToken()

    @tool
    def first() -> str:
        """Runs, then asks to stop."""
        token.cancel("enough")
        return "first done"

    llm = ScriptedLLM([tool_reply(("first", {}, "c1"), ("add", {"a": 1, "b": 1}, "c2"))])
    async with StatefulAgentLoop(
        llm=llm, db_path=db_path, tool_registry=registry(first), config=AgentLoopConfig(tool_concurrency=1)
    ) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid, stop_event=token)
        messages = await loop.get_messages_async(sid)
    assert result.status == "cancelled"
    assert [m["content"] for m in messages[2:4]] == ["first done", "<cancelled: enough>"]
    assert history_is_valid(messages)


async def test_stop_during_backoff(db_path: str) -> None:
    token = CancellationToken()
    llm = ScriptedLLM([error_reply(503)] * 5)
    config = AgentLoopConfig(retry_policy=LLMRetryPolicy(max_attempts=5, backoff_initial=10, backoff_max=10))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        sid = await loop.new_session_async()
        run = asyncio.ensure_future(loop.send("x", session_id=sid, stop_event=token))
        await asyncio.sleep(0.3)
        token.cancel()
        result = await asyncio.wait_for(run, 5)
    assert result.status == "cancelled" and llm.calls == 1


async def test_stop_at_round_start(db_path: str) -> None:
    token = CancellationToken()
    token.cancel()
    llm = ScriptedLLM([text_reply("never")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("x", session_id=sid, stop_event=token)
    assert (result.status, llm.calls) == ("cancelled", 0)


async def test_task_cancelled_during_a_model_call_leaves_nothing_pending(db_path: str) -> None:
    llm = ScriptedLLM([hang_reply(30), text_reply("fine")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        run = asyncio.ensure_future(loop.send("x", session_id=sid))
        await asyncio.sleep(0.2)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert await loop.get_pending_async(sid) is None
        assert (await loop.send("again", session_id=sid)).final_text == "fine"
        rows = await loop.store.execute_fetchall(
            "SELECT status FROM runs "
            "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY started_at",
            (sid,),
        )
    assert [r[0] for r in rows] == ["cancelled", "completed"]


async def test_bad_stop_event_is_refused_before_anything_is_stored(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        with pytest.raises(TypeError, match="stop_event"):
            await loop.send("x", session_id=sid, stop_event=42)  # type: ignore[arg-type]
        assert await loop.get_messages_async(sid) == []


async def test_follow_ups_from_a_rule_model_in_order(db_path: str) -> None:
    """Several follow-ups queued at different moments arrive in order, each exactly once."""
    gate = Gate()

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.tool_results or "follow_up" in request.last_user_text:
            return text_reply("ack " + request.last_user_text.replace("\n", " "))
        return tool_reply(("slow_write", {"key": "x"}))

    llm = ScriptedLLM(rule=rule)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(gate.tool())) as loop:
        sid = await loop.new_session_async()
        run = asyncio.ensure_future(loop.send("start", session_id=sid))
        await asyncio.wait_for(gate.entered.wait(), 5)
        for i in range(3):
            await loop.follow_up(f"f{i}", session_id=sid)
        gate.release.set()
        await run
        texts = [m.get("content") for m in await loop.get_messages_async(sid) if m["role"] == "user"]
    assert texts == ["start", "<follow_up>\nf0\n\nf1\n\nf2\n</follow_up>"]


async def test_abort_pending_refuses_while_a_run_holds_the_session(db_path: str) -> None:
    from power_loop import SessionBusyError

    gate = Gate()
    llm = ScriptedLLM([tool_reply(("slow_write", {"key": "k"}, "c1")), text_reply("done")])
    config = AgentLoopConfig(session_wait_s=0.3)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(gate.tool()), config=config) as loop:
        sid = await loop.new_session_async()
        run = asyncio.ensure_future(loop.send("go", session_id=sid))
        await asyncio.wait_for(gate.entered.wait(), 5)
        started = time.monotonic()
        with pytest.raises(SessionBusyError, match="is held by a run"):
            await loop.abort_pending_async(sid)  # waits session_wait_s for the hold to end
        assert time.monotonic() - started >= 0.25
        with pytest.raises(SessionBusyError, match="may still be running"):
            await asyncio.to_thread(loop.abort_pending, sid)  # the sync form does not wait
        gate.release.set()
        result = await asyncio.wait_for(run, 5)
        messages = await loop.get_messages_async(sid)
    assert result.final_text == "done"
    assert [m["content"] for m in messages if m["role"] == "tool"] == ["wrote k"]  # exactly one result
    assert history_is_valid(messages)
