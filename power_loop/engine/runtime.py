"""What a run needs from its loop, passed explicitly (no globals)."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .._fairness import EVENT_LOOP_GATE, TickGate
from ..compaction import Compactor
from ..config import AgentLoopConfig
from ..errors import SessionBusyError
from ..events import AgentEventBus
from ..hooks import AgentHooks
from ..providers.base import LLMService
from ..store.protocols import SessionStoreProtocol
from ..tools.context import AgentLoopHandle, ToolCapabilities
from ..tools.registry import ToolRegistry
from ..tools.threads import ToolThreads
from .admission import Admission
from .capabilities import TimerSignal, tool_capabilities
from .eventlog import EventLog
from .history import HistoryCache

__all__ = ["Runtime", "SessionLocks", "acquire_within"]


async def acquire_within(lock: asyncio.Lock, timeout: float) -> bool:
    """Acquire ``lock`` within ``timeout`` seconds; False when it stayed held that long.

    Never loses a cancellation and never leaves the lock held by a caller that did not get it
    back: ``asyncio.wait_for`` before Python 3.12 returns normally when the lock is granted in
    the iteration the caller is cancelled, so a cancelled send went on with its run.
    """
    acquiring = asyncio.ensure_future(lock.acquire())
    try:
        await asyncio.wait((acquiring,), timeout=timeout)
    except asyncio.CancelledError:
        if acquiring.done() and not acquiring.cancelled():
            lock.release()  # granted as the caller was cancelled: pass it on
        else:
            acquiring.cancel()  # a cancelled acquire hands a pending grant to the next waiter
        raise
    if acquiring.done() and not acquiring.cancelled():
        return True
    acquiring.cancel()
    return False


class SessionLocks:
    """One ``asyncio.Lock`` per session and event loop: same-session runs in one process
    queue here before they ever touch the store's lease."""

    def __init__(self) -> None:
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
            weakref.WeakKeyDictionary()
        )

    def _lock(self, session_id: str) -> asyncio.Lock:
        locks = self._by_loop.setdefault(asyncio.get_running_loop(), {})
        lock = locks.get(session_id)
        if lock is None:
            lock = locks[session_id] = asyncio.Lock()
        return lock

    def locked(self, session_id: str) -> bool:
        """True while a run of this process holds the session."""
        locks = self._by_loop.get(asyncio.get_running_loop(), {})
        lock = locks.get(session_id)
        return lock is not None and lock.locked()

    def hold(self, session_id: str, *, timeout: float) -> _SessionHold:
        """Hold the session's lock: ``async with locks.hold(sid, timeout=t) as time_left``,
        where ``time_left`` is the seconds left of ``timeout``.

        Raises:
            SessionBusyError: Another run of this process kept the session longer than ``timeout``.
        """
        return _SessionHold(self, session_id, timeout)


class _SessionHold:
    """The context manager of :meth:`SessionLocks.hold`: a plain class, not an async generator,
    since every run enters one (fewer objects in flight per run for the collector to walk)."""

    __slots__ = ("_lock", "_locks", "_session_id", "_timeout")

    def __init__(self, locks: SessionLocks, session_id: str, timeout: float) -> None:
        self._locks = locks
        self._session_id = session_id
        self._timeout = timeout
        self._lock: asyncio.Lock | None = None

    async def __aenter__(self) -> float:
        lock = self._locks._lock(self._session_id)
        timeout = self._timeout
        started = time.monotonic()
        # A lock being handed to a waiter is not ``locked()`` yet, but an acquire queues.
        if lock.locked() or getattr(lock, "_waiters", None):
            if not await acquire_within(lock, timeout):
                raise SessionBusyError(
                    f"session {self._session_id!r} is busy with another run in this process and stayed busy for "
                    f"{timeout:.1f}s (AgentLoopConfig.session_wait_s); try again later, or use "
                    "follow_up() to queue the message for the running run",
                    session_id=self._session_id,
                )
        else:
            await lock.acquire()
        self._lock = lock
        return max(0.0, timeout - (time.monotonic() - started))

    async def __aexit__(self, *exc: object) -> None:
        lock, self._lock = self._lock, None
        assert lock is not None
        lock.release()
        locks = self._locks._by_loop.get(asyncio.get_running_loop(), {})
        if not lock.locked() and not getattr(lock, "_waiters", None):
            locks.pop(self._session_id, None)


