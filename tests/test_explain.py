"""``loop.explain(sid)``: a report of the session's latest run, for every ending a run of this
version can have, built from the store (so a new loop explains it after a restart), with the
event log's details when events were stored."""

from __future__ import annotations

import pytest

from power_loop import (
    AgentLoopConfig,
    CancellationToken,
    HookError,
    HookPoint,
    LLMRetryPolicy,
    SessionNotFoundError,
    StatefulAgentLoop,
    request_user_input,
    tool,
)
from power_loop._explain import LIMITS
from power_loop.messages import Usage
from power_loop.testing import ScriptedLLM, error_reply, text_reply, tool_reply

from .helpers import registry

PERSIST = AgentLoopConfig(persist_events=True)


async def _explained(
    db: str, llm: ScriptedLLM, config: AgentLoopConfig, *, tools: object = None, **send: object
) -> tuple[str, str, str]:
    """Send once; return the result's status, the report of the same loop, and the report of
    a new loop on the same store (with the default config)."""
    async with StatefulAgentLoop(llm=llm, db_path=db, config=config, tool_registry=registry(*(tools or ()))) as loop:
        sid = await loop.new_session_async(session_id="s1")
        result = await loop.send("go", sid, **send)  # type: ignore[arg-type]
        report = await loop.explain(sid)
    async with StatefulAgentLoop(llm=llm, db_path=db) as reopened:
        later = await reopened.explain(sid)
    return result.status, report, later


def _line(report: str, start: str) -> str:
    return next(line.strip() for line in report.splitlines() if line.strip().startswith(start))


async def test_a_completed_run(shared_db: str) -> None:
    llm = ScriptedLLM([tool_reply(("add", {"a": 2, "b": 3})), text_reply("It is 5.")])
    status, report, later = await _explained(shared_db, llm, PERSIST)
    assert status == "completed"
    assert report.startswith("Session 's1': last run run_") and "(#1, send) ended completed." in report
    assert "meaning: The model gave its final answer." in report
    assert "last message: It is 5." in report
    assert _line(report, "rounds:") == "rounds: 2; model calls: 2"
    assert _line(report, "tool calls:") == "tool calls: 1 done"
    assert _line(report, "max_rounds:") == "max_rounds: 2 of 24 rounds"
    assert "max_tokens_per_run:" in report and "unlimited" in _line(report, "max_tokens_per_run:")
    assert _line(report, "Events:").startswith("Events: ") and "stored; replay with `loop.iter_events('s1'" in report
    assert (
        _line(report, "Next")
        == "Next (none, not resumable): nothing to do; the next message is `await loop.send(text, 's1')`"
    )
    assert later == report  # another loop, after a restart, tells the same
    # One line per limit the config has, in LIMITS order.
    fields = [limit.field for limit in LIMITS if hasattr(PERSIST, limit.field)]
    section = report.split("Limits (this loop's config):\n")[1].splitlines()[: len(fields)]
    assert [line.split(":")[0].strip() for line in section] == fields


async def test_waiting_for_input_names_the_question_and_the_call(db_path: str) -> None:
    @tool
    def confirm(amount: int) -> str:
        """Ask the user to confirm.

        Args:
            amount: Cents.
        """
        request_user_input(prompt=f"Pay {amount} cents?", kind="confirm", options=["yes", "no"])

    llm = ScriptedLLM([tool_reply(("confirm", {"amount": 500}, "p1"))])
    status, report, later = await _explained(db_path, llm, AgentLoopConfig(), tools=[confirm])
    assert status == "waiting_for_input"
    assert "ended waiting_for_input." in report and "A tool asked the user a question" in report
    assert "Pending:" in report and "call p1 confirm: waiting_input" in report
    question = _line(report, "question ")
    assert question.endswith(": Pay 500 cents?")
    interaction_id = question.split()[1].rstrip(":")
    assert _line(report, "Next") == (
        f"Next (submit_input, resumable): `await loop.submit_input('s1', '{interaction_id}', value)`"
    )
    assert "Events: none stored for this run (AgentLoopConfig.persist_events is off)." in report
    assert later == report


