"""The PostgreSQL store's lock timeout and failure reporting at its edges: a connection
prepared from its first use, a lock timeout set by the server rather than by the store, and
values and URLs the store cannot take. (A transaction raising what an asyncio future refuses
is tested on both backends in tests/test_worker_jobs.py.)"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from power_loop import PostgresSessionStore, StoreLockedError, open_store
from power_loop.store._pg_schema import lock_key
from power_loop.testing import PostgresSchema


async def test_prepare_threshold_zero_still_configures_every_connection(pg_schema: PostgresSchema) -> None:
    """``prepare_threshold=0`` prepares every statement from its first execution: the
    connection settings must still apply (a prepared statement holds one command only)."""
    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema, prepare_threshold=0, lock_timeout_s=1.5)
    try:
        await store.create_session("s")
        assert await store._call(lambda tx: tx.execute("SHOW lock_timeout").fetchone()) == ("1500ms",)
        assert await store._call(lambda tx: tx.execute("SHOW search_path").fetchone()) == (pg_schema.schema,)
    finally:
        await store.aclose()


@pytest.mark.parametrize("lock_timeout_s", [None, 30.0])
async def test_a_lock_timeout_set_by_the_server_is_reported_as_such(
    pg_schema: PostgresSchema, lock_timeout_s: float | None
) -> None:
    """A lock timeout the store did not set (the URL's ``options``, a role's default) ends
    the schema migration's wait for another process's migration: a StoreLockedError that
    does not claim the store's own ``lock_timeout_s`` ran out."""
    separator = "&" if "?" in pg_schema.url else "?"
    url = f"{pg_schema.url}{separator}options=-c%20lock_timeout%3D100"
    store = PostgresSessionStore(url, schema=pg_schema.schema, lock_timeout_s=lock_timeout_s)
    try:
        with psycopg.connect(pg_schema.url) as migrating:  # another process in its migration
            migrating.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(pg_schema.schema),))
            call = asyncio.ensure_future(store.get_session_async("s"))
            await asyncio.wait({call}, timeout=30)
            assert call.done()
            with pytest.raises(StoreLockedError) as caught:
                call.result()
        assert "lock_timeout_s (" not in str(caught.value)
        assert await store.get_session_async("s") is None  # the lock is free: it opens
    finally:
        await store.aclose()


@pytest.mark.parametrize("lock_timeout_s", [float("inf"), 3e6, float("nan"), -1.0])
def test_a_lock_timeout_postgresql_cannot_take_is_refused_at_once(lock_timeout_s: float) -> None:
    """PostgreSQL's ``lock_timeout`` is at most 2147483647 ms (about 24.8 days): a larger
    one is refused when the store is made, not later as a connection that cannot be set up
    (a pool that "cannot connect" after ``connect_timeout_s``)."""
    with pytest.raises(ValueError, match="lock_timeout_s"):
        PostgresSessionStore("postgresql://db/agents", lock_timeout_s=lock_timeout_s)


async def test_the_largest_lock_timeout_is_accepted(pg_schema: PostgresSchema) -> None:
    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema, lock_timeout_s=2_147_483.647)
    try:
        assert await store._call(lambda tx: tx.execute("SHOW lock_timeout").fetchone()) == ("2147483647ms",)
    finally:
        await store.aclose()


async def test_settings_survive_a_reconnection_and_reach_the_sync_twins(pg_schema: PostgresSchema) -> None:
    """A pooled connection the server dropped is replaced by one configured like it; the
    blocking twins run on the same pool, under the same settings."""
    store = PostgresSessionStore(pg_schema.url, schema=pg_schema.schema, lock_timeout_s=1.5, max_size=2)
    try:
        await store.create_session("s")
        with psycopg.connect(pg_schema.url, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database() AND backend_type = 'client backend'"
            ).fetchall()
            assert (True,) in killed
        for _ in range(4):  # every connection of the pool, the replacements included
            assert await store.get_session_async("s") is not None
            assert await store._call(lambda tx: tx.execute("SHOW lock_timeout").fetchone()) == ("1500ms",)
        shown = await asyncio.to_thread(store._call_sync, lambda tx: tx.execute("SHOW lock_timeout").fetchone())
        assert shown == ("1500ms",)
    finally:
        await store.aclose()


def test_a_store_option_in_the_url_is_refused_by_open_store(pg_schema: PostgresSchema) -> None:
    """Only ``schema=`` is the store's in a URL; libpq refuses any other at the first
    connection as an unknown parameter. ``open_store`` says so at once, naming the keyword."""
    separator = "&" if "?" in pg_schema.url else "?"
    with pytest.raises(ValueError, match=r"open_store\(url, lock_timeout_s=\.\.\.\)"):
        open_store(f"{pg_schema.url}{separator}lock_timeout_s=5&schema={pg_schema.schema}")
    store = open_store(f"{pg_schema.url}{separator}schema={pg_schema.schema}", lock_timeout_s=5)
    assert isinstance(store, PostgresSessionStore) and store.lock_timeout_s == 5
