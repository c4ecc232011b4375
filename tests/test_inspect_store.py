"""The inspection read layer (``InspectStore``) on every backend: overviews, runs, transcripts,
timers across sessions, the health report, pruning, export and import. Real runs go through a
real ``StatefulAgentLoop`` and the real SDKs to the scripted server; the store is the real one
(an SQLite file, or a fresh schema of the throwaway PostgreSQL server)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from power_loop import SessionNotFoundError, StatefulAgentLoop, request_user_input, tool
from power_loop.messages import AssistantMessage, ToolCall, UserMessage
from power_loop.store import (
    PostgresSessionStore,
    SQLiteSessionStore,
    open_store,
)
from power_loop.store.protocols import InspectStore
from power_loop.store.rows import Append, BeginRun, Compact, FinishRun, LeaseClaim
from power_loop.testing import ScriptedServer, text_reply, tool_reply

from .conftest import ServiceFactory
from .helpers import registry

Store = SQLiteSessionStore | PostgresSessionStore


@pytest.fixture
async def store(shared_db: str) -> AsyncIterator[Store]:
    opened = open_store(shared_db)
    await opened.open()
    try:
        yield opened  # type: ignore[misc]
    finally:
        await opened.close()


async def _fill(db: str, server: ScriptedServer, llm_factory: ServiceFactory) -> None:
    """Session "alpha": one run with a tool call; "beta": one text run; "gamma": never ran."""
    server.push(tool_reply(("add", {"a": 2, "b": 3}, "call-1")), text_reply("It is 5."), text_reply("Hello."))
    llm = llm_factory("openai", server)
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry()) as loop:
        await loop.new_session_async(session_id="alpha", metadata={"team": "red", "n": 3})
        await loop.send("add 2 and 3", "alpha")
        await loop.new_session_async(session_id="beta", metadata={"team": "blue"})
        await loop.send("hi", "beta")
        await loop.new_session_async(session_id="gamma")


async def test_both_stores_implement_the_inspect_protocol(store: Store) -> None:
    assert isinstance(store, InspectStore)


async def test_sessions_are_listed_with_their_counts_and_filters(
    store: Store, shared_db: str, scripted_server: ScriptedServer, llm_factory: ServiceFactory
) -> None:
    await _fill(shared_db, scripted_server, llm_factory)
    listed = {o.session_id: o for o in await store.list_sessions()}
    assert set(listed) == {"alpha", "beta", "gamma"}
    alpha, gamma = listed["alpha"], listed["gamma"]
    assert (alpha.kind, alpha.runs, alpha.last_status, alpha.messages) == ("main", 1, "completed", 4)
    assert alpha.pending_calls == 0 and alpha.armed_timers == 0 and alpha.parent_session_id is None
    assert alpha.input_tokens > 0 and alpha.output_tokens > 0 and alpha.metadata == {"team": "red", "n": 3}
    assert alpha.last_active_at is not None and alpha.last_active_at >= alpha.created_at
    assert (gamma.runs, gamma.last_status, gamma.messages, gamma.last_active_at) == (0, None, 0, None)
    # Filters, orders and paging.
    assert [o.session_id for o in await store.list_sessions(metadata={"team": "red"})] == ["alpha"]
    assert [o.session_id for o in await store.list_sessions(metadata={"n": "3"})] == ["alpha"]
    assert await store.list_sessions(metadata={"team": "green"}) == []
    assert [o.session_id for o in await store.list_sessions(search="ETA")] == ["beta"]
    assert [o.session_id for o in await store.list_sessions(search="blue")] == ["beta"]
    assert [o.session_id for o in await store.list_sessions(search="%")] == []
    assert [o.session_id for o in await store.list_sessions(order="id")] == ["alpha", "beta", "gamma"]
    assert [o.session_id for o in await store.list_sessions(order="tokens")][0] == "alpha"
    assert [o.session_id for o in await store.list_sessions(order="id", limit=1, offset=1)] == ["beta"]
    assert [o.session_id for o in await store.list_sessions(order="created")][0] == "gamma"
    assert await store.list_sessions(kind="subagent") == []
    assert len(await store.list_sessions(kind="main")) == 3
    since = alpha.last_active_at
    active = {o.session_id for o in await store.list_sessions(active_since_ms=since)}
    assert "alpha" in active and "gamma" not in active
    assert await store.count_sessions() == 3
    assert await store.count_sessions(metadata={"team": "blue"}) == 1
    assert await store.count_sessions(search="a") == 3
    with pytest.raises(ValueError, match="unknown order"):
        await store.list_sessions(order="size")


async def test_runs_and_the_transcript_of_a_session(
    store: Store, shared_db: str, scripted_server: ScriptedServer, llm_factory: ServiceFactory
) -> None:
    await _fill(shared_db, scripted_server, llm_factory)
    runs = await store.list_runs("alpha")
    assert len(runs) == 1
    run = runs[0]
    assert (run.number, run.kind, run.status, run.llm_calls, run.rounds) == (1, "send", "completed", 2, 2)
    assert run.ended_at is not None and run.input_tokens > 0 and run.error is None
    entries = await store.read_transcript("alpha")
    assert [(e.seq, e.role) for e in entries] == [(1, "user"), (2, "assistant"), (3, "tool"), (4, "assistant")]
    assert entries[1].tool_calls == [{"id": "call-1", "name": "add", "arguments": '{"a": 2, "b": 3}'}]
    assert entries[1].content is None
    assert (entries[2].tool_call_id, entries[2].content, entries[2].is_error) == ("call-1", "5", False)
    assert entries[3].content == "It is 5." and {e.run_id for e in entries} == {run.run_id}
    assert entries[0].message == {"role": "user", "content": "add 2 and 3"}
    assert [e.seq for e in await store.read_transcript("alpha", after_seq=2, limit=1)] == [3]
    with pytest.raises(SessionNotFoundError):
        await store.read_transcript("missing")
    with pytest.raises(SessionNotFoundError):
        await store.list_runs("missing")


async def test_compaction_summaries_are_marked_and_placed(store: Store) -> None:
    await store.create_session("c")
    out = await store.write("c", [Append([UserMessage(content=f"m{i}") for i in range(5)])])
    await store.write("c", [Compact(through_seq=out.seqs[2], summary="the first three")])
    entries = await store.read_transcript("c")
    assert [(e.seq, e.is_summary, e.compacted) for e in entries] == [
        (1, False, True),
        (2, False, True),
        (3, False, True),
        (3, True, False),
        (4, False, False),
        (5, False, False),
    ]
    assert "the first three" in (entries[3].content or "") and entries[3].role == "system"
    live = await store.read_transcript("c", include_compacted=False)
    assert [(e.seq, e.is_summary) for e in live] == [(3, True), (4, False), (5, False)]
    assert [(e.seq, e.is_summary) for e in await store.read_transcript("c", after_seq=1, limit=2)] == [
        (2, False),
        (3, False),
        (3, True),
    ]
    assert [o.messages for o in await store.list_sessions()] == [2]


async def test_timers_across_sessions(store: Store) -> None:
    for sid in ("t1", "t2"):
        await store.create_session(sid)
    now = int(time.time() * 1000)
    await store.schedule_timer("t1", due_at=now + 60_000, note="later")
    await store.schedule_timer("t2", due_at=now + 30_000, note="sooner")
    gone = await store.schedule_timer("t2", due_at=now + 90_000, note="cancelled")
    await store.cancel_timer("t2", gone.timer_id)
    await store.schedule_timer("t1", due_at=1, note="due")
    claimed = await store.claim_due_timers("runner", lease_ms=60_000, limit=10)
    assert [c.note for c in claimed] == ["due"]
    report = await store.list_all_timers()
    assert [(t.session_id, t.note, t.status) for t in report.active] == [
        ("t1", "due", "claimed"),
        ("t2", "sooner", "armed"),
        ("t1", "later", "armed"),
    ]
    assert [(t.session_id, t.note, t.status) for t in report.recent] == [("t2", "cancelled", "cancelled")]
    only = await store.list_all_timers("t1", statuses=("armed",))
    assert [t.note for t in only.active] == ["later"] and only.recent == []
    assert report.to_dict()["active"][0]["note"] == "due"
    with pytest.raises(SessionNotFoundError):
        await store.list_all_timers("missing")


async def test_the_health_report_finds_each_problem_with_its_fix(store: Store) -> None:
    healthy = await store.health_report()
    assert healthy.healthy and healthy.integrity == "ok" and healthy.schema_version >= 10 and healthy.sessions == 0
    now = int(time.time() * 1000)
    # An unanswered call with no run going on.
    await store.create_session("p")
    call = ToolCall(id="c1", name="add", arguments="{}")
    await store.write("p", [Append([UserMessage(content="go"), AssistantMessage(content="", tool_calls=(call,))])])
    # A run whose lease expired while it was "running" (its process is gone).
    await store.create_session("r")
    began = await store.begin_run(BeginRun("r", "run-r", LeaseClaim(owner="w/run-r", ttl_ms=1_000)))
    assert began.status == "ok"
    # A claimed timer whose claim expired, and an armed one long overdue.
    await store.create_session("t")
    await store.schedule_timer("t", due_at=1, note="claimed")
    await store.claim_due_timers("runner", lease_ms=1_000, limit=1)
    await store.schedule_timer("t", due_at=now, note="overdue")
    report = await store.health_report(now_ms=now + 3_600_000, db="DB")
    found = {(f.kind, f.session_id) for f in report.findings}
    assert found == {("pending_calls", "p"), ("stuck_run", "r"), ("expired_timer_claim", "t"), ("overdue_timer", "t")}
    fixes = {f.kind: f.fix for f in report.findings}
    assert "loop.resume('p')" in fixes["pending_calls"] and "abort_pending" in fixes["pending_calls"]
    assert "loop.resume('r')" in fixes["stuck_run"]
    assert fixes["overdue_timer"].startswith("power-loop worker APP --db DB")
    assert not report.healthy and report.to_dict()["healthy"] is False
    # A finished run whose lease was never released (its process died right after the end).
    await store.create_session("d")
    began = await store.begin_run(BeginRun("d", "run-d", LeaseClaim(owner="w/run-d", ttl_ms=1_000)))
    fenced = LeaseClaim(owner="w/run-d", ttl_ms=1_000, fence=began.fence)
    await store.write("d", [FinishRun("run-d", "completed", release_lease=False)], lease=fenced)
    late = await store.health_report(now_ms=now + 3_600_000)
    assert ("dead_lease", "d") in {(f.kind, f.session_id) for f in late.findings}
    # While the run's lease is live, the run is no finding (nor is its session's state).
    live = await store.health_report(now_ms=now)
    assert ("stuck_run", "r") not in {(f.kind, f.session_id) for f in live.findings}


async def _ended_child(store: Store, parent: str, child: str, lifecycle: str) -> None:
    await store.create_session(child, parent_session_id=parent, kind="subagent", lifecycle=lifecycle)
    began = await store.begin_run(BeginRun(child, f"run-{child}", LeaseClaim(owner=f"w/{child}", ttl_ms=60_000)))
    lease = LeaseClaim(owner=f"w/{child}", ttl_ms=60_000, fence=began.fence)
    await store.write(child, [FinishRun(f"run-{child}", "completed")], lease=lease)
    await store.release_lease(child, f"w/{child}")


async def test_prune_removes_folded_rows_and_ended_ephemeral_children(store: Store) -> None:
    await store.create_session("parent")
    out = await store.write("parent", [Append([UserMessage(content=f"m{i}") for i in range(4)])])
    await store.write("parent", [Compact(through_seq=out.seqs[1], summary="two")])
    await _ended_child(store, "parent", "eph", "ephemeral")
    await _ended_child(store, "parent", "kept", "detached")
    await store.create_session("running", parent_session_id="parent", kind="subagent", lifecycle="ephemeral")
    await store.begin_run(BeginRun("running", "run-x", LeaseClaim(owner="w/x", ttl_ms=60_000)))
    dry = await store.prune(dry_run=True)
    assert (dry.dry_run, dry.folded_messages, dry.sessions) == (True, 2, ["eph"])
    assert await store.count_sessions() == 4 and len(await store.read_transcript("parent")) == 5
    done = await store.prune(dry_run=False)
    assert (done.dry_run, done.folded_messages, done.sessions) == (False, 2, ["eph"])
    assert {o.session_id for o in await store.list_sessions()} == {"parent", "kept", "running"}
    assert [(e.seq, e.is_summary) for e in await store.read_transcript("parent")] == [(2, True), (3, False), (4, False)]
    assert (await store.prune(dry_run=True)).folded_messages == 0
    assert (await store.prune(dry_run=True, older_than_ms=1)).sessions == []


async def test_export_then_import_round_trips(
    store: Store, shared_db: str, scripted_server: ScriptedServer, llm_factory: ServiceFactory
) -> None:
    await _fill(shared_db, scripted_server, llm_factory)
    records = await store.export_session("alpha")
    head = records[0]
    assert head["type"] == "session" and head["format"] == 1 and head["metadata"] == {"team": "red", "n": 3}
    assert [r["type"] for r in records[1:]] == ["message"] * 4
    assert await store.import_session(records, session_id="alpha-copy") == 4
    again = await store.export_session("alpha-copy")

    def comparable(recs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        drop = {"session_id", "created_at", "exported_at", "run_id"}
        return [
            {k: v for k, v in r.items() if k not in drop or r["type"] == "message" and k == "created_at"} for r in recs
        ]

    assert comparable(again) == comparable(records)
    assert await store.read_transcript("alpha-copy") != []
    copy = (await store.list_sessions(search="alpha-copy"))[0]
    assert (copy.messages, copy.pending_calls, copy.runs) == (4, 0, 0)
    # The imported session works: the next send sees the history.
    scripted_server.push(text_reply("Still 5."))
    async with StatefulAgentLoop(llm=llm_factory("openai", scripted_server), db_path=shared_db) as loop:
        result = await loop.send("and again?", "alpha-copy")
    assert result.status == "completed"
    assert len(scripted_server.requests[-1].body["messages"]) >= 5
    with pytest.raises(ValueError, match="already exists"):
        await store.import_session(records, session_id="alpha-copy")
    with pytest.raises(SessionNotFoundError):
        await store.export_session("missing")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r[1:], "line 1: the first record must be"),
        (lambda r: [{**r[0], "format": 99}, *r[1:]], "line 1: unknown format 99"),
        (lambda r: [r[0], r[2], r[1], *r[3:]], "line 3: 'seq' must be an integer greater"),
        (lambda r: [r[0], r[1], r[3]], "line 3: tool result for call 'call-1', which no earlier"),
        (lambda r: [*r[:2], {**r[2], "message": {"role": "robot"}}], "line 3: not a valid message"),
        (lambda r: [*r, {"type": "note"}], "line 6: expected a record of type"),
        (lambda r: [], "line 1: empty input"),
    ],
)
async def test_invalid_imports_name_the_line_and_write_nothing(
    store: Store,
    change: Any,
    message: str,
    shared_db: str,
    scripted_server: ScriptedServer,
    llm_factory: ServiceFactory,
) -> None:
    await _fill(shared_db, scripted_server, llm_factory)
    records = await store.export_session("alpha")
    with pytest.raises(ValueError, match=message):
        await store.import_session(change(records), session_id="new")
    assert await store.get_session_async("new") is None


async def test_an_import_failing_in_the_database_leaves_nothing(store: Store) -> None:
    await store.create_session("src")
    await store.write("src", [Append([UserMessage(content="a"), AssistantMessage(content="b")])])
    records = await store.export_session("src")
    records.append({"type": "compaction", "through_seq": 2, "summary": "ab"})
    records.append({"type": "compaction", "through_seq": 2, "summary": "bad\x00", "before_tokens": "x"})
    with pytest.raises(ValueError):
        await store.import_session(records, session_id="dst")
    assert await store.get_session_async("dst") is None


async def test_a_session_waiting_for_a_person_is_no_finding(
    store: Store, shared_db: str, scripted_server: ScriptedServer, llm_factory: ServiceFactory
) -> None:
    @tool
    def confirm(amount: int) -> str:
        """Ask the user to confirm.

        Args:
            amount: Cents.
        """
        request_user_input(prompt=f"Pay {amount} cents?", kind="confirm", options=["yes", "no"])
        return "unreachable"

    scripted_server.push(tool_reply(("confirm", {"amount": 500}, "q1")))
    llm = llm_factory("openai", scripted_server)
    async with StatefulAgentLoop(llm=llm, db_path=shared_db, tool_registry=registry(confirm)) as loop:
        await loop.new_session_async(session_id="asks")
        result = await loop.send("pay", "asks")
    assert result.status == "waiting_for_input"
    overview = (await store.list_sessions())[0]
    assert overview.pending_calls == 1 and overview.last_status == "waiting_for_input"
    assert (await store.health_report()).findings == []


_HEAD = {"type": "session", "format": 1, "session_id": "x", "metadata": {}, "system_prompt": None}


def _msg(seq: Any, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "message", "seq": seq, "message": message, **extra}


def _user(seq: Any, **extra: Any) -> dict[str, Any]:
    return _msg(seq, {"role": "user", "content": f"u{seq}"}, **extra)


def _calls(seq: int, *ids: str) -> dict[str, Any]:
    calls = [{"id": i, "type": "function", "function": {"name": "add", "arguments": "{}"}} for i in ids]
    return _msg(seq, {"role": "assistant", "content": "", "tool_calls": calls})


def _result(seq: int, call_id: str) -> dict[str, Any]:
    return _msg(seq, {"role": "tool", "tool_call_id": call_id, "content": "ok"})


def _fold(through: Any, **extra: Any) -> dict[str, Any]:
    return {"type": "compaction", "through_seq": through, "summary": "s", **extra}


@pytest.mark.parametrize(
    ("records", "message"),
    [
        (
            [_HEAD, _user(1), _calls(2, "c1"), _result(3, "c1"), _calls(4, "c1"), _result(5, "c1")],
            "line 5: tool call id",
        ),
        ([_HEAD, _user(2**63)], "line 2: 'seq' must be"),
        ([{**_HEAD, "format": True}, _user(1)], "line 1: unknown format True"),
        ([{**_HEAD, "metadata": [1]}, _user(1)], "line 1: 'metadata'"),
        ([{**_HEAD, "metadata": {"k": object()}}, _user(1)], "line 1: 'metadata'"),
        ([{**_HEAD, "system_prompt": 3}, _user(1)], "line 1: 'system_prompt'"),
        ([_HEAD, _user(1, compacted="no")], "line 2: 'compacted'"),
        ([_HEAD, _user(1, created_at="noon")], "line 2: 'created_at'"),
        ([_HEAD, _user(1), _fold(0)], "line 3: a compaction needs"),
        ([_HEAD, _user(1), _fold(True)], "line 3: a compaction needs"),
        ([_HEAD, _user(1), _fold(1, before_tokens="x")], "line 3: 'before_tokens'"),
        ([_HEAD, _user(1, compacted=True), _user(2, compacted=True), _fold(2), _fold(1)], "line 5: a compaction"),
        ([_HEAD, _user(1, compacted=True), _user(2)], "line 2: message 1 is marked folded"),
        ([_HEAD, _user(1), _user(2), _fold(1)], "line 2: message 1 is folded"),
    ],
)
async def test_hostile_imports_name_the_line_and_write_nothing(
    store: Store, records: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await store.import_session(records, session_id="new")
    assert await store.get_session_async("new") is None


async def test_filters_match_quotes_backslashes_and_any_script(store: Store) -> None:
    await store.create_session("ÉCOLE", metadata={"t": 'a"b', "u": "é", "p": "C:\\tmp", "Équipe": "x=y"})
    await store.create_session("plain", metadata={"t": "ab", "n": 3, "tags": ["x", "y"]})
    assert [o.session_id for o in await store.list_sessions(metadata={"t": 'a"b'})] == ["ÉCOLE"]
    assert [o.session_id for o in await store.list_sessions(metadata={"u": "é"})] == ["ÉCOLE"]
    assert [o.session_id for o in await store.list_sessions(metadata={"p": "C:\\tmp"})] == ["ÉCOLE"]
    assert [o.session_id for o in await store.list_sessions(metadata={"Équipe": "x=y"})] == ["ÉCOLE"]
    assert [o.session_id for o in await store.list_sessions(metadata={"n": "3", "tags": '["x", "y"]'})] == ["plain"]
    assert await store.count_sessions(metadata={"u": "é"}) == 1
    for text in ("école", "ÉCO", 'a"b', "c:\\TMP", "É", "équipe"):
        assert [o.session_id for o in await store.list_sessions(search=text)] == ["ÉCOLE"], text
        assert await store.count_sessions(search=text) == 1, text
    assert await store.list_sessions(search="%") == [] and await store.list_sessions(search="_") == []
    assert {o.session_id for o in await store.list_sessions(search="'")} == set()


async def test_prune_keeps_ended_children_that_will_run_again(store: Store) -> None:
    await store.create_session("parent")
    await _ended_child(store, "parent", "woken", "ephemeral")
    await store.schedule_timer("woken", due_at=int(time.time() * 1000) + 60_000, note="check back")
    await _ended_child(store, "parent", "queued", "ephemeral")
    await store.enqueue("queued", "one more thing")
    await _ended_child(store, "parent", "paused", "ephemeral")
    await store.pause_session("paused")  # waits for loop.resume
    await _ended_child(store, "parent", "done", "ephemeral")
    assert (await store.prune(dry_run=True)).sessions == ["done"]
    assert (await store.prune(dry_run=False)).sessions == ["done"]
    assert {o.session_id for o in await store.list_sessions()} == {"parent", "woken", "queued", "paused"}
    assert [t.note for t in (await store.list_all_timers("woken")).active] == ["check back"]


class _CompactsBeforeSummariesAreRead:
    """A transaction interface passing statements through; before the first statement that
    reads compaction summaries, a compaction commits from another connection (a service
    compacting the session while it is exported)."""

    def __init__(self, tx: Any, compact: Any) -> None:
        self.tx, self.compact, self.dialect = tx, compact, tx.dialect

    def execute(self, sql: str, params: Any = ()) -> Any:
        if "FROM compactions" in sql and self.compact is not None:
            self.compact, compact = None, self.compact
            compact()
        return self.tx.execute(sql, params)


async def test_an_export_is_one_snapshot_while_the_session_is_compacted(store: Store) -> None:
    from power_loop.store import _history_sql, _inspect_io, _sessions_sql

    await store.create_session("c")
    await store.write("c", [Append([UserMessage(content=f"m{i}") for i in range(4)])])

    def compact() -> None:
        def fold(c: Any) -> None:
            key = _sessions_sql.session_ref(c, "c").key
            _history_sql.apply_compaction(c, key, Compact(through_seq=2, summary="two"), 0, run=None)

        store._call_sync(fold)

    records = await store._call(
        lambda c: _inspect_io.export_session(_CompactsBeforeSummariesAreRead(c, compact), "c", now=0), tx=False
    )
    folded = [r["seq"] for r in records if r["type"] == "message" and r["compacted"]]
    summaries = [r["through_seq"] for r in records if r["type"] == "compaction"]
    assert (folded, summaries) in (([], []), ([1, 2], [2]))
    assert await store.import_session(records, session_id="copy") == 4


async def test_page_sizes_out_of_range_are_refused_alike_on_every_backend(store: Store) -> None:
    await store.create_session("c")
    await store.write("c", [Append([UserMessage(content="m")])])
    for call in (
        lambda: store.read_transcript("c", limit=0),
        lambda: store.read_transcript("c", limit=-1),
        lambda: store.list_runs("c", limit=-1),
        lambda: store.list_all_timers(recent=-1),
        lambda: store.list_sessions(limit=-1),
        lambda: store.list_sessions(offset=2**63),
    ):
        with pytest.raises(ValueError, match=">= "):
            await call()
    assert await store.list_runs("c", limit=0) == [] and (await store.list_all_timers(recent=0)).recent == []


async def test_a_wake_up_no_worker_delivers_is_a_finding(store: Store) -> None:
    await store.create_session("w")
    await store.enqueue("w", "the timer fired: check the build", kind="timer")
    await store.create_session("f")
    await store.enqueue("f", "a follow-up, left for the next send")
    now = int(time.time() * 1000)
    assert (await store.health_report(now_ms=now)).findings == []  # not late yet
    late = await store.health_report(now_ms=now + 3_600_000, db="DB")
    assert [(f.kind, f.session_id) for f in late.findings] == [("undelivered_wakeup", "w")]
    assert late.findings[0].fix.startswith("power-loop worker APP --db DB")


async def test_a_dry_run_counts_what_the_prune_deletes(store: Store) -> None:
    await store.create_session("parent")
    await _ended_child(store, "parent", "eph", "ephemeral")
    await store.write("eph", [Append([UserMessage(content=f"m{i}") for i in range(3)])])
    await store.write("eph", [Compact(through_seq=2, summary="two")])
    out = await store.write("parent", [Append([UserMessage(content=f"p{i}") for i in range(2)])])
    await store.write("parent", [Compact(through_seq=out.seqs[0], summary="one")])
    dry = await store.prune(dry_run=True)
    done = await store.prune(dry_run=False)
    assert (dry.folded_messages, dry.sessions) == (done.folded_messages, done.sessions) == (1, ["eph"])


class _RunsBeforeCallsAreRead:
    """Passes statements through; before the first statement reading unanswered tool calls, a
    run starts from another connection and stores a model turn calling a tool (a busy
    service, between the report's statements)."""

    def __init__(self, tx: Any, start_run: Any) -> None:
        self.tx, self.start_run, self.dialect = tx, start_run, tx.dialect

    def execute(self, sql: str, params: Any = ()) -> Any:
        if "FROM tool_calls t JOIN sessions s" in sql and self.start_run is not None:
            self.start_run, start_run = None, self.start_run
            start_run()
        return self.tx.execute(sql, params)


async def test_the_health_report_is_one_snapshot_of_a_busy_store(store: Store) -> None:
    from power_loop.store import _inspect_sql, _sql

    await store.create_session("busy")
    call = ToolCall(id="c1", name="add", arguments="{}")

    def start_run() -> None:
        lease = LeaseClaim(owner="w/run-b", ttl_ms=600_000)
        began = store._call_sync(lambda c: _sql.begin_run(c, BeginRun("busy", "run-b", lease)))
        fenced = LeaseClaim(owner="w/run-b", ttl_ms=600_000, fence=began.fence)
        turn = [Append([UserMessage(content="go"), AssistantMessage(content="", tool_calls=(call,))])]
        store._call_sync(lambda c: _sql.write(c, "busy", turn, lease=fenced, event_seq=None))

    now = int(time.time() * 1000)
    report = await store._call(
        lambda c: _inspect_sql.health_report(
            _RunsBeforeCallsAreRead(c, start_run), now=now, overdue_ms=300_000, db="DB"
        ),
        tx=False,
    )
    assert report.findings == []  # the run going on is no problem, seen before or after it began
    assert (await store.health_report()).findings == []
