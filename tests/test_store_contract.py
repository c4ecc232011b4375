"""The store contract: what every backend must do, whatever its SQL dialect and locking. Each
test takes the ``store`` fixture, parametrized over the backends (``sqlite`` on a temporary
file, ``postgres`` on a fresh schema of a throwaway server; a new backend is one more entry
of ``BACKENDS`` with a factory that opens a fresh, empty store). The tests use only the
consumer protocols in ``power_loop.store.protocols`` and the row types, never a backend's
SQL, so they state the rules, not an implementation: begin, lease, fence and refusal; seq
allocation; pending answers; the inbox drained exactly once; the compaction base; timers
claimed and delivered exactly once; session administration.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from power_loop import LeaseLostError, SessionNotFoundError
from power_loop.messages import AssistantMessage, ToolCall, Usage, UserMessage
from power_loop.store import PostgresSessionStore, SQLiteSessionStore
from power_loop.store.protocols import (
    Delivery,
    EventLogStore,
    RunStore,
    SessionAdmin,
    SessionStoreProtocol,
    TimerStore,
)
from power_loop.store.rows import (
    AnswerPending,
    Append,
    BeginRun,
    Compact,
    DrainInbox,
    EventRecord,
    FinishRun,
    LeaseClaim,
    RecordEvents,
    RecordLLMCall,
    RunTotals,
)

BackendFactory = Callable[[pytest.FixtureRequest], Awaitable[SessionStoreProtocol]]


async def _sqlite(request: pytest.FixtureRequest) -> SessionStoreProtocol:
    tmp_path = request.getfixturevalue("tmp_path")
    store = SQLiteSessionStore(os.path.join(tmp_path, "contract.db"))
    await store.open()
    return store


async def _postgres(request: pytest.FixtureRequest) -> SessionStoreProtocol:
    target = request.getfixturevalue("pg_schema")  # a fresh schema on the session's throwaway server
    store = PostgresSessionStore(target.url, schema=target.schema)
    await store.open()
    return store


BACKENDS: dict[str, BackendFactory] = {"sqlite": _sqlite, "postgres": _postgres}


@pytest.fixture(params=sorted(BACKENDS))
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStoreProtocol]:
    """A fresh, open store of each backend."""
    opened = await BACKENDS[request.param](request)
    try:
        yield opened
    finally:
        await opened.close()


def _claim(owner: str, *, ttl_ms: int = 60_000, fence: int = 0) -> LeaseClaim:
    return LeaseClaim(owner=owner, ttl_ms=ttl_ms, fence=fence)


async def _session(store: SessionStoreProtocol, sid: str = "s") -> str:
    await store.create_session(sid, metadata={"k": "v"}, system_prompt="be brief")
    return sid


async def test_the_backend_implements_every_consumer_protocol(store: SessionStoreProtocol) -> None:
    assert isinstance(store, RunStore)
    assert isinstance(store, TimerStore)
    assert isinstance(store, SessionAdmin)
    assert isinstance(store, EventLogStore)


# --------------------------------------------------------------------------- sessions


async def test_session_admin_create_read_delete(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    row = await store.get_session_async(sid)
    assert row is not None and row.metadata == {"k": "v"} and row.system_prompt == "be brief"
    with pytest.raises(ValueError, match="already exists"):
        await _session(store)
    assert await store.get_session_async("missing") is None
    assert await store.delete_session(sid) == 1
    assert await store.get_session_async(sid) is None
    assert await store.delete_session(sid) == 0


async def test_a_finished_run_adds_to_the_stats(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    lease = _claim("a/run1")
    began = await store.begin_run(BeginRun(sid, "run1", lease, messages=[UserMessage(content="hi")]))
    assert began.status == "ok"
    assert await store.get_stats(sid) is None
    fenced = _claim("a/run1", fence=began.fence)
    done = await store.write(sid, [FinishRun("run1", "completed")], lease=fenced)
    assert done.finished
    stats = await store.get_stats(sid)
    assert stats is not None and stats.sends == 1
    assert [s.session_id for s in await store.list_stats()] == [sid]


# --------------------------------------------------------------------------- leases and fencing


async def test_begin_takes_the_lease_and_a_second_owner_is_refused(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    first = await store.begin_run(BeginRun(sid, "r1", _claim("a/r1")))
    assert first.status == "ok" and first.fence == 1
    second = await store.begin_run(BeginRun(sid, "r2", _claim("b/r2")))
    assert second.status == "busy" and second.lease_owner == "a/r1"
    await store.release_lease(sid, "a/r1")
    third = await store.begin_run(BeginRun(sid, "r3", _claim("b/r3")))
    assert third.status == "ok" and third.fence == 2
    assert (await store.begin_run(BeginRun("missing", "r4", _claim("c/r4")))).status == "not_found"


async def test_a_stale_fence_is_refused_after_a_takeover(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    # A lease that expires at once: the next owner may take over without waiting.
    old = await store.begin_run(BeginRun(sid, "old", _claim("a/old", ttl_ms=0)))
    stale = _claim("a/old", ttl_ms=0, fence=old.fence)
    await store.write(sid, [Append([UserMessage(content="still mine")], run_id="old")], lease=stale)
    new = await store.begin_run(BeginRun(sid, "new", _claim("b/new")))
    assert new.status == "ok" and new.fence == old.fence + 1
    with pytest.raises(LeaseLostError):
        await store.write(sid, [Append([UserMessage(content="too late")], run_id="old")], lease=stale)
    with pytest.raises(LeaseLostError):
        await store.renew_lease(sid, stale)
    await store.renew_lease(sid, _claim("b/new", fence=new.fence))
    texts = [m.message.text for m in await store.load_messages(sid)]  # type: ignore[union-attr]
    assert texts == ["still mine"]


# --------------------------------------------------------------------------- history


async def test_appends_get_consecutive_seqs_across_transactions(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    began = await store.begin_run(BeginRun(sid, "r", _claim("a/r"), messages=[UserMessage(content="u0")]))
    lease = _claim("a/r", fence=began.fence)
    seqs = [s.seq for s in began.appended]
    for i in range(3):
        out = await store.write(
            sid, [Append([UserMessage(content=f"u{i}a"), AssistantMessage(content=f"a{i}")], run_id="r")], lease=lease
        )
        seqs += out.seqs
    assert seqs == list(range(1, 8))
    assert [m.seq for m in await store.load_messages(sid)] == seqs


async def test_appends_and_drained_follow_ups_keep_the_order_of_the_operations(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    began = await store.begin_run(BeginRun(sid, "r", _claim("a/r"), messages=[UserMessage(content="u0")]))
    lease = _claim("a/r", fence=began.fence)
    await store.enqueue(sid, "steer", kind="follow_up")
    answer = Append([AssistantMessage(content="after the follow-up")], run_id="r")
    out = await store.write(sid, [DrainInbox(run_id="r"), answer], lease=lease)
    texts = [m.message.text for m in await store.load_messages(sid)]
    assert texts[0] == "u0" and texts[-1] == "after the follow-up" and "steer" in (texts[1] or "")
    assert out.seqs == (3,)
    # A finish that drains comes before an append in the same write: the same order.
    await store.enqueue(sid, "again", kind="follow_up")
    late = Append([AssistantMessage(content="last")], run_id="r")
    await store.write(sid, [FinishRun("r", "completed", RunTotals(), drain_inbox=True), late], lease=lease)
    texts = [m.message.text for m in await store.load_messages(sid)]
    assert "again" in (texts[-2] or "") and texts[-1] == "last"


async def test_compaction_makes_the_summary_the_load_base(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    msgs = [UserMessage(content=f"m{i}") for i in range(10)]
    out = await store.write(sid, [Append(msgs)])
    await store.write(sid, [Compact(through_seq=out.seqs[6], summary="the first seven")])
    loaded = await store.load_messages(sid)
    assert [m.seq for m in loaded] == [out.seqs[6], *out.seqs[7:]]
    assert "the first seven" in (loaded[0].message.text or "")  # type: ignore[union-attr]
    audit = await store.load_messages(sid, include_compacted=True)
    assert [m.seq for m in audit] == list(out.seqs)
    assert [m.compacted for m in audit] == [True] * 7 + [False] * 3


async def test_unanswered_calls_block_a_send_until_healed(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    call = ToolCall(id="c1", name="add", arguments='{"a": 1}')
    await store.write(sid, [Append([UserMessage(content="add"), AssistantMessage(content="", tool_calls=(call,))])])
    pending = await store.get_pending(sid)
    assert pending is not None and [c.tool_call_id for c in pending.calls] == ["c1"]
    refused = await store.begin_run(BeginRun(sid, "r1", _claim("a/r1"), messages=[UserMessage(content="next")]))
    assert refused.status == "pending"
    healed = await store.begin_run(
        BeginRun(sid, "r2", _claim("a/r2"), messages=[UserMessage(content="next")], heal_pending=True, heal_text="x")
    )
    assert healed.status == "ok"
    assert await store.get_pending(sid) is None
    roles = [m.message.role for m in await store.load_messages(sid)]
    assert roles == ["user", "assistant", "tool", "user"]


async def test_abort_pending_answers_every_open_call_once(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    calls = (ToolCall(id="c1", name="a", arguments="{}"), ToolCall(id="c2", name="b", arguments="{}"))
    await store.write(sid, [Append([AssistantMessage(content="", tool_calls=calls)])])
    assert await store.abort_pending(sid, "stop") == 2
    assert await store.abort_pending(sid, "stop") == 0
    assert await store.get_pending(sid) is None


# --------------------------------------------------------------------------- inbox


async def test_the_inbox_is_drained_exactly_once(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    assert await store.enqueue(sid, "ignored", only_if_busy=True) is None  # idle: the caller sends instead
    began = await store.begin_run(BeginRun(sid, "r", _claim("a/r"), messages=[UserMessage(content="go")]))
    lease = _claim("a/r", fence=began.fence)
    assert await store.enqueue(sid, "one", only_if_busy=True) == 1
    assert await store.enqueue(sid, "two", only_if_busy=True) == 2
    first = await store.write(sid, [FinishRun("r", "completed")], lease=lease)
    assert not first.finished and len(first.drained) == 1  # consecutive follow-ups merge into one message
    merged = first.drained[0].message
    assert merged.role == "user" and "one" in (merged.text or "") and "two" in (merged.text or "")  # type: ignore[union-attr]
    second = await store.write(sid, [FinishRun("r", "completed")], lease=lease)
    assert second.finished and second.drained == ()
    again = await store.begin_run(BeginRun(sid, "r2", _claim("a/r2")))
    assert again.status == "ok" and again.appended == ()
    follow_ups = [m for m in await store.load_messages(sid) if getattr(m.message, "name", None) == "follow_up"]
    assert len(follow_ups) == 1


# --------------------------------------------------------------------------- timers


async def test_a_timer_is_claimed_once_and_delivered_once(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    timer = await store.schedule_timer(sid, due_at=1, note="wake up")
    assert timer.timer_id == 1 and (await store.schedule_timer(sid, due_at=2, note="later")).timer_id == 2
    await store.cancel_timer(sid, 2)
    claimed = await store.claim_due_timers("runner-a", lease_ms=60_000, limit=10)
    assert [t.timer_id for t in claimed] == [1]
    assert await store.claim_due_timers("runner-b", lease_ms=60_000, limit=10) == []
    delivery = Delivery(claimed[0], "deliver", "<timer>wake up</timer>")
    assert await store.deliver_timers("runner-b", [delivery]) == [(None, 0)]  # not its claim
    [(outcome, event_seq)] = await store.deliver_timers("runner-a", [delivery])
    assert outcome == "delivered" and event_seq > 0
    assert await store.deliver_timers("runner-a", [delivery]) == [(None, 0)]  # never twice
    assert await store.orphan_inboxes() == [sid]
    began = await store.begin_run(BeginRun(sid, "wake", _claim("a/wake"), kind="wake"))
    assert [m.message.name for m in began.appended] == ["timer"]  # type: ignore[union-attr]
    assert await store.list_timers(sid) == []


async def test_a_stale_timer_claim_is_taken_over_and_the_old_claimant_refused(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    await store.schedule_timer(sid, due_at=1, note="n")
    [old] = await store.claim_due_timers("runner-a", lease_ms=-1, limit=10)  # expired at once
    [new] = await store.claim_due_timers("runner-b", lease_ms=60_000, limit=10)
    assert new.claim_seq == old.claim_seq + 1
    assert not await store.retry_timer_later(old, "runner-a", delay_ms=10)
    assert await store.deliver_timers("runner-a", [Delivery(old, "deliver", "x")]) == [(None, 0)]
    [(outcome, _)] = await store.deliver_timers("runner-b", [Delivery(new, "deliver", "x")])
    assert outcome == "delivered"
    assert await store.release_timer_claims("runner-b") == 0
    assert await store.next_timer_due_at() is None


async def test_a_batch_of_deliveries_applies_each_timer_by_the_same_rules(store: SessionStoreProtocol) -> None:
    """One ``deliver_timers`` call with every kind of outcome (PostgreSQL applies a batch with
    a few set-based statements, SQLite timer by timer: both must agree)."""
    idle, busy, calls, gone = [await _session(store, sid) for sid in ("idle", "busy", "calls", "gone")]
    # "taken": runner-a's claim went stale and runner-b took the timer over.
    await store.schedule_timer(idle, due_at=1, note="taken")
    [taken] = await store.claim_due_timers("runner-a", lease_ms=-1, limit=1)
    assert len(await store.claim_due_timers("runner-b", lease_ms=60_000, limit=1)) == 1
    await store.begin_run(BeginRun(busy, "r", _claim("a/r"), messages=[UserMessage(content="go")]))
    call = ToolCall(id="c1", name="add", arguments="{}")
    await store.write(calls, [Append([AssistantMessage(content="", tool_calls=(call,))])])
    for note in ("once", "again", "skip", "cancel", "postpone"):
        await store.schedule_timer(idle, due_at=1, note=note, every_ms=60_000 if note == "again" else None)
    for sid in (busy, calls, gone):
        await store.schedule_timer(sid, due_at=1, note=sid)
    await store.schedule_timer(idle, due_at=1, note="until", every_ms=60_000, until_at=2)  # past its until_at
    claimed = {t.note: t for t in await store.claim_due_timers("runner-a", lease_ms=60_000, limit=50)}
    assert len(claimed) == 9
    claimed["taken"] = taken  # runner-a delivers with a claim that is no longer its own
    assert await store.delete_session(gone) >= 1  # and with a timer whose session is gone
    action = {"skip": "skip", "cancel": "cancel", "postpone": "postpone"}
    notes = ["once", "again", "skip", "cancel", "postpone", "busy", "calls", "gone", "until", "taken"]
    deliveries = [
        Delivery(claimed[n], action.get(n, "deliver"), f"wake {n}", 3_600_000 if n == "postpone" else 0) for n in notes
    ]
    outcomes = dict(zip(notes, await store.deliver_timers("runner-a", deliveries), strict=True))
    assert {n: o for n, (o, _) in outcomes.items()} == {
        "once": "delivered",
        "again": "delivered",
        "skip": "skipped",
        "cancel": "cancelled",
        "postpone": "postponed",
        "busy": "queued",
        "calls": "queued",
        "gone": None,
        "until": "skipped",
        "taken": None,
    }
    idle_seqs = [outcomes[n][1] for n in ("once", "again", "skip", "cancel", "postpone", "until")]
    assert idle_seqs == sorted(set(idle_seqs)) and idle_seqs[0] > 0  # one event seq each, in order
    armed = {t.note: t for t in await store.list_timers(idle, statuses=("armed", "claimed"))}
    assert set(armed) == {"again", "postpone", "taken"}
    assert armed["again"].fire_count == 1 and armed["again"].due_at > 60_000
    assert armed["postpone"].fire_count == 0 and armed["postpone"].due_at > 3_000_000
    assert armed["taken"].status == "claimed"  # still runner-b's
    ended = {t.note: t for t in await store.list_timers(idle, statuses=("fired", "cancelled"))}
    assert {n: (t.status, t.last_outcome) for n, t in ended.items()} == {
        "once": ("fired", "delivered"),
        "skip": ("fired", "skipped"),
        "cancel": ("cancelled", "cancelled"),
        "until": ("fired", "skipped"),
    }
    began = await store.begin_run(BeginRun(idle, "w", _claim("a/w"), kind="wake"))
    texts = [m.message.text for m in began.appended]  # type: ignore[union-attr]
    assert texts == ["wake once", "wake again"]  # in delivery order; nothing of the others
    assert [t.note for t in await store.list_timers(busy, statuses=("fired",))] == ["busy"]


async def test_a_key_that_is_not_valid_text_is_refused_and_nothing_is_stored(store: SessionStoreProtocol) -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        await store.create_session("s\udce9", metadata={})
    assert await store.get_session_async("s") is None
    with pytest.raises(ValueError, match="NUL character"):
        await store.create_session("s\x00", metadata={})
    await _session(store)  # the store is still usable


# --------------------------------------------------------------------------- the event log


def _event(seq: int, kind: str = "round_started", run_id: str | None = "r") -> EventRecord:
    return EventRecord(
        seq=seq,
        type=kind,
        ts=1.5 + seq,
        payload={"round_index": seq, "text": "\u00e9\x00"},
        round_index=seq,
        source="loop",
        run_id=run_id,
    )


async def test_events_ride_along_a_write_and_are_read_in_seq_pages(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    began = await store.begin_run(BeginRun(sid, "r", _claim("a/r")))
    lease = _claim("a/r", fence=began.fence)
    await store.write(
        sid, [Append([UserMessage(content="u")], run_id="r"), RecordEvents([_event(3), _event(1)])], lease=lease
    )
    await store.write(sid, [RecordEvents([_event(2), _event(1)])], lease=lease)  # a stored seq is skipped
    page = await store.read_events(sid, after_seq=0, limit=2)
    assert [e.seq for e in page] == [1, 2]
    assert page[0] == _event(1)  # every field, the payload's NUL and non-ASCII text included
    assert [e.seq for e in await store.read_events(sid, after_seq=2, limit=2)] == [3]
    assert await store.read_events(sid, after_seq=3) == []
    with pytest.raises(SessionNotFoundError):
        await store.read_events("missing")


async def test_events_written_outside_runs_raise_the_high_water_mark(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    offered = await store.append_events({sid: [_event(7, "timer_fired", None)], "gone": [_event(1)]})
    assert offered == 1  # the events of a session that does not exist are dropped
    assert [e.run_id for e in await store.read_events(sid)] == [None]
    began = await store.begin_run(BeginRun(sid, "r", _claim("a/r")))
    assert began.event_seq >= 7  # a run numbers its events above every stored one
    assert [e.seq for e in await store.read_events(sid, run_id="r")] == []


async def test_a_deleted_session_takes_its_events(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    await store.append_events({sid: [_event(1), _event(2)]})
    await _session(store, "other")
    await store.append_events({"other": [_event(1)]})
    await store.delete_session(sid)
    assert [e.seq for e in await store.read_events("other")] == [1]
    await store.create_session(sid)
    assert await store.read_events(sid) == []


async def test_last_run_reports_the_latest_run(store: SessionStoreProtocol) -> None:
    sid = await _session(store)
    assert await store.last_run(sid) is None
    with pytest.raises(SessionNotFoundError):
        await store.last_run("missing")
    for run_id in ("r1", "r2"):
        began = await store.begin_run(BeginRun(sid, run_id, _claim(f"a/{run_id}"), messages=[UserMessage(content="q")]))
        lease = _claim(f"a/{run_id}", fence=began.fence)
        usage = Usage.of_call(prompt_tokens=10, completion_tokens=2)
        call = ToolCall(id=f"c-{run_id}", name="add", arguments="{}")
        ops = [
            Append([AssistantMessage(content="", tool_calls=(call,))], run_id=run_id),
            RecordLLMCall(run_id, 0, usage),
            RecordEvents([_event(10 if run_id == "r1" else 20, run_id=run_id)]),
        ]
        await store.write(sid, ops, lease=lease)
        if run_id == "r1":
            await store.write(
                sid,
                [AnswerPending("[aborted]", run_id), FinishRun(run_id, "completed", totals=RunTotals(rounds=1))],
                lease=lease,
            )
    report = await store.last_run(sid)
    assert report is not None
    assert (report.run_id, report.number, report.kind, report.status, report.ended_at) == (
        "r2",
        2,
        "send",
        "running",
        None,
    )
    assert report.usage["calls"] == 1 and report.usage["total_tokens"] == 12
    assert report.tool_calls == {"pending": 1}
    assert report.pending is not None and [c.tool_call_id for c in report.pending.calls] == ["c-r2"]
    assert report.events_stored == 1 and report.last_message == ""


# --------------------------------------------------------------------------- shared budgets


async def test_budget_holds_see_each_other_settle_and_expire(store: SessionStoreProtocol) -> None:
    from power_loop.store.rows import BudgetClaim, BudgetHold

    claim = BudgetClaim(key="tenant|acme||", window_start=0, tokens_limit=1_000, cost_limit_nano=None)
    ask = BudgetHold(claims=(claim,), prompt_tokens=100, cap=500)
    first, second, third = await store.hold_budgets([ask, ask, ask])  # one transaction, in order
    assert (first.cap, second.cap) == (500, 300)  # the second sees the first's 600 held
    assert third.refused == claim and third.limit == "tokens" and third.spent == 1_000 and third.needed == 101
    await store.settle_budget(first.holds, 150, 0)  # the real usage replaces the hold
    [after] = await store.hold_budgets([ask])
    assert after.cap == 1_000 - 150 - 400 - 100
    await store.settle_budget(second.holds, 0, 0)
    await store.settle_budget(after.holds, 0, 0)
    # A hold whose process died stops counting once it expires.
    [stale] = await store.hold_budgets([BudgetHold(claims=(claim,), prompt_tokens=100, cap=700, ttl_ms=-1)])
    assert stale.cap == 700
    [fresh] = await store.hold_budgets([ask])
    assert fresh.cap == 500
