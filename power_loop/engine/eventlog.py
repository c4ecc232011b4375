"""The event log (``AgentLoopConfig.persist_events``): events to records and back, and the
loop's writer of events that no run write carries.

How events reach the store, without a store round trip per event and without blocking the
event loop:

* A run's :class:`~.emit.Emitter` keeps the records of the events it publishes; each write of
  the run (:class:`~.writer.RunWriter`) takes them along as a ``RecordEvents`` operation of
  the same transaction. A write that fails gives them back for the next one.
* What is left when the run is over (``session_ended`` and whatever followed the run's last
  write), and events published outside runs (timer deliveries), go to the loop's
  :class:`EventLog`, which stores them from a task of its own, coalescing every session's
  waiting records into one transaction. :meth:`EventLog.flush` waits for that; the loop
  calls it before it reads the log and when it closes.
* Stream deltas (``stream_delta``, ``stream_think_delta``) are never stored: one row per
  token would cost more than the rest of the run. Their seqs are simply missing from the log.

Seqs are the events' own (per session, monotonic, above the session's stored high-water
mark), so a stored seq is never reused, across runs, loops and processes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from ..events import AgentEvent, AgentEventType, BaseEventPayload, payload_class
from ..store.protocols import EventLogStore
from ..store.rows import EventRecord

__all__ = ["UNSTORED_EVENTS", "EventLog", "event_from_record", "event_record"]

log = logging.getLogger("power_loop.engine")

UNSTORED_EVENTS: frozenset[AgentEventType] = frozenset({AgentEventType.STREAM_DELTA, AgentEventType.STREAM_THINK_DELTA})
"""Events the log never stores (one per streamed token)."""


def event_record(event: AgentEvent, run_id: str | None) -> EventRecord:
    """The stored form of ``event`` published by ``run_id`` (None outside a run)."""
    return EventRecord(
        seq=event.seq,
        type=event.type.value,
        ts=event.ts,
        payload=event.payload,
        round_index=event.round_index,
        stream_id=event.stream_id,
        source=event.source,
        run_id=run_id,
    )


def event_from_record(record: EventRecord, session_id: str) -> AgentEvent:
    """The :class:`AgentEvent` a record was made of: same type, seq, time, round, stream,
    source and ``payload`` dict; ``data`` is the typed payload rebuilt from the dict (None
    when the dict does not fit the type's payload class, e.g. an event published with a
    custom payload)."""
    event_type = AgentEventType(record.type)
    return AgentEvent(
        event_type,
        payload=dict(record.payload),
        data=_typed_payload(event_type, record.payload),
        session_id=session_id,
        round_index=record.round_index,
        stream_id=record.stream_id,
        source=record.source,
        seq=record.seq,
        ts=record.ts,
    )


def _typed_payload(event_type: AgentEventType, payload: Any) -> BaseEventPayload | None:
    kind = payload.get("kind") if isinstance(payload, dict) else None
    cls = payload_class(event_type, kind if isinstance(kind, str) else None)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if not isinstance(payload, dict) or not set(payload) <= set(known):
        return None
    args: dict[str, Any] = {}
    for name, value in payload.items():
        if isinstance(value, list) and isinstance(known[name].default, tuple):
            value = tuple(value)  # JSON has no tuples
        args[name] = value
    try:
        return cls(**args)
    except (TypeError, ValueError):
        return None


class EventLog:
    """Stores the events no run write carries, from a task this object owns.

    Records wait in memory per session; one task stores everything waiting in one
    transaction, and again until nothing waits. A store failure is logged and those records
    are dropped (the runs they describe are not affected).
    """

    def __init__(self, store: EventLogStore) -> None:
        self.store = store
        self._waiting: dict[str, list[EventRecord]] = {}
        self._task: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> bool:
        """True while records wait to be stored."""
        return bool(self._waiting) or (self._task is not None and not self._task.done())

    def add(self, session_id: str, records: Sequence[EventRecord]) -> None:
        """Queue ``records`` of the session and make sure a task stores them."""
        if not records:
            return
        self._waiting.setdefault(session_id, []).extend(records)
        if self._task is not None and not self._task.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: flush() stores them
            return
        self._task = loop.create_task(self._store_waiting(), name="power_loop-event-log")

    async def _store_waiting(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, {}
            try:
                await self.store.append_events(batch)
            except Exception:
                count = sum(len(r) for r in batch.values())
                log.warning("could not store %d events of %d sessions", count, len(batch), exc_info=True)

    async def flush(self) -> None:
        """Wait until every record queued so far is stored (or its failure logged)."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            await asyncio.wait((task,))  # never raises the task's own cancellation here
        if self._waiting:
            await self._store_waiting()
