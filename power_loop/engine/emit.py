"""Publishing a run's events: sequence numbers, and no work when nobody listens."""

from __future__ import annotations

from ..events import AgentEvent, AgentEventBus, AgentEventType, BaseEventPayload


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
