"""``power-loop worker APP``: a process that only delivers timers.

``APP`` is ``module:attribute`` (the uvicorn / celery convention) naming a
``StatefulAgentLoop`` or a factory returning one (sync or async), importable from the current
directory. The worker opens the loop's store, runs a :class:`TimerRunner` until SIGTERM or
SIGINT, then stops cleanly: deliveries already committing complete, hooks still running are
cancelled, the runs deliveries started get a grace period (a second signal cancels them), and
claims not yet delivered are released for the next runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import signal
import sys
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from .runner import TimerRunner

if TYPE_CHECKING:
    from ..loop import StatefulAgentLoop

__all__ = ["load_app", "run_worker"]

log = logging.getLogger("power_loop.timers")


def _import_target(spec: str) -> object:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(f"APP must look like 'module:attribute' (e.g. 'myapp.agents:loop'), not {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: modules of the current directory are importable
    try:
        target: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"could not import module {module_name!r} named by {spec!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attribute!r} (from {spec!r})") from None
    return target


async def load_app(spec: str) -> StatefulAgentLoop:
    """Resolve ``module:attribute`` to a ``StatefulAgentLoop`` (calling it when it is a factory).

    Raises:
        ConfigurationError: A malformed spec, an import error, a missing attribute, a factory
            that raised, or an object that is neither a loop nor a factory returning one.
    """
    from ..loop import StatefulAgentLoop

    target = _import_target(spec)
    if not isinstance(target, StatefulAgentLoop) and callable(target):
        try:
            target = target()
            if inspect.isawaitable(target):
                target = await target
        except Exception as exc:
            raise ConfigurationError(f"the factory {spec!r} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(target, StatefulAgentLoop):
        raise ConfigurationError(
            f"{spec!r} is a {type(target).__name__}, not a StatefulAgentLoop or a factory returning one"
        )
    return target


async def run_worker(
    spec: str | StatefulAgentLoop,
    *,
    scan_interval_s: float = 2.0,
    stale_firing_s: float = 120.0,
    concurrency: int = 64,
    max_runs: int = 32,
    grace_s: float = 30.0,
    stop: asyncio.Event | None = None,
) -> int:
    """Deliver timers until ``stop`` is set or the process gets SIGTERM / SIGINT.

    On the first signal the runner stops taking new timers and gives the runs it started
    ``grace_s`` seconds to finish; a second signal cancels them at once. Returns the number of
    timers this worker processed.
    """
    loop = await load_app(spec) if isinstance(spec, str) else spec
    stop = stop or asyncio.Event()
    aio = asyncio.get_running_loop()
    runner = TimerRunner(
        loop,
        scan_interval_s=scan_interval_s,
        stale_firing_s=stale_firing_s,
        concurrency=concurrency,
        max_runs=max_runs,
    )

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: cancelling the runs still going")
            runner.cancel_runs()
        stop.set()

    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            aio.add_signal_handler(signum, on_signal)
            installed.append(signum)
    try:
        async with loop:
            await runner.start()
            log.info("timer worker %s delivering timers from %s", runner.owner, loop.store.path)
            try:
                await stop.wait()
            finally:
                log.info("timer worker %s stopping (%d timers processed)", runner.owner, runner.delivered)
                await runner.stop(grace_s=grace_s)
    finally:
        for signum in installed:
            aio.remove_signal_handler(signum)
    return runner.delivered
