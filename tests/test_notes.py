"""Agent-written notes: the store's note methods, the policy, the tools, the memory provider."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from power_loop import (
    DEFAULT_NOTES_POLICY,
    AgentLoopConfig,
    NoteRow,
    NotesFullError,
    NotesPolicy,
    OfflineLLM,
    SessionNotFoundError,
    SQLiteNoteMemory,
    SQLiteSessionStore,
    StatefulAgentLoop,
    ToolRegistry,
    register_note_tools,
    render_notes,
)
from power_loop.testing import ScriptedServer
from power_loop.testing.script import text_reply, tool_reply


async def test_store_note_methods_sync_and_async(db_path: str) -> None:
    loop = StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path)
    sid = loop.new_session()
    store = loop.store
    first = store.add_note(sid, "  the user prefers metric units ")
    assert isinstance(first, NoteRow)
    assert (first.note_id, first.content, first.pinned) == (1, "the user prefers metric units", False)
    second = store.add_note(sid, "deploys happen on Tuesdays", pinned=True)
    assert second.note_id == 2 and second.pinned
    # Pinned first, then oldest first.
    assert [n.note_id for n in store.list_notes(sid)] == [2, 1]
    assert store.count_notes(sid) == 2
    updated = store.update_note(sid, 1, content="metric units, 24-hour clock")
    assert updated is not None and updated.content == "metric units, 24-hour clock" and not updated.pinned
    assert store.update_note(sid, 1, pinned=True) is not None
    assert store.update_note(sid, 99, content="x") is None
    assert store.delete_note(sid, 2) is True
    assert store.delete_note(sid, 2) is False
    # The awaitable twins run the same rules on the store's worker thread.
    # Numbering goes on from the highest remaining id (the deleted #2 was the highest).
    row = await store.add_note_async(sid, "third")
    assert row.note_id == 2
    assert [n.content for n in await store.list_notes_async(sid)] == ["metric units, 24-hour clock", "third"]
    assert await store.count_notes_async(sid) == 2
    with pytest.raises(ValueError, match="non-empty"):
        store.add_note(sid, "   ")
    with pytest.raises(SessionNotFoundError):
        store.add_note("sess_missing", "x")
    assert store.list_notes("sess_missing") == [] and store.count_notes("sess_missing") == 0
    # Notes go with their session.
    assert loop.close_session(sid) == 1
    await loop.aclose()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 0


def test_policy_is_checked_on_creation() -> None:
    assert NotesPolicy(50, 1000, 8000, "reject") == DEFAULT_NOTES_POLICY
    for bad in ({"max_notes": 0}, {"max_note_chars": -1}, {"inject_max_chars": True}, {"eviction": "lru"}):
        with pytest.raises(ValueError, match="NotesPolicy"):
            NotesPolicy(**bad)  # type: ignore[arg-type]


async def test_reject_policy_refuses_and_writes_nothing(db_path: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        policy = NotesPolicy(max_notes=2, max_note_chars=10)
        await loop.store.add_note_async(sid, "one", policy=policy)
        await loop.store.add_note_async(sid, "two", policy=policy)
        with pytest.raises(NotesFullError, match="Delete notes") as caught:
            await loop.store.add_note_async(sid, "three", policy=policy)
        assert caught.value.max_notes == 2 and caught.value.session_id == sid
        with pytest.raises(ValueError, match="limited to 10"):
            await loop.store.add_note_async(sid, "x" * 11, policy=NotesPolicy(max_note_chars=10))
        assert [n.content for n in await loop.store.list_notes_async(sid)] == ["one", "two"]


async def test_fifo_policy_evicts_the_oldest_unpinned_note(db_path: str) -> None:
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
        store = loop.store
        policy = NotesPolicy(max_notes=3, eviction="fifo")
        await store.add_note_async(sid, "pinned a", pinned=True, policy=policy)
        await store.add_note_async(sid, "b", policy=policy)
        await store.add_note_async(sid, "c", policy=policy)
        await store.add_note_async(sid, "d", policy=policy)  # drops "b", never the pinned note
        assert [n.content for n in await store.list_notes_async(sid)] == ["pinned a", "c", "d"]
        # When every note is pinned, even fifo refuses.
        full = NotesPolicy(max_notes=1, eviction="fifo")
        other = await loop.new_session_async()
        await store.add_note_async(other, "keep", pinned=True, policy=full)
        with pytest.raises(NotesFullError):
            await store.add_note_async(other, "more", policy=full)


def test_render_notes_hides_the_oldest_unpinned_first() -> None:
    notes = [
        NoteRow("s", 1, "old " * 40),
        NoteRow("s", 2, "pinned fact", pinned=True),
        NoteRow("s", 3, "recent"),
    ]
    full = render_notes(notes)
    assert full.index("[#2, pinned] pinned fact") < full.index("[#1]") < full.index("[#3] recent")
    small = render_notes(notes, policy=NotesPolicy(inject_max_chars=len(full) - 5))
    assert "[#1]" not in small and "[#2, pinned]" in small and "[#3] recent" in small
    assert "1 older note(s) not shown" in small and len(small) <= len(full) - 5
    assert render_notes([]) == ""
    assert "[#7] from a dict" in render_notes([{"note_id": 7, "content": "from a dict"}])


async def test_notes_tools_and_recall_end_to_end(
    db_path: str, scripted_server: ScriptedServer, llm_factory: Any, protocol: str
) -> None:
    """The model writes notes with the tools; the next send shows them in the system prompt."""
    store = SQLiteSessionStore(db_path)
    policy = NotesPolicy(max_notes=2)
    config = AgentLoopConfig(system_prompt="base", memory=SQLiteNoteMemory(store, policy=policy), notes_policy=policy)
    registry = register_note_tools(ToolRegistry())
    async with (
        store,
        StatefulAgentLoop(
            llm=llm_factory(protocol, scripted_server), store=store, config=config, tool_registry=registry
        ) as loop,
    ):
        sid = await loop.new_session_async()
        scripted_server.push(
            tool_reply(
                ("note_add", {"content": "project code name: BLUEBIRD", "pinned": True}),
                ("note_add", {"content": "region: eu-west-1"}),
            ),
            tool_reply(("note_add", {"content": "one too many"})),
            tool_reply(
                ("note_update", {"note_id": 2, "content": "region: ap-southeast-1"}), ("note_delete", {"note_id": 9})
            ),
            text_reply("Noted."),
            text_reply("BLUEBIRD in ap-southeast-1."),
        )
        await loop.send("Remember my project.", session_id=sid)
        results = [m["content"] for m in await loop.get_messages_async(sid) if m["role"] == "tool"]
        assert results[:2] == ["Note #1 saved (pinned).", "Note #2 saved."]
        assert results[2].startswith("Error: session") and "Delete notes" in results[2]
        assert results[3:] == ["Note #2 updated.", "Error: note #9 not found."]
        # The first send had no notes yet; the second shows them, pinned first.
        assert "# Your notes" not in (scripted_server.requests[0].system_prompt or "")
        await loop.send("What is my project?", session_id=sid)
        prompt = scripted_server.requests[-1].system_prompt or ""
        assert prompt.startswith("base")
        assert "[#1, pinned] project code name: BLUEBIRD\n[#2] region: ap-southeast-1" in prompt


async def test_note_tools_outside_a_run_answer_with_an_error() -> None:
    registry = register_note_tools(ToolRegistry())
    assert [d.name for d in registry.definitions()] == ["note_add", "note_update", "note_delete"]
    out = await registry.invoke_async("note_add", {"content": "x"})
    assert out.startswith("Error: note tools only work inside")


async def test_a_migrated_notes_table_is_read(db_path: str) -> None:
    """Notes written by another writer of the same file (a migrated 0.11 file keeps its
    notes in the same table) are listed and numbered on from the highest id."""
    async with StatefulAgentLoop(llm=OfflineLLM(), db_path=db_path) as loop:
        sid = await loop.new_session_async()
    with sqlite3.connect(db_path) as conn:
        key = conn.execute("SELECT id FROM sessions WHERE session_id = ?", (sid,)).fetchone()[0]
        conn.execute(
            "INSERT INTO notes (session, note_id, content, pinned, created_at, updated_at) "
            "VALUES (?, 7, 'kept', 0, 1, 1)",
            (key,),
        )
    async with SQLiteSessionStore(db_path) as store:
        assert [(n.note_id, n.content) for n in await store.list_notes_async(sid)] == [(7, "kept")]
        assert (await store.add_note_async(sid, "next")).note_id == 8
