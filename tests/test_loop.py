"""StatefulAgentLoop: sessions, persistence, per-call overrides, concurrency, bad input."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from typing import Any

import pytest

from power_loop import (
    DEFAULT_SYSTEM_PROMPT,
    AgentLoopConfig,
    CorruptRecordError,
    SessionNotFoundError,
    StatefulAgentLoop,
    ToolRegistry,
)
from power_loop.testing import ScriptedLLM, ScriptedServer, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

from .conftest import ServiceFactory
from .helpers import history_is_valid, registry


def loop_with(llm: Any, db_path: str, **kwargs: Any) -> StatefulAgentLoop:
    return StatefulAgentLoop(llm=llm, db_path=db_path, **kwargs)


async def test_quick_example_from_0_11_runs_unchanged(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README example of power-loop 0.11, verbatim, against the loopback server."""
    monkeypatch.setenv("POWER_LOOP_BASE_URL", scripted_server.openai_base_url)
    monkeypatch.setenv("POWER_LOOP_API_KEY", "test-key")
    monkeypatch.setenv("POWER_LOOP_MODEL", "test-model")
    scripted_server.push(text_reply("Noted."), text_reply("Your favorite color is teal."))

    from power_loop import AgentLoopConfig, StatefulAgentLoop, create_llm_service_from_env

    llm = create_llm_service_from_env()
    loop = StatefulAgentLoop(
        llm=llm,
        db_path="./power_loop_sessions.db",
        config=AgentLoopConfig(system_prompt="You are a concise assistant.", max_rounds=4),
    )
    sid = loop.new_session(metadata={"user_id": "demo"})
    first = await loop.send("My favorite color is teal.", session_id=sid)
    second = await loop.send("What is my favorite color?", session_id=sid)
    print(second.final_text)

    assert first.status == second.status == "completed"
    assert second.final_text == "Your favorite color is teal."
    second_request = scripted_server.requests[1]
    assert second_request.system_prompt == "You are a concise assistant."
    assert [m.text for m in second_request.messages] == [
        "My favorite color is teal.",
        "Noted.",
        "What is my favorite color?",
    ]
    assert loop.store.get_session(sid).metadata == {"user_id": "demo"}  # type: ignore[union-attr]
    await loop.aclose()
    await llm.aclose()  # type: ignore[attr-defined]


async def test_history_survives_a_new_loop_on_the_same_file(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("first answer"), text_reply("second answer")])
    async with loop_with(llm, db_path) as loop:
        sid = await loop.new_session_async(system_prompt="per-session")
        await loop.send("one", session_id=sid)
    async with loop_with(llm, db_path) as reopened:
        result = await reopened.send("two", session_id=sid)
        messages = await reopened.get_messages_async(sid)
    assert result.final_text == "second answer"
    assert [m["content"] for m in messages] == ["one", "first answer", "two", "second answer"]
    assert [m.text for m in llm.requests[1].messages] == ["one", "first answer", "two"]
    assert llm.requests[1].system_prompt is not None and llm.requests[1].system_prompt.startswith("per-session")


async def test_unknown_session_fails_before_any_model_call(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("never")])
    async with loop_with(llm, db_path) as loop:
        with pytest.raises(SessionNotFoundError) as info:
            await loop.send("hello", session_id="sess_does_not_exist")
        assert "sess_does_not_exist" in str(info.value)
        assert "new_session" in str(info.value)
        with pytest.raises(SessionNotFoundError):
            loop.get_messages("sess_does_not_exist")
    assert llm.calls == 0


async def test_session_ids_and_metadata(db_path: str) -> None:
    async with loop_with(ScriptedLLM(), db_path) as loop:
        sid = loop.new_session(metadata={"tenant": "acme"}, system_prompt="be nice")
        assert sid.startswith("sess_") and len(sid) == 5 + 24
        int(sid[5:], 16)
        row = loop.store.get_session(sid)
        assert row is not None
        assert (row.session_id, row.metadata, row.system_prompt, row.parent_session_id, row.kind) == (
            sid,
            {"tenant": "acme"},
            "be nice",
            None,
            "root",  # SessionKind.ROOT (a str enum), as in 0.11
        )
        custom = await loop.new_session_async(session_id="tenant-42/chat-1")
        assert custom == "tenant-42/chat-1"
        with pytest.raises(ValueError, match="already exists"):
            loop.new_session(session_id="tenant-42/chat-1")
        with pytest.raises(ValueError, match="JSON"):
            loop.new_session(metadata={"bad": object()})
        assert loop.close_session(sid) == 1
        assert loop.store.get_session(sid) is None
        assert loop.close_session(sid) == 0