async def test_a_cancelled_run(db_path: str) -> None:
    token = CancellationToken()

    @tool
    def stop_now() -> str:
        """Stop the run."""
        token.cancel("user pressed stop")
        return "stopping"

    llm = ScriptedLLM([tool_reply(("stop_now", {})), text_reply("never")])
    status, report, _ = await _explained(db_path, llm, PERSIST, tools=[stop_now], stop_event=token)
    assert status == "cancelled"
    assert "ended cancelled." in report and "A stop_event stopped the run" in report
    assert "stopped by: user pressed stop" in report  # from the event log
    assert (
        _line(report, "Next") == "Next (send, not resumable): `await loop.send(text, 's1')` continues the conversation"
    )


async def test_a_run_that_hit_the_round_limit(db_path: str) -> None:
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 1})), text_reply("summary so far")])
    status, report, _ = await _explained(db_path, llm, AgentLoopConfig(max_rounds=1))
    assert status == "hit_round_limit"
    assert "ended hit_round_limit." in report
    assert _line(report, "max_rounds:") == "max_rounds: 1 of 1 rounds (reached)"
    assert "last message: summary so far" in report
    assert "Next (send, not resumable)" in report


async def test_a_run_over_its_token_budget(db_path: str) -> None:
    heavy = Usage.of_call(prompt_tokens=600, completion_tokens=10)
    llm = ScriptedLLM([tool_reply(("add", {"a": 2, "b": 2}), usage=heavy), text_reply("never")])
    config = AgentLoopConfig(max_tokens_per_run=500, persist_events=True)
    status, report, later = await _explained(db_path, llm, config)
    assert status == "budget_exceeded"
    assert "ended budget_exceeded." in report
    assert _line(report, "tokens:").startswith("tokens: 610 (prompt 600, completion 10")
    assert _line(report, "max_tokens_per_run:") == "max_tokens_per_run: 610 of 500 tokens (reached)"
    assert "budget: 610 tokens spent of 500 after 1 round(s)" in report  # the event log's detail
    assert _line(report, "Next") == (
        "Next (raise_budget, resumable): raise the budget that stopped it (AgentLoopConfig.max_tokens_per_run, "
        "max_cost_usd_per_run, ... or a Budget), or wait for its window to renew, then `await loop.resume('s1')`"
    )
    # The limits are the asking loop's: a loop without a budget reports none.
    assert "max_tokens_per_run: 610 tokens, unlimited" in later


async def test_a_degraded_run_says_why_the_model_failed(shared_db: str) -> None:
    llm = ScriptedLLM([error_reply(400, "model says no")])
    config = AgentLoopConfig(persist_events=True, retry_policy=LLMRetryPolicy(max_attempts=1))
    status, report, later = await _explained(shared_db, llm, config)
    assert status == "degraded"
    assert "ended degraded." in report and "The model could not be reached" in report
    assert "model says no" in _line(report, "model:")  # the llm_degraded event
    assert _line(report, "last message:").startswith("last message: [degraded: LLM")  # the stored marker
    assert _line(report, "Next") == (
        "Next (retry, resumable): once the cause is fixed (the model reachable), `await loop.resume('s1')`"
    )
    assert later == report


async def test_a_session_without_a_run_and_an_unknown_session(shared_db: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM([]), db_path=shared_db) as loop:
        sid = await loop.new_session_async(session_id="fresh")
        assert await loop.explain(sid) == (
            "Session 'fresh' has no run yet: nothing was sent to it.\n"
            "Next (send): `await loop.send(text, 'fresh')` starts its first run."
        )
        with pytest.raises(SessionNotFoundError):
            await loop.explain("nope")


def test_explain_sync(db_path: str) -> None:
    loop = StatefulAgentLoop(llm=ScriptedLLM([text_reply("hi")]), db_path=db_path)
    try:
        sid = loop.new_session(session_id="sync")
        loop.send_sync("hello", sid)
        assert "ended completed." in loop.explain_sync(sid)
    finally:
        loop.close()


