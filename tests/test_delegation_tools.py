"""The delegation tools (``spawn_agent``, ``run_agent``) and ``run_agent_spec``, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from power_loop import (
    AgentLoopConfig,
    AgentSpec,
    StatefulAgentLoop,
    ToolContext,
    ToolRegistry,
    register_spawn_agent,
    run_agent_spec,
    tool,
)
from power_loop.testing import ScriptedLLM, ScriptedServer, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

from .conftest import ServiceFactory
from .helpers import EventLog, add, history_is_valid

CHILD_MARK = "You are a sub-agent"
REVIEWER = AgentSpec(
    name="reviewer",
    system_prompt="You are a strict code reviewer. Report problems only.",
    tools=["add"],
    max_rounds=3,
    lifecycle="linked",
)


def delegation_registry(**options: object) -> ToolRegistry:
    reg = ToolRegistry()
    reg.register(add)
    return register_spawn_agent(reg, **options)  # type: ignore[arg-type]


def tool_result(request: ScriptedRequest) -> str | None:
    last = request.messages[-1]
    return last.text if last.role == "tool" else None


def test_registration_adds_both_tools_and_lists_predefined_agents(tmp_path: Path) -> None:
    (tmp_path / "reviewer.yaml").write_text(
        "name: reviewer\nsystem_prompt: You are a strict code reviewer.\ntools: [add]\n", encoding="utf-8"
    )
    from_dir = delegation_registry(specs=tmp_path)
    plain = delegation_registry(include_run_agent=False, include_background=False)
    assert from_dir.names() == [
        "add",
        "spawn_agent",
        "list_background_agents",
        "stop_background_agent",
        "run_agent",
    ]
    assert plain.names() == ["add", "spawn_agent"]
    run_agent = from_dir.get("run_agent")
    assert run_agent is not None
    assert "reviewer: You are a strict code reviewer." in run_agent.definition.description
    assert run_agent.definition.input_schema["properties"]["spec"]["enum"] == ["reviewer"]
    with pytest.raises(ValueError, match="already registered"):
        register_spawn_agent(from_dir)
    register_spawn_agent(from_dir, overwrite=True, specs=[REVIEWER])


@pytest.mark.parametrize("protocol", ["openai", "anthropic"])
async def test_spawn_agent_over_the_wire_returns_the_childs_answer(
    db_path: str, llm_factory: ServiceFactory, protocol: str
) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        child = CHILD_MARK in (request.system_prompt or "")
        result = tool_result(request)
        if child:
            return text_reply("3 files")
        if result is not None:
            return text_reply(f"The sub-agent says: {result}")
        return tool_reply(("spawn_agent", {"task": "Count the files.", "tools": ["add"], "max_rounds": 2}))

    with ScriptedServer(rule=rule) as server:
        llm = llm_factory(protocol, server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=delegation_registry()) as loop:
            log = EventLog(loop.event_bus)
            sid = await loop.new_session_async()
            result = await loop.send("How many files?", session_id=sid)
            messages = await loop.get_messages_async(sid)
        requests = server.requests
    assert result.final_text == "The sub-agent says: 3 files"
    child_requests = [r for r in requests if CHILD_MARK in (r.system_prompt or "")]
    assert len(child_requests) == 1 and child_requests[0].tools == ["add"]
    assert [e.type.value for e in log.events if e.type.value.startswith("subagent_")] == [
        "subagent_task_start",
        "subagent_text",
        "subagent_completed",
    ]
    assert history_is_valid(messages)


async def test_run_agent_runs_a_predefined_agent_and_refuses_an_unknown_one(db_path: str) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        if (request.system_prompt or "").startswith("You are a strict code reviewer"):
            return text_reply("no problems in: " + request.messages[-1].text)
        result = tool_result(request)
        if result is not None:
            return text_reply(result)
        wanted = json.loads(request.messages[-1].text)
        return tool_reply(("run_agent", wanted))

    llm = ScriptedLLM(rule=rule)
    registry = delegation_registry(specs={"reviewer": REVIEWER})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        ok = await loop.send(json.dumps({"spec": "reviewer", "input": "def f(): pass"}), session_id=sid)
        children = await loop.store.execute_fetchall("SELECT COUNT(*) FROM sessions WHERE kind = 'subagent'", ())
        unknown = await loop.send(json.dumps({"spec": "nobody", "input": "x"}), session_id=sid)
    reviewer_calls = [r for r in llm.requests if (r.system_prompt or "").startswith("You are a strict code reviewer")]
    assert ok.final_text == "no problems in: def f(): pass"
    assert reviewer_calls[0].max_tokens == 4000 and [t.name for t in reviewer_calls[0].tools] == ["add"]
    assert children == [(1,)]  # linked: kept under its parent
    # The schema lists the predefined agents: the model reads what it may call instead.
    assert "'nobody' is not one of 'reviewer'" in unknown.final_text


async def test_a_child_that_stops_early_is_reported_with_its_ending(db_path: str) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        child = CHILD_MARK in (request.system_prompt or "")
        result = tool_result(request)
        if child:
            return tool_reply(("add", {"a": 1, "b": 1}))  # never finishes on its own
        if result is not None:
            return text_reply(result)
        return tool_reply(("spawn_agent", {"task": "loop forever", "max_rounds": 1}))

    llm = ScriptedLLM(rule=rule)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=delegation_registry()) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
    assert (
        result.final_text.startswith("[sub-agent sess_")
        and "ended hit_round_limit after 1 rounds]" in result.final_text
    )
    assert log.of("subagent_limit")[0].payload["max_rounds"] == 1


async def test_run_agent_spec_inside_a_tool_belongs_to_the_calling_run(db_path: str) -> None:
    loops: list[StatefulAgentLoop] = []

    @tool
    async def review(code: str, ctx: ToolContext) -> str:
        """Review code with the reviewer agent.

        Args:
            code: The code.
        """
        outcome = await run_agent_spec(REVIEWER, code, parent_loop=loops[0])
        return json.dumps(outcome)

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if (request.system_prompt or "").startswith("You are a strict code reviewer"):
            return text_reply("looks fine")
        result = tool_result(request)
        if result is not None:
            return text_reply(result)
        return tool_reply(("review", {"code": "x = 1"}, "call_r"))

    registry = ToolRegistry()
    for t in (add, review):
        registry.register(t)
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=registry) as loop:
        loops.append(loop)
        sid = await loop.new_session_async()
        result = await loop.send("review please", session_id=sid)
        outcome = json.loads(result.final_text)
        row = await loop.store.get_session_async(outcome["session_id"])
        host = await run_agent_spec(REVIEWER.to_dict(), "y = 2", parent_loop=loop)
    assert outcome == {
        "session_id": outcome["session_id"],
        "status": "completed",
        "final_text": "looks fine",
        "rounds": 1,
        "depth": 1,
    }
    assert row is not None and row.parent_session_id == sid and row.spawn_tool_call_id == "call_r"
    assert host["status"] == "completed" and host["depth"] == 1


async def test_a_registered_service_answers_for_a_named_model(db_path: str) -> None:
    cheap = ScriptedLLM(rule=lambda request: text_reply("cheap answer"), model="cheap-model")
    spec = AgentSpec(name="cheap", system_prompt="You summarize.", model="cheap", lifecycle="ephemeral")

    def rule(request: ScriptedRequest) -> ScriptedReply:
        result = tool_result(request)
        if result is not None:
            return text_reply(result)
        return tool_reply(("run_agent", {"spec": "cheap", "input": "summarize"}))

    llm = ScriptedLLM(rule=rule)
    config = AgentLoopConfig(llm_services={"cheap": cheap})
    registry = delegation_registry(specs=[spec])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
    assert result.final_text == "cheap answer"
    assert len(cheap.requests) == 1 and len(llm.requests) == 2
