"""Sub-agent vocabulary shared by the store and the (upcoming) sub-agent runner."""

from __future__ import annotations

from enum import Enum

__all__ = ["MAX_SPAWN_DEPTH", "SubagentLifecycle"]

MAX_SPAWN_DEPTH = 3


class SubagentLifecycle(str, Enum):
    """What happens to a child session when its task ends.

    EPHEMERAL: deleted when done. LINKED: deleted with its parent. DETACHED: kept on its own.
    """

    EPHEMERAL = "ephemeral"
    LINKED = "linked"
    DETACHED = "detached"
