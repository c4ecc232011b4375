"""The history cache: the most recently used sessions keep message objects, the others are
parked as their stored JSON (out of the garbage collector's sight) and come back intact."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import sys
import threading
from contextlib import closing

import pytest

from power_loop import AgentLoopConfig, ConfigurationError, StatefulAgentLoop, tool
from power_loop.engine.history import UNPARK_ON_LOOP_MAX, HistoryCache, Transcript
from power_loop.messages import (
    AssistantMessage,
    ImagePart,
    TextPart,
    ToolCall,
    ToolResultMessage,
    UserMessage,
    message_json,
    message_to_dict,
)
from power_loop.testing import ScriptedLLM, text_reply, tool_reply

from .helpers import registry


def transcript(tag: str, version: int = 3) -> Transcript:
    t = Transcript(version=version)
    t.messages.extend(
        [
            UserMessage(content=f"hello {tag} \u00e9\u4e2d"),
            AssistantMessage(content="", tool_calls=(ToolCall(id=f"c-{tag}", name="add", arguments='{"a": 1}'),)),
            ToolResultMessage(tool_call_id=f"c-{tag}", content="2", name="add"),
            UserMessage(content=(TextPart(text="look"), ImagePart(url="https://example.com/x.png"))),
            AssistantMessage(content=f"done {tag}", reasoning="thought"),
        ]
    )
    t.seqs.extend([1, 2, 3, 5, 8])
    return t


def test_a_parked_transcript_comes_back_equal_with_its_json() -> None:
    cache = HistoryCache(capacity=4, hot=1)
    original = transcript("a")
    expected = list(original.messages)
    bodies = [message_json(m) for m in expected]
    cache.put("a", original)
    cache.put("b", transcript("b"))  # "a" is parked now

    back = cache.get("a")
    assert back is not None and back is not original
    assert back.messages == expected
    assert back.seqs == [1, 2, 3, 5, 8]
    assert back.version == 3
    # Each message is seeded with the JSON it was parked as: never encoded again.
    assert [message_json(m) for m in back.messages] == bodies
    assert all(a is b for a, b in zip([message_json(m) for m in back.messages], bodies, strict=True))
    # Using "a" made it hot again, and parked "b".
    assert cache.get("a") is back


def test_parked_sessions_hold_nothing_the_collector_walks() -> None:
    cache = HistoryCache(capacity=8, hot=1)
    for tag in "abcd":
        cache.put(tag, transcript(tag))
    gc.collect()
    parked = list(cache._parked.values())
    assert len(parked) == 3
    for entry in parked:
        assert not gc.is_tracked(entry.bodies)
        assert not gc.is_tracked(entry.seqs)
    # The hot one keeps its objects.
    assert gc.is_tracked(cache.get("d").messages[0])  # type: ignore[union-attr]


def test_capacity_evicts_parked_sessions_first_then_the_oldest() -> None:
    cache = HistoryCache(capacity=3, hot=1)
    for tag in "abcd":
        cache.put(tag, transcript(tag))
    assert len(cache) == 3
    assert cache.get("a") is None  # the least recently used, parked, then evicted
    assert cache.get("b") is not None and cache.get("c") is not None and cache.get("d") is not None
    cache.drop("c")
    assert cache.get("c") is None and len(cache) == 2
    cache.clear()
    assert len(cache) == 0 and cache.get("d") is None


def test_no_cache_and_all_parked() -> None:
    off = HistoryCache(capacity=0, hot=64)
    off.put("a", transcript("a"))
    assert off.get("a") is None and len(off) == 0

    parked_only = HistoryCache(capacity=4, hot=0)
    parked_only.put("a", transcript("a"))
    assert not parked_only._hot
    back = parked_only.get("a")
    assert back is not None and back.messages == transcript("a").messages


def test_negative_hot_size_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="history_cache_hot"):
        AgentLoopConfig(history_cache_hot=-1)


@pytest.mark.parametrize("hot", [0, 1])
async def test_sessions_alternating_through_parked_histories_keep_their_own_history(db_path: str, hot: int) -> None:
    llm = ScriptedLLM([text_reply(f"answer {i}") for i in range(6)])
    loop = StatefulAgentLoop(
        llm=llm, db_path=db_path, config=AgentLoopConfig(history_cache_size=8, history_cache_hot=hot)
    )
    try:
        first, second = await loop.new_session_async(), await loop.new_session_async()
        for i in range(3):
            await loop.send(f"one-{i}", session_id=first)
            await loop.send(f"two-{i}", session_id=second)
        texts = [[m.text for m in request.messages] for request in llm.requests]
        assert texts[4] == ["one-0", "answer 0", "one-1", "answer 2", "one-2"]
        assert texts[5] == ["two-0", "answer 1", "two-1", "answer 3", "two-2"]
        stored = [m["content"] for m in await loop.get_messages_async(first)]
        assert stored == ["one-0", "answer 0", "one-1", "answer 2", "one-2", "answer 4"]
    finally:
        await loop.aclose()


async def test_a_long_parked_history_is_decoded_off_the_event_loop() -> None:
    cache = HistoryCache(capacity=4, hot=1)
    long = Transcript(version=7)
    long.messages.extend(UserMessage(content=f"m{i}") for i in range(UNPARK_ON_LOOP_MAX + 1))
    long.seqs.extend(range(1, UNPARK_ON_LOOP_MAX + 2))
    cache.put("long", long)
    cache.put("other", transcript("other"))  # parks "long"
    assert "long" in cache._parked

    back = await cache.take("long")
    assert back is not None and [m.text for m in back.messages] == [f"m{i}" for i in range(UNPARK_ON_LOOP_MAX + 1)]
    assert back.seqs == list(range(1, UNPARK_ON_LOOP_MAX + 2)) and back.version == 7
    assert cache.get("long") is back  # hot again
    assert await cache.take("missing") is None


@pytest.mark.parametrize("hot", [0, 1])
async def test_a_history_parked_while_its_run_goes_on_is_cached_as_the_run_left_it(db_path: str, hot: int) -> None:
    # More sessions ran at once than stay hot: a run's history was parked while the run still
    # appended to it. After the run the cache holds what the run left, at the stored version,
    # so the next send to the session is served from the cache, not reloaded.
    entered, release = asyncio.Event(), asyncio.Event()

    @tool
    async def wait_here() -> str:
        """Wait until released."""
        entered.set()
        await release.wait()
        return "released"

    llm = ScriptedLLM([tool_reply(("wait_here", {})), text_reply("b done"), text_reply("a done")])
    loop = StatefulAgentLoop(
        llm=llm,
        db_path=db_path,
        tool_registry=registry(wait_here),
        config=AgentLoopConfig(history_cache_size=8, history_cache_hot=hot),
    )
    try:
        a, b = await loop.new_session_async(), await loop.new_session_async()
        running = asyncio.ensure_future(loop.send("a", session_id=a))
        await entered.wait()
        await loop.send("b", session_id=b)  # its history is the most recent: "a" is parked
        release.set()
        assert (await running).final_text == "a done"

        cached = loop._rt.histories.get(a)
        assert cached is not None
        with closing(sqlite3.connect(db_path)) as raw:
            (version,) = raw.execute("SELECT version FROM sessions WHERE session_id = ?", (a,)).fetchone()
        assert cached.version == version
        assert [m["content"] for m in map(message_to_dict, cached.messages)] == [
            m["content"] for m in await loop.get_messages_async(a)
        ]
    finally:
        await loop.aclose()


def test_threads_sharing_one_cache_never_see_it_half_changed() -> None:
    # send_sync in several threads shares one loop's cache. Parking encodes while an entry is
    # between the tiers, and eviction checks then pops: interleaved (a tiny switch interval
    # makes it happen every time), unguarded steps raised KeyError.
    cache = HistoryCache(capacity=3, hot=1)
    errors: list[BaseException] = []

    def churn(n: int) -> None:
        try:
            for i in range(2000):
                t = Transcript(version=i)
                t.messages.extend(UserMessage(content=f"m{k}") for k in range(20))
                t.seqs.extend(range(20))
                session = f"s{(n * 7 + i) % 6}"
                cache.put(session, t)
                cache.get(f"s{(i + n) % 6}")
                if i % 5 == 0:
                    cache.drop(session)
        except BaseException as exc:  # reported below
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(cache) <= 3 and len(cache._hot) <= 1
