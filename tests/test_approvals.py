"""Durable approvals: a call that needs a human's approval pauses the run
(``awaiting_approval``); ``loop.approve`` decides it once, from any process, after a restart
too; denials, expiry, prechecks, hook pauses, mixed batches and listing. Store rules run on
both backends (``shared_db``: an SQLite file, a PostgreSQL schema)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from power_loop import (
    AgentLoopConfig,
    ApprovalError,
    ApprovalPendingError,
    ApprovalRequest,
    HookDirective,
    HookPoint,
    SessionBusyError,
    SessionPendingError,
    StatefulAgentLoop,
    ToolBeforeCtx,
    ToolContext,
    ToolDefinition,
    ToolRegistry,
    open_store,
    tool,
)
from power_loop.messages import AssistantMessage, ToolCall, UserMessage
from power_loop.store.rows import Append, BeginRun, FinishRun, LeaseClaim, OpenApproval, UpdateToolCall
from power_loop.testing import ScriptedLLM
from power_loop.testing.script import text_reply, tool_reply

from .approval_worker import transfer_tool
from .helpers import history_is_valid

WORKER = Path(__file__).with_name("approval_worker.py")


def tool_results(llm: ScriptedLLM, index: int = -1) -> dict[str, str]:
    """The tool results (call id → text) the model saw in request ``index``."""
    request = llm.requests[index]
    return {m.tool_call_id: m.text for m in request.messages if m.role == "tool"}  # type: ignore[attr-defined]


def spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(WORKER.parent.parent)}
    return subprocess.Popen(
        [sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def output_of(proc: subprocess.Popen[str]) -> str:
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"worker hung:\n{err}") from None
    assert proc.returncode == 0, err
    return out.strip()


def runs_of(effects: Path) -> list[str]:
    return effects.read_text().splitlines() if effects.exists() else []


async def paused_transfer(db: str, effects: Path, *, amount: int = 500) -> tuple[str, ApprovalRequest]:
    """A session whose run paused on ``transfer(amount)``; the loop is closed again."""
    llm = ScriptedLLM([tool_reply(("transfer", {"amount": amount}, "t1"))])
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=transfer_tool(effects)) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("pay the invoice", session_id=sid)
    assert result.status == "awaiting_approval"
    assert runs_of(effects) == []
    (request,) = result.approvals
    return sid, request


# --------------------------------------------------------------------------- the basic path


async def test_a_call_waits_for_approval_then_runs_once(shared_db: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    llm = ScriptedLLM([tool_reply(("transfer", {"amount": 500}, "t1")), text_reply("paid")])
    config = AgentLoopConfig(approval_ttl_s=600)
    async with StatefulAgentLoop(
        llm=llm, db_path=shared_db, tool_registry=transfer_tool(effects), config=config
    ) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("pay the invoice", session_id=sid)
        assert (result.status, result.final_text) == ("awaiting_approval", "")
        (request,) = result.approvals
        assert (request.session_id, request.tool_call_id, request.tool_name) == (sid, "t1", "transfer")
        assert dict(request.arguments) == {"amount": 500}
        assert len(request.token) >= 32 and not request.expired
        assert 590_000 <= request.expires_at - request.created_at <= 600_000
        assert [c["id"] for c in result.pending_tool_calls] == ["t1"]
        assert runs_of(effects) == []
        assert await loop.list_approvals(sid) == [request]

        with pytest.raises(ApprovalPendingError, match=request.token) as refused:
            await loop.send("hello?", session_id=sid)
        assert isinstance(refused.value, SessionPendingError) and refused.value.tokens == [request.token]
        waiting = await loop.resume(sid)  # resume reports the request; it runs nothing
        assert (waiting.status, waiting.approvals) == ("awaiting_approval", [request])
        assert runs_of(effects) == []

        done = await loop.approve(sid, request.token)
        assert (done.status, done.final_text, done.approvals) == ("completed", "paid", [])
        assert runs_of(effects) == ["transfer 500"]
        assert tool_results(llm) == {"t1": "transferred 500"}
        assert await loop.list_approvals() == []

        with pytest.raises(ApprovalError, match="used already"):
            await loop.approve(sid, request.token)
        with pytest.raises(ApprovalError, match="used already"):
            await loop.approve(sid, request.token, approved=False)
        assert runs_of(effects) == ["transfer 500"]
        assert history_is_valid(await loop.get_messages_async(sid))


async def test_unknown_tokens_and_tokens_of_another_session_are_refused(shared_db: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    sid, request = await paused_transfer(shared_db, effects)
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=shared_db, tool_registry=transfer_tool(effects)) as loop:
        other = await loop.new_session_async()
        with pytest.raises(ApprovalError, match="no approval request with this token"):
            await loop.approve(sid, "not-a-token")
        with pytest.raises(ApprovalError, match="no approval request with this token") as wrong:
            await loop.approve(other, request.token)
        assert (wrong.value.session_id, wrong.value.token) == (other, request.token)
        assert await loop.list_approvals() == [request]  # still undecided
    assert runs_of(effects) == []


async def test_a_denied_call_tells_the_model_with_the_note(db_path: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    llm = ScriptedLLM([tool_reply(("transfer", {"amount": 900}, "t1")), text_reply("I will not transfer.")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=transfer_tool(effects)) as loop:
        sid = await loop.new_session_async()
        (request,) = (await loop.send("pay", session_id=sid)).approvals
        done = await loop.approve(sid, request.token, approved=False, note="over the monthly limit")
        assert (done.status, done.final_text) == ("completed", "I will not transfer.")
        seen = tool_results(llm)["t1"]
        assert "did not approve" in seen and "over the monthly limit" in seen
        assert runs_of(effects) == []
        messages = await loop.get_messages_async(sid)
        assert history_is_valid(messages)
        assert [m["content"] for m in messages if m["role"] == "tool"] == [seen]
        with pytest.raises(ApprovalError):
            await loop.approve(sid, request.token)


# --------------------------------------------------------------------------- expiry


async def test_an_expired_approval_answers_the_call_and_ends_approval_expired(db_path: str) -> None:
    ran: list[str] = []

    @tool(requires_approval=True, approval_ttl_s=0.001)
    def wipe(disk: str) -> str:
        """Wipe a disk.

        Args:
            disk: Which one.
        """
        ran.append(disk)
        return "wiped"

    llm = ScriptedLLM([tool_reply(("wipe", {"disk": "sda"}, "w1")), text_reply("The approval came too late.")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([wipe])) as loop:
        sid = await loop.new_session_async()
        (request,) = (await loop.send("wipe sda", session_id=sid)).approvals
        while not request.expired:  # a TTL of 1 ms: waits for the clock to pass it, no bound
            await asyncio.sleep(0.005)
        listed = await loop.list_approvals()
        assert listed == [request] and listed[0].expired  # expired requests are listed until decided

        late = await loop.approve(sid, request.token)
        assert (late.status, late.final_text) == ("approval_expired", "[approval_expired: wipe]")
        assert ran == []
        messages = await loop.get_messages_async(sid)
        assert history_is_valid(messages)
        assert "approval expired" in messages[-1]["content"]
        assert await loop.list_approvals() == []
        assert len(llm.requests) == 1  # the run stopped; the host decides what comes next

        reacted = await loop.resume(sid)  # the model reacts to the expiry
        assert (reacted.status, reacted.final_text) == ("completed", "The approval came too late.")
        assert "approval expired" in tool_results(llm)["w1"]
        with pytest.raises(ApprovalError, match="used already"):
            await loop.approve(sid, request.token)


# --------------------------------------------------------------------------- precheck


async def test_a_failing_precheck_issues_a_fresh_request(db_path: str) -> None:
    prices = {"widget": 100}
    ran: list[int] = []
    quoted: dict[str, int] = {}

    def still_the_quoted_price(args: Any, ctx: ToolContext) -> bool | str:
        assert ctx.tool_call_id == "b1"
        if prices["widget"] != quoted.setdefault("widget", args["price"]):
            quoted["widget"] = prices["widget"]
            return f"the price changed to {prices['widget']}"
        return True

    @tool(requires_approval=True, precheck=still_the_quoted_price)
    def buy(item: str, price: int) -> str:
        """Buy an item.

        Args:
            item: What.
            price: The quoted price.
        """
        ran.append(price)
        return f"bought {item}"

    llm = ScriptedLLM([tool_reply(("buy", {"item": "widget", "price": 100}, "b1")), text_reply("bought")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([buy])) as loop:
        sid = await loop.new_session_async()
        (first,) = (await loop.send("buy a widget", session_id=sid)).approvals
        assert first.reason is None
        prices["widget"] = 120  # the world changes while the human looks
        again = await loop.approve(sid, first.token)
        assert again.status == "awaiting_approval" and ran == []
        (fresh,) = again.approvals
        assert fresh.token != first.token and fresh.tool_call_id == "b1"
        assert fresh.reason == "the price changed to 120"
        assert fresh.expires_at >= first.expires_at
        assert await loop.list_approvals() == [fresh]
        with pytest.raises(ApprovalError, match="replaced by a fresh request"):
            await loop.approve(sid, first.token)

        done = await loop.approve(sid, fresh.token)
        assert (done.status, done.final_text) == ("completed", "bought")
        assert ran == [100]
        assert history_is_valid(await loop.get_messages_async(sid))


# --------------------------------------------------------------------------- who needs approval


async def test_requires_approval_as_a_callable_decides_per_call_in_a_mixed_batch(db_path: str) -> None:
    paid: list[int] = []

    def large(args: Any, ctx: ToolContext) -> bool:
        return bool(args["amount"] > 100)

    async def pay(amount: int) -> str:
        paid.append(amount)
        return f"paid {amount}"

    definition = ToolDefinition(
        name="pay",
        description="Pay an amount.",
        input_schema={"type": "object", "properties": {"amount": {"type": "integer"}}, "required": ["amount"]},
        requires_approval=large,
    )
    registry = ToolRegistry()
    registry.register(definition, pay)

    @tool
    def balance() -> int:
        """The account balance."""
        return 1000

    registry.register(balance)
    llm = ScriptedLLM(
        [
            tool_reply(("pay", {"amount": 50}, "p1"), ("pay", {"amount": 500}, "p2"), ("balance", {}, "b1")),
            text_reply("both paid"),
        ]
    )
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("pay 50 and 500", session_id=sid)
        assert result.status == "awaiting_approval"
        assert [a.tool_call_id for a in result.approvals] == ["p2"]
        assert paid == [50]  # the calls that need no approval ran at once
        assert result.tool_calls == 2
        pending = await loop.get_pending_async(sid)
        assert pending is not None
        assert pending["statuses"] == {"p1": "done", "p2": "awaiting_approval", "b1": "done"}
        assert pending["approvals"] == [result.approvals[0].to_dict()]

        done = await loop.approve(sid, result.approvals[0].token)
        assert done.status == "completed" and done.tool_calls == 1
        assert paid == [50, 500]
        assert tool_results(llm) == {"p1": "paid 50", "p2": "paid 500", "b1": "1000"}
        assert history_is_valid(await loop.get_messages_async(sid))


async def test_a_tool_before_hook_pauses_a_call_for_approval(db_path: str) -> None:
    sent: list[str] = []
    seen_approved: list[bool] = []

    @tool
    def send_email(to: str) -> str:
        """Send an email.

        Args:
            to: The address.
        """
        sent.append(to)
        return f"sent to {to}"

    def gate(ctx: ToolBeforeCtx) -> HookDirective | None:
        seen_approved.append(ctx.approved)
        if ctx.tool_args["to"].endswith("@external.com"):
            return HookDirective.PAUSE  # ignored once the call is approved
        return None

    llm = ScriptedLLM(
        [
            tool_reply(("send_email", {"to": "boss@external.com"}, "e1"), ("send_email", {"to": "me@corp.com"}, "e2")),
            text_reply("emails sent"),
        ]
    )
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([send_email])) as loop:
        loop.hooks.register(HookPoint.TOOL_BEFORE, gate)
        sid = await loop.new_session_async()
        result = await loop.send("email both", session_id=sid)
        assert result.status == "awaiting_approval"
        assert [(a.tool_call_id, dict(a.arguments)) for a in result.approvals] == [("e1", {"to": "boss@external.com"})]
        assert sent == ["me@corp.com"]
        done = await loop.approve(sid, result.approvals[0].token)
        assert (done.status, done.final_text) == ("completed", "emails sent")
        assert sent == ["me@corp.com", "boss@external.com"]
        assert sorted(seen_approved) == [False, False, True]


# --------------------------------------------------------------------------- listing, healing


async def test_list_approvals_across_sessions_and_processes_views(shared_db: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    first, a = await paused_transfer(shared_db, effects, amount=1)
    second, b = await paused_transfer(shared_db, effects, amount=2)
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=shared_db, tool_registry=transfer_tool(effects)) as loop:
        listed = await loop.list_approvals()
        assert {r.token for r in listed} == {a.token, b.token}
        assert await loop.list_approvals(first) == [a]
        assert await loop.list_approvals(second) == [b]
        assert await loop.list_approvals("no-such-session") == []
        assert await asyncio.to_thread(loop.list_approvals_sync, second) == [b]
        assert a.to_dict()["arguments"] == {"amount": 1}


async def test_heal_pending_drops_the_request_and_kills_its_token(db_path: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    sid, request = await paused_transfer(db_path, effects)
    llm = ScriptedLLM([text_reply("ok, never mind")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=transfer_tool(effects)) as loop:
        done = await loop.send("forget it", session_id=sid, heal_pending=True)
        assert done.status == "completed"
        assert await loop.list_approvals() == []
        with pytest.raises(ApprovalError, match="answered another way"):
            await loop.approve(sid, request.token)
        assert history_is_valid(await loop.get_messages_async(sid))
    assert runs_of(effects) == []


# --------------------------------------------------------------------------- durability, races


async def test_approved_from_another_process_after_a_restart(shared_db: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    sid, request = await paused_transfer(shared_db, effects)  # process A's loop is closed
    out = await asyncio.to_thread(output_of, spawn(shared_db, sid, request.token, str(effects)))
    assert out == "completed done after approval"
    assert runs_of(effects) == ["transfer 500"]
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=shared_db, tool_registry=transfer_tool(effects)) as loop:
        messages = await loop.get_messages_async(sid)
        assert history_is_valid(messages)
        assert [m["content"] for m in messages[-2:]] == ["transferred 500", "done after approval"]
        assert await loop.list_approvals() == []
        with pytest.raises(ApprovalError, match="used already"):
            await loop.approve(sid, request.token)


async def test_two_processes_racing_to_approve_run_the_call_once(shared_db: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    sid, request = await paused_transfer(shared_db, effects)
    procs = [spawn(shared_db, sid, request.token, str(effects)) for _ in range(2)]
    outs = sorted(await asyncio.gather(*(asyncio.to_thread(output_of, p) for p in procs)))
    assert outs == ["ApprovalError", "completed done after approval"]
    assert runs_of(effects) == ["transfer 500"]


async def test_concurrent_approvals_with_one_token_run_the_call_once(shared_db: str, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    sid, request = await paused_transfer(shared_db, effects)
    loops = [
        StatefulAgentLoop(
            llm=ScriptedLLM([text_reply("done")]), db_path=shared_db, tool_registry=transfer_tool(effects)
        )
        for _ in range(2)
    ]
    for loop in loops:
        await loop.open()
    try:
        outcomes = await asyncio.gather(*(loop.approve(sid, request.token) for loop in loops), return_exceptions=True)
    finally:
        for loop in loops:
            await loop.aclose()
    statuses = sorted(o.status if not isinstance(o, BaseException) else type(o).__name__ for o in outcomes)
    assert statuses == ["ApprovalError", "completed"]
    assert runs_of(effects) == ["transfer 500"]


def test_tool_definitions_check_their_approval_settings() -> None:
    with pytest.raises(ValueError, match="requires_approval"):
        ToolDefinition(name="x", description="", requires_approval="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="approval_ttl_s"):
        ToolDefinition(name="x", description="", approval_ttl_s=0)
    with pytest.raises(ValueError, match="precheck"):
        ToolDefinition(name="x", description="", precheck=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="approval_ttl_s"):
        ToolDefinition(name="x", description="", approval_ttl_s=1e30)
    with pytest.raises(ValueError, match="approval_ttl_s"):
        AgentLoopConfig(approval_ttl_s=-1)
    with pytest.raises(ValueError, match="approval_ttl_s"):
        AgentLoopConfig(approval_ttl_s=1e30)


async def test_resume_runs_a_call_approved_by_a_process_that_died_before_running_it(
    db_path: str, tmp_path: Path
) -> None:
    effects = tmp_path / "effects.txt"
    sid, request = await paused_transfer(db_path, effects)
    store = open_store(db_path)  # the decision commits; its process dies before the run starts
    await store.open()
    try:
        decision = await store.decide_approval(sid, request.token, approved=True)
    finally:
        await store.close()
    assert decision.outcome == "approved"
    llm = ScriptedLLM([text_reply("paid after all")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=transfer_tool(effects)) as loop:
        with pytest.raises(SessionPendingError) as refused:
            await loop.send("hello", session_id=sid)
        assert not isinstance(refused.value, ApprovalPendingError)  # nothing left to decide
        done = await loop.resume(sid)  # runs the approved call without asking again
        assert (done.status, done.final_text) == ("completed", "paid after all")
    assert runs_of(effects) == ["transfer 500"]


# --------------------------------------------------------------------------- the store's rules


def _request(token: str, call_id: str, *, expires_at: int) -> ApprovalRequest:
    return ApprovalRequest(
        token=token,
        session_id="s",
        tool_call_id=call_id,
        tool_name="wipe",
        arguments={"disk": call_id},
        expires_at=expires_at,
        created_at=1,
    )


async def test_store_rules_decide_once_wait_for_a_held_session_and_expire(shared_db: str) -> None:
    store = open_store(shared_db)
    await store.open()
    try:
        await store.create_session("s")
        lease = LeaseClaim(owner="a/run_1", ttl_ms=60_000)
        begin = await store.begin_run(BeginRun("s", "run_1", lease, messages=[UserMessage(content="wipe")]))
        lease = LeaseClaim(owner=lease.owner, ttl_ms=lease.ttl_ms, fence=begin.fence)
        calls = (ToolCall(id="c1", name="wipe", arguments="{}"), ToolCall(id="c2", name="wipe", arguments="{}"))
        await store.write("s", [Append([AssistantMessage(content="", tool_calls=calls)], run_id="run_1")], lease=lease)
        late = _request("tok-late", "c1", expires_at=1)  # a TTL in the past
        first = _request("tok-first", "c2", expires_at=2**62)
        fresh = _request("tok-fresh", "c2", expires_at=2**62)
        ops = [UpdateToolCall(c.id, "awaiting_approval") for c in calls]
        await store.write("s", [*ops, OpenApproval(late), OpenApproval(first)], lease=lease)
        with pytest.raises(SessionBusyError):  # the run still holds the session
            await store.decide_approval("s", "tok-late", approved=True)
        await store.write("s", [OpenApproval(fresh), FinishRun("run_1", "awaiting_approval")], lease=lease)

        assert await store.list_approvals() == [late, fresh]  # a fresh request supersedes the first
        assert store.list_approvals_sync("s") == [late, fresh]
        with pytest.raises(ApprovalError, match="replaced by a fresh request"):
            await store.decide_approval("s", "tok-first", approved=True)
        pending = await store.get_pending("s")
        assert pending is not None and pending.approvals == (late, fresh)

        expired = await store.decide_approval("s", "tok-late", approved=True, note="go")
        assert (expired.outcome, expired.request, expired.remaining) == ("expired", late, (fresh,))
        approved = await store.decide_approval("s", "tok-fresh", approved=True)
        assert (approved.outcome, approved.remaining) == ("approved", ())
        pending = await store.get_pending("s")
        assert pending is not None and pending.approvals == ()
        assert (pending.approved, pending.expired) == (frozenset({"c2"}), frozenset({"c1"}))
        c1, c2 = pending.calls
        assert (c1.status, c1.is_error) == ("skipped", True) and "approval expired" in str(c1.result)
        assert (c2.status, c2.result) == ("pending", None)
        for token in ("tok-late", "tok-fresh"):
            with pytest.raises(ApprovalError, match="used already"):
                await store.decide_approval("s", token, approved=False)
        assert await store.list_approvals() == []

        assert await store.abort_pending("s", "dropped") == 2  # answers the calls, drops the approval
        assert await store.get_pending("s") is None
        rows = await store.execute_fetchall("SELECT token, status FROM approvals ORDER BY token")
        assert rows == [("tok-first", "superseded"), ("tok-fresh", "aborted"), ("tok-late", "expired")]
    finally:
        await store.close()
