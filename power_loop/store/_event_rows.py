"""The event log's row and write operation (re-exported by :mod:`.rows`).

A stored event is what :class:`~power_loop.events.AgentEvent` carries, flattened: its
per-session ``seq`` (the key with the session), name, time, round, stream, source, the run
that published it, and its payload dict (stored as JSON). The store knows nothing of the
event classes; the facade turns rows back into events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EventRecord", "RecordEvents"]


@dataclass(frozen=True)
class EventRecord:
    """One stored event.

    Attributes:
        seq: The event's per-session sequence number (unique in its session).
        type: The event name (``AgentEventType`` value).
        ts: When it was published (seconds since the epoch).
        payload: The event's payload dict (JSON-encodable; anything else is stored as text).
        round_index: The round, or None.
        stream_id: The stream of a stream event, or None.
        source: Who published it (``loop``, ``timer``, ...).
        run_id: The run that published it, or None (a timer delivery, say).
    """

    seq: int
    type: str
    ts: float
    payload: Mapping[str, Any]
    round_index: int | None = None
    stream_id: str | None = None
    source: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class RecordEvents:
    """Store events of the session (a write operation: they ride along with a run's step).

    An event whose seq is stored already is skipped, so writing a record twice is harmless.
    """

    events: Sequence[EventRecord]
