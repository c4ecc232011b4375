"""``TimerHost``: everything a :class:`~power_loop.timers.TimerRunner` needs from a loop.

Invariant: the runner reaches its loop only through this protocol, whose members are public
and documented on :class:`~power_loop.StatefulAgentLoop` (which implements it). A test double
or another facade can drive a runner by implementing these few members.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..events import AgentEventType, BaseEventPayload
from ..hooks import AgentHooks
from ..results import StatefulResult
from ..store.protocols import SessionStoreProtocol

__all__ = ["TimerHost"]


class TimerHost(Protocol):
    """What a ``TimerRunner`` uses of its loop: the store holding the timers, the hooks
    (``TIMER_FIRE``), ways to run a session (wake it, or resume a background sub-agent), one to
    publish its events, and news of timers scheduled in this process."""

    @property
    def store(self) -> SessionStoreProtocol:
        """The store holding the timers and the sessions they wake."""
        ...

    @property
    def hooks(self) -> AgentHooks:
        """The hooks; ``TIMER_FIRE`` runs before each delivery."""
        ...

    async def wake(self, session_id: str) -> StatefulResult:
        """Run the session so it reads its inbox; raise ``SessionBusyError`` when another run
        holds it and ``SessionPendingError`` when it awaits ``resume``."""
        ...

    async def resume(self, session_id: str, *, lift_pause: bool = True) -> StatefulResult:
        """Run the session's unanswered tool calls, then continue it (a background sub-agent
        whose process died); raise ``SessionBusyError`` when another run holds it, and (with
        ``lift_pause=False``) ``SessionPausedError`` when it is paused."""
        ...

    async def publish_session_event(
        self,
        session_id: str,
        event_type: AgentEventType,
        data: BaseEventPayload,
        *,
        source: str,
        min_seq: int = 0,
    ) -> None:
        """Publish an event of the session (``timer_fired``), its seq at least ``min_seq``."""
        ...

    def add_timer_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (from any thread) whenever a timer is scheduled through the host."""
        ...

    def remove_timer_listener(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``."""
        ...
