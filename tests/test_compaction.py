"""Context compaction: triggers, pairs never split, one summary, usage, failures, bounded loads."""

from __future__ import annotations

import re
from typing import Any

import pytest

from power_loop import (
    AgentLoopConfig,
    CancellationToken,
    DefaultCompactor,
    HookDirective,
    HookPoint,
    StatefulAgentLoop,
)
from power_loop.compaction import SUMMARY_PREFIX, is_summary
from power_loop.messages import AssistantMessage, ToolCall, ToolResultMessage, Usage, UserMessage
from power_loop.store.rows import Append
from power_loop.testing import ScriptedLLM, error_reply, hang_reply, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

from .helpers import EventLog, history_is_valid, registry

LONG = "lorem ipsum dolor sit amet " * 20  # ~540 characters, ~135 tokens


def summarizing(request: ScriptedRequest) -> ScriptedReply:
    """Summaries on request, short answers otherwise."""
    if request.system_prompt and "running summary" in request.system_prompt:
        previous = re.findall(r"SUMMARY#(\d+)", request.last_user_text)
        number = max((int(n) for n in previous), default=0) + 1
        return ScriptedReply(text=f"SUMMARY#{number} covering: {request.last_user_text[-60:]!r}")
    return ScriptedReply(text="ok " + request.last_user_text[:20])


def compacting_loop(db_path: str, llm: Any, threshold: int = 600, keep: int = 2, **config: Any) -> StatefulAgentLoop:
    compactor = DefaultCompactor(absolute_threshold=threshold, keep_last_n=keep, summary_max_tokens=200)
    return StatefulAgentLoop(
        llm=llm, db_path=db_path, tool_registry=registry(), config=AgentLoopConfig(compactor=compactor, **config)
    )


