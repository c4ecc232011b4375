"""Send every event to stdlib logging, one JSON line per event.

    import logging
    from power_loop.contrib.logging_sink import attach_logging_sink

    handle = attach_logging_sink(loop.event_bus, logger=logging.getLogger("agent.audit"))

Each line is the event's ``to_dict()``: the name under ``"event"`` (as in 0.11) and ``"type"``,
then seq, ts, session_id, round_index, stream_id, source and payload. ``usage_updated``
payloads keep 0.11's ``input`` / ``output`` / ``cache_read`` / ``reasoning`` usage keys.
Long string fields are shortened to ``max_field_len`` characters (with a marker), so a huge
tool result cannot flood the log. Subscriber errors are contained by the sink itself: a broken
log handler never breaks a run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from typing import Any

from ..events import AgentEvent, AgentEventBus, AgentEventType

__all__ = ["LoggingSink", "attach_logging_sink"]


def _shorten(value: Any, limit: int) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"...(+{len(value) - limit} chars)"
    if isinstance(value, dict):
        return {k: _shorten(v, limit) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_shorten(v, limit) for v in value]
    return value


class LoggingSink:
    """The subscriber :func:`attach_logging_sink` installs; call :meth:`detach` to remove it."""

    def __init__(
        self,
        bus: AgentEventBus,
        logger: logging.Logger,
        level: int,
        events: frozenset[AgentEventType] | None,
        max_field_len: int,
    ) -> None:
        self.bus = bus
        self.logger = logger
        self.level = level
        self.events = events
        self.max_field_len = max_field_len

    def __call__(self, event: AgentEvent) -> None:
        if self.events is not None and event.type not in self.events:
            return
        if not self.logger.isEnabledFor(self.level):
            return
        try:
            record = _shorten(event.to_dict(), self.max_field_len)
            self.logger.log(self.level, json.dumps(record, ensure_ascii=False, default=str))
        except Exception:  # a sink must never break the run it observes
            logging.getLogger("power_loop.contrib").exception("logging sink failed on %s", event.type.value)

    def detach(self) -> None:
        """Stop logging events."""
        self.bus.unsubscribe(self)


def attach_logging_sink(
    bus: AgentEventBus,
    *,
    logger: logging.Logger | None = None,
    level: int = logging.INFO,
    events: Iterable[AgentEventType | str] | None = None,
    max_field_len: int = 500,
) -> LoggingSink:
    """Log every event of ``bus`` (or only ``events``) as one JSON line.

    Args:
        bus: The loop's event bus (``loop.event_bus``).
        logger: Target logger (default ``power_loop.events``).
        level: Log level of the records.
        events: Event types to log (default: all).
        max_field_len: Longer string fields are shortened to this many characters.

    Returns:
        The sink; ``sink.detach()`` removes it.
    """
    chosen = frozenset(AgentEventType(e) for e in events) if events is not None else None
    sink = LoggingSink(bus, logger or logging.getLogger("power_loop.events"), level, chosen, max_field_len)
    bus.subscribe(None, sink, priority=-100)
    return sink