@dataclass
class Runtime:
    """A loop's dependencies, shared by its runs.

    Attributes:
        store: The session store.
        llm: The model provider.
        config: The loop config.
        hooks: The loop's hooks.
        bus: The loop's event bus.
        registry: The loop's tools (None: no tools).
        histories: Cached session histories.
        locks: Per-session locks of this process.
        owner: This loop's identity in session leases.
        event_seqs: Last event seq published per session by this loop.
        compactor: The resolved compactor (None: compaction off).
        gate: Fair turns for CPU-heavy steps (see :mod:`power_loop._fairness`); the process's
            :data:`~power_loop._fairness.EVENT_LOOP_GATE`, which the provider transport shares.
        token_ratio: Provider-reported prompt tokens per estimated token (calibration).
        facade: The loop owning this runtime, handed to tools as ``ToolContext.loop`` (typed by
            the protocol tools may rely on, so the engine never imports the facade).
        timer_signal: Tells this process's ``TimerRunner`` when a timer is scheduled.
        pauses: When each session was last paused through this loop (ms since the epoch): its
            runs in this process that started before stop at their next round boundary
            without waiting for their next write to see the stored pause.
        hold_batcher: Takes the shared budgets' holds of this loop's model calls together
            (``engine/budgets.py``); None until the first one.
        event_log: Where events are stored (``AgentLoopConfig.persist_events``); None when
            they are not.
        admission: The loop's run slots and model-request rate limit (see
            :mod:`power_loop.engine.admission`; both None when not configured).

    Every field is set by the constructor; a loop builds its runtime in one call. The loop's
    pool of threads for sync tool handlers (``config.tool_threads``) is created on first use by
    :meth:`tool_threads` and shut down by :meth:`close`.
    """

    store: SessionStoreProtocol  # the engine uses its RunStore part; tools its timers and session reads
    llm: LLMService
    config: AgentLoopConfig
    hooks: AgentHooks
    bus: AgentEventBus
    registry: ToolRegistry | None
    histories: HistoryCache
    locks: SessionLocks = field(default_factory=SessionLocks)
    owner: str = field(default_factory=lambda: f"pid{os.getpid()}-{secrets.token_hex(4)}")
    event_seqs: dict[str, int] = field(default_factory=dict)
    compactor: Compactor | None = None
    gate: TickGate = EVENT_LOOP_GATE
    token_ratio: float = 1.0
    facade: AgentLoopHandle | None = None
    timer_signal: TimerSignal = field(default_factory=TimerSignal)
    pauses: dict[str, int] = field(default_factory=dict)
    hold_batcher: Any = None  # engine.budgets.HoldBatcher, made on the first shared-budget hold
    event_log: EventLog | None = None
    admission: Admission = field(default_factory=Admission)
    _threads: ToolThreads | None = field(default=None, repr=False)
    _threads_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    # Tasks running a run: referenced while it runs, so a run started as an unreferenced task
    # (``asyncio.ensure_future(loop.send(...))``) is never garbage-collected mid-run (asyncio
    # itself keeps only weak references to tasks).
    _running: set[asyncio.Task[Any]] = field(default_factory=set, repr=False)

    def running(self) -> _Running:
        """``with rt.running():`` keeps the current task referenced while a run goes on in it."""
        return _Running(self._running)

    def spawn_task(self, coro: Coroutine[Any, Any, None], *, name: str) -> asyncio.Task[None]:
        """Run ``coro`` as a task the loop owns (a background sub-agent, a parent woken by its
        answer): kept referenced until it ends, cancelled by :meth:`cancel_tasks`."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def cancel_tasks(self) -> None:
        """Cancel the loop's own tasks and wait for them to end (each records its run's end:
        a background sub-agent cut short is resumed later, by any process)."""
        running = asyncio.get_running_loop()
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            if task.get_loop() is running or not task.get_loop().is_closed():
                task.cancel()
        mine = [t for t in tasks if t.get_loop() is running]
        if mine:
            await asyncio.gather(*mine, return_exceptions=True)

    def cancel_task(self, name: str) -> bool:
        """Cancel the loop's task named ``name``; False when none runs."""
        for task in list(self._tasks):
            if task.get_name() == name and not task.done():
                task.cancel()
                return True
        return False

    def cancel_tasks_nowait(self) -> None:
        """Cancel the loop's own tasks without waiting (from synchronous code)."""
        for task in list(self._tasks):
            if not task.done() and not task.get_loop().is_closed():
                task.cancel()

    def tool_capabilities(
        self, session_id: str, tool_call_id: str, *, on_runtime_write: Callable[[], None] | None = None
    ) -> ToolCapabilities:
        """What call ``tool_call_id`` of ``session_id`` may do (``ctx.timers``, ``ctx.inbox``,
        ``ctx.session``, ``ctx.state``, ``ctx.background``), bound to that session."""
        return tool_capabilities(
            self.store, self.timer_signal, self.spawn_task, session_id, tool_call_id, on_runtime_write=on_runtime_write
        )

    def tool_threads(self) -> ToolThreads:
        """The pool running this loop's sync tool handlers (created on first use, again after
        :meth:`close`), apart from the event loop's default executor."""
        threads = self._threads
        if threads is None:
            with self._threads_lock:  # send_sync may run in several threads at once
                threads = self._threads
                if threads is None:
                    threads = self._threads = ToolThreads(self.config.tool_threads, name="power_loop-tool")
        return threads

    def close(self) -> None:
        """Shut down the tool threads without waiting for handlers still running (a stuck sync
        handler keeps its daemon thread until it returns; its result is discarded)."""
        with self._threads_lock:
            threads, self._threads = self._threads, None
        if threads is not None:
            threads.shutdown()


class _Running:
    """The context manager of :meth:`Runtime.running` (a plain class: one per run)."""

    __slots__ = ("_running", "_task")

    def __init__(self, running: set[asyncio.Task[Any]]) -> None:
        self._running = running
        self._task: asyncio.Task[Any] | None = None

    def __enter__(self) -> None:
        self._task = asyncio.current_task()
        if self._task is not None:  # runs always run in a task
            self._running.add(self._task)

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._running.discard(self._task)
