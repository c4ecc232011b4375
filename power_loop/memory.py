"""Memory providers: recall relevant facts at the start of a run, remember after it.

Two shapes of provider are accepted, told apart by their parameter names:

* :class:`MemoryProvider` (power-loop 0.11's protocol): ``recall(*, messages, session_id,
  budget_tokens)`` receives the session's messages as 0.11 dicts and returns message dicts
  (normalised by :func:`tag_as_memory`); ``remember(*, snapshot, session_id)`` receives a
  :class:`MemorySnapshot` of the finished run.
* :class:`QueryMemoryProvider`: ``recall(*, query, session_id, budget_tokens)`` receives the
  run's latest user text and returns strings or dicts with a ``text`` key;
  ``remember(*, session_id, user_input, response)`` receives the exchange.

Either may be sync or async. The loop lets ``MEMORY_RECALLED`` hooks edit or drop the
recalled items and adds what remains (within ``memory_budget_tokens``) to the run's system
prompt: plain items as a bulleted list under ``# Relevant memory``, message dicts as blocks
of their own. A failing provider publishes ``memory_failed`` and the run goes on without
memory.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

__all__ = [
    "InMemoryMemory",
    "MemoryItem",
    "MemoryProvider",
    "MemorySnapshot",
    "QueryMemoryProvider",
    "format_memory",
    "tag_as_memory",
]

MemoryItem = Union[str, Mapping[str, Any]]


@dataclass
class MemorySnapshot:
    """A finished run, as handed to :meth:`MemoryProvider.remember`.

    Attributes:
        session_id: The session.
        messages: The session's context after the run, as 0.11 message dicts.
        final_text: The run's answer.
        rounds: Rounds the run took.
        status: The run's status (``completed``, ``cancelled``, ...).
        metadata: The session's metadata.
    """

    session_id: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    final_text: str = ""
    rounds: int = 0
    status: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class MemoryProvider(Protocol):
    """power-loop 0.11's memory protocol (see the module docstring for the other shape)."""

    async def recall(
        self, *, messages: Sequence[Mapping[str, Any]], session_id: str, budget_tokens: int = 1500
    ) -> list[dict[str, Any]]:
        """Message dicts to show the model at the start of a run (see :func:`tag_as_memory`)."""
        ...

    async def remember(self, *, snapshot: MemorySnapshot, session_id: str) -> None:
        """Keep what matters of a finished run."""
        ...


def tag_as_memory(messages: Sequence[Mapping[str, Any] | str], *, prefix: str = "memory_") -> list[dict[str, Any]]:
    """Normalise recalled items into system messages named ``<prefix>...``.

    A string becomes ``{"role": "system", "name": prefix + "recall", "content": text}``; a
    dict keeps its content (``content``, else ``text``) and its name when it already starts
    with ``prefix`` (else the name is prefixed). Items without text are dropped. The input
    is not changed.
    """
    tagged: list[dict[str, Any]] = []
    for item in messages:
        if isinstance(item, str):
            content: Any = item
            name = ""
        else:
            content = item.get("content") if item.get("content") is not None else item.get("text")
            name = str(item.get("name") or "")
        if content is None or (isinstance(content, str) and not content.strip()):
            continue
        if not name:
            name = f"{prefix}recall"
        elif not name.startswith(prefix):
            name = prefix + name
        tagged.append({"role": "system", "name": name, "content": content})
    return tagged


@runtime_checkable
class QueryMemoryProvider(Protocol):
    """A memory backend recalled with the run's latest user text."""

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
    bullets: list[str] = []
    blocks: list[str] = []
    used = 0
    for item in items:
        text = item_text(item).strip()
        if not text:
            continue
        if used + len(text) > budget_chars:
            break
        # A message dict (0.11 providers, notes) is a block of its own; plain items are bullets.
        if isinstance(item, Mapping) and "role" in item:
            blocks.append(text)
        else:
            bullets.append(f"- {text}")
        used += len(text)
    parts = blocks + (["# Relevant memory\n" + "\n".join(bullets)] if bullets else [])
    if not parts:
        return None, 0
    return "\n\n".join(parts), len(bullets) + len(blocks)


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
