"""Sub-agent vocabulary: :class:`SubagentLifecycle` and :data:`MAX_SPAWN_DEPTH`.

Both are declared in :mod:`power_loop._types` (the vocabulary every layer may import, the
store included) and re-exported here, where users of sub-agents look for them.
"""

from __future__ import annotations

from .._types import MAX_SPAWN_DEPTH, SubagentLifecycle

__all__ = ["MAX_SPAWN_DEPTH", "SubagentLifecycle"]
