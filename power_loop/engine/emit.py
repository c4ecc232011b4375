"""Publishing a run's events: sequence numbers, and no work when nobody listens."""

from __future__ import annotations

import logging

from ..events import AgentEvent, AgentEventBus, AgentEventType, BaseEventPayload, SystemLogPayload

log = logging.getLogger("power_loop.engine")


class Emitter:
    """Builds and publishes the events of one session's run.

    ``seq`` is per session and monotonic: it starts from the session's stored high-water mark
    (persisted with every write of the run) and only grows. With ``counters`` (the loop's
    per-session counters) the number is shared with every other publisher of the session in
    this loop (timer deliveries), so their events never reuse a number.
    """

    def __init__(
        self,
        bus: AgentEventBus,
        session_id: str,
        *,
        seq: int = 0,
        source: str = "loop",
        counters: dict[str, int] | None = None,
    ) -> None:
        self.bus = bus
        self.session_id = session_id
        self._counters = counters if counters is not None else {}
        self._counters[session_id] = max(seq, self._counters.get(session_id, 0))
        self.source = source

    @property
    def seq(self) -> int:
        """The last number given to an event of this session."""
        return self._counters[self.session_id]

    @seq.setter
    def seq(self, value: int) -> None:
        self._counters[self.session_id] = value

    def wants(self, event_type: AgentEventType) -> bool:
        """True when a subscriber would receive ``event_type``."""
        return self.bus.wants(event_type)

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
        """Publish, awaiting async subscribers."""
        if self.bus.wants(event_type):
            await self.bus.publish_async(self._event(event_type, data, round_index, stream_id))

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
        if self.bus.wants(event_type):
            self.bus.publish(self._event(event_type, data, round_index, stream_id))


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
