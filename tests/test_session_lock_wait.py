"""Waiting for a session another run of this process holds: a send cancelled as the session
frees up ends cancelled and leaves the session free (``asyncio.wait_for`` before Python 3.12
returned normally in that race, so the cancelled send went on with its run)."""

from __future__ import annotations

import asyncio

import pytest

from power_loop.engine.runtime import acquire_within


async def test_a_wait_cancelled_as_the_lock_frees_ends_cancelled_and_leaves_it_free() -> None:
    for _ in range(50):  # the race, many times: the lock released and the waiter cancelled together
        lock = asyncio.Lock()
        await lock.acquire()
        waiter = asyncio.ensure_future(acquire_within(lock, 30))
        await asyncio.sleep(0)
        lock.release()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await asyncio.sleep(0)
        assert not lock.locked()
        # And the next caller gets it at once.
        assert await acquire_within(lock, 30) is True
        lock.release()


async def test_a_wait_that_runs_out_reports_it_and_keeps_the_queue_moving() -> None:
    lock = asyncio.Lock()
    await lock.acquire()
    assert await acquire_within(lock, 0.0) is False
    later = asyncio.ensure_future(acquire_within(lock, 30))
    await asyncio.sleep(0)
    lock.release()
    assert await later is True and lock.locked()
    lock.release()
