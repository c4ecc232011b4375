"""0.11's memory protocol: recall(messages=...) and remember(snapshot=...), beside the query shape."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from power_loop import (
    AgentLoopConfig,
    InMemoryMemory,
    MemoryProvider,
    MemorySnapshot,
    QueryMemoryProvider,
    StatefulAgentLoop,
    tag_as_memory,
)
from power_loop.testing import ScriptedServer
from power_loop.testing.script import text_reply


class FactMemory:
    """A 0.11-shaped provider: async, keyword-only, message dicts in and out."""

    def __init__(self) -> None:
        self.recalled_with: list[list[dict[str, Any]]] = []
        self.snapshots: list[MemorySnapshot] = []

    async def recall(
        self, *, messages: Sequence[Mapping[str, Any]], session_id: str, budget_tokens: int = 1500
    ) -> list[dict[str, Any]]:
        self.recalled_with.append([dict(m) for m in messages])
        return [{"role": "system", "name": "facts", "content": "The user's name is Alan."}, "Likes 37."]  # type: ignore[list-item]

    async def remember(self, *, snapshot: MemorySnapshot, session_id: str) -> None:
        self.snapshots.append(snapshot)


def test_tag_as_memory() -> None:
    given = [{"role": "user", "content": "a", "name": "facts"}, "b", {"text": "c", "name": "memory_x"}, {"content": ""}]
    assert tag_as_memory(given) == [
        {"role": "system", "name": "memory_facts", "content": "a"},
        {"role": "system", "name": "memory_recall", "content": "b"},
        {"role": "system", "name": "memory_x", "content": "c"},
    ]
    assert given[0]["role"] == "user"  # the input is not changed
    assert tag_as_memory(["z"], prefix="mem.")[0]["name"] == "mem.recall"


def test_protocols_and_snapshot_defaults() -> None:
    assert isinstance(FactMemory(), MemoryProvider)
    assert isinstance(InMemoryMemory(), QueryMemoryProvider)
    snap = MemorySnapshot("sess_x")
    assert (snap.messages, snap.final_text, snap.rounds, snap.status, snap.metadata) == ([], "", 0, "", {})


async def test_an_011_provider_is_recalled_and_remembers_a_snapshot(
    db_path: str, scripted_server: ScriptedServer, llm_factory: Any, protocol: str
) -> None:
    memory = FactMemory()
    config = AgentLoopConfig(system_prompt="base", memory=memory)
    scripted_server.push(text_reply("Hello Alan."))
    async with StatefulAgentLoop(llm=llm_factory(protocol, scripted_server), db_path=db_path, config=config) as loop:
        sid = await loop.new_session_async(metadata={"user_id": "u1"})
        result = await loop.send("Who am I?", session_id=sid)
    assert memory.recalled_with[0][-1] == {"role": "user", "content": "Who am I?"}
    prompt = scripted_server.requests[0].system_prompt or ""
    # A 0.11 provider's items are messages (tag_as_memory): each is a block of its own.
    assert prompt == "base\n\nThe user's name is Alan.\n\nLikes 37."
    [snap] = memory.snapshots
    assert (snap.session_id, snap.final_text, snap.rounds, snap.status) == (sid, "Hello Alan.", 1, "completed")
    assert snap.metadata == {"user_id": "u1"} and snap.messages[-1]["content"] == result.final_text


async def test_the_query_shape_keeps_working(db_path: str, scripted_server: ScriptedServer, llm_factory: Any) -> None:
    memory = InMemoryMemory()
    memory.remember(session_id="old", user_input="Deploys happen from the release branch", response="")
    scripted_server.push(text_reply("ok"))
    config = AgentLoopConfig(system_prompt="base", memory=memory)
    async with StatefulAgentLoop(llm=llm_factory("openai", scripted_server), db_path=db_path, config=config) as loop:
        sid = await loop.new_session_async()
        await loop.send("how do deploys work?", session_id=sid)
    assert (scripted_server.requests[0].system_prompt or "").endswith(
        "# Relevant memory\n- Deploys happen from the release branch"
    )
    assert ("" + sid, "how do deploys work?") in memory.items
