"""The event-log and report part of :class:`~power_loop.StatefulAgentLoop`: ``iter_events``
and ``explain``.

``EventsFacade`` is a base class of the loop only, kept apart so the facade stays readable.
Both methods read the store (through its worker threads, never blocking the event loop), so
they work in any process, on sessions other loops ran, after a restart. Before reading, the
loop's own event log is flushed, so events of this loop's finished runs are all there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ._explain import RunFacts, no_run, render
from .config import AgentLoopConfig
from .engine.eventlog import event_from_record
from .engine.runtime import Runtime
from .events import AgentEvent
from .store.protocols import SessionStoreProtocol

__all__ = ["EventsFacade"]

EVENT_PAGE = 500
"""Events read per store call by ``iter_events`` and ``explain``."""


class EventsFacade:
    """Event-log methods of :class:`~power_loop.StatefulAgentLoop` (see there)."""

    store: SessionStoreProtocol
    config: AgentLoopConfig
    _rt: Runtime

    async def _flush_events(self) -> None:
        if self._rt.event_log is not None:
            await self._rt.event_log.flush()

    async def iter_events(
        self, session_id: str, *, after_seq: int = 0, page_size: int = EVENT_PAGE
    ) -> AsyncIterator[AgentEvent]:
        """Replay the session's stored events (``AgentLoopConfig.persist_events``), in seq order.

        Each is an :class:`~power_loop.AgentEvent` as published: type, ``seq``, ``ts``, round,
        stream, source, the ``payload`` dict and the typed ``data`` rebuilt from it. Stream
        deltas are never stored. Events are read ``page_size`` at a time, so a long log is
        never loaded at once; iteration ends at the last event stored when a page is read.

        Args:
            session_id: The session.
            after_seq: Only events with a larger seq (resume a replay from the last seq seen).
            page_size: Events per store read.

        Raises:
            SessionNotFoundError: Unknown session (on the first iteration).
            ValueError: ``after_seq`` < 0 or ``page_size`` < 1.
        """
        if after_seq < 0 or page_size < 1:
            raise ValueError("after_seq must be >= 0 and page_size >= 1")
        await self._flush_events()
        cursor = after_seq
        while True:
            records = await self.store.read_events(session_id, after_seq=cursor, limit=page_size)
            for record in records:
                yield event_from_record(record, session_id)
            if len(records) < page_size:
                return
            cursor = records[-1].seq

    async def explain(self, session_id: str) -> str:
        """A plain-text report of the session's latest run: how it ended and what that means,
        why (error, model failure, stop, last message), rounds, tokens and tool calls, the
        limits of this loop's config it ran against, pending calls and open questions, stored
        events, and what to do next, spelled as the call to make (e.g.
        ``await loop.resume('sid')``). A session without a run gets a short report saying so.

        Built from the store (and the event log, when events were stored), so it works from
        any process, after a restart. See docs/events.md#explaining-a-run.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        await self._flush_events()
        run = await self.store.last_run(session_id)
        if run is None:
            return no_run(session_id)
        events: list[AgentEvent] = []
        cursor = 0
        while run.events_stored:
            records = await self.store.read_events(session_id, after_seq=cursor, limit=EVENT_PAGE, run_id=run.run_id)
            events += (event_from_record(r, session_id) for r in records)
            if len(records) < EVENT_PAGE:
                break
            cursor = records[-1].seq
        return render(RunFacts(session_id=session_id, run=run, events=tuple(events), config=self.config))
