"""The timer runner's waits never lose a cancellation (``asyncio.wait_for`` before Python 3.12
returns normally when its wait ends in the iteration the task is cancelled: a stopping runner
then went on scanning and ``stop()`` never returned)."""

from __future__ import annotations

import asyncio

import pytest

from power_loop.timers.runner import wait_event


async def test_a_wait_cancelled_as_its_event_is_set_still_ends_cancelled() -> None:
    for _ in range(50):  # the race, many times: the event set and the task cancelled together
        event = asyncio.Event()
        task = asyncio.ensure_future(wait_event(event, 30))
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_wait_ends_when_its_event_is_set_or_its_time_is_up() -> None:
    event = asyncio.Event()
    waiting = asyncio.ensure_future(wait_event(event, 30))
    await asyncio.sleep(0)
    assert not waiting.done()
    event.set()
    await waiting
    await wait_event(asyncio.Event(), 0)  # nothing set: back after the timeout