async def test_a_failed_run_is_explained_and_its_last_events_are_stored(shared_db: str) -> None:
    def broken(ctx: object) -> None:
        raise RuntimeError("hook bug")

    llm = ScriptedLLM([text_reply("never")])
    async with StatefulAgentLoop(llm=llm, db_path=shared_db, config=PERSIST) as loop:
        loop.hooks.register(HookPoint.ROUND_START, broken)
        sid = await loop.new_session_async(session_id="s1")
        with pytest.raises(HookError):
            await loop.send("go", sid)
    async with StatefulAgentLoop(llm=llm, db_path=shared_db) as reopened:
        report = await reopened.explain(sid)
        events = [e async for e in reopened.iter_events(sid)]
    assert "ended failed." in report and "The run raised an error" in report
    assert "error: HookError" in report
    assert (
        _line(report, "Next") == "Next (send, not resumable): `await loop.send(text, 's1')` continues the conversation"
    )
    # The failure path's events follow the run's last write: the event log still has them.
    assert [e.type.value for e in events][-2:] == ["agent_error", "session_ended"]
    assert events[-1].payload["status"] == "failed"


async def test_a_run_that_stopped_for_no_progress(db_path: str) -> None:
    from power_loop import NoProgressPolicy

    llm = ScriptedLLM(rule=lambda r: tool_reply(("add", {"a": 1, "b": 1})))
    config = AgentLoopConfig(no_progress=NoProgressPolicy(repeat_limit=2), persist_events=True)
    status, report, _ = await _explained(db_path, llm, config)
    assert status == "no_progress" and "ended no_progress." in report
    assert _line(report, "Next").startswith("Next (send, not resumable)")


async def test_a_paused_run(db_path: str) -> None:
    async with StatefulAgentLoop(llm=ScriptedLLM([text_reply("never")]), db_path=db_path) as loop:
        sid = await loop.new_session_async(session_id="s1")

        @tool
        async def stop_here() -> str:
            """Pauses its own session."""
            await loop.pause(sid)
            return "paused myself"

        llm = ScriptedLLM([tool_reply(("stop_here", {}))])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(stop_here)) as loop:
        result = await loop.send("go", sid)
        report = await loop.explain(sid)
    assert result.status == "paused" and "ended paused." in report
    assert _line(report, "Next") == "Next (resume, resumable): `await loop.resume('s1')`"


async def test_a_run_awaiting_approval_names_the_call_to_make(db_path: str) -> None:
    @tool(requires_approval=True)
    def wire(amount: int) -> str:
        """Wires money."""
        return f"wired {amount}"

    llm = ScriptedLLM([tool_reply(("wire", {"amount": 5}, "w1")), text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(wire)) as loop:
        sid = await loop.new_session_async(session_id="s1")
        result = await loop.send("pay", sid)
        report = await loop.explain(sid)
    [request] = result.approvals
    assert result.status == "awaiting_approval" and "ended awaiting_approval." in report
    assert f"approval {request.token} for wire (w1): expires" in report
    assert f"`await loop.approve('s1', {request.token!r})`" in _line(report, "Next (approve, resumable)")


async def test_a_run_whose_approval_came_too_late(db_path: str) -> None:
    import asyncio

    @tool(requires_approval=True, approval_ttl_s=0.001)
    def wire(amount: int) -> str:
        """Wires money."""
        return f"wired {amount}"

    llm = ScriptedLLM([tool_reply(("wire", {"amount": 5}, "w1")), text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry(wire)) as loop:
        sid = await loop.new_session_async(session_id="s1")
        [request] = (await loop.send("pay", sid)).approvals
        while not request.expired:  # until the clock has passed it (whole ms, as the store decides)
            await asyncio.sleep(0.005)
        late = await loop.approve(sid, request.token)
        report = await loop.explain(sid)
    assert late.status == "approval_expired" and "ended approval_expired." in report
    assert _line(report, "Next").startswith("Next (send, not resumable)")