@pytest.mark.parametrize(
    ("bad", "error", "match"),
    [
        (42, TypeError, "str or a user message dict"),
        (None, TypeError, "str or a user message dict"),
        ("   ", ValueError, "empty"),
        ("x" * 2_000, ValueError, "max_input_chars"),
        ({"role": "assistant", "content": "hi"}, ValueError, "role 'user'"),
        ({"text": "hi"}, ValueError, "needs 'content'"),
        ({"content": [42]}, ValueError, "malformed"),
    ],
)
async def test_malformed_input_is_refused_and_nothing_is_stored(
    db_path: str, bad: Any, error: type[Exception], match: str
) -> None:
    llm = ScriptedLLM([text_reply("never")])
    async with loop_with(llm, db_path, config=AgentLoopConfig(max_input_chars=1_000)) as loop:
        sid = await loop.new_session_async()
        with pytest.raises(error, match=match):
            await loop.send(bad, session_id=sid)
        assert await loop.get_messages_async(sid) == []
    assert llm.calls == 0


async def test_multimodal_dict_input_round_trips(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("a cat")])
    content = [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]
    async with loop_with(llm, db_path) as loop:
        sid = await loop.new_session_async()
        await loop.send({"role": "user", "content": content}, session_id=sid)
        assert (await loop.get_messages_async(sid))[0] == {"role": "user", "content": content}


async def test_system_prompt_precedence_and_nothing_stored(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda r: text_reply("ok"))
    config = AgentLoopConfig(system_prompt="config prompt", inject_tool_descriptions=False)
    async with loop_with(llm, db_path, config=config) as loop:
        plain = await loop.new_session_async()
        own = await loop.new_session_async(system_prompt="session prompt")
        await loop.send("a", session_id=own, system_prompt="call prompt")
        await loop.send("b", session_id=own)
        await loop.send("c", session_id=plain)
        assert [r.system_prompt for r in llm.requests] == ["call prompt", "session prompt", "config prompt"]
        assert loop.store.get_session(own).system_prompt == "session prompt"  # type: ignore[union-attr]
        assert loop.resolve_system_prompt(session_id=own) == "session prompt"
        assert loop.resolve_system_prompt() == "config prompt"
    async with loop_with(llm, db_path) as default_loop:
        assert default_loop.resolve_system_prompt() == DEFAULT_SYSTEM_PROMPT


async def test_tool_catalog_is_appended_to_the_system_prompt(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("ok")])
    async with loop_with(llm, db_path, tool_registry=registry(), config=AgentLoopConfig(system_prompt="base")) as loop:
        sid = await loop.new_session_async()
        await loop.send("hi", session_id=sid)
    assert llm.requests[0].system_prompt == (
        "base\n\n# Available Tools\n\n- **add**: Add two integers.\n- **shout**: Upper-case a text."
    )


async def test_per_call_tools_narrow_what_the_server_receives(
    scripted_server: ScriptedServer, db_path: str, llm_factory: ServiceFactory, protocol: str
) -> None:
    scripted_server.push(text_reply("one"), text_reply("two"), text_reply("three"))
    llm = llm_factory(protocol, scripted_server)
    async with loop_with(llm, db_path, tool_registry=registry()) as loop:
        sid = await loop.new_session_async()
        await loop.send("all tools", session_id=sid)
        await loop.send("only shout", session_id=sid, tools=["shout"])
        await loop.send("no tools", session_id=sid, tools=[])
        with pytest.raises(ValueError, match="unknown tool"):
            await loop.send("typo", session_id=sid, tools=["shuot"])
    assert [r.tools for r in scripted_server.requests] == [["add", "shout"], ["shout"], []]
    assert "**add**" not in (scripted_server.requests[1].system_prompt or "")


async def test_concurrent_tenants_get_their_own_tools_and_prompts(db_path: str) -> None:
    async def slow_echo(request: ScriptedRequest) -> ScriptedReply:
        raise AssertionError("unused")

    seen: dict[str, tuple[list[str], str | None]] = {}
    lock = threading.Lock()

    def rule(request: ScriptedRequest) -> ScriptedReply:
        with lock:
            seen[request.last_user_text] = (list(request.tools), request.system_prompt)
        return ScriptedReply(text="ok", delay_s=0.05)

    llm = ScriptedLLM(rule=rule)
    config = AgentLoopConfig(inject_tool_descriptions=False)
    async with loop_with(llm, db_path, tool_registry=registry(), config=config) as loop:
        sids = [await loop.new_session_async() for _ in range(6)]
        await asyncio.gather(
            *(
                loop.send(
                    f"tenant {i}",
                    session_id=sid,
                    tools=["add"] if i % 2 else ["shout"],
                    system_prompt=f"prompt of tenant {i}",
                )
                for i, sid in enumerate(sids)
            )
        )
    for i in range(6):
        assert seen[f"tenant {i}"] == (["add"] if i % 2 else ["shout"], f"prompt of tenant {i}")


