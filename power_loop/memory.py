"""Memory providers: recall relevant facts at the start of a run, remember after it.

A provider implements :class:`MemoryProvider` (sync or async methods). The loop recalls with
the run's latest user text, lets ``MEMORY_RECALLED`` hooks edit or drop the items, and adds
what remains (within ``memory_budget_tokens``) to the run's system prompt. A failing provider
publishes ``memory_failed`` and the run goes on without memory.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Protocol, Union, runtime_checkable

__all__ = ["InMemoryMemory", "MemoryItem", "MemoryProvider", "format_memory"]

MemoryItem = Union[str, Mapping[str, Any]]


@runtime_checkable
class MemoryProvider(Protocol):
    """What the loop needs from a memory backend."""

    def recall(
        self, *, query: str, session_id: str, budget_tokens: int
    ) -> Sequence[MemoryItem] | Awaitable[Sequence[MemoryItem]]:
        """Items relevant to ``query`` (strings, or dicts with a ``text`` key)."""
        ...

    def remember(self, *, session_id: str, user_input: str, response: str) -> None | Awaitable[None]:
        """Store what was said in a finished run."""
        ...


def item_text(item: MemoryItem) -> str:
    """The text of a recalled item."""
    if isinstance(item, str):
        return item
    return str(item.get("text") or item.get("content") or "")


def format_memory(items: Sequence[MemoryItem], budget_tokens: int) -> tuple[str | None, int]:
    """The system-prompt section for ``items`` within ``budget_tokens`` (about four characters
    a token); returns (text or None, number of items injected)."""
    budget_chars = max(0, budget_tokens) * 4
    lines: list[str] = []
    used = 0
    for item in items:
        text = item_text(item).strip()
        if not text:
            continue
        if used + len(text) > budget_chars:
            break
        lines.append(f"- {text}")
        used += len(text)
    if not lines:
        return None, 0
    return "# Relevant memory\n" + "\n".join(lines), len(lines)


class InMemoryMemory:
    """A small process-local memory: remembers user statements, recalls by shared words.

    Good for tests and examples; use a real store for production.
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def remember(self, *, session_id: str, user_input: str, response: str) -> None:
        """Keep the user's input."""
        if user_input.strip():
            self.items.append((session_id, user_input.strip()))

    def recall(self, *, query: str, session_id: str, budget_tokens: int) -> list[str]:
        """Remembered inputs sharing a word of three or more letters with ``query``."""
        words = {w.lower() for w in re.findall(r"[A-Za-z]{3,}", query)}
        return [text for _, text in self.items if words & {w.lower() for w in re.findall(r"[A-Za-z]{3,}", text)}]
