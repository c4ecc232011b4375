"""Publishing a run's events: sequence numbers, and no work when nobody listens."""

from __future__ import annotations

from ..events import AgentEvent, AgentEventBus, AgentEventType, BaseEventPayload


class Emitter:
    """Builds and publishes the events of one session's run.

    ``seq`` is per session and monotonic: it starts from the session's stored high-water mark
    (persisted with every write of the run) and only grows.
    """

    def __init__(self, bus: AgentEventBus, session_id: str, *, seq: int = 0, source: str = "loop") -> None:
        self.bus = bus
        self.session_id = session_id
        self.seq = seq
        self.source = source

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
