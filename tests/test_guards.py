"""Guards on a run: budgets checked before every model and tool call, pause and resume, and
no-progress detection."""

from __future__ import annotations

import asyncio
import time

import pytest

from power_loop import (
    AgentLoopConfig,
    Budget,
    ConfigurationError,
    HookPoint,
    NoProgressPolicy,
    Price,
    SessionPausedError,
    StatefulAgentLoop,
    ToolRegistry,
    request_user_input,
    tool,
)
from power_loop.messages import Usage
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

from .helpers import EventLog, history_is_valid, registry

PRICES = {"scripted-model": Price(input_per_mtok=2.0, output_per_mtok=10.0, cache_read_per_mtok=0.5)}


# --------------------------------------------------------------------------- budgets


def test_guard_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="pricing"):
        AgentLoopConfig(max_cost_usd_per_run=1.0)
    with pytest.raises(ConfigurationError, match="max_tool_calls_per_run"):
        AgentLoopConfig(max_tool_calls_per_run=0)
    with pytest.raises(ConfigurationError, match="Price.input_per_mtok"):
        Price(input_per_mtok=-1, output_per_mtok=1)
    with pytest.raises(ConfigurationError, match="repeat_limit"):
        NoProgressPolicy(repeat_limit=1)
    with pytest.raises(ConfigurationError, match="action"):
        NoProgressPolicy(action="shout")  # type: ignore[arg-type]


def test_a_price_counts_cached_tokens_at_their_own_rate() -> None:
    price = PRICES["scripted-model"]
    usage = Usage.of_call(prompt_tokens=1_000_000, completion_tokens=100_000, cache_read_tokens=400_000)
    assert price.cost(usage) == pytest.approx(600_000 * 2e-6 + 400_000 * 0.5e-6 + 100_000 * 10e-6)


async def test_a_token_budget_stops_before_the_call_that_would_cross_it(db_path: str) -> None:
    heavy = Usage.of_call(prompt_tokens=3_440, completion_tokens=10)
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 2}), usage=heavy), text_reply("never sent")])
    config = AgentLoopConfig(max_tokens_per_run=3_500, max_tokens=8_000)  # 50 left: less than a prompt
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry()) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("add", session_id=sid)
        messages = await loop.get_messages_async(sid)
    assert result.status == "budget_exceeded" and llm.calls == 1
    # The first call's completion cap was clamped to what the budget left after its prompt.
    first_cap = llm.requests[0].max_tokens
    assert first_cap is not None and first_cap < 3_500
    hit = result.budget
    assert hit is not None and hit.limit == "max_tokens_per_run" and hit.session_id == sid
    assert hit.allowed == 3_500 and hit.spent == 3_450
    assert hit.spent + hit.needed > hit.allowed and hit.over_by == hit.spent + hit.needed - hit.allowed
    assert "max_tokens_per_run 3500: spent 3450" in hit.describe()
    assert messages[-1]["role"] == "tool" and history_is_valid(messages)


async def test_cost_is_reported_and_a_cost_budget_clamps_and_stops(db_path: str) -> None:
    usage = Usage.of_call(prompt_tokens=2_000, completion_tokens=500)
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 2}), usage=usage), text_reply("never sent")])
    # 2,000 x $2/M + 500 x $10/M = $0.009; $0.0091 leaves $0.0001, less than the next prompt costs.
    config = AgentLoopConfig(pricing=PRICES, max_cost_usd_per_run=0.0091, max_tokens=8_000)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry()) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("add", session_id=sid)
    assert result.usage["cost_usd"] == pytest.approx(0.009)
    # The first call could afford fewer than 8,000 completion tokens: its cap was clamped.
    first_cap = llm.requests[0].max_tokens
    assert first_cap is not None and first_cap < 910
    assert result.status == "budget_exceeded" and llm.calls == 1
    assert result.budget is not None and result.budget.limit == "max_cost_usd_per_run"
    assert result.budget.spent == pytest.approx(0.009) and result.budget.over_by > 0


async def test_pricing_alone_reports_cost_without_limiting(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("hi", usage=Usage.of_call(prompt_tokens=1_000, completion_tokens=10))])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(pricing=PRICES)) as loop:
        result = await loop.send("hello", session_id=await loop.new_session_async())
    assert result.status == "completed" and result.budget is None
    assert result.usage["cost_usd"] == pytest.approx(1_000 * 2e-6 + 10 * 10e-6)
    assert llm.requests[0].max_tokens == AgentLoopConfig().max_tokens  # nothing clamped


async def test_a_cost_budget_for_an_unpriced_model_is_a_clear_error(db_path: str) -> None:
    config = AgentLoopConfig(pricing={"another-model": Price(1, 1)}, max_cost_usd_per_run=1.0)
    async with StatefulAgentLoop(llm=ScriptedLLM([text_reply("x")]), db_path=db_path, config=config) as loop:
        with pytest.raises(ConfigurationError, match="no Price for model 'scripted-model'"):
            await loop.send("hello", session_id=await loop.new_session_async())


