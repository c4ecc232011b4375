"""Context compaction: token estimates, the ``Compactor`` protocol and ``DefaultCompactor``."""

from __future__ import annotations

from typing import Any

from ..config import DEFAULT_COMPACTOR

__all__ = ["DefaultCompactor", "resolve_compactor"]


class DefaultCompactor:
    """Summarise older history when the context fills up (see the Compaction docs)."""

    def __init__(self, **options: Any) -> None:
        self.options = options


def resolve_compactor(value: Any) -> Any:
    """The configured compactor (the default marker becomes a ``DefaultCompactor``)."""
    if value is DEFAULT_COMPACTOR:
        return DefaultCompactor()
    return value
