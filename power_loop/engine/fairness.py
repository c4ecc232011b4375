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
import threading
import weakref
from collections import deque

__all__ = ["TickGate"]


class _LoopTurns:
    """One event loop's turns: what was granted this iteration and who waits."""

    __slots__ = ("granted", "pump_scheduled", "waiters")

    def __init__(self) -> None:
        # No reference to the loop itself: the gate's map is keyed weakly by it.
        self.granted = 0
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.pump_scheduled = False

    def schedule_pump(self, loop: asyncio.AbstractEventLoop, per_tick: int) -> None:
        if not self.pump_scheduled:
            self.pump_scheduled = True
            loop.call_soon(self.pump, loop, per_tick)

    def pump(self, loop: asyncio.AbstractEventLoop, per_tick: int) -> None:
        """Runs once per iteration while there is demand: a fresh budget, and wake-ups."""
        self.pump_scheduled = False
        self.granted = 0
        while self.waiters and self.granted < per_tick:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.granted += 1
        if self.waiters or self.granted:
            self.schedule_pump(loop, per_tick)


class TickGate:
    """At most ``per_tick`` heavy steps start per event-loop iteration, counted per event loop
    (``send_sync`` from several threads runs one event loop per thread on one loop object)."""

    def __init__(self, per_tick: int = 1) -> None:
        if per_tick < 1:
            raise ValueError("per_tick must be >= 1")
        self.per_tick = per_tick
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopTurns] = weakref.WeakKeyDictionary()
        # The last loop's turns, as one tuple read at once (safe across threads): the common
        # case, one event loop, costs an identity check.
        self._last: tuple[weakref.ref[asyncio.AbstractEventLoop] | None, _LoopTurns | None] = (None, None)
        self._lock = threading.Lock()

    def _turns(self, loop: asyncio.AbstractEventLoop) -> _LoopTurns:
        last_ref, last = self._last
        if last is not None and last_ref is not None and last_ref() is loop:
            return last
        with self._lock:
            turns = self._by_loop.get(loop)
            if turns is None:
                turns = self._by_loop[loop] = _LoopTurns()
        self._last = (weakref.ref(loop), turns)
        return turns

    async def turn(self) -> None:
        """Return when this caller may run its heavy step (at once if the iteration has room)."""
        loop = asyncio.get_running_loop()
        turns = self._turns(loop)
        if not turns.waiters and turns.granted < self.per_tick:
            turns.granted += 1
            turns.schedule_pump(loop, self.per_tick)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        turns.waiters.append(waiter)
        turns.schedule_pump(loop, self.per_tick)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in turns.waiters:
                turns.waiters.remove(waiter)
            raise