class _AllAtOnce:
    """A model that answers only once ``n`` calls are in flight together: a barrier, no clock."""

    def __init__(self, inner: ScriptedLLM, n: int) -> None:
        self.inner, self.n, self.in_flight = inner, n, 0
        self.all_in = asyncio.Event()
        self.provider, self.model, self.max_retries = inner.provider, inner.model, inner.max_retries
        self.context_window = inner.context_window

    async def complete(self, request: Any, *, callbacks: Any = None) -> Any:
        self.in_flight += 1
        if self.in_flight == self.n:
            self.all_in.set()
        await asyncio.wait_for(self.all_in.wait(), 60)  # a hang guard: serial sends never get here
        return await self.inner.complete(request, callbacks=callbacks)


async def test_fifty_sessions_run_concurrently(db_path: str) -> None:
    llm = _AllAtOnce(ScriptedLLM(rule=lambda r: ScriptedReply(text=f"re: {r.last_user_text}")), 50)
    async with loop_with(llm, db_path) as loop:
        sids = [await loop.new_session_async() for _ in range(50)]
        results = await asyncio.gather(*(loop.send(f"msg {i}", session_id=s) for i, s in enumerate(sids)))
        assert all(r.status == "completed" for r in results)
        assert [r.final_text for r in results] == [f"re: msg {i}" for i in range(50)]
        assert llm.all_in.is_set() and llm.in_flight == 50
        for i, sid in enumerate(sids):
            assert [m["content"] for m in await loop.get_messages_async(sid)] == [f"msg {i}", f"re: msg {i}"]


async def test_same_session_sends_serialize_without_interleaving(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda r: ScriptedReply(text=f"re: {r.last_user_text}", delay_s=0.1))
    async with loop_with(llm, db_path) as loop:
        sid = await loop.new_session_async()
        await asyncio.gather(*(loop.send(f"m{i}", session_id=sid) for i in range(5)))
        contents = [m["content"] for m in await loop.get_messages_async(sid)]
    assert len(contents) == 10
    for i in range(0, 10, 2):
        assert contents[i + 1] == f"re: {contents[i]}"
    # Each request saw every earlier exchange complete: no interleaving.
    for n, request in enumerate(llm.requests):
        assert len(request.messages) == 2 * n + 1


async def test_usage_is_summed_and_stats_recorded(db_path: str) -> None:
    from power_loop.messages import Usage

    llm = ScriptedLLM(
        [
            tool_reply(
                ("add", {"a": 1, "b": 2}),
                usage=Usage.of_call(prompt_tokens=10, completion_tokens=5, cache_read_tokens=4, reasoning_tokens=1),
            ),
            ScriptedReply(text="3", usage=Usage.of_call(prompt_tokens=20, completion_tokens=2)),
            ScriptedReply(text="again", usage=Usage.of_call(prompt_tokens=7, completion_tokens=1)),
        ]
    )
    async with loop_with(llm, db_path, tool_registry=registry()) as loop:
        sid = await loop.new_session_async()
        other = await loop.new_session_async()
        assert loop.get_session_stats(sid) is None
        result = await loop.send("1+2?", session_id=sid)
        assert result.usage == {
            "calls": 2,
            "prompt_tokens": 30,
            "completion_tokens": 7,
            "cache_read_tokens": 4,
            "reasoning_tokens": 1,
            "total_tokens": 37,
        }
        assert (result.rounds, result.tool_calls) == (2, 1)
        await loop.send("more", session_id=other)
        stats = loop.get_session_stats(sid)
        assert stats is not None
        assert (stats.sends, stats.rounds, stats.llm_calls, stats.tool_calls) == (1, 2, 2, 1)
        assert (stats.prompt_tokens, stats.completion_tokens, stats.total_tokens) == (30, 7, 37)
        assert stats.first_send_at is not None and stats.last_send_at is not None
        assert [s.session_id for s in loop.list_session_stats()] == [other, sid]
        rows = await loop.store.execute_fetchall(
            "SELECT round_index, prompt_tokens, cache_read_tokens FROM llm_calls "
            "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY id",
            (sid,),
        )
        assert rows == [(0, 10, 4), (1, 20, 0)]


def test_send_sync_outside_and_inside_an_event_loop(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("sync ok"), text_reply("again")])
    loop = loop_with(llm, db_path)
    sid = loop.new_session()
    assert loop.send_sync("hi", sid).final_text == "sync ok"
    assert loop.send_sync("hi again", sid).final_text == "again"

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="await loop.send"):
            loop.send_sync("hi", sid)

    asyncio.run(inside())
    loop.close()


