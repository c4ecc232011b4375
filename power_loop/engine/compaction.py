"""The compaction step of a round (see :mod:`power_loop.compaction`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..messages import Message

if TYPE_CHECKING:
    from .run import Run


async def maybe_compact(run: Run, view: list[Message]) -> list[Message]:
    """Compact the session's context when the configured compactor says so; return the view
    the round's model call should use."""
    return view
