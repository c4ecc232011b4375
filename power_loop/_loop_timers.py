"""The timers and run-host part of :class:`~power_loop.StatefulAgentLoop`.

``TimerFacade`` holds the loop's public timer methods (``schedule_timer``, ``cancel_timer``,
``list_timers`` and their ``*_async`` twins, timer listeners) and most members a
:class:`~power_loop.timers.TimerRunner` drives a loop through
(:class:`~power_loop.timers.host.TimerHost`: ``wake``, ``publish_session_event``; ``resume``
stays with the other runs). It is a base class of the loop only, kept apart so the facade
stays readable; it reaches the engine the way the loop does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from .engine.capabilities import timer_args
from .engine.eventlog import UNSTORED_EVENTS, event_record
from .engine.run import RunRequest, execute_run
from .engine.runtime import Runtime
from .events import AgentEvent, AgentEventBus, AgentEventType, BaseEventPayload
from .results import StatefulResult
from .store.protocols import SessionStoreProtocol
from .store.rows import TimerRow
from .tools.context import ToolCapabilities

__all__ = ["TimerFacade"]


class TimerFacade:
    """Timer methods of :class:`~power_loop.StatefulAgentLoop` (see there)."""

    store: SessionStoreProtocol
    _rt: Runtime
    _bus: AgentEventBus

    def schedule_timer(
        self,
        session_id: str,
        *,
        delay_s: float | None = None,
        due_at_ms: int | None = None,
        note: str,
        every_s: float | None = None,
        count: int | None = None,
        until_ms: int | None = None,
        cron: str | None = None,
        tz: str | None = None,
        misfire: Literal["once", "skip"] = "once",
    ) -> TimerRow:
        """Arm a durable timer that wakes the session (a ``TimerRunner`` delivers it).

        When it fires, the session receives ``<timer id=N>…your note…</timer>`` as a message:
        an idle session is run at once, a busy one reads it at its next round boundary.

        Args:
            session_id: The session to wake.
            delay_s: Seconds from now (exactly one of ``delay_s`` / ``due_at_ms`` / ``cron``).
            due_at_ms: Absolute due time, epoch milliseconds.
            note: Why the session should wake up (shown to the model); required.
            every_s: Make it recurring: re-arm this many seconds after each firing.
            count: With ``every_s`` or ``cron``: total number of firings.
            until_ms: With ``every_s`` or ``cron``: no firing after this epoch-ms time (for
                ``cron``: no occurrence due after it).
            cron: Make it a calendar timer: due at each occurrence of this cron expression
                (``"0 9 * * MON-FRI"``), read in zone ``tz``; one timer id for the series.
            tz: The IANA zone of ``cron`` (``"Europe/Paris"``); default ``"UTC"``.
            misfire: What a firing after a downtime does with the occurrences missed:
                ``"once"`` delivers one wake-up saying how many were missed and since when,
                ``"skip"`` drops them; the series then resumes on its calendar.

        Raises:
            ValueError: Both or neither of ``delay_s`` / ``due_at_ms`` (or ``cron`` with
                either, or with ``every_s``), an empty note, a bad recurrence, or a schedule
                or zone that is not valid (the message names the field).
            SessionNotFoundError: Unknown session.
        """
        args = timer_args(delay_s, due_at_ms, note, every_s, count, until_ms, cron=cron, tz=tz, misfire=misfire)
        row = self.store.schedule_timer_sync(session_id, **args)
        self._kick_timers()
        return row

    async def schedule_timer_async(
        self,
        session_id: str,
        *,
        delay_s: float | None = None,
        due_at_ms: int | None = None,
        note: str,
        every_s: float | None = None,
        count: int | None = None,
        until_ms: int | None = None,
        cron: str | None = None,
        tz: str | None = None,
        misfire: Literal["once", "skip"] = "once",
    ) -> TimerRow:
        """Async twin of :meth:`schedule_timer`."""
        args = timer_args(delay_s, due_at_ms, note, every_s, count, until_ms, cron=cron, tz=tz, misfire=misfire)
        row = await self.store.schedule_timer(session_id, **args)
        self._kick_timers()
        return row

    def cancel_timer(self, session_id: str, timer_id: int) -> bool:
        """Cancel an armed timer (a recurring or calendar one: the whole series); False when it is unknown,
        already fired or already cancelled. Raises ``SessionNotFoundError`` for an unknown
        session."""
        return self.store.cancel_timer_sync(session_id, int(timer_id))

    async def cancel_timer_async(self, session_id: str, timer_id: int) -> bool:
        """Async twin of :meth:`cancel_timer`."""
        return await self.store.cancel_timer(session_id, int(timer_id))

    def list_timers(self, session_id: str) -> list[TimerRow]:
        """The session's armed (and in-flight) timers, soonest first. Raises
        ``SessionNotFoundError`` for an unknown session."""
        return self.store.list_timers_sync(session_id)

    async def list_timers_async(self, session_id: str) -> list[TimerRow]:
        """Async twin of :meth:`list_timers`."""
        return await self.store.list_timers(session_id)

    def add_timer_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a timer is scheduled through this loop (by
        :meth:`schedule_timer`, its twin or a tool's ``ctx.timers``). A ``TimerRunner`` uses it
        to wake up at once instead of at its next scan.

        The listener runs in the scheduling thread and must only hand the news over (e.g.
        ``loop.call_soon_threadsafe(event.set)``); one raising ``RuntimeError`` (its event loop
        is closed) is dropped.
        """
        self._rt.timer_signal.add(listener)

    def remove_timer_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling a listener added by :meth:`add_timer_listener` (no error when absent)."""
        self._rt.timer_signal.remove(listener)

    def _kick_timers(self) -> None:
        self._rt.timer_signal.notify()

    async def wake(self, session_id: str) -> StatefulResult:
        """Run the session so it reads its inbox (what a delivered timer does), with no new
        user message.

        Raises:
            SessionBusyError: At once when another process's run holds the session (that run
                drains the inbox); after ``session_wait_s`` when a run of this process does.
            SessionPendingError: The session has unanswered tool calls (``resume`` first).
            SessionNotFoundError: Unknown session.
        """
        return await execute_run(self._rt, RunRequest(session_id=session_id, kind="wake", wait_foreign=False))

    async def publish_session_event(
        self,
        session_id: str,
        event_type: AgentEventType,
        data: BaseEventPayload,
        *,
        source: str,
        min_seq: int = 0,
    ) -> None:
        """Publish an event of a session from outside a run (a timer delivery, say) on this
        loop's bus.

        Its ``seq`` continues this loop's counter for the session and is at least ``min_seq``
        (a number reserved in the store, so events of several processes stay ordered). Nothing
        is built when no subscriber wants ``event_type`` and the event log does not store it
        (``AgentLoopConfig.persist_events``).
        """
        seq = max(self._rt.event_seqs.get(session_id, 0) + 1, min_seq)
        self._rt.event_seqs[session_id] = seq
        wanted = self._bus.wants(event_type)
        event_log = self._rt.event_log if event_type not in UNSTORED_EVENTS else None
        if not wanted and event_log is None:
            return
        event = AgentEvent(event_type, data=data, session_id=session_id, source=source, seq=seq)
        if event_log is not None:
            event_log.add(session_id, [event_record(event, None)])
        if wanted:
            await self._bus.publish_async(event)

    def tool_capabilities(self, session_id: str, tool_call_id: str) -> ToolCapabilities:
        """The capabilities (``ctx.timers``, ``ctx.inbox``, ``ctx.session``) a call
        ``tool_call_id`` of ``session_id`` gets in a run of this loop. A ``ToolContext`` built
        by hand with ``loop=`` gets them from here (handy to test a tool outside a run)."""
        return self._rt.tool_capabilities(session_id, tool_call_id)
