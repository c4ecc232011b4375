"""Round limit, token budget and a provider that stays down."""

from __future__ import annotations

import pytest

from power_loop import AgentLoopConfig, LLMRetryPolicy, StatefulAgentLoop
from power_loop.messages import Usage
from power_loop.testing import ScriptedLLM, ScriptedServer, error_reply, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply

from .conftest import ServiceFactory
from .helpers import EventLog, history_is_valid, registry


def always_tools(request: object) -> ScriptedReply:
    return tool_reply(("add", {"a": 1, "b": 1}))


async def test_round_limit_asks_for_a_saved_summary(db_path: str) -> None:
    llm = ScriptedLLM(
        [*[tool_reply(("add", {"a": i, "b": 1})) for i in range(3)], text_reply("I added numbers; nothing remains.")]
    )
    config = AgentLoopConfig(max_rounds=3)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("keep adding", session_id=sid)
        messages = await loop.get_messages_async(sid)
        stats = await loop.get_session_stats_async(sid)
    assert result.status == "hit_round_limit"
    assert result.final_text == "[hit_round_limit]\nI added numbers; nothing remains."
    assert result.rounds == 3 and result.usage["calls"] == 4
    summary_request = llm.requests[-1]
    assert summary_request.tools == ()
    assert "maximum of 3 rounds" in summary_request.messages[-1].text  # type: ignore[union-attr]
    assert messages[-2]["content"].startswith("You have reached the maximum of 3 rounds")
    assert messages[-1] == {"role": "assistant", "content": "I added numbers; nothing remains."}
    assert history_is_valid(messages)
    kinds = [e.payload.get("kind") for e in log.of("status_changed")]
    assert "hit_round_limit" in kinds
    assert len(log.of("usage_updated")) == 4  # the summary call is a normal, evented call
    assert stats is not None and stats.llm_calls == 4


async def test_round_limit_summary_is_retried_like_any_call(db_path: str) -> None:
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 1})), error_reply(503), text_reply("summary")])
    config = AgentLoopConfig(max_rounds=1, retry_policy=LLMRetryPolicy(max_attempts=2, backoff_initial=0.01))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
    assert result.final_text == "[hit_round_limit]\nsummary"
    assert len(log.of("llm_retry_attempted")) == 1


async def test_budget_stops_after_the_crossing_round(db_path: str) -> None:
    heavy = Usage.of_call(prompt_tokens=600, completion_tokens=10)
    llm = ScriptedLLM([tool_reply(("add", {"a": 2, "b": 2}), usage=heavy), text_reply("never sent")])
    config = AgentLoopConfig(max_tokens_per_run=500)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("add", session_id=sid)
        messages = await loop.get_messages_async(sid)
        assert (await loop.get_pending_async(sid)) is None
    assert result.status == "budget_exceeded"
    assert result.final_text == "[budget_exceeded]"
    assert llm.calls == 1
    assert messages[-1] == {"role": "tool", "tool_call_id": "call_0_add", "content": "4", "name": "add"}
    assert history_is_valid(messages)
    budget = [e for e in log.of("status_changed") if e.payload["kind"] == "budget_exceeded"]
    assert budget and budget[0].payload["budget_tokens"] == 500 and budget[0].payload["spent_tokens"] == 610


async def test_a_text_round_that_crosses_the_budget_completes(db_path: str) -> None:
    llm = ScriptedLLM([ScriptedReply(text="fine", usage=Usage.of_call(prompt_tokens=900, completion_tokens=9))])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(max_tokens_per_run=100)) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("hi", session_id=sid)
    assert (result.status, result.final_text) == ("completed", "fine")


async def test_provider_down_degrades_and_the_session_recovers(
    scripted_server: ScriptedServer, db_path: str, llm_factory: ServiceFactory, protocol: str
) -> None:
    scripted_server.push(*[error_reply(503, "overloaded")] * 3, text_reply("back"))
    llm = llm_factory(protocol, scripted_server)
    config = AgentLoopConfig(retry_policy=LLMRetryPolicy(max_attempts=3, backoff_initial=0.01, backoff_max=0.01))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("hello?", session_id=sid)
        assert result.status == "degraded"
        assert result.final_text.startswith("[degraded: LLM retry_exhausted — LLMServerError: ")
        assert "overloaded" in result.final_text
        assert scripted_server.request_count == 3
        assert len(log.of("llm_retry_attempted")) == 2
        degraded = log.of("llm_degraded")[0].payload
        assert (degraded["reason"], degraded["attempts"]) == ("retry_exhausted", 3)
        again = await loop.send("now?", session_id=sid)
        assert (again.status, again.final_text) == ("completed", "back")
        assert history_is_valid(await loop.get_messages_async(sid))


async def test_a_400_degrades_without_retry(db_path: str) -> None:
    llm = ScriptedLLM([error_reply(400, "context too long")], max_retries=5)
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("hi", session_id=sid)
    assert result.status == "degraded"
    assert result.final_text.startswith("[degraded: LLM error — LLMStatusError:")
    assert llm.calls == 1


@pytest.mark.parametrize("max_retries", [0, 2])
async def test_default_retries_follow_the_provider(db_path: str, max_retries: int) -> None:
    llm = ScriptedLLM([error_reply(500)] * 5, max_retries=max_retries)
    config = AgentLoopConfig()
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("hi", session_id=sid)
    assert result.status == "degraded"
    assert llm.calls == max_retries + 1
