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
            "SELECT r.run_id, c.purpose, c.total_tokens FROM llm_calls c JOIN runs r ON r.session = c.session "
            "AND r.run = c.run WHERE c.session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY c.id",
            (sid,),
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


# --- Review fixes -------------------------------------------------------------------------


def is_summary_request(request: ScriptedRequest) -> bool:
    return "running summary" in (request.system_prompt or "")


@pytest.mark.parametrize("stream", [True, False])
async def test_the_summary_call_does_not_feed_the_answer_stream(db_path: str, stream: bool) -> None:
    llm = ScriptedLLM(rule=summarizing)
    async with compacting_loop(db_path, llm, stream=stream) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        results = [await loop.send(f"turn {i} {LONG}", session_id=sid) for i in range(5)]
    summaries = [r for r in llm.requests if is_summary_request(r)]
    assert summaries, "the test must compact"
    assert all(r.stream is stream for r in llm.requests)  # AgentLoopConfig.stream is honoured
    deltas = "".join(e.payload["text"] for e in log.of("stream_delta"))
    assert "SUMMARY#" not in deltas
    assert all(e.stream_id == "main" for e in log.of("stream_started"))
    assert len(log.of("stream_started")) == sum(r.usage["calls"] for r in results) - len(summaries)
    # One round_usage per round, never one for the summary call.
    round_usage = [e for e in log.of("status_changed") if e.payload["kind"] == "round_usage"]
    assert len(round_usage) == sum(r.rounds for r in results)
    purposes = [e.payload["purpose"] for e in log.of("usage_updated")]
    assert purposes.count("compaction") == len(summaries)
    assert purposes.count("round") == len(round_usage)
    # The summary call's usage is still counted in the run's usage.
    compaction_usage = [e for e in log.of("usage_updated") if e.payload["purpose"] == "compaction"]
    assert all(e.payload["usage"]["calls"] == 1 for e in compaction_usage)
    assert sum(r.usage["calls"] for r in results) == sum(r.rounds for r in results) + len(summaries)


class FixedFold(DefaultCompactor):
    """A custom compactor whose fold_count returns whatever the test says."""

    def __init__(self, fold: Any, **kwargs: Any) -> None:
        super().__init__(absolute_threshold=kwargs.pop("threshold", 300), summary_max_tokens=200, **kwargs)
        self.fold = fold
        self.folded: list[int] = []

    def fold_count(self, messages: Any) -> int:
        return int(self.fold(messages) if callable(self.fold) else self.fold)

    async def summarize(self, *, messages: Any, previous_summary: str | None, complete: Any) -> str:
        self.folded.append(len(messages))
        return await super().summarize(messages=messages, previous_summary=previous_summary, complete=complete)


def loop_with(db_path: str, llm: Any, compactor: Any, **config: Any) -> StatefulAgentLoop:
    return StatefulAgentLoop(
        llm=llm, db_path=db_path, tool_registry=registry(), config=AgentLoopConfig(compactor=compactor, **config)
    )


