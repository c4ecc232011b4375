"""Publishing a run's events: sequence numbers, the event log's records, and no work when
nobody listens and nothing is stored."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..events import AgentEvent, AgentEventBus, AgentEventType, BaseEventPayload, SystemLogPayload
from ..store.rows import EventRecord
from .eventlog import UNSTORED_EVENTS, EventLog, event_record

log = logging.getLogger("power_loop.engine")


class Emitter:
    """Builds and publishes the events of one session's run.

    ``seq`` is per session and monotonic: it starts from the session's stored high-water mark
    (persisted with every write of the run) and only grows. With ``counters`` (the loop's
    per-session counters) the number is shared with every other publisher of the session in
    this loop (timer deliveries), so their events never reuse a number.

    With ``log`` (the loop's :class:`~.eventlog.EventLog`, when ``persist_events`` is on),
    every event but stream deltas is also recorded, subscribers or not: the run's writes take
    the records along (:meth:`take_records`), and after :meth:`detach` (the run is over) they
    go to the log directly.
    """

    def __init__(
        self,
        bus: AgentEventBus,
        session_id: str,
        *,
        seq: int = 0,
        source: str = "loop",
        counters: dict[str, int] | None = None,
        log: EventLog | None = None,
        run_id: str | None = None,
    ) -> None:
        self.bus = bus
        self.session_id = session_id
        self._counters = counters if counters is not None else {}
        self._counters[session_id] = max(seq, self._counters.get(session_id, 0))
        self.source = source
        self.run_id = run_id
        self._log = log
        self._records: list[EventRecord] = []
        self._detached = False

    @property
    def seq(self) -> int:
        """The last number given to an event of this session."""
        return self._counters[self.session_id]

    @seq.setter
    def seq(self, value: int) -> None:
        self._counters[self.session_id] = value

    def wants(self, event_type: AgentEventType) -> bool:
        """True when a subscriber would receive ``event_type`` or the event log stores it."""
        return self._stores(event_type) or self.bus.wants(event_type)

    def _stores(self, event_type: AgentEventType) -> bool:
        return self._log is not None and event_type not in UNSTORED_EVENTS

    def _record(self, event: AgentEvent) -> None:
        record = event_record(event, self.run_id)
        if self._detached and self._log is not None:
            self._log.add(self.session_id, [record])
        else:
            self._records.append(record)

    def take_records(self) -> Sequence[EventRecord]:
        """The records not stored yet (a write takes them along), removed from here."""
        if not self._records:
            return ()  # nothing recorded (always so without an event log): nothing allocated
        records, self._records = self._records, []
        return records

    def restore_records(self, records: Sequence[EventRecord]) -> None:
        """Give back records a failed write did not store (they go with a later one)."""
        self._records[:0] = records

    def detach(self) -> None:
        """The run is over: hand what is left to the event log, and every later record too."""
        self._detached = True
        if self._log is not None:
            self._log.add(self.session_id, self.take_records())

    def _event(
        self, event_type: AgentEventType, data: BaseEventPayload, round_index: int | None, stream_id: str | None
    ) -> AgentEvent:
        self.seq += 1
        return AgentEvent(
            event_type,
            data=data,
            session_id=self.session_id,
            round_index=round_index,
            stream_id=stream_id,
            source=self.source,
            seq=self.seq,
        )

    async def emit(
        self,
        event_type: AgentEventType,
        data: BaseEventPayload,
        *,
        round_index: int | None = None,
        stream_id: str | None = None,
    ) -> None:
        """Publish, awaiting async subscribers (and record it for the event log)."""
        event = self._built(event_type, data, round_index, stream_id)
        if event is not None:
            await self.bus.publish_async(event)

    def emit_nowait(
        self,
        event_type: AgentEventType,
        data: BaseEventPayload,
        *,
        round_index: int | None = None,
        stream_id: str | None = None,
    ) -> None:
        """Publish from synchronous code (stream callbacks); async subscribers become tracked
        tasks the bus drains later."""
        event = self._built(event_type, data, round_index, stream_id)
        if event is not None:
            self.bus.publish(event)

    def _built(
        self, event_type: AgentEventType, data: BaseEventPayload, round_index: int | None, stream_id: str | None
    ) -> AgentEvent | None:
        """The event to publish (recorded for the event log when it keeps this type), or None
        when no subscriber wants it; nothing is built when neither wants it."""
        wanted = self.bus.wants(event_type)
        stores = self._stores(event_type)
        if not (wanted or stores):
            return None
        event = self._event(event_type, data, round_index, stream_id)
        if stores:
            self._record(event)
        return event if wanted else None


async def report_after_commit(emitter: Emitter, errors: list[str], run_id: str, where: str, exc: Exception) -> None:
    """Report a failure that happened after a run's end was committed.

    The run stands as committed, so nothing is raised: the failure is added to ``errors`` (the
    result's ``post_commit_errors``), logged at ERROR with its traceback, and published as a
    ``system_log`` event of level ``error`` (a subscriber failing on that one is only logged).
    """
    text = f"{where}: {type(exc).__name__}: {exc}"
    errors.append(text)
    log.error(
        "run %s of session %s is committed, but then the %s failed; send returns its result with the error "
        "in post_commit_errors",
        run_id,
        emitter.session_id,
        where,
        exc_info=exc,
    )
    try:
        await emitter.emit(
            AgentEventType.SYSTEM_LOG,
            SystemLogPayload(message=f"run {run_id} is committed; then {text}", level="error"),
        )
    except Exception:
        log.error("event subscriber failed on the system_log event reporting %s", text, exc_info=True)
