"""Importing a provider SDK: once per process, off the event loop, then out of the
collector's way.

Invariants:

* power_loop imports an SDK (``openai``, ``anthropic``) at most once per process, always in
  a worker thread, never on the event-loop thread: the import runs module bodies for
  0.4–1.5 s. Concurrent first calls (from any event loop or thread) share that one import.
* Right after that import, unless ``POWER_LOOP_GC_FREEZE`` is ``0``/``false``/``no``/``off``,
  the young generations are collected and :func:`gc.freeze` moves every object alive into
  the collector's permanent generation (see :func:`freeze_long_lived`).

Why freeze: importing ``openai`` adds about 70,000 objects the cyclic collector tracks, and
``anthropic`` another 120,000 (modules, classes, functions, pydantic models: alive until the
process ends). CPython's full (oldest-generation) collection walks every tracked object with
the whole interpreter stopped: 25 ms with ``openai`` loaded, 65–90 ms with both, and it
runs every few hundred sends as objects that outlive young collections pile up. A frozen
object is never walked again, so a full collection costs what the application's own
long-lived objects cost. Frozen objects stay ordinary objects (reference counting still
frees them); only a reference cycle among objects alive at the freeze is never collected.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import sys
import threading
from collections.abc import Mapping
from types import ModuleType

__all__ = ["GC_FREEZE_ENV", "freeze_long_lived", "gc_freeze_enabled", "import_sdk"]

GC_FREEZE_ENV = "POWER_LOOP_GC_FREEZE"
"""Environment variable: ``0`` (or ``false``, ``no``, ``off``) keeps the collector untouched."""

_OFF = frozenset({"0", "false", "no", "off"})

_IMPORTED: dict[str, ModuleType] = {}  # process-wide cache: modules live as long as the process
_IMPORTING = threading.Lock()


def gc_freeze_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """False when ``POWER_LOOP_GC_FREEZE`` switches the freeze after an SDK import off.

    Read at the moment of the import, so setting ``os.environ`` in code before the first
    model call works as well as setting it in the process environment.
    """
    value = (os.environ if environ is None else environ).get(GC_FREEZE_ENV, "")
    return value.strip().lower() not in _OFF


def freeze_long_lived() -> None:
    """Collect the young generations, then move every object alive into the permanent one.

    The young collection (well under a millisecond: the import's own allocations have been
    collected as they went) frees the cyclic garbage that is not yet old, so it is not kept
    for good. Cyclic garbage already in the oldest generation at this moment is kept; right
    after an SDK import there are a handful of such objects (none from power_loop, whose runs
    make no cyclic garbage). A full ``gc.collect()`` would free them too, at the cost of one
    25–90 ms stop of the interpreter, which is the stall this avoids.

    Only on CPython: other interpreters have neither these generations nor ``gc.freeze``.
    """
    if sys.implementation.name != "cpython":
        return
    gc.collect(1)
    gc.freeze()


def _import_once(name: str) -> ModuleType:
    """Runs in a worker thread: the import, then the freeze, under one process-wide lock."""
    with _IMPORTING:
        module = _IMPORTED.get(name)
        if module is None:
            # ``sys.modules`` is not consulted directly: while another thread is still
            # importing, it holds a partially initialised module; import_module waits for it.
            module = importlib.import_module(name)
            if gc_freeze_enabled():
                freeze_long_lived()
            _IMPORTED[name] = module
        return module


async def import_sdk(name: str) -> ModuleType:
    """The SDK module ``name``, imported in a worker thread the first time (see the module docs)."""
    module = _IMPORTED.get(name)
    if module is None:
        module = await asyncio.to_thread(_import_once, name)
    return module
