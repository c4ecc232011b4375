"""Waiting for a session another run of this process holds: a send cancelled as the session
frees up ends cancelled and leaves the session free (``asyncio.wait_for`` before Python 3.12
returned normally in that race, so the cancelled send went on with its run)."""

from __future__ import annotations

import asyncio

import pytest

from power_loop.engine.runtime import SessionLocks, acquire_within
from power_loop.errors import SessionBusyError


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


async def test_a_session_being_handed_to_a_waiter_still_bounds_the_next_wait() -> None:
    # Released to a queued waiter that has not run yet, the lock is not ``locked()``; a send
    # arriving then still waits at most session_wait_s, not for as long as that waiter holds it.
    locks = SessionLocks()
    second_in, second_out = asyncio.Event(), asyncio.Event()

    async def second_send() -> None:
        async with locks.hold("s", timeout=30):
            second_in.set()
            await second_out.wait()

    async def second_leaves_later() -> None:
        await second_in.wait()
        for _ in range(50):  # a zero wait ends within a few iterations: long before this
            await asyncio.sleep(0)
        second_out.set()

    first = locks.hold("s", timeout=30)
    await first.__aenter__()
    second = asyncio.ensure_future(second_send())
    later = asyncio.ensure_future(second_leaves_later())
    for _ in range(3):  # the second send queues on the lock
        await asyncio.sleep(0)
    await first.__aexit__(None, None, None)  # handed to the second send, which has not run yet
    assert not locks.locked("s")
    with pytest.raises(SessionBusyError):
        async with locks.hold("s", timeout=0.0):
            pass
    assert not second_out.is_set()
    await asyncio.gather(second, later)