async def test_the_tool_call_that_would_cross_the_limit_is_not_run(db_path: str) -> None:
    ran: list[int] = []

    @tool
    def count(n: int) -> str:
        """Counts."""
        ran.append(n)
        return str(n)

    calls = [("count", {"n": i}, f"c{i}") for i in range(3)]
    llm = ScriptedLLM([tool_reply(*calls), text_reply("never sent")])
    config = AgentLoopConfig(max_tool_calls_per_run=2, tool_concurrency=1)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=ToolRegistry([count])) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("count", session_id=sid)
        messages = await loop.get_messages_async(sid)
    assert sorted(ran) == [0, 1] and llm.calls == 1
    assert result.status == "budget_exceeded" and result.budget is not None
    assert result.budget.limit == "max_tool_calls_per_run" and result.budget.spent == 2
    results = [m["content"] for m in messages if m["role"] == "tool"]
    assert results[:2] == ["0", "1"] and results[2].startswith("[not run: budget exceeded: max_tool_calls_per_run 2")
    assert history_is_valid(messages)


async def test_wall_clock_accumulates_across_a_continued_run(db_path: str) -> None:
    @tool
    def slow() -> str:
        """Takes a while."""
        time.sleep(0.15)
        return "done"

    @tool
    def ask() -> str:
        """Takes a while, then asks the user."""
        time.sleep(0.15)
        request_user_input(prompt="go on?")
        return ""

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if not request.tool_results:
            return tool_reply(("ask", {}, "q1"))
        if len(request.tool_results) == 1:
            return tool_reply(("slow", {}, "s1"))
        return text_reply("never sent")

    config = AgentLoopConfig(max_wall_s_per_run=0.25)
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=rule), db_path=db_path, config=config, tool_registry=ToolRegistry([slow, ask])
    ) as loop:
        sid = await loop.new_session_async()
        first = await loop.send("start", session_id=sid)
        assert first.status == "waiting_for_input"
        [question] = first.pending_interactions
        continued = await loop.submit_input(sid, question["interaction_id"], "yes")
        # Each part alone stays under 0.25 s; together they do not.
        assert continued.status == "budget_exceeded" and continued.budget is not None
        assert continued.budget.limit == "max_wall_s_per_run" and continued.budget.spent >= 0.3
        fresh = await loop.send("again", session_id=sid)  # a new send starts afresh
    assert fresh.budget is None or fresh.budget.spent < 0.3


# --------------------------------------------------------------------------- pause and resume


def _held() -> tuple[ToolRegistry, asyncio.Event, asyncio.Event]:
    entered, release = asyncio.Event(), asyncio.Event()

    @tool
    async def hold() -> str:
        """Blocks until released."""
        entered.set()
        await release.wait()
        return "held"

    return ToolRegistry([hold]), entered, release


def _hold_then_answer(request: ScriptedRequest) -> ScriptedReply:
    if not request.tool_results:
        return tool_reply(("hold", {}, "h1"))
    return text_reply(f"answered after {len(request.tool_results)} result(s)")


@pytest.mark.parametrize("where", ["this loop", "another loop on the same store"])
async def test_pause_stops_a_run_at_the_round_boundary_and_resume_continues_it(db_path: str, where: str) -> None:
    tools, entered, release = _held()
    llm = ScriptedLLM(rule=_hold_then_answer)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        running = asyncio.ensure_future(loop.send("work", session_id=sid))
        await entered.wait()
        if where == "this loop":
            assert await loop.pause(sid) is True
        else:  # another process would see the same: the run learns it from its next write
            async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as other:
                assert await other.pause(sid) is True
        release.set()
        result = await running
        assert result.status == "paused" and result.final_text == "[paused]"
        assert llm.calls == 1  # the tool round committed; no model call after the pause
        messages = await loop.get_messages_async(sid)
        assert messages[-1] == {"role": "tool", "tool_call_id": "h1", "content": "held", "name": "hold"}
        with pytest.raises(SessionPausedError, match="resume"):
            await loop.send("more", session_id=sid)
        assert len(await loop.get_messages_async(sid)) == len(messages)  # nothing stored
        resumed = await loop.resume(sid)
        assert resumed.status == "completed" and resumed.final_text == "answered after 1 result(s)"
        after = await loop.send("more", session_id=sid)  # the pause is gone
    assert after.status == "completed"
    assert "paused" in [e.payload.get("kind") for e in log.of("status_changed")]


