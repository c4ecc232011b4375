"""Sub-agent vocabulary shared by the store and the sub-agent runner.

Invariant: this module imports nothing from power_loop, so the store can use it without
pulling in specs, tools or prompts.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["MAX_SPAWN_DEPTH", "SubagentLifecycle"]

MAX_SPAWN_DEPTH = 3
"""How deep sub-agents may nest by default: a top-level session is depth 0."""


class SubagentLifecycle(str, Enum):
    """What happens to a child session when its task ends.

    EPHEMERAL: deleted when done. LINKED: deleted with its parent. DETACHED: kept on its own.
    """

    EPHEMERAL = "ephemeral"
    LINKED = "linked"
    DETACHED = "detached"