async def test_no_sqlite_on_the_event_loop_thread_during_send(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = ScriptedLLM(rule=lambda r: tool_reply(("add", {"a": 1, "b": 1})) if not r.tool_results else text_reply("2"))
    async with loop_with(llm, db_path, tool_registry=registry()) as loop:
        sids = [await loop.new_session_async() for _ in range(10)]
        loop_thread = threading.get_ident()
        threads: set[int] = set()
        await loop.store._db.set_trace_callback(lambda sql: threads.add(threading.get_ident()))  # type: ignore[union-attr]
        opened: list[int] = []
        real_connect = sqlite3.connect
        monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: opened.append(1) or real_connect(*a, **k))
        results = await asyncio.gather(*(loop.send("1+1", session_id=s) for s in sids))
        assert all(r.final_text == "2" for r in results)
        assert threads and loop_thread not in threads  # every statement ran off the loop's thread
        assert opened == []  # no sync connection was used during the sends


async def test_one_transaction_per_step(db_path: str) -> None:
    llm = ScriptedLLM([text_reply("hi")])
    async with loop_with(llm, db_path) as loop:
        sid = await loop.new_session_async()
        statements: list[str] = []
        await loop.store._db.set_trace_callback(statements.append)  # type: ignore[union-attr]
        await loop.send("hello", session_id=sid)
    begins = [s for s in statements if s.strip().upper().startswith("BEGIN")]
    # One transaction starts the run (lease, user message); one commits the answer and ends it.
    assert len(begins) == 2


async def test_a_corrupt_row_gives_a_clear_error_and_leaves_the_store_usable(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda r: text_reply("ok"))
    async with loop_with(llm, db_path) as loop:
        sid = await loop.new_session_async()
        await loop.send("fine", session_id=sid)
    with sqlite3.connect(db_path) as raw:
        raw.execute(
            "UPDATE messages SET body = '{not json' "
            "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) AND seq = 1",
            (sid,),
        )
    async with loop_with(llm, db_path) as loop:
        with pytest.raises(CorruptRecordError) as info:
            await loop.send("again", session_id=sid)
        assert info.value.seq == 1 and "seq 1" in str(info.value)
        other = await loop.new_session_async()
        assert (await loop.send("other sessions still work", session_id=other)).status == "completed"
        leases = await loop.store.execute_fetchall("SELECT lease_owner FROM sessions WHERE session_id = ?", (sid,))
        assert leases == [] or leases[0][0] is None  # the failed begin held nothing


async def test_tools_param_accepts_a_registry(db_path: str) -> None:
    llm = ScriptedLLM([tool_reply(("shout", {"text": "hey"})), text_reply("done")])
    async with loop_with(llm, db_path) as loop:  # the loop itself has no tools
        sid = await loop.new_session_async()
        result = await loop.send("shout hey", session_id=sid, tools=registry())
        messages = await loop.get_messages_async(sid)
    assert result.final_text == "done"
    assert messages[2]["content"] == "HEY"
    assert llm.requests[0].tools and [t.name for t in llm.requests[0].tools] == ["add", "shout"]


async def test_loop_without_tools_answers_unknown_tool(db_path: str) -> None:
    llm = ScriptedLLM([tool_reply(("add", {"a": 1, "b": 2})), text_reply("sorry")])
    async with loop_with(llm, db_path, tool_registry=ToolRegistry()) as loop:
        sid = await loop.new_session_async()
        await loop.send("add", session_id=sid)
        messages = await loop.get_messages_async(sid)
    assert messages[2]["content"].startswith("Unknown tool: add")
    assert history_is_valid(messages)


async def test_a_model_object_with_only_complete_is_enough(db_path: str) -> None:
    from power_loop import AgentLoopConfig, DefaultCompactor
    from power_loop.messages import AssistantMessage
    from power_loop.providers.base import LLMResponse

    class Minimal:  # no max_retries, no context_window: only the call itself
        async def complete(self, request: Any, *, callbacks: Any = None) -> LLMResponse:
            return LLMResponse(message=AssistantMessage(content="hi from a minimal model"))

    config = AgentLoopConfig(compactor=DefaultCompactor())  # compaction asks for a context window
    async with StatefulAgentLoop(llm=Minimal(), db_path=db_path, config=config) as loop:  # type: ignore[arg-type]
        sid = await loop.new_session_async()
        result = await loop.send("hello", session_id=sid)
    assert (result.status, result.final_text) == ("completed", "hi from a minimal model")
