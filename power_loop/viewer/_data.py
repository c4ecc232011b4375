"""What the viewer reads from a store and how it becomes JSON.

The viewer reads through the store's inspection methods
(:class:`~power_loop.store.protocols.InspectStore`: ``list_sessions``, ``count_sessions``,
``list_runs``, ``read_transcript``, ``list_all_timers``) and nothing else but
``get_session_async``; :class:`InspectReader` names that surface. Rows are frozen
dataclasses; :func:`jsonable` turns them (and what they hold) into JSON values.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
from collections.abc import Mapping
from typing import Any, Protocol

from ..store.protocols import InspectStore
from ..store.rows import SessionRow

__all__ = ["InspectReader", "jsonable", "parse_duration_ms", "parse_filters", "session_detail"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
ORDERS = ("last_active", "created", "id", "tokens")
KINDS = ("main", "subagent")


class InspectReader(InspectStore, Protocol):
    """The store methods the viewer calls (all read-only): the inspection read layer and the
    session row."""

    async def get_session_async(self, session_id: str) -> SessionRow | None:
        """The session row, or None."""


def jsonable(value: Any) -> Any:
    """``value`` as JSON values: dataclasses become objects, enums their values, tuples
    lists; anything else unknown becomes its ``str``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def parse_duration_ms(text: str) -> int:
    """``"30m"``, ``"2h"``, ``"7d"`` (also ``s``, ``w``) in milliseconds.

    Raises:
        ValueError: Not such a duration.
    """
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"a duration looks like 30m, 2h or 7d, not {text!r}")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


def parse_filters(query: Any, *, now_ms: int | None = None) -> dict[str, Any]:
    """The ``list_sessions`` filters named by a request's query parameters: ``search``,
    ``kind``, ``metadata`` (``key=value``, repeatable), ``active`` (a duration: active within
    it) and ``order``.

    Raises:
        ValueError: A malformed parameter.
    """
    filters: dict[str, Any] = {}
    search = (query.get("search") or "").strip()
    if search:
        filters["search"] = search
    kind = (query.get("kind") or "").strip()
    if kind:
        if kind not in KINDS:
            raise ValueError(f"kind is one of {', '.join(KINDS)}, not {kind!r}")
        filters["kind"] = kind
    metadata: dict[str, str] = {}
    for item in query.getlist("metadata"):
        if not item.strip():
            continue
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"metadata filters look like key=value, not {item!r}")
        metadata[key.strip()] = val.strip()
    if metadata:
        filters["metadata"] = metadata
    active = (query.get("active") or "").strip()
    if active:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        filters["active_since_ms"] = now - parse_duration_ms(active)
    order = (query.get("order") or "").strip()
    if order:
        if order not in ORDERS:
            raise ValueError(f"order is one of {', '.join(ORDERS)}, not {order!r}")
        filters["order"] = order
    return filters


async def session_detail(reader: InspectReader, session_id: str) -> dict[str, Any] | None:
    """The session's overview, its runs and its timers; None when there is no such session."""
    row = await reader.get_session_async(session_id)
    if row is None:
        return None
    overview: Any = None
    offset = 0
    while overview is None:  # the id filter matches substrings: find the exact one
        page = await reader.list_sessions(search=session_id, order="id", limit=200, offset=offset)
        overview = next((s for s in page if s.session_id == session_id), None)
        if len(page) < 200:
            break
        offset += 200
    report = await reader.list_all_timers(session_id)
    return {
        "session": overview if overview is not None else row,
        "runs": await reader.list_runs(session_id),
        "timers": {"active": report.active, "recent": report.recent},
    }
