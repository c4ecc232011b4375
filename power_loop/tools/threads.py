"""``ToolThreads``: the bounded pool of threads that runs a loop's sync tool handlers.

Why not ``asyncio.to_thread``: it borrows the event loop's default executor, which the
provider SDK import and many libraries share. A sync handler cannot be interrupted, so one
that ignores its time limit keeps its thread; a handful of them used to starve the default
executor, and every later sync tool then "timed out" without ever running.

So each loop owns a pool of at most ``AgentLoopConfig.tool_threads`` threads:

* A call is **queued** until a thread takes it, then **running**. The caller's time limit
  counts from the start of the handler, never from the queue.
* A call whose caller gave up (its time limit passed, or its run was cancelled) is
  **abandoned**: still queued, it is dropped and never starts; already running, its thread
  stays **held** until the handler returns, and its result is discarded.
* When every thread is held by an abandoned call, a new call cannot start for an unknown
  time: it fails at once with :class:`ToolNotStarted`, which says so, instead of waiting.
* Threads are daemon threads named ``power_loop-tool-N``, started on demand and ended after
  a minute idle. :meth:`ToolThreads.shutdown` never waits for a stuck handler, and neither
  does the interpreter at exit (a ``ThreadPoolExecutor`` joins its threads there).
* A handler raising a ``BaseException`` that is not an ``Exception`` (``SystemExit``,
  ``KeyboardInterrupt``, ``CancelledError``) reaches the caller wrapped in
  :class:`ToolRaisedBaseException`: such an exception must never surface raw on the event
  loop, where asyncio would treat it as the end of the program.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .._util import stop_iteration_refused
from ..errors import ToolError

__all__ = ["ToolNotStarted", "ToolRaisedBaseException", "ToolThreads", "ToolTimeout"]

_IDLE_EXIT_S = 60.0


class ToolTimeout(asyncio.TimeoutError):
    """The kernel's time limit of a call was reached (not a ``TimeoutError`` the tool raised).

    Attributes:
        limit: The limit in seconds.
    """

    def __init__(self, limit: float) -> None:
        super().__init__(f"timed out after {limit}s")
        self.limit = limit


class ToolNotStarted(ToolError):
    """A sync call could not start: every tool thread is held by a call that was given up."""


class ToolRaisedBaseException(ToolError):
    """A handler raised a ``BaseException`` that is not an ``Exception``.

    Attributes:
        error: What the handler raised (``SystemExit``, ``KeyboardInterrupt``, ``CancelledError``, ...).
        in_worker: It was raised in a tool thread (a sync handler), not on the event loop.
    """

    def __init__(self, error: BaseException, *, in_worker: bool) -> None:
        super().__init__(f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
        self.error = error
        self.in_worker = in_worker


class _Job:
    """One call: its function, its caller's event loop and futures, its state."""

    __slots__ = ("abandoned", "done", "fn", "loop", "started_at", "state")

    def __init__(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.fn = fn
        self.loop = loop
        self.done: asyncio.Future[Any] = loop.create_future()
        self.started_at = 0.0  # time.monotonic() when a thread took it
        self.state = "queued"  # queued → running → finished, or queued → dropped
        self.abandoned: str | None = None  # "timed out" / "cancelled" once the caller gave up


def _resolve(future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Settle ``future`` on its loop's thread, unless its waiter already gave up on it."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


def _post(job: _Job, future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    """Hand a result to ``job``'s event loop from any thread."""
    try:
        job.loop.call_soon_threadsafe(_resolve, future, value, error)
    except RuntimeError:  # that event loop is closed: nobody is waiting any more
        pass


class ToolThreads:
    """A bounded pool of daemon threads for sync tool handlers (see the module docstring).

    Args:
        size: Most threads running handlers at once.
        name: Thread name prefix.
    """

    def __init__(self, size: int, *, name: str = "power_loop-tool") -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.size = size
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[_Job] = deque()
        self._threads = 0
        self._busy = 0
        self._held = {"timed out": 0, "cancelled": 0}  # running calls their callers gave up on
        self._closed = False
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"ToolThreads(size={self.size}, threads={self._threads}, busy={self._busy}, held={self._held})"

    @property
    def held(self) -> int:
        """Threads still running a handler whose caller gave up on it."""
        with self._cond:
            return sum(self._held.values())

    async def run(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn()`` in a tool thread and return its value.

        Args:
            fn: The handler, bound to its arguments.
            timeout: Seconds the handler may run, counted from when it starts (None: no limit).

        Raises:
            ToolNotStarted: Every thread is held by a call that was given up (or the pool is shut down).
            ToolTimeout: ``timeout`` passed; the handler goes on in its thread, its result is discarded.
            ToolRaisedBaseException: The handler raised a non-``Exception`` ``BaseException``.
            Exception: Whatever the handler raised.
        """
        job = self._submit(fn, asyncio.get_running_loop())
        try:
            if timeout is None:
                return await job.done
            # No hop back to the event loop when the handler starts: the worker notes the
            # time, and the deadline is computed from it whenever a wait ends undecided.
            wait = timeout
            while True:
                done, _ = await asyncio.wait((job.done,), timeout=wait)
                if done:
                    return job.done.result()
                with self._cond:
                    state, started_at = job.state, job.started_at
                if state == "queued":
                    continue  # the limit has not started counting
                if state != "running":  # finished or dropped: its outcome is on its way
                    await asyncio.wait((job.done,))
                    return job.done.result()
                left = started_at + timeout - time.monotonic()
                if left <= 0:
                    break
                wait = left
        except asyncio.CancelledError:
            self._abandon(job, "cancelled")
            raise
        if self._abandon(job, "timed out") != "finished":
            raise ToolTimeout(timeout)
        await asyncio.wait((job.done,))  # it returned just as the limit passed: keep its result
        return job.done.result()

    def shutdown(self) -> None:
        """Stop taking calls and let idle threads end; never waits for a running handler.

        Calls still queued fail with :class:`ToolNotStarted`.
        """
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            for job in dropped:
                job.state = "dropped"
            self._cond.notify_all()
        for job in dropped:
            _post(job, job.done, error=ToolNotStarted("the loop was closed before this call started"))

    # ------------------------------------------------------------------ internals

    def _starved_message(self) -> str:
        timed_out, cancelled = self._held["timed out"], self._held["cancelled"]
        why = (
            "that timed out"
            if not cancelled
            else "whose runs were cancelled"
            if not timed_out
            else "that timed out or whose runs were cancelled"
        )
        return (
            f"all {self.size} tool threads are still held by earlier calls {why} (a sync handler "
            "cannot be interrupted; its thread is free again only when it returns)"
        )

    def _submit(self, fn: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> _Job:
        with self._cond:
            if self._closed:
                raise ToolNotStarted("the loop was closed")
            if sum(self._held.values()) >= self.size:
                raise ToolNotStarted(self._starved_message())
            job = _Job(fn, loop)
            self._queue.append(job)
            # Idle threads (alive, not busy) take queued calls; start one more when they cannot.
            spawn = len(self._queue) > self._threads - self._busy and self._threads < self.size
            if spawn:
                self._threads += 1
            else:
                self._cond.notify()
        if spawn:
            try:
                threading.Thread(target=self._work, name=f"{self._name}-{next(self._ids)}", daemon=True).start()
            except RuntimeError as exc:  # the process is out of threads
                with self._cond:
                    self._threads -= 1
                    orphaned = self._threads == 0 and job.state == "queued"
                    if orphaned:
                        self._queue.remove(job)
                        job.state = "dropped"
                if orphaned:
                    raise ToolNotStarted(f"no tool thread could be started ({exc})") from exc
        return job

    def _abandon(self, job: _Job, reason: str) -> str:
        """The caller gave up on ``job``: drop it if queued, count its thread as held if running.

        Returns the state ``job`` was in.
        """
        starved: list[_Job] = []
        message = ""
        with self._cond:
            state = job.state
            if job.state == "queued":
                self._queue.remove(job)
                job.state = "dropped"
            elif job.state == "running" and job.abandoned is None:
                job.abandoned = reason
                self._held[reason] += 1
                if sum(self._held.values()) >= self.size and self._queue:
                    # No thread can take the queued calls until a stuck handler returns,
                    # which may be never: fail them now, saying why.
                    message = self._starved_message()
                    starved = list(self._queue)
                    self._queue.clear()
                    for queued in starved:
                        queued.state = "dropped"
        for queued in starved:
            _post(queued, queued.done, error=ToolNotStarted(message))
        return state

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    if not self._cond.wait(_IDLE_EXIT_S) and not self._queue:
                        self._threads -= 1
                        return
                if not self._queue:  # closed
                    self._threads -= 1
                    return
                job = self._queue.popleft()
                job.state = "running"
                job.started_at = time.monotonic()
                self._busy += 1
            value: Any = None
            error: BaseException | None = None
            try:
                value = job.fn()
            except StopIteration as exc:
                error = stop_iteration_refused(exc, "the tool handler")
            except Exception as exc:
                error = exc
            except BaseException as exc:  # SystemExit, KeyboardInterrupt, ... raised by the handler
                wrapped = ToolRaisedBaseException(exc, in_worker=True)
                wrapped.__cause__ = exc
                error = wrapped
            with self._cond:
                job.state = "finished"
                self._busy -= 1
                if job.abandoned is not None:
                    self._held[job.abandoned] -= 1
            if job.abandoned is None:
                _post(job, job.done, value, error)
            del job, value, error  # no reference to a finished call's data while idle
