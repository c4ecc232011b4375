"""Admission control: how many runs of a loop go on at once, and how fast they call the model.

Two independent limits, both per loop and both off unless configured
(``AgentLoopConfig.max_concurrent_runs``, ``AgentLoopConfig.rate_limit``):

* :class:`RunSlots`: at most ``limit`` runs hold a slot. A run asks for one after the
  in-process session lock and before its begin transaction, so a waiting run holds no session
  lease (another process may take the session meanwhile). Waiters are served highest priority
  first, first come first served within one priority. A run started from inside the task of a
  run holding a slot (a foreground sub-agent, a tool's ``ctx.loop.send``) shares that slot
  instead of queueing behind it, which would deadlock once every slot is taken by runs waiting
  for their children. ``wake`` runs (background sub-agents, parents woken by an answer, timer
  wake-ups) are tasks of their own that may outlive the run that started them: they always
  queue for a slot of their own.
* :class:`RateLimiter`: every model request (each attempt of a retried call included) takes a
  request from a token bucket of capacity ``burst`` refilled at ``requests_per_s``, and
  reserves its estimated tokens (prompt estimate plus completion cap) from a bucket of
  capacity ``tokens_per_min`` refilled at ``tokens_per_min / 60`` a second. Waiters are served
  first come first served; only the first sleeps, so a long queue costs one timer. Tokens
  are taken at the moment the request starts (never ahead of time), so a stalled event loop
  cannot release a bunch of requests at once.

Invariants:

* With no limit configured, :class:`Admission` holds None for both and the engine does one
  attribute test per run and per model call: no lock, no await.
* A waiter that is cancelled (its task, or its stop signal) leaves its queue at once; a slot or
  a turn granted to it in the same instant is passed on to the next waiter.
* Both limits are thread-safe (``send_sync`` may run several event loops at once): state is
  changed under a ``threading.Lock`` held for a few statements, never across an await, and a
  waiter of another event loop is woken through that loop.

The one piece of task-local state is :data:`_HOLDER`, the slots whose slot the current task's
run holds: asyncio copies it into the tasks a run starts (its tool calls), which is how a
nested run recognizes that its caller holds a slot.
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from ..cancellation import StopSignal
from ..compaction import estimate_text_tokens, estimate_tokens
from ..config import AgentLoopConfig, PriorityKey, RateClock, RateLimit
from ..errors import CancellationRequested
from ..providers.base import LLMRequest, LLMResponse, LLMService, StreamCallbacks
from ..store.protocols import SessionAdmin

__all__ = ["Admission", "AdmissionView", "RateLimiter", "RunSlots", "metered"]

log = logging.getLogger("power_loop.engine")

_HOLDER: ContextVar[RunSlots | None] = ContextVar("power_loop_admission_holder", default=None)


def _wake(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` from any thread (through its own event loop when that is another)."""
    loop = fut.get_loop()
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is running:
        if not fut.done():
            fut.set_result(None)
    elif not loop.is_closed():
        loop.call_soon_threadsafe(_resolve, fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# ---------------------------------------------------------------------------- run slots


class _SlotWaiter:
    __slots__ = ("future", "granted", "gone")

    def __init__(self, future: asyncio.Future[None]) -> None:
        self.future = future
        self.granted = False
        self.gone = False


class RunSlots:
    """At most ``limit`` runs at once; the others wait, by priority then arrival.

    Args:
        limit: The number of slots.
        priority_key: The waiters' order (see ``AgentLoopConfig.priority_key``); None:
            arrival only.
    """

    def __init__(self, limit: int, priority_key: PriorityKey | None = None) -> None:
        self.limit = limit
        self.priority_key = priority_key
        self.running = 0
        self._lock = threading.Lock()
        self._heap: list[tuple[float, int, _SlotWaiter]] = []
        self._queued = 0  # waiters in the heap that are still waiting
        self._reading = 0  # arrivals reading their priority (not yet in the heap)
        self._arrivals = itertools.count()

    @property
    def waiting(self) -> int:
        """Runs waiting for a slot."""
        return self._queued + self._reading

    def take_now(self) -> bool:
        """Take a slot if one is free and nobody waits for it."""
        with self._lock:
            if self.running < self.limit and not self._queued and not self._reading:
                self.running += 1
                return True
        return False

    async def wait(self, session_id: str, stop: StopSignal, store: SessionAdmin) -> bool:
        """Wait for a slot. True once it is held (release it with :meth:`release`); False when
        ``stop`` fired first (no slot is held). Cancelling the waiting task leaves the queue."""
        with self._lock:
            arrival = next(self._arrivals)
            self._reading += 1
        try:
            priority = await self._priority(session_id, store) if self.priority_key is not None else 0.0
        except BaseException:
            with self._lock:
                self._reading -= 1
                self._pump()
            raise
        waiter = _SlotWaiter(asyncio.get_running_loop().create_future())
        with self._lock:
            self._reading -= 1
            self._queued += 1
            heapq.heappush(self._heap, (-priority, arrival, waiter))
            self._pump()
        try:
            if stop.active:
                await stop.run(waiter.future)
            else:
                await waiter.future
        except BaseException as exc:
            with self._lock:
                if waiter.granted:
                    self.running -= 1  # granted as we left: the slot goes to the next waiter
                else:
                    waiter.gone = True
                    self._queued -= 1
                self._pump()
            if isinstance(exc, CancellationRequested):
                return False
            raise
        return True

    def release(self) -> None:
        """Give a slot back (to the next waiter, if any)."""
        with self._lock:
            self.running -= 1
            self._pump()

    def _pump(self) -> None:
        """Grant free slots to waiters (under the lock)."""
        while self.running < self.limit and self._heap:
            _, _, waiter = heapq.heappop(self._heap)
            if waiter.gone:
                continue
            waiter.granted = True
            self._queued -= 1
            self.running += 1
            _wake(waiter.future)

    async def _priority(self, session_id: str, store: SessionAdmin) -> float:
        """The waiting run's priority, from its session's metadata (a read: no lease taken)."""
        row = await store.get_session_async(session_id)
        metadata: Mapping[str, Any] = row.metadata if row is not None else {}
        key = self.priority_key
        if isinstance(key, str):
            value = metadata.get(key)
            if value is None:
                return 0.0
            if _is_number(value):
                return float(value)
            log.warning(
                "session %s: metadata %r is %r, not a number; its runs wait with priority 0", session_id, key, value
            )
            return 0.0
        assert key is not None
        value = key(session_id, dict(metadata))
        if inspect.isawaitable(value):
            value = await value
        if not _is_number(value):
            raise TypeError(
                f"AgentLoopConfig.priority_key returned {value!r} for session {session_id!r}; it must return a number"
            )
        return float(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


# ---------------------------------------------------------------------------- rate limiter


class _MonotonicClock:
    """``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class _Bucket:
    """A token bucket: ``capacity`` at most, refilled at ``rate`` a second."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.stamp = now

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def shortfall_s(self, need: float) -> float:
        """Seconds until ``need`` is in the bucket (0: it is). At least a microsecond when it is
        not: a shortfall of a rounding error must still move a clock forward."""
        return 0.0 if self.level >= need else max((need - self.level) / self.rate, 1e-6)


@dataclass(frozen=True)
class _Permit:
    """One request's place: the tokens it reserved."""

    tokens: int


class _RateWaiter:
    __slots__ = ("poke", "turn")

    def __init__(self, turn: asyncio.Future[None]) -> None:
        self.turn = turn
        self.poke: asyncio.Future[None] | None = None


class RateLimiter:
    """The pace of one loop's model requests (see :class:`~power_loop.RateLimit`)."""

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit
        self.clock: RateClock = limit.clock if limit.clock is not None else _MonotonicClock()
        now = self.clock.now()
        rps, tpm = limit.requests_per_s, limit.tokens_per_min
        self._requests = _Bucket(float(rps), float(limit.burst), now) if rps is not None else None
        self._tokens = _Bucket(tpm / 60.0, float(tpm), now) if tpm is not None else None
        self._lock = threading.Lock()
        self._queue: deque[_RateWaiter] = deque()

    @property
    def meters_tokens(self) -> bool:
        """True when requests reserve tokens (``tokens_per_min`` is set)."""
        return self._tokens is not None

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return len(self._queue)

    def take_now(self, tokens: int) -> _Permit | None:
        """A request's permit if it may start now and nobody waits before it."""
        with self._lock:
            if not self._queue and self._take(tokens) == 0.0:
                return _Permit(tokens)
        return None

    async def acquire(self, tokens: int) -> _Permit:
        """Wait for a request's turn (first come first served); the permit reserves ``tokens``."""
        loop = asyncio.get_running_loop()
        waiter = _RateWaiter(loop.create_future())
        with self._lock:
            if not self._queue and self._take(tokens) == 0.0:
                return _Permit(tokens)
            self._queue.append(waiter)
            if self._queue[0] is waiter:
                waiter.turn.set_result(None)
        try:
            await waiter.turn
            while True:
                with self._lock:
                    wait = self._take(tokens)
                    if wait == 0.0:
                        self._queue.popleft()  # this waiter: only the first one takes
                        if self._queue:
                            _wake(self._queue[0].turn)
                        return _Permit(tokens)
                    poke = waiter.poke = loop.create_future()
                await self._nap(wait, poke)
        except BaseException:
            with self._lock:
                first = bool(self._queue) and self._queue[0] is waiter
                if waiter in self._queue:
                    self._queue.remove(waiter)
                if first and self._queue:
                    _wake(self._queue[0].turn)
            raise

    def settle(self, permit: _Permit, used: int) -> None:
        """Correct a permit's reservation to the tokens its request used (0: unknown, kept)."""
        bucket = self._tokens
        if bucket is None or used <= 0 or used == permit.tokens:
            return
        with self._lock:
            bucket.refill(self.clock.now())
            bucket.level = min(bucket.capacity, bucket.level + permit.tokens - used)
            if used < permit.tokens and self._queue:
                poke = self._queue[0].poke
                if poke is not None:
                    _wake(poke)  # the first waiter may not need to sleep that long any more

    def _take(self, tokens: int) -> float:
        """Take a request and ``tokens`` if both are there (0.0), else the seconds to wait
        (under the lock). A reservation larger than the token bucket waits for a full bucket
        and overdraws it."""
        now = self.clock.now()
        wait = 0.0
        requests, token_bucket = self._requests, self._tokens
        if requests is not None:
            requests.refill(now)
            wait = requests.shortfall_s(1.0)
        if token_bucket is not None:
            token_bucket.refill(now)
            wait = max(wait, token_bucket.shortfall_s(min(float(tokens), token_bucket.capacity)))
        if wait > 0.0:
            return wait
        if requests is not None:
            requests.level -= 1.0
        if token_bucket is not None:
            token_bucket.level -= tokens
        return 0.0

    async def _nap(self, seconds: float, poke: asyncio.Future[None]) -> None:
        """Sleep ``seconds`` on the clock, or until poked."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait((sleeper, poke), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not sleeper.done():
                sleeper.cancel()
                await asyncio.wait((sleeper,))


def request_tokens(request: LLMRequest) -> int:
    """What a request reserves: its estimated prompt tokens plus its completion cap."""
    prompt = estimate_text_tokens(request.system_prompt) + estimate_tokens(request.messages)
    return prompt + (request.max_tokens or 0)


class _MeteredLLM:
    """The provider as the retry layer sees it under a rate limit: every request (each attempt)
    takes a permit; the first one was taken before the call started."""

    def __init__(self, llm: LLMService, limiter: RateLimiter, tokens: int, first: _Permit) -> None:
        self._llm = llm
        self._limiter = limiter
        self._tokens = tokens
        self._first: _Permit | None = first
        self.provider: str = getattr(llm, "provider", "")
        self.model: str = getattr(llm, "model", "")
        self.max_retries: int = getattr(llm, "max_retries", 0)
        self.context_window: int | None = getattr(llm, "context_window", None)

    async def complete(self, request: LLMRequest, *, callbacks: StreamCallbacks | None = None) -> LLMResponse:
        """One request, once the limiter lets it start."""
        permit, self._first = self._first, None
        if permit is None:  # a retry: its wait counts in the retry policy's total_timeout
            limiter = self._limiter
            permit = limiter.take_now(self._tokens) or await limiter.acquire(self._tokens)
        response = await self._llm.complete(request, callbacks=callbacks)
        usage = response.usage
        self._limiter.settle(permit, usage.total_tokens or usage.prompt_tokens + usage.completion_tokens)
        return response


async def metered(limiter: RateLimiter, llm: LLMService, request: LLMRequest, stop: StopSignal) -> LLMService:
    """``llm`` under ``limiter`` for one logical call of ``request``: waits for the first
    request's turn (the stop signal ends the wait), before the retry policy's clock starts.

    Raises:
        CancellationRequested: ``stop`` fired while waiting.
    """
    tokens = request_tokens(request) if limiter.meters_tokens else 0
    first = limiter.take_now(tokens)
    if first is None:
        first = await stop.run(limiter.acquire(tokens))
    return _MeteredLLM(llm, limiter, tokens, first)


# ---------------------------------------------------------------------------- the loop's admission


class Admission:
    """A loop's limits: run slots and the model-request limiter (either None when unset)."""

    def __init__(self, slots: RunSlots | None = None, limiter: RateLimiter | None = None) -> None:
        self.slots = slots
        self.limiter = limiter

    @classmethod
    def from_config(cls, config: AgentLoopConfig) -> Admission:
        """The limits ``config`` asks for."""
        slots = RunSlots(config.max_concurrent_runs, config.priority_key) if config.max_concurrent_runs else None
        limiter = RateLimiter(config.rate_limit) if config.rate_limit is not None else None
        return cls(slots, limiter)

    def shares_slot(self, kind: str) -> bool:
        """True when a run of ``kind`` started here runs on its caller's slot: the current task
        belongs to a run holding one of these slots, and the new run is no ``wake`` (a task of
        its own, which may outlive its starter)."""
        return kind != "wake" and self.slots is not None and _HOLDER.get() is self.slots

    @asynccontextmanager
    async def slot(self, session_id: str, stop: StopSignal, store: SessionAdmin) -> AsyncIterator[bool]:
        """Hold a run slot for the body; yields False when the stop signal fired while waiting
        (the run goes on without a slot, to record its cancellation)."""
        slots = self.slots
        assert slots is not None
        held = slots.take_now()
        if not held and not stop.is_set():
            held = await slots.wait(session_id, stop, store)
        if not held:
            yield False
            return
        token = _HOLDER.set(slots)
        try:
            yield True
        finally:
            _HOLDER.reset(token)
            slots.release()


class AdmissionView:
    """What waits for a loop's limits (``loop.admission``): read-only, live counts.

    Args:
        admission: The loop's limits.
    """

    def __init__(self, admission: Admission) -> None:
        self._admission = admission

    @property
    def max_concurrent_runs(self) -> int | None:
        """The slot count (None: no limit)."""
        slots = self._admission.slots
        return slots.limit if slots is not None else None

    @property
    def running(self) -> int:
        """Runs holding a slot (0 without ``max_concurrent_runs``; runs sharing their caller's
        slot are not counted)."""
        slots = self._admission.slots
        return slots.running if slots is not None else 0

    @property
    def waiting(self) -> int:
        """Runs waiting for a slot."""
        slots = self._admission.slots
        return slots.waiting if slots is not None else 0

    @property
    def requests_waiting(self) -> int:
        """Model requests waiting for the rate limit."""
        limiter = self._admission.limiter
        return limiter.waiting if limiter is not None else 0

    def __repr__(self) -> str:
        return (
            f"AdmissionView(running={self.running}, waiting={self.waiting}, "
            f"max_concurrent_runs={self.max_concurrent_runs}, requests_waiting={self.requests_waiting})"
        )
