"""The store's jobs on aiosqlite's worker queue, with every aiosqlite release pyproject.toml
allows: the worker thread serves transaction after transaction."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from power_loop import SQLiteSessionStore, open_store
from power_loop.store._sqlite_conn import worker_thread


def _served_from_own_loop(store: SQLiteSessionStore, session_id: str) -> bool:
    """One store call from another event loop (``send_sync`` style); whether it ended. A call
    the worker never serves cannot be cancelled, so this loop is abandoned rather than waited."""
    loop = asyncio.new_event_loop()
    try:
        call = loop.create_task(store.create_session(session_id))
        loop.run_until_complete(asyncio.wait({call}, timeout=30))
        return call.done() and call.exception() is None
    finally:
        loop.close()


async def test_the_worker_thread_outlives_every_transaction(db_path: str) -> None:
    """aiosqlite 0.20 and 0.21 report every queue item into its future, whatever the item:
    a job queued without one used to end the worker thread after the first transaction, and
    every later call hung."""
    store = SQLiteSessionStore(db_path)
    try:
        await store.create_session("s0")  # the first transaction ends either way
        assert store._db is not None
        worker = worker_thread(store._db)
        assert await asyncio.to_thread(_served_from_own_loop, store, "s1")
        await store.create_session("s2")
        sessions = await store.list_sessions()
        assert {s.session_id for s in sessions} == {"s0", "s1", "s2"}
        assert worker.is_alive()
    finally:
        store.close_nowait()  # returns at once when the worker thread has ended


async def test_a_transaction_raising_stop_iteration_fails_instead_of_hanging(shared_db: str) -> None:
    """A future refuses StopIteration: reported as it is, the caller waited forever. On each
    backend it comes back as a RuntimeError (as from a coroutine), the transaction is rolled
    back, and the store goes on serving."""
    store: Any = open_store(shared_db)
    try:
        await store.create_session("s0")

        def half_done(tx: Any) -> None:
            tx.execute("UPDATE sessions SET metadata = '{\"half\": 1}'")
            next(iter(()))  # an exhausted iterator inside a transaction

        call = asyncio.ensure_future(store._call(half_done))
        await asyncio.wait({call}, timeout=30)  # a job cannot be cancelled: no wait_for
        assert call.done(), "the caller was never told how its transaction ended"
        with pytest.raises(RuntimeError, match="StopIteration") as caught:
            call.result()
        assert isinstance(caught.value.__cause__, StopIteration)
        session = await store.get_session_async("s0")
        assert session is not None and session.metadata == {}  # rolled back
    finally:
        await store.close()
