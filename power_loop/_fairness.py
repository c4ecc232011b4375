"""Fair turns for CPU-heavy steps, so bursts of ready runs never stall the event loop.

asyncio runs every callback that is ready at the start of a loop iteration before it looks at
timers or sockets again. When many sessions become ready at once (their store writes finished
together, their responses arrived together) and each then does a few hundred microseconds of
work (building the next provider request, decoding a response, folding it into the history),
one iteration can take tens of milliseconds and everything else on the loop waits.

A :class:`TickGate` bounds the heavy work started in one loop iteration by time: a caller
asks for a turn before a heavy step, and gets it at once while the iteration's heavy steps
have used less than ``budget_s`` (the first turn of an iteration is always granted, so work
always progresses). Past the budget it waits for a later iteration, where timers and I/O of
the rest of the application get their chance first. Work is not reduced, only interleaved:
worst-case loop latency drops to about two iterations of ``budget_s`` plus one step, and
throughput stays, because an iteration still runs as many heavy steps as fit its budget.

Waiters are woken in order by a pump. Their steps run in the next iteration, where a fresh
budget opens ahead of them; a woken waiter that finds the budget spent goes back to the front
of the queue, in its order. The pump wakes as many as passed last time, plus one, so a
backlog drains at the rate the budget allows without waking every waiter every iteration.

One gate serves the whole process (:data:`EVENT_LOOP_GATE`): the engine of every agent loop
and the provider transport share it, since what it protects is the event loop they share.
Turns are counted per event loop (``send_sync`` from several threads runs one event loop per
thread).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections import deque
from time import perf_counter

__all__ = ["DEFAULT_BUDGET_S", "EVENT_LOOP_GATE", "TickGate"]

DEFAULT_BUDGET_S = 0.0005
"""Heavy work one event-loop iteration may start, in seconds (one or two steps of a round)."""

_MAX_WAKE = 64  # waiters the pump wakes for one iteration, at most


class _LoopTurns:
    """One event loop's turns: this iteration's budget and who waits."""

    __slots__ = (
        "granted",
        "open_scheduled",
        "opened",
        "pump_scheduled",
        "requeued",
        "short",
        "wake",
        "waiters",
        "woken",
    )

    def __init__(self) -> None:
        # No reference to the loop itself: the gate's map is keyed weakly by it.
        self.granted = 0  # turns granted in this iteration
        self.opened = 0.0  # perf_counter when this iteration's budget opened
        self.open_scheduled = False  # open_iteration is queued for the next iteration
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.woken = 0  # waiters woken whose step has not run yet
        self.requeued = 0  # woken waiters put back at the front since the last pump
        self.pump_scheduled = False
        self.wake = 1  # waiters the next pump wakes
        self.short = False  # a woken waiter found the budget spent since the last pump

    def open_iteration(self) -> None:
        """Queued ahead of an iteration's steps: a fresh budget."""
        self.open_scheduled = False
        self.granted = 0
        self.opened = perf_counter()

    def may_start(self, loop: asyncio.AbstractEventLoop, budget_s: float) -> bool:
        """Whether a heavy step may start now, in this iteration (counted if so)."""
        if not self.open_scheduled:
            # The first turn since this iteration began: its budget opens now, the next
            # iteration's is queued ahead of that iteration's steps.
            self.open_scheduled = True
            loop.call_soon(self.open_iteration)
            self.granted = 0
            self.opened = perf_counter()
        elif self.granted and perf_counter() - self.opened >= budget_s:
            return False
        self.granted += 1
        return True

    def schedule_pump(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.pump_scheduled:
            self.pump_scheduled = True
            loop.call_soon(self.pump, loop)

    def pump(self, loop: asyncio.AbstractEventLoop) -> None:
        """Runs after the waiters it woke last time: wakes the next ones, in order."""
        self.pump_scheduled = False
        self.requeued = 0
        if self.short:
            self.short = False
        elif self.waiters:
            self.wake = min(_MAX_WAKE, self.wake + 1)  # all woken last time passed: one more
        if not self.waiters:
            return
        if not self.open_scheduled:
            self.open_scheduled = True
            loop.call_soon(self.open_iteration)  # ahead of the steps woken now
        woken = 0
        while self.waiters and woken < self.wake:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken += 1
        self.woken += woken
        self.schedule_pump(loop)  # after the steps woken now

    def put_back(self, waiter: asyncio.Future[None]) -> None:
        """A woken waiter found the budget spent: back to the front, behind those put back
        before it since the last pump; wake only as many as passed next time."""
        self.waiters.insert(self.requeued, waiter)
        self.requeued += 1
        self.short = True
        self.wake = max(1, self.granted)


class TickGate:
    """Heavy steps started in one event-loop iteration take at most about ``budget_s``
    (see the module docs); counted per event loop."""

    def __init__(self, budget_s: float = DEFAULT_BUDGET_S) -> None:
        if budget_s < 0:
            raise ValueError("budget_s must be >= 0")
        self.budget_s = budget_s
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
        if not turns.waiters and not turns.woken and turns.may_start(loop, self.budget_s):
            return
        waiter: asyncio.Future[None] = loop.create_future()
        turns.waiters.append(waiter)
        while True:
            turns.schedule_pump(loop)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter in turns.waiters:
                    turns.waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    turns.woken -= 1  # woken, then cancelled before its step
                raise
            turns.woken -= 1
            if turns.may_start(loop, self.budget_s):
                return
            waiter = loop.create_future()
            turns.put_back(waiter)


EVENT_LOOP_GATE = TickGate()
"""The process's gate: shared by every agent loop's engine and every provider transport, since
what it protects is the event loop they share."""
