"""Cooperative cancellation: ``CancellationToken`` and the ``stop_event`` adapter.

``send(..., stop_event=...)`` accepts a :class:`CancellationToken`, an ``asyncio.Event``, a
``threading.Event`` or a zero-argument callable returning truthy when the run should stop.
:class:`StopSignal` turns any of these into one interface the engine checks at round start,
before each tool, and races against model calls and backoff sleeps.

Tokens and asyncio events wake waiters at once; threading events and callables carry no
notification, so they are polled (every ``poll_interval`` seconds) while a wait is in progress.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, Union

from .errors import CancellationRequested

__all__ = ["CancellationLike", "CancellationToken", "StopEventLike", "StopSignal"]

T = TypeVar("T")


class CancellationToken:
    """A thread-safe, one-shot cancellation flag with a reason.

    ``cancel()`` may be called from any thread; coroutines waiting on the token in an event
    loop are woken through that loop.
    """

    def __init__(self, *, _check: Callable[[], bool] | None = None) -> None:
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._waiters: list[asyncio.Future[None]] = []
        # A wrapped source (see from_any): polled, since it cannot notify us.
        self._check = _check
        self._source: object = None

    @classmethod
    def never(cls) -> CancellationToken:
        """A token that is never cancelled (what ``stop_event=None`` means); ``cancel()`` on it
        does nothing."""
        return cls(_check=_false)

    @classmethod
    def from_any(cls, source: CancellationLike) -> CancellationToken:
        """Lift any accepted ``stop_event`` into a token.

        A token is returned as is; None gives :meth:`never`; an ``asyncio.Event``, a
        ``threading.Event`` or a zero-argument callable gives a token that is cancelled while
        the source says so. ``cancel()`` on such a token sets a ``threading.Event`` source and
        does nothing for the others (the source stays the signal).

        Raises:
            TypeError: ``source`` is none of these.
        """
        if source is None:
            return cls.never()
        if isinstance(source, CancellationToken):
            return source
        if isinstance(source, (asyncio.Event, threading.Event)):
            token = cls(_check=source.is_set)
        elif callable(source):
            token = cls(_check=lambda: bool(source()))
        else:
            raise TypeError(
                "CancellationToken.from_any takes a CancellationToken, asyncio.Event, threading.Event, "
                f"zero-argument callable or None, not {type(source).__name__}"
            )
        token._source = source
        return token

    def raise_if_cancelled(self) -> None:
        """Raise :class:`~power_loop.errors.CancellationRequested` (with the reason) if cancelled."""
        if self.is_cancelled():
            raise CancellationRequested(self._reason or "cancelled")

    def cancel(self, reason: str = "cancelled") -> None:
        """Request cancellation. Later calls keep the first reason."""
        if self._check is not None:
            # A wrapped source is the signal; only a threading.Event can be set from here
            # (an asyncio.Event belongs to its loop's thread).
            if isinstance(self._source, threading.Event):
                with self._lock:
                    self._reason = self._reason or reason or "cancelled"
                self._source.set()
            return
        with self._lock:
            if self._reason is not None:
                return
            self._reason = reason or "cancelled"
            waiters, self._waiters = self._waiters, []
        for fut in waiters:
            loop = fut.get_loop()
            if loop.is_closed():
                continue
            loop.call_soon_threadsafe(_resolve, fut)

    def is_cancelled(self) -> bool:
        """True once :meth:`cancel` has been called (or a wrapped source is set)."""
        if self._check is not None:
            return bool(self._check())
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        """The reason given to :meth:`cancel`, or None."""
        return self._reason

    async def wait(self) -> None:
        """Return once the token is cancelled (a :meth:`never` token never returns)."""
        if self._check is not None:
            if isinstance(self._source, asyncio.Event):
                await self._source.wait()
                return
            while not self.is_cancelled():  # noqa: ASYNC110 - wrapped sources cannot notify us
                await asyncio.sleep(_POLL_S if self._check is not _false else 3600.0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            if self._reason is not None:
                return
            self._waiters.append(fut)
        try:
            await fut
        finally:
            with self._lock:
                if fut in self._waiters:
                    self._waiters.remove(fut)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _false() -> bool:
    return False


_POLL_S = 0.05

StopEventLike = Union[CancellationToken, asyncio.Event, threading.Event, Callable[[], Any]]
CancellationLike = Union[CancellationToken, asyncio.Event, threading.Event, Callable[[], Any], None]
"""0.11's name for what ``stop_event`` accepts (None included)."""


class StopSignal:
    """One interface over every accepted ``stop_event`` kind (or none)."""

    def __init__(self, source: StopEventLike | None = None, *, poll_interval: float = 0.05) -> None:
        if (
            source is not None
            and not isinstance(source, (CancellationToken, asyncio.Event, threading.Event))
            and not callable(source)
        ):
            raise TypeError(
                "stop_event must be a CancellationToken, asyncio.Event, threading.Event or a "
                f"zero-argument callable, not {type(source).__name__}"
            )
        self._source = source
        self._poll_interval = poll_interval

    @property
    def active(self) -> bool:
        """False when there is nothing to watch."""
        return self._source is not None

    def is_set(self) -> bool:
        """True when the run should stop."""
        src = self._source
        if src is None:
            return False
        if isinstance(src, CancellationToken):
            return src.is_cancelled()
        if isinstance(src, (asyncio.Event, threading.Event)):
            return src.is_set()
        return bool(src())

    @property
    def reason(self) -> str:
        """Why the run stops (the token's reason, else ``"cancelled"``)."""
        if isinstance(self._source, CancellationToken) and self._source.reason:
            return self._source.reason
        return "cancelled"

    def check(self) -> None:
        """Raise :class:`CancellationRequested` if the run should stop."""
        if self.is_set():
            raise CancellationRequested(self.reason)

    async def wait(self) -> None:
        """Return once the run should stop (never returns when there is no source)."""
        src = self._source
        if src is None:
            await asyncio.Event().wait()
            return
        if isinstance(src, CancellationToken):
            await src.wait()
            return
        if isinstance(src, asyncio.Event):
            await src.wait()
            return
        while not self.is_set():  # noqa: ASYNC110 - threading events and callables cannot notify us
            await asyncio.sleep(self._poll_interval)

    async def run(self, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` unless the signal fires first.

        Raises:
            CancellationRequested: The signal fired; ``awaitable`` was cancelled and awaited.
        """
        if self._source is None:
            return await awaitable
        try:
            self.check()
        except CancellationRequested:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()  # never started: close it so it is not reported as never awaited
            raise
        work = asyncio.ensure_future(awaitable)
        watcher = asyncio.ensure_future(self.wait())
        try:
            await asyncio.wait((work, watcher), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            watcher.cancel()
            await asyncio.gather(work, watcher, return_exceptions=True)
            raise
        if work.done():
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            return work.result()
        work.cancel()
        await asyncio.gather(work, return_exceptions=True)
        raise CancellationRequested(self.reason)

    async def sleep(self, seconds: float) -> None:
        """Sleep, waking early with :class:`CancellationRequested` if the signal fires."""
        await self.run(asyncio.sleep(seconds))