async def test_no_compaction_below_the_threshold(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    async with compacting_loop(db_path, llm, threshold=100_000) as loop:
        sid = await loop.new_session_async()
        for i in range(4):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
        assert not any(is_summary_dict(m) for m in await loop.get_messages_async(sid))
    assert all("running summary" not in (r.system_prompt or "") for r in llm.requests)


def is_summary_dict(message: dict[str, Any]) -> bool:
    return message["role"] == "system" and str(message.get("content", "")).startswith(SUMMARY_PREFIX)


async def test_compaction_folds_older_turns_into_one_summary(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    async with compacting_loop(db_path, llm) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        for i in range(10):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
        context = await loop.get_messages_async(sid)
        audit = await loop.get_messages_async(sid, include_compacted=True)
        stats = await loop.get_session_stats_async(sid)
    summaries = [m for m in context if is_summary_dict(m)]
    assert len(summaries) == 1 and context[0] is summaries[0]  # exactly one, at the head
    assert "SUMMARY#" in context[0]["content"]
    assert len(context) < len(audit)  # the context is bounded, the store keeps everything
    assert len(audit) == 20  # every stored message is still there for audit
    assert [m["content"].split(" ")[1] for m in audit if m["role"] == "user"] == [str(i) for i in range(10)]
    # Each later summary folded the previous one.
    numbers = [
        int(n)
        for r in llm.requests
        if "running summary" in (r.system_prompt or "")
        for n in re.findall(r"SUMMARY#(\d+)", r.messages[-1].text)
    ]  # type: ignore[union-attr]
    assert numbers == sorted(numbers) and numbers, "later summaries must include the previous summary"
    done = [e for e in log.of("status_changed") if e.payload["kind"] == "auto_compact"]
    assert done and all(e.payload["phase"] == "done" for e in done)
    assert all(e.payload["after_tokens"] < e.payload["before_tokens"] for e in done)
    assert len(done) >= 2  # compacted across several runs
    assert stats is not None and stats.llm_calls == 10 + len(done)


async def test_the_model_sees_summary_then_tail_in_order(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    async with compacting_loop(db_path, llm) as loop:
        sid = await loop.new_session_async()
        for i in range(5):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
    last = llm.requests[-1]
    assert is_summary(last.messages[0])  # type: ignore[arg-type]
    rest = [m for m in last.messages[1:]]
    assert all(not is_summary(m) for m in rest)  # type: ignore[arg-type]
    assert rest[-1].text.startswith("turn 4")  # type: ignore[union-attr]
    assert history_is_valid([{"role": m.role, "content": m.text} for m in rest if m.role != "tool"])


def test_a_tool_call_is_never_separated_from_its_results() -> None:
    history = [
        UserMessage(content="u1"),
        AssistantMessage(tool_calls=(ToolCall(id="a", name="t"), ToolCall(id="b", name="t"))),
        ToolResultMessage(tool_call_id="a", content="r"),
        ToolResultMessage(tool_call_id="b", content="r"),
        AssistantMessage(content="done"),
    ]
    # keep_last_n=2 would cut between the two results: the cut moves back before them.
    fold = DefaultCompactor(keep_last_n=2).fold_count(history)
    assert fold == 2 and isinstance(history[fold], ToolResultMessage) is False or fold == 1
    kept = history[fold:]
    assert not isinstance(kept[0], ToolResultMessage)
    assert DefaultCompactor(keep_last_n=3).fold_count(history) == 1
    assert DefaultCompactor(keep_last_n=10).fold_count(history) == 0


async def test_compaction_inside_a_tool_loop_keeps_pairs_together(db_path: str) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.system_prompt and "running summary" in request.system_prompt:
            return text_reply("SUMMARY of tool work")
        rounds_done = sum(1 for r in llm.requests if "running summary" not in (r.system_prompt or ""))
        if rounds_done < 8:
            return tool_reply(("shout", {"text": LONG[:200]}), ("add", {"a": 1, "b": 2}))
        return text_reply("finished")

    llm = ScriptedLLM(rule=rule)
    async with compacting_loop(db_path, llm, threshold=300, keep=3, max_rounds=20) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("do lots of tool work", session_id=sid)
        context = await loop.get_messages_async(sid)
    assert result.final_text == "finished"
    compactions = [e for e in log.of("status_changed") if e.payload.get("kind") == "auto_compact"]
    assert len(compactions) >= 2  # repeated compactions inside one run
    assert is_summary_dict(context[0])
    assert history_is_valid(context[1:])  # no orphaned result, no call without its result
    for request in llm.requests:
        tail = [m for m in request.messages if not is_summary(m)]  # type: ignore[arg-type]
        assert not isinstance(tail[0], ToolResultMessage)


async def test_summary_usage_counts_in_the_run(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    async with compacting_loop(db_path, llm) as loop:
        sid = await loop.new_session_async()
        results = [await loop.send(f"turn {i} {LONG}", session_id=sid) for i in range(5)]
        rows = await loop.store.execute_fetchall(
            "SELECT run_id, purpose, total_tokens FROM llm_calls WHERE session_id = ? ORDER BY id", (sid,)
        )
    compacting = [r for r in results if r.usage["calls"] == 2]
    assert compacting, "one of the sends must have compacted"
    for result in compacting:
        mine = [r for r in rows if r[0] == result.run_id]
        assert sorted(p for _, p, _ in mine) == ["compaction", "round"]
        assert result.usage["total_tokens"] == sum(t for _, _, t in mine)


async def test_the_summary_call_counts_against_the_budget(db_path: str) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.system_prompt and "running summary" in request.system_prompt:
            return ScriptedReply(text="SUMMARY", usage=Usage.of_call(prompt_tokens=5_000, completion_tokens=50))
        return ScriptedReply(text="answer")

    llm = ScriptedLLM(rule=rule)
    async with compacting_loop(db_path, llm, max_tokens_per_run=2_000) as loop:
        sid = await loop.new_session_async()
        for i in range(3):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
        result = await loop.send(f"turn 3 {LONG}", session_id=sid)
    # The summary alone spent 5,050 tokens; the crossing round (the answer) still finishes.
    assert result.usage["total_tokens"] > 5_000
    assert result.status in ("completed", "budget_exceeded")


async def test_a_failing_summary_leaves_the_history_and_the_run_goes_on(db_path: str) -> None:
    calls = {"n": 0}

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.system_prompt and "running summary" in request.system_prompt:
            calls["n"] += 1
            return error_reply(400, "summary model refused")
        return text_reply("still answering")

    llm = ScriptedLLM(rule=rule)
    async with compacting_loop(db_path, llm) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        for i in range(4):
            result = await loop.send(f"turn {i} {LONG}", session_id=sid)
            assert result.final_text == "still answering"
        context = await loop.get_messages_async(sid)
    assert calls["n"] >= 1
    assert not any(is_summary_dict(m) for m in context) and len(context) == 8
    phases = [e.payload["phase"] for e in log.of("status_changed") if e.payload["kind"] == "auto_compact"]
    assert phases and set(phases) == {"failed"}


async def test_compact_hooks(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    async with compacting_loop(db_path, llm) as loop:
        seen: list[tuple[int, int, str]] = []
        loop.hooks.register(HookPoint.COMPACT_BEFORE, lambda ctx: HookDirective.SKIP)
        sid = await loop.new_session_async()
        for i in range(4):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
        assert not any(is_summary_dict(m) for m in await loop.get_messages_async(sid))
        loop.hooks.clear()
        loop.hooks.register(
            HookPoint.COMPACT_AFTER,
            lambda ctx: seen.append((ctx.messages_before_count, ctx.messages_after_count, ctx.summary)),
        )
        await loop.send(f"turn 4 {LONG}", session_id=sid)
    assert len(seen) == 1 and seen[0][0] > seen[0][1] and seen[0][2].startswith("SUMMARY#1")


async def test_cancelled_during_the_summary_call(db_path: str) -> None:
    token = CancellationToken()
    state = {"summaries": 0}

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if request.system_prompt and "running summary" in request.system_prompt:
            state["summaries"] += 1
            token.cancel("stop while summarizing")
            return hang_reply(30)
        return text_reply("answer")

    llm = ScriptedLLM(rule=rule)
    async with compacting_loop(db_path, llm) as loop:
        sid = await loop.new_session_async()
        for i in range(3):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
        result = await loop.send(f"turn 3 {LONG}", session_id=sid, stop_event=token)
        assert result.status == "cancelled" and state["summaries"] == 1
        assert history_is_valid(await loop.get_messages_async(sid))


async def test_loading_reads_only_the_base_and_the_tail(db_path: str) -> None:
    llm = ScriptedLLM(rule=lambda r: text_reply("ok"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(compactor=None)) as loop:
        sid = await loop.new_session_async()
        bulk = [UserMessage(content=f"m{i}") if i % 2 == 0 else AssistantMessage(content=f"a{i}") for i in range(2_000)]
        await loop.store.write(sid, [Append(bulk)])
        from power_loop.store.rows import Compact

        await loop.store.write(sid, [Compact(through_seq=1_990, summary="everything before 1990")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(compactor=None)) as loop:
        statements: list[str] = []
        await loop.store.open()
        await loop.store._db.set_trace_callback(statements.append)  # type: ignore[union-attr]
        await loop.send("next", session_id=sid)
        sent = llm.requests[-1].messages
    loads = [s for s in statements if s.startswith("SELECT seq, body FROM messages")]
    assert len(loads) == 1 and "seq > 1990" in loads[0]
    assert len(sent) == 1 + 10 + 1  # summary + the 10 messages after the base + the new input
    assert sent[0].text == SUMMARY_PREFIX + "everything before 1990"  # type: ignore[union-attr]


async def test_retention_prunes_folded_rows_only(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    async with compacting_loop(db_path, llm) as loop:
        sid = await loop.new_session_async()
        for i in range(6):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
        context_before = await loop.get_messages_async(sid)
        folded = [m for m in await loop.get_messages_async(sid, include_compacted=True)]
        with pytest.raises(ValueError):
            await loop.prune_compacted_async(sid)
        deleted = await loop.prune_compacted_async(sid, keep_last=2)
        audit = await loop.get_messages_async(sid, include_compacted=True)
        assert deleted > 0 and len(audit) == len(folded) - deleted
        assert await loop.get_messages_async(sid) == context_before
        assert await loop.prune_compacted_async(older_than_s=0) >= 0
        llm.push(text_reply("still fine"))
        assert (await loop.send("after pruning", session_id=sid)).final_text == "still fine"


async def test_the_trigger_is_a_fraction_of_the_context_window(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing, context_window=2_000)
    compactor = DefaultCompactor(trigger_ratio=0.5, keep_last_n=2)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(compactor=compactor)) as loop:
        sid = await loop.new_session_async()
        compacted_at = None
        for i in range(12):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
            if compacted_at is None and any(is_summary_dict(m) for m in await loop.get_messages_async(sid)):
                compacted_at = i
    # ~150 tokens a turn, window 2,000 at 0.5: compaction starts after a handful of turns,
    # not at the completion cap (max_tokens=8000 would never trigger).
    assert compacted_at is not None and 3 <= compacted_at <= 9