async def test_a_fold_count_above_the_context_is_clamped(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    compactor = FixedFold(10_000)
    async with loop_with(db_path, llm, compactor) as loop:
        sid = await loop.new_session_async()
        for i in range(4):
            result = await loop.send(f"turn {i} {LONG}", session_id=sid)
            assert result.status == "completed"
        context = await loop.get_messages_async(sid)
    assert compactor.folded, "the test must compact"
    assert is_summary_dict(context[0]) and len(context) >= 2
    # The latest message is always kept: the model never sees only the summary.
    for request in llm.requests:
        if not is_summary_request(request):
            assert [m for m in request.messages if not is_summary(m)]  # type: ignore[arg-type]


async def test_a_fold_count_inside_a_tool_group_moves_to_a_safe_boundary(db_path: str) -> None:
    def rule(request: ScriptedRequest) -> ScriptedReply:
        if is_summary_request(request):
            return text_reply("SUMMARY of tool work")
        rounds_done = sum(1 for r in llm.requests if not is_summary_request(r))
        if rounds_done < 6:
            return tool_reply(("shout", {"text": LONG[:200]}), ("add", {"a": 1, "b": 2}))
        return text_reply("finished")

    def first_result(messages: Any) -> int:
        """The index of the last tool result that follows another tool result: always a bad cut."""
        bad = [i for i in range(1, len(messages)) if isinstance(messages[i], ToolResultMessage)]
        return bad[-1] if bad else 0

    llm = ScriptedLLM(rule=rule)
    compactor = FixedFold(first_result)
    async with loop_with(db_path, llm, compactor, max_rounds=20) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("do tool work", session_id=sid)
        context = await loop.get_messages_async(sid)
    assert result.final_text == "finished"
    assert compactor.folded, "the test must compact"
    assert is_summary_dict(context[0]) and history_is_valid(context[1:])
    for request in llm.requests:
        tail = [m for m in request.messages if not is_summary(m)]  # type: ignore[arg-type]
        assert not isinstance(tail[0], ToolResultMessage)


async def test_nothing_to_fold_makes_no_summary_call_and_fires_no_hook(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=AgentLoopConfig(compactor=None)) as loop:
        sid = await loop.new_session_async()
        from power_loop.store.rows import Compact

        await loop.store.write(sid, [Append([UserMessage(content="m0"), AssistantMessage(content="a1")])])
        await loop.store.write(sid, [Compact(through_seq=2, summary="old " + LONG)])
    compactor = FixedFold(1)  # with the summary at the head, folding 1 folds nothing new
    before: list[int] = []
    async with loop_with(db_path, llm, compactor, max_rounds=3) as loop:
        log = EventLog(loop.event_bus)
        loop.hooks.register(HookPoint.COMPACT_BEFORE, lambda ctx: before.append(ctx.round_index))
        for i in range(3):
            assert (await loop.send(f"turn {i} {LONG}", session_id=sid)).status == "completed"
    assert compactor.folded == []
    assert not any(is_summary_request(r) for r in llm.requests)
    assert before == []
    assert not [e for e in log.of("status_changed") if e.payload["kind"] == "auto_compact"]


async def test_compact_before_fires_only_when_a_compaction_is_attempted(db_path: str) -> None:
    llm = ScriptedLLM(rule=summarizing)
    compactor = FixedFold(0)
    seen: list[int] = []
    async with loop_with(db_path, llm, compactor) as loop:
        loop.hooks.register(HookPoint.COMPACT_BEFORE, lambda ctx: seen.append(ctx.before_tokens))
        sid = await loop.new_session_async()
        for i in range(4):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
        assert seen == []  # fold_count said 0 every time: nothing is about to happen
        compactor.fold = lambda messages: len(messages) - 1
        await loop.send(f"turn 4 {LONG}", session_id=sid)
        assert len(seen) == 1 and compactor.folded


async def test_a_failed_compaction_is_not_retried_in_the_same_run(db_path: str) -> None:
    calls = {"n": 0}

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if is_summary_request(request):
            calls["n"] += 1
            return error_reply(400, "summary model refused")
        rounds_done = sum(1 for r in llm.requests if not is_summary_request(r))
        if rounds_done < 6:
            return tool_reply(("shout", {"text": LONG[:200]}))
        return text_reply("finished")

    llm = ScriptedLLM(rule=rule)
    async with compacting_loop(db_path, llm, threshold=300, keep=2, max_rounds=20) as loop:
        log = EventLog(loop.event_bus)
        sid = await loop.new_session_async()
        result = await loop.send("do tool work", session_id=sid)
        assert result.final_text == "finished" and result.rounds == 6
        assert calls["n"] == 1  # not once per round while above the threshold
        phases = [e.payload["phase"] for e in log.of("status_changed") if e.payload["kind"] == "auto_compact"]
        assert phases == ["failed"]
        await loop.send("again", session_id=sid)
        assert calls["n"] == 2  # a new run tries again


async def test_a_summary_that_would_grow_the_context_is_not_applied(db_path: str) -> None:
    class Verbose(DefaultCompactor):
        async def summarize(self, *, messages: Any, previous_summary: str | None, complete: Any) -> str:
            await super().summarize(messages=messages, previous_summary=previous_summary, complete=complete)
            return "very long summary " * 2_000

    llm = ScriptedLLM(rule=summarizing)
    compactor = Verbose(absolute_threshold=600, keep_last_n=2, summary_max_tokens=200)
    after: list[str] = []
    async with loop_with(db_path, llm, compactor) as loop:
        log = EventLog(loop.event_bus)
        loop.hooks.register(HookPoint.COMPACT_AFTER, lambda ctx: after.append(ctx.summary))
        sid = await loop.new_session_async()
        for i in range(4):
            await loop.send(f"turn {i} {LONG}", session_id=sid)
        context = await loop.get_messages_async(sid)
        rows = await loop.store.execute_fetchall(
            "SELECT COUNT(*) FROM compactions WHERE session = (SELECT id FROM sessions WHERE session_id = ?)", (sid,)
        )
    assert not any(is_summary_dict(m) for m in context) and len(context) == 8
    assert rows[0][0] == 0 and after == []
    events = [e for e in log.of("status_changed") if e.payload["kind"] == "auto_compact"]
    assert events and all(e.payload["phase"] == "failed" for e in events)
    assert all(e.payload["after_tokens"] == e.payload["before_tokens"] for e in events)
    summary_calls = sum(1 for r in llm.requests if is_summary_request(r))
    assert summary_calls == len(events)  # at most one attempt per run


def test_the_default_cut_starts_the_kept_part_at_a_user_message() -> None:
    history = [
        UserMessage(content="u0"),
        AssistantMessage(content="a1"),
        UserMessage(content="u2"),
        AssistantMessage(tool_calls=(ToolCall(id="a", name="t"),)),
        ToolResultMessage(tool_call_id="a", content="r"),
        AssistantMessage(content="a5"),
        UserMessage(content="u6"),
        AssistantMessage(content="a7"),
    ]
    # keep_last_n=3 would cut at a5 (an assistant message): the cut moves back to u2.
    assert DefaultCompactor(keep_last_n=3).fold_count(history) == 2
    assert DefaultCompactor(keep_last_n=2).fold_count(history) == 6  # already a user message
    assert DefaultCompactor(keep_last_n=1).fold_count(history) == 6
    # No user message close enough: a tool-safe assistant boundary is used (a long tool loop).
    loop_history: list[Any] = [UserMessage(content="go")]
    for i in range(10):
        loop_history += [
            AssistantMessage(tool_calls=(ToolCall(id=f"c{i}", name="t"),)),
            ToolResultMessage(tool_call_id=f"c{i}", content="r"),
        ]
    fold = DefaultCompactor(keep_last_n=4).fold_count(loop_history)
    assert fold == len(loop_history) - 4 and isinstance(loop_history[fold], AssistantMessage)


async def test_anthropic_history_starting_with_an_assistant_gets_a_user_first(
    scripted_server: Any, llm_factory: Any
) -> None:
    from power_loop.compaction import summary_message
    from power_loop.providers.base import LLMRequest

    scripted_server.push(text_reply("one"), text_reply("two"))
    llm = llm_factory("anthropic", scripted_server)
    history = [
        summary_message("earlier: the user asked for a plan"),
        AssistantMessage(tool_calls=(ToolCall(id="t1", name="add", arguments='{"a": 1, "b": 2}'),)),
        ToolResultMessage(tool_call_id="t1", name="add", content="3"),
        AssistantMessage(content="three"),
        UserMessage(content="thanks"),
    ]
    for _ in range(2):  # the second request reuses the cached per-message fragments
        await llm.complete(LLMRequest(messages=history, system_prompt="sys"))
    for received in scripted_server.requests:
        wire = received.body["messages"]
        assert wire[0]["role"] == "user"
        assert [t["role"] for t in wire] == ["user", "assistant", "user", "assistant", "user"]
        assert wire[1]["content"][0]["type"] == "tool_use"
        assert received.body["system"].startswith("sys\n\n" + SUMMARY_PREFIX)
    assert scripted_server.requests[0].body == scripted_server.requests[1].body
    # A history that starts with a user message is sent unchanged.
    scripted_server.push(text_reply("three"))
    await llm.complete(LLMRequest(messages=history[4:]))
    assert scripted_server.requests[2].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]}
    ]


