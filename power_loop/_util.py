"""Small internal helpers."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def is_async_callable(fn: Any) -> bool:
    """True for coroutine functions, partials of them, and objects with an async ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - looking for an async __call__
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)


def stop_iteration_refused(exc: StopIteration, what: str) -> RuntimeError:
    """The error to report instead of ``exc``, raised by ``what`` in a worker thread.

    An asyncio future refuses StopIteration: ``set_exception`` raises TypeError inside the
    event loop's callback and the awaiting caller is never told. It is reported as a
    coroutine body would report it (PEP 479): a RuntimeError caused by the StopIteration.
    """
    error = RuntimeError(f"{what} raised StopIteration: {exc!r}")
    error.__cause__ = exc
    return error


def call_in_thread(what: str, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, run in a worker thread whose outcome lands in an asyncio
    future (``asyncio.to_thread``, ``run_in_executor``): a StopIteration comes back as the
    RuntimeError of :func:`stop_iteration_refused`, instead of leaving the caller waiting."""
    try:
        return fn(*args, **kwargs)
    except StopIteration as exc:
        raise stop_iteration_refused(exc, what) from exc