async def test_a_pause_survives_a_restart(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda r: text_reply("ok"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        assert await loop.pause(sid) is False  # idle
        assert await loop.pause(sid) is False  # pausing again changes nothing
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as reopened:
        with pytest.raises(SessionPausedError):
            await reopened.send("hello", session_id=sid)
        assert (await reopened.resume(sid)).status == "completed"
        assert (await reopened.send("hello", session_id=sid)).status == "completed"


# --------------------------------------------------------------------------- no progress


def _same_call_forever(request: ScriptedRequest) -> ScriptedReply:
    return tool_reply(("add", {"a": 1, "b": 2}))


async def test_no_progress_stop_ends_the_run_on_the_repeated_call(db_path: str) -> None:
    llm = ScriptedLLM(rule=_same_call_forever)
    config = AgentLoopConfig(no_progress=NoProgressPolicy(repeat_limit=3, action="stop"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("add", session_id=sid)
        messages = await loop.get_messages_async(sid)
    assert result.status == "no_progress" and llm.calls == 3
    results = [m["content"] for m in messages if m["role"] == "tool"]
    assert results[:2] == ["3", "3"] and results[2].startswith("[not run: no progress: add was called 3 times")
    assert history_is_valid(messages)
    [event] = [e for e in log.of("status_changed") if e.payload["kind"] == "no_progress"]
    assert event.payload["action"] == "stop" and event.payload["reason"] == "repeated_call"


async def test_no_progress_nudge_tells_the_model_once_then_stops(db_path: str) -> None:
    llm = ScriptedLLM(rule=_same_call_forever)
    config = AgentLoopConfig(no_progress=NoProgressPolicy(repeat_limit=2, action="nudge"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry()) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("add", session_id=sid)
        messages = await loop.get_messages_async(sid)
    assert result.status == "no_progress" and llm.calls == 3
    results = [m["content"] for m in messages if m["role"] == "tool"]
    assert results[0] == "3"
    assert results[1].startswith("[not run: you already called add with these exact arguments 1 times")
    assert results[2].startswith("[not run: no progress")
    assert "you already called add" in llm.requests[2].messages[-1].text  # type: ignore[union-attr]


async def test_rounds_of_invalid_arguments_stop_the_run(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda r: tool_reply(("add", {"a": "one", "b": len(r.tool_results)})))
    config = AgentLoopConfig(no_progress=NoProgressPolicy(repeat_limit=2, action="nudge"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry()) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("add", session_id=sid)
        messages = await loop.get_messages_async(sid)
    # Round 2 gets the nudge appended to its error; round 3 is invalid again: stop.
    assert result.status == "no_progress" and llm.calls == 3
    results = [m["content"] for m in messages if m["role"] == "tool"]
    assert "could not run" not in results[0] and "rounds in a row had tool calls that could not run" in results[1]
    assert history_is_valid(messages)


# --------------------------------------------------------------------------- shared budgets


def test_shared_budget_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="tokens=..., cost_usd"):
        Budget(scope="tenant")
    with pytest.raises(ConfigurationError, match="scope"):
        Budget(scope="planet", tokens=1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="same scope and window"):
        AgentLoopConfig(budgets=[Budget("tenant", tokens=1), Budget("tenant", tokens=2)])
    with pytest.raises(ConfigurationError, match="pricing"):
        AgentLoopConfig(budgets=[Budget("loop", cost_usd=1.0)])
    assert Budget("tenant", tokens=1, window_s=3600).window_start(7_200_123) == 7_200_000


async def test_concurrent_runs_never_pass_a_tenant_budget_together(shared_db: str) -> None:
    """50 runs at once on one tenant's budget: each call holds its worst case in the store
    before it is sent, so whatever the interleaving the tenant's total stays within it."""
    inside = [0]
    most = [0]

    def honest(request: ScriptedRequest) -> ScriptedReply:
        # Bills less than any estimate of its prompt, and never more than its cap: as a real
        # provider, it cannot be billed past what was reserved.
        billed = Usage.of_call(prompt_tokens=10, completion_tokens=min(150, request.max_tokens or 150))
        return text_reply("ok", usage=billed)

    async def hold_on(ctx: object) -> None:  # keep the call's hold in the store a moment
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        await asyncio.sleep(0.02)
        inside[0] -= 1

    limit = 4_000
    config = AgentLoopConfig(max_tokens=200, budgets=[Budget("tenant", tokens=limit, window_s=3600)])
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=honest), db_path=shared_db, config=config) as loop:
        loop.hooks.register(HookPoint.LLM_AFTER, hold_on)
        acme = [await loop.new_session_async(metadata={"tenant_id": "acme"}) for _ in range(50)]
        other = await loop.new_session_async(metadata={"tenant_id": "globex"})
        results = await asyncio.gather(*(loop.send("go", session_id=sid) for sid in acme))
        spent = sum(r.usage["total_tokens"] for r in results)
        refused = [r for r in results if r.status == "budget_exceeded"]
        ledger = await loop.store.budget_spent(
            Budget("tenant", tokens=limit, window_s=3600).key("acme"),
            Budget("tenant", tokens=1, window_s=3600).window_start(int(time.time() * 1000)),
        )
        # Another tenant's budget is its own.
        assert (await loop.send("go", session_id=other)).status == "completed"
    assert most[0] > 1  # the calls overlapped
    assert refused and all(r.budget is not None and r.budget.scope == "tenant" for r in refused)
    assert refused[0].budget is not None and refused[0].budget.subject == "acme"
    assert spent == ledger[0] <= limit  # every billed token is in the ledger, and no more than the budget


async def test_a_session_budget_holds_across_sends_and_restarts(db_path: str) -> None:
    usage = Usage.of_call(prompt_tokens=10, completion_tokens=90)
    config = AgentLoopConfig(max_tokens=100, budgets=[Budget("session", tokens=450)])
    llm = ScriptedLLM(rule=lambda r: text_reply("ok", usage=usage))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        sid = await loop.new_session_async()
        first = [await loop.send(f"m{i}", session_id=sid) for i in range(3)]
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        later = [await loop.send(f"n{i}", session_id=sid) for i in range(3)]
        fresh = await loop.send("hi", session_id=await loop.new_session_async())
    statuses = [r.status for r in first + later]
    assert statuses[:4] == ["completed"] * 4 and statuses[4:] == ["budget_exceeded"] * 2
    hit = later[-1].budget
    assert hit is not None and hit.limit == "tokens" and hit.scope == "session" and hit.spent == 400
    assert "session budget" in hit.describe()
    assert fresh.status == "completed"  # another session has its own


async def test_answers_and_approvals_wait_for_resume_on_a_paused_session(db_path: str) -> None:
    @tool
    def ask() -> str:
        """Asks the user."""
        request_user_input(prompt="go on?")
        return ""

    @tool(requires_approval=True)
    def wire(amount: int) -> str:
        """Wires money."""
        return f"wired {amount}"

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if "pay" in request.last_user_text and not request.tool_results:
            return tool_reply(("wire", {"amount": 5}, "w1"))
        if not request.tool_results:
            return tool_reply(("ask", {}, "q1"))
        return text_reply("done")

    tools = ToolRegistry([ask, wire])
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=tools) as loop:
        asking = await loop.new_session_async()
        [question] = (await loop.send("start", session_id=asking)).pending_interactions
        paying = await loop.new_session_async()
        [request] = (await loop.send("pay", session_id=paying)).approvals
        for sid in (asking, paying):
            await loop.pause(sid)
        with pytest.raises(SessionPausedError):
            await loop.submit_input(asking, question["interaction_id"], "yes")
        with pytest.raises(SessionPausedError):
            await loop.approve(paying, request.token)
        # Nothing was stored: the same answer and the same token work once resumed.
        assert (await loop.resume(asking)).status == "waiting_for_input"
        assert (await loop.submit_input(asking, question["interaction_id"], "yes")).status == "completed"
        assert (await loop.resume(paying)).status == "awaiting_approval"
        assert (await loop.approve(paying, request.token)).status == "completed"


async def test_background_sub_agents_spend_their_root_tenants_budget(db_path: str) -> None:
    from .test_background_subagents import is_child, last, measure
    from .test_background_subagents import registry as spawn_registry

    billed = Usage.of_call(prompt_tokens=50, completion_tokens=50)

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if is_child(request):
            return text_reply("child done", usage=billed)
        if last(request).startswith("<subagent ") or request.messages[-1].role == "tool":
            return text_reply("noted", usage=billed)
        spawns = [("spawn_agent", {"task": f"t{i}", "background": True}, f"c{i}") for i in range(3)]
        return tool_reply(*spawns, usage=billed)

    budget = Budget("tenant", tokens=10_000, window_s=3600)
    config = AgentLoopConfig(max_tokens=100, budgets=[budget])
    async with StatefulAgentLoop(
        llm=ScriptedLLM(rule=rule), db_path=db_path, config=config, tool_registry=spawn_registry(measure)
    ) as loop:
        sid = await loop.new_session_async(metadata={"tenant_id": "acme"})
        await loop.send("go", session_id=sid)
        deadline = time.monotonic() + 30
        while True:  # the children (and the parent woken by their answers) run as tasks
            [(calls, tokens)] = await loop.store.execute_fetchall(
                "SELECT COUNT(*), COALESCE(SUM(total_tokens), 0) FROM llm_calls"
            )
            spent = await loop.store.budget_spent(budget.key("acme"), budget.window_start(int(time.time() * 1000)))
            if int(calls) >= 5 and spent[0] == int(tokens):
                break
            assert time.monotonic() < deadline, (calls, tokens, spent)
            await asyncio.sleep(0.05)
    assert int(calls) >= 5  # the parent's calls and the three children's