async def test_after_a_summary_without_gain_the_run_waits_for_more_to_fold(db_path: str) -> None:
    class Verbose(FixedFold):
        async def summarize(self, *, messages: Any, previous_summary: str | None, complete: Any) -> str:
            await super().summarize(messages=messages, previous_summary=previous_summary, complete=complete)
            return "very long summary " * 2_000

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if is_summary_request(request):
            return text_reply("SUMMARY")
        rounds_done = sum(1 for r in llm.requests if not is_summary_request(r))
        return tool_reply(("add", {"a": 1, "b": 2})) if rounds_done < 6 else text_reply("finished")

    llm = ScriptedLLM(rule=rule)
    fixed = Verbose(1, threshold=50)  # always the same fold: no point in asking again
    async with loop_with(db_path, llm, fixed, max_rounds=20) as loop:
        sid = await loop.new_session_async()
        assert (await loop.send(f"go {LONG}", session_id=sid)).final_text == "finished"
    assert fixed.folded == [1]
    growing = Verbose(lambda messages: len(messages) - 1, threshold=50)
    llm.requests.clear()
    async with loop_with(db_path, llm, growing, max_rounds=20) as loop:
        sid = await loop.new_session_async()
        assert (await loop.send(f"go {LONG}", session_id=sid)).final_text == "finished"
    assert len(growing.folded) > 1 and growing.folded == sorted(set(growing.folded))


