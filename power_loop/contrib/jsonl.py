"""An append-only JSONL event log, and a reader that replays it into typed events.

    from power_loop.contrib.jsonl import JsonlEventSink, read_events

    sink = JsonlEventSink("audit.jsonl").attach(loop.event_bus)
    ...
    await sink.aclose()
    for event in read_events("audit.jsonl"):
        print(event.seq, event.type, event.data)

Writes happen on a background thread fed through a queue, so the event loop never waits on
the disk; ``flush()`` / ``aclose()`` wait until everything queued is written. Each line is the
event's ``to_dict()``: event (0.11's key for the name), type (the same name), seq, ts,
session_id, round_index, stream_id, source, payload. The reader accepts lines naming the
event under either key.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..events import AgentEvent, AgentEventBus, AgentEventType, BaseEventPayload, payload_class

__all__ = ["JsonlEventSink", "event_from_dict", "read_events"]

_STOP = object()


class JsonlEventSink:
    """Appends events to a JSON Lines file from a writer thread.

    Args:
        path: The file (created with its directory; appended to when it exists).
        events: Event types to record (default: all).
        fsync: ``os.fsync`` after each batch (durable audit logs; slower).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, events: Iterable[AgentEventType | str] | None = None, fsync: bool = False
    ) -> None:
        self.path = Path(path)
        self.events = frozenset(AgentEventType(e) for e in events) if events is not None else None
        self.fsync = fsync
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._bus: AgentEventBus | None = None
        self.errors: list[BaseException] = []

    def attach(self, bus: AgentEventBus) -> JsonlEventSink:
        """Subscribe to ``bus`` and start the writer thread."""
        self._bus = bus
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._write_forever, name="power-loop-jsonl-sink", daemon=True)
        self._thread.start()
        bus.subscribe(None, self, priority=-100)
        return self

    def __call__(self, event: AgentEvent) -> None:
        if self.events is None or event.type in self.events:
            self._queue.put(json.dumps(event.to_dict(), ensure_ascii=False, default=str))

    def _write_forever(self) -> None:
        # errors="replace": a lone surrogate (a tool's non-UTF-8 file name, say) in a payload is
        # written as "?" instead of killing the writer thread.
        with self.path.open("a", encoding="utf-8", errors="replace") as out:
            while True:
                item = self._queue.get()
                batch = [item]
                while not self._queue.empty():
                    batch.append(self._queue.get())
                stop = False
                for entry in batch:
                    if entry is _STOP:
                        stop = True
                    elif isinstance(entry, threading.Event):
                        out.flush()
                        entry.set()
                    else:
                        try:
                            out.write(entry + "\n")
                        except Exception as exc:  # keep going; report through .errors
                            self.errors.append(exc)
                out.flush()
                if self.fsync:
                    os.fsync(out.fileno())
                if stop:
                    return

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Block until every event queued so far is written (for sync callers)."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    async def aflush(self) -> None:
        """Wait (without blocking the event loop) until every queued event is written."""
        await asyncio.to_thread(self.flush)

    async def aclose(self) -> None:
        """Unsubscribe, write what is queued and stop the writer thread."""
        if self._bus is not None:
            self._bus.unsubscribe(self)
            self._bus = None
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None


def event_from_dict(data: dict[str, Any]) -> AgentEvent:
    """Rebuild a typed event from one JSONL line's dict (unknown payload keys are ignored).

    The name is read from ``"event"`` (0.11 sink lines and this version's) or, failing that,
    from ``"type"`` (lines written before ``"event"`` was added).

    Raises:
        KeyError: The dict names no event.
        ValueError: The name is not an event type.
    """
    name = data.get("event", data.get("type"))
    if name is None:
        raise KeyError("the line has neither an 'event' nor a 'type' key")
    event_type = AgentEventType(name)
    payload = dict(data.get("payload") or {})
    cls = payload_class(event_type, payload.get("kind"))
    names = {f.name for f in fields(cls)}
    typed: BaseEventPayload = cls(**{k: _restore(v) for k, v in payload.items() if k in names})
    return AgentEvent(
        event_type,
        data=typed,
        session_id=data.get("session_id"),
        round_index=data.get("round_index"),
        stream_id=data.get("stream_id"),
        source=data.get("source"),
        seq=int(data.get("seq") or 0),
        ts=data.get("ts"),
    )


def _restore(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def read_events(path: str | os.PathLike[str]) -> Iterator[AgentEvent]:
    """Replay a JSONL event log as typed events, in file order.

    Raises:
        ValueError: A line is not a valid event (the message gives its line number).
    """
    with Path(path).open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                yield event_from_dict(json.loads(line))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a power_loop event ({exc})") from exc
