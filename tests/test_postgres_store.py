"""What is particular to the PostgreSQL store: URLs and options, the schema and its migration,
dead connections, clear errors. (The rules themselves are the contract suite's.)"""

from __future__ import annotations

import asyncio
import logging
import threading

import psycopg
import pytest

from power_loop import (
    PostgresSessionStore,
    SchemaVersionError,
    SQLiteSessionStore,
    StatefulAgentLoop,
    StoreConnectionError,
    open_store,
)
from power_loop.store.postgres import redact_url
from power_loop.store.protocols import Delivery
from power_loop.testing import PostgresSchema, ScriptedLLM, text_reply


def with_schema(target: PostgresSchema) -> str:
    return f"{target.url}{'&' if '?' in target.url else '?'}schema={target.schema}"


def test_open_store_picks_the_backend_from_the_url(tmp_path: object, pg_schema: PostgresSchema) -> None:
    pg = open_store(with_schema(pg_schema))
    assert isinstance(pg, PostgresSessionStore) and pg.schema == pg_schema.schema
    assert "schema=" not in pg.url  # ours, not passed on to the server
    assert open_store(pg_schema.url, schema="other").schema == "other"  # type: ignore[attr-defined]
    assert isinstance(open_store(f"sqlite:///{tmp_path}/a.db"), SQLiteSessionStore)
    assert isinstance(open_store(f"{tmp_path}/b.db"), SQLiteSessionStore)
    with pytest.raises(ValueError, match="unknown database URL scheme 'mysql'"):
        open_store("mysql://x/y")
    with pytest.raises(ValueError, match="take no option"):
        open_store(pg_schema.url, busy_timeout_s=1)
    with pytest.raises(ValueError, match="schema must be a lower-case identifier"):
        PostgresSessionStore(pg_schema.url, schema='x"; DROP TABLE sessions; --')


def test_passwords_stay_out_of_messages() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/agents") == "postgresql://app:***@db:5432/agents"
    store = PostgresSessionStore("postgresql://app:s3cret@db:5432/agents")
    assert "s3cret" not in repr(store) and "s3cret" not in store.path
    # libpq key=value strings and URL parameters carry passwords too
    assert redact_url("host=db dbname=agents password=s3cret user=app") == "host=db dbname=agents password=*** user=app"
    assert redact_url("host=db password='s3 cret' user=app") == "host=db password=*** user=app"
    assert redact_url("postgresql://db/agents?user=app&password=s3cret&sslmode=require") == (
        "postgresql://db/agents?user=app&password=***&sslmode=require"
    )


async def test_an_unreachable_key_value_store_hides_its_password(tmp_path: object) -> None:
    store = PostgresSessionStore(f"host={tmp_path} port=1 dbname=db user=nobody password=s3cret", connect_timeout_s=2)
    with pytest.raises(StoreConnectionError) as caught:
        await store.get_session_async("s")
    assert "s3cret" not in str(caught.value) and "password=***" in str(caught.value)


async def test_an_unreachable_server_is_one_clear_error(tmp_path: object) -> None:
    store = PostgresSessionStore(f"postgresql://nobody:pw@/db?host={tmp_path}&port=1", connect_timeout_s=2)
    with pytest.raises(StoreConnectionError, match=r"cannot connect to PostgreSQL at postgresql://nobody:\*\*\*@/db"):
        await store.get_session_async("s")


async def test_processes_starting_at_once_migrate_once(pg_schema: PostgresSchema) -> None:
    stores = [PostgresSessionStore(pg_schema.url, schema=pg_schema.schema) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def open_at_once(store: PostgresSessionStore) -> None:
        barrier.wait()
        store._call_sync(lambda c: None)  # connects and migrates, in its own thread

    await asyncio.gather(*(asyncio.to_thread(open_at_once, s) for s in stores))
    with psycopg.connect(pg_schema.url) as conn:
        rows = conn.execute(f'SELECT version FROM "{pg_schema.schema}".power_loop_schema').fetchall()
    assert len(rows) == 1
    for store in stores:
        await store.aclose()


async def test_a_schema_from_a_newer_version_is_refused(pg_schema: PostgresSchema) -> None:
    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema)
    await store.open()
    await store.aclose()
    with psycopg.connect(pg_schema.url, autocommit=True) as conn:
        conn.execute(f'UPDATE "{pg_schema.schema}".power_loop_schema SET version = 999')
    with pytest.raises(SchemaVersionError, match="version 999"):
        await PostgresSessionStore(pg_schema.url, schema=pg_schema.schema).open()