async def test_a_degraded_runs_note_is_not_summarized(db_path: str) -> None:
    calls = 0

    def refuse_first(request: ScriptedRequest) -> ScriptedReply:
        nonlocal calls
        calls += 1
        return error_reply(400, "the server refused") if calls == 1 else summarizing(request)

    class Recording(FixedFold):
        seen: list[str] = []

        async def summarize(self, *, messages: Any, previous_summary: str | None, complete: Any) -> str:
            self.seen.extend(str(m.content) for m in messages)
            return await super().summarize(messages=messages, previous_summary=previous_summary, complete=complete)

    compactor = Recording(lambda messages: len(messages) - 1)
    async with loop_with(db_path, ScriptedLLM(rule=refuse_first), compactor) as loop:
        sid = await loop.new_session_async()
        assert (await loop.send(f"first {LONG}", session_id=sid)).status == "degraded"
        for i in range(3):
            assert (await loop.send(f"turn {i} {LONG}", session_id=sid)).status == "completed"
    assert compactor.folded, "the test must compact"
    assert any(text.startswith("first ") for text in compactor.seen)
    assert not any("[degraded" in text for text in compactor.seen)


async def test_summary_calls_are_priced_and_held_in_shared_budgets(db_path: str) -> None:
    from power_loop import Budget, Price

    def billed(request: ScriptedRequest) -> ScriptedReply:
        reply = summarizing(request)
        return ScriptedReply(text=reply.text, usage=Usage.of_call(prompt_tokens=1_000, completion_tokens=10))

    prices = {"scripted-model": Price(input_per_mtok=1.0, output_per_mtok=1.0)}
    budget = Budget("session", tokens=10**9)
    async with compacting_loop(db_path, ScriptedLLM(rule=billed), pricing=prices, budgets=[budget]) as loop:
        sid = await loop.new_session_async()
        results = [await loop.send(f"turn {i} {LONG}", session_id=sid) for i in range(4)]
        spent = await loop.store.budget_spent(budget.key(sid), 0)
    calls = sum(r.usage["calls"] for r in results)
    assert calls > 4  # the sends' own calls plus at least one summary
    assert spent[0] == 1_010 * calls  # every call, the summaries included, is in the ledger
    assert sum(r.usage["cost_usd"] for r in results) == pytest.approx(1_010 * calls / 1e6)
