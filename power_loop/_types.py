"""Closed sets shared by the engine, the store and the providers.

Each set is a ``Literal`` declared once here (the public :data:`~power_loop.results.RunStatus`
lives in :mod:`power_loop.results`); tuples of values are derived with ``get_args``, never
kept by hand. This module is vocabulary: it imports nothing from the layers above it.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal, get_args

from .results import RunStatus

__all__ = [
    "HTTP_TRANSPORTS",
    "MAX_SPAWN_DEPTH",
    "RUN_KINDS",
    "RUN_ROW_STATUSES",
    "TOOL_CALL_STATUSES",
    "HttpTransport",
    "RunKind",
    "RunRowStatus",
    "SubagentLifecycle",
    "ToolCallStatus",
    "ToolOutcomeStatus",
]

RunKind = Literal["send", "resume", "submit_input", "wake", "approve"]
"""What started a run: ``send``, ``resume``, ``submit_input``, a timer's ``wake``, or
``approve`` (the last decision on a paused run's approval requests)."""
RUN_KINDS: tuple[RunKind, ...] = get_args(RunKind)

RunRowStatus = Literal[RunStatus, "running", "failed", "interrupted"]
"""The status of a run row in the store: a :data:`RunStatus` once the run ended; ``running``
while it lives; ``failed`` when it raised; ``interrupted`` when its process died and the
next run took the session over."""
RUN_ROW_STATUSES: tuple[RunRowStatus, ...] = get_args(RunRowStatus)

ToolOutcomeStatus = Literal["done", "failed", "skipped", "cancelled", "waiting_input", "awaiting_approval"]
"""How the engine answered one tool call in a round."""

ToolCallStatus = Literal[ToolOutcomeStatus, "pending", "running", "aborted"]
"""The lifecycle of a stored tool call: ``pending → running → done | failed``, or
``aborted``, ``cancelled``, ``skipped``, ``waiting_input``, ``awaiting_approval`` (back to
``pending`` once approved; ``skipped`` with an explanation once denied or expired)."""
TOOL_CALL_STATUSES: tuple[ToolCallStatus, ...] = get_args(ToolCallStatus)

HttpTransport = Literal["native", "httpx", "aiohttp"]
"""The HTTP client under a provider SDK (the providers' ``http_transport`` option)."""
HTTP_TRANSPORTS: tuple[HttpTransport, ...] = get_args(HttpTransport)


MAX_SPAWN_DEPTH = 3
"""How deep sub-agents may nest by default: a top-level session is depth 0."""


class SubagentLifecycle(str, Enum):
    """What happens to a child session when its task ends.

    EPHEMERAL: deleted when done. LINKED: deleted with its parent. DETACHED: kept on its own.
    """

    EPHEMERAL = "ephemeral"
    LINKED = "linked"
    DETACHED = "detached"