async def test_dead_connections_are_replaced_without_failing_a_call(pg_schema: PostgresSchema) -> None:
    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema, min_size=3, max_size=3)
    llm = ScriptedLLM(rule=lambda r: text_reply("ok"))
    async with StatefulAgentLoop(llm=llm, store=store) as loop:
        sid = await loop.new_session_async()
        await asyncio.gather(*(loop.send(f"m{i}", session_id=sid) for i in range(3)))
        with psycopg.connect(pg_schema.url, autocommit=True) as conn:  # as a server restart would
            killed = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' AND datname = current_database()"
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        result = await loop.send("after the restart", session_id=sid)
        assert result.status == "completed"
        assert len(await loop.get_messages_async(sid)) == 8
    await store.aclose()


def test_sync_twins_work_on_postgresql(pg_schema: PostgresSchema) -> None:
    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema)
    store.create_session_sync("s", metadata={"tenant": "t1"})
    assert store.get_session("s").metadata == {"tenant": "t1"}  # type: ignore[union-attr]
    store.set_runtime_state("s", "todo", ["x"])
    assert store.get_runtime_state("s", "todo") == ["x"]
    assert [r.timer_id for r in [store.schedule_timer_sync("s", due_at=1, note="n")]] == [1]
    store.close_nowait()


async def test_a_full_pool_and_a_closed_store_are_clear_errors(pg_schema: PostgresSchema) -> None:
    from power_loop import StoreError, StoreLockedError

    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema, max_size=1, connect_timeout_s=1)
    await store.create_session("s")
    pool = store._ensure_open()
    # The only connection is held elsewhere.
    with pool.connection(), pytest.raises(StoreLockedError, match="no free PostgreSQL connection"):
        await asyncio.to_thread(store.get_session, "s")
    await store.aclose()
    with pytest.raises(StoreError, match="is closed"):
        await store.get_session_async("s")


async def test_a_schema_it_cannot_create_is_a_store_error(pg_schema: PostgresSchema) -> None:
    from power_loop import StoreError

    with psycopg.connect(pg_schema.url, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{pg_schema.schema}".sessions (x int)')  # someone else's table
    with pytest.raises(StoreError, match="PostgreSQL error"):
        await PostgresSessionStore(pg_schema.url, schema=pg_schema.schema).open()


def test_other_url_parameters_pass_through_unchanged(pg_schema: PostgresSchema) -> None:
    url = f"{pg_schema.url}&options=-c%20statement_timeout%3D5000&schema=fx"
    store = open_store(url)
    assert isinstance(store, PostgresSessionStore) and store.schema == "fx"
    assert "options=-c%20statement_timeout%3D5000" in store.url


async def test_timer_batches_are_applied_set_based_and_a_failing_one_timer_by_timer(
    pg_schema: PostgresSchema, caplog: pytest.LogCaptureFixture
) -> None:
    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema)
    for due, sid in enumerate(("a", "b"), start=1):
        await store.create_session(sid)
        for n in range(3):
            await store.schedule_timer(sid, due_at=due, note=f"{sid}{n}")
    first = await store.claim_due_timers("r", lease_ms=60_000, limit=3)
    assert sorted(t.note for t in first) == ["a0", "a1", "a2"]
    with caplog.at_level(logging.WARNING, logger="power_loop.store"):
        outcomes = await store.deliver_timers("r", [Delivery(t, "deliver", t.note) for t in first])
    assert [o for o, _ in outcomes] == ["delivered"] * 3 and not caplog.records  # no fallback taken
    # A fault below the store refuses one wake-up message: the batch is undone and applied
    # timer by timer, so only that timer fails (its claim is handed back by the runner).
    with psycopg.connect(pg_schema.url, autocommit=True) as conn:
        conn.execute(f'SET search_path TO "{pg_schema.schema}"')
        conn.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN IF NEW.body LIKE '%b1%' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON inbox FOR EACH ROW EXECUTE FUNCTION refuse()")
    rest = await store.claim_due_timers("r", lease_ms=60_000, limit=10)
    with caplog.at_level(logging.WARNING, logger="power_loop.store"):
        outcomes = await store.deliver_timers("r", [Delivery(t, "deliver", t.note) for t in rest])
    assert {t.note: o for t, (o, _) in zip(rest, outcomes, strict=True)} == {
        "b0": "delivered",
        "b1": "error",
        "b2": "delivered",
    }
    assert "applying them one by one" in caplog.text
    [left] = await store.list_timers("b", statuses=("claimed",))
    assert left.note == "b1"
    await store.aclose()


