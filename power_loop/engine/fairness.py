"""Fair turns for CPU-heavy steps, so bursts of ready runs never stall the event loop.

asyncio runs every callback that is ready at the start of a loop iteration before it looks at
timers or sockets again. When many sessions become ready at once (their store writes finished
together, their responses arrived together) and each then does a few hundred microseconds of
work (building the next provider request, folding a response into the history), one
iteration can take tens of milliseconds and everything else on the loop waits.

A :class:`TickGate` hands out at most ``per_tick`` turns per loop iteration. A run asks for a
turn before a heavy step; when the iteration's turns are used up it waits for the next
iteration, where timers and I/O of the rest of the application get their chance first. Work
is not reduced, only interleaved: throughput stays the same, worst-case loop latency drops.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["TickGate"]


class TickGate:
    """At most ``per_tick`` heavy steps start per event-loop iteration (per loop)."""

    def __init__(self, per_tick: int = 1) -> None:
        if per_tick < 1:
            raise ValueError("per_tick must be >= 1")
        self.per_tick = per_tick
        self._loop: asyncio.AbstractEventLoop | None = None
        self._granted = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._pump_scheduled = False

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (send_sync): start afresh
            self._loop = loop
            self._granted = 0
            self._waiters.clear()
            self._pump_scheduled = False
        return loop

    async def turn(self) -> None:
        """Return when this caller may run its heavy step (at once if the iteration has room)."""
        loop = self._bind()
        if not self._waiters and self._granted < self.per_tick:
            self._granted += 1
            self._schedule_pump(loop)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        self._schedule_pump(loop)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _schedule_pump(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Runs once per iteration while there is demand: a fresh budget, and wake-ups."""
        self._pump_scheduled = False
        self._granted = 0
        while self._waiters and self._granted < self.per_tick:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._granted += 1
        if self._waiters or self._granted:
            assert self._loop is not None
            self._schedule_pump(self._loop)
