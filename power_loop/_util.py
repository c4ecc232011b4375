"""Small internal helpers."""

from __future__ import annotations

import functools
import inspect
from typing import Any


def is_async_callable(fn: Any) -> bool:
    """True for coroutine functions, partials of them, and objects with an async ``__call__``."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(type(fn), "__call__", None)  # noqa: B004 - looking for an async __call__
    return not inspect.isroutine(fn) and inspect.iscoroutinefunction(call)