async def test_a_follow_up_waits_for_a_finishing_run_instead_of_slipping_past_it(pg_schema: PostgresSchema) -> None:
    """A run's end holds the session row until it commits; a follow-up queued meanwhile must see
    that end (and be told to send instead), never be stored for a run that already looked."""
    from power_loop.store.rows import BeginRun, LeaseClaim

    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema)
    await store.create_session("s")
    began = await store.begin_run(BeginRun("s", "r", LeaseClaim(owner="a/r", ttl_ms=60_000)))
    assert began.status == "ok"
    with psycopg.connect(pg_schema.url) as finishing:  # a run's end, not committed yet
        finishing.execute(f'SET search_path TO "{pg_schema.schema}"')
        finishing.execute("UPDATE sessions SET lease_owner = NULL, lease_expires_at = 0 WHERE session_id = 's'")
        queued = asyncio.ensure_future(store.enqueue("s", "one more thing", only_if_busy=True))
        with psycopg.connect(pg_schema.url, autocommit=True) as watcher:
            while not watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()[0]:  # type: ignore[index]
                assert not queued.done(), "the follow-up did not wait for the finishing run"
                await asyncio.sleep(0.01)
        finishing.commit()
    assert await queued is None  # the session is idle now: the caller sends it itself
    assert await store.inbox_depth("s") == 0
    await store.aclose()


async def test_a_row_locked_too_long_is_a_clear_error_not_a_hang(pg_schema: PostgresSchema) -> None:
    """A connection that keeps a session's row locked (a process stopped inside a
    transaction) makes another store call wait ``lock_timeout_s``, then fail with
    StoreLockedError, rolled back; once the row is free the same call succeeds."""
    from power_loop import StoreLockedError

    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema, lock_timeout_s=0.2)
    try:
        await store.create_session("s")
        with psycopg.connect(pg_schema.url) as holder:  # a transaction left open
            holder.execute(f'SELECT 1 FROM "{pg_schema.schema}".sessions WHERE session_id = %s FOR UPDATE', ("s",))
            call = asyncio.ensure_future(store.delete_session("s"))
            await asyncio.wait({call}, timeout=30)
            assert call.done(), "the call waited for the lock without limit"
            with pytest.raises(StoreLockedError, match="lock_timeout_s"):
                call.result()
        assert await store.get_session_async("s") is not None  # nothing of it was committed
        assert await store.delete_session("s") == 1
    finally:
        await store.aclose()


@pytest.mark.parametrize("pooler", [False, True])
async def test_the_lock_timeout_is_set_on_every_connection(pg_schema: PostgresSchema, pooler: bool) -> None:
    """Directly connected, each pooled connection is configured once; behind a transaction
    pooler every transaction sets it (and the schema) for itself."""
    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema, lock_timeout_s=1.5, transaction_pooler=pooler)
    try:
        seen = await store._call(lambda tx: tx.execute("SHOW lock_timeout").fetchone())
        assert seen == ("1500ms",)
        unlimited = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema, lock_timeout_s=None)
        try:
            assert await unlimited._call(lambda tx: tx.execute("SHOW lock_timeout").fetchone()) == ("0",)
        finally:
            await unlimited.aclose()
    finally:
        await store.aclose()
    with pytest.raises(ValueError, match="lock_timeout_s"):
        PostgresSessionStore(pg_schema.url, lock_timeout_s=0)
