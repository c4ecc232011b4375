"""In-memory session histories kept between sends.

A run loads its session's history once (when its cached copy is stale) and then appends to
it as its writes commit, so no round re-reads the store. The cache is keyed by session and
validated by the store's per-session ``version``: any write by another loop, process or the
sync conveniences bumps it, and the next run reloads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from ..messages import AssistantMessage, Message
from ..store.rows import StoredMessage

DEGRADED_NAME = "degraded"
"""``name`` of the assistant message a degraded run stores as its answer (the marker)."""

_LEGACY_DEGRADED_PREFIX = "[degraded: LLM "  # the marker as stored before it had a name


def hidden_from_model(message: Message) -> bool:
    """True for a kernel marker that stays in the history but is never sent to the model.

    That is the ``[degraded: ...]`` note a degraded run stores in place of an answer: kernel
    error text, not something the model said. Markers stored by earlier versions (without the
    name) are recognised by their text.
    """
    if not isinstance(message, AssistantMessage) or message.tool_calls:
        return False
    if message.name == DEGRADED_NAME:
        return True
    content = message.content
    return message.name is None and isinstance(content, str) and content.startswith(_LEGACY_DEGRADED_PREFIX)


def without_hidden(messages: Sequence[Message]) -> Sequence[Message]:
    """``messages`` without kernel markers (the same object when there are none)."""
    if not any(hidden_from_model(m) for m in messages):
        return messages
    return [m for m in messages if not hidden_from_model(m)]


class Transcript:
    """A session's loadable history: messages with their seqs, and the store version."""

    __slots__ = ("_counted", "_scanned", "_tokens", "_visible", "messages", "seqs", "version")

    def __init__(self, stored: Iterable[StoredMessage] = (), *, version: int = -1) -> None:
        self.messages: list[Message] = []
        self.seqs: list[int] = []
        self.version = version
        self._counted = 0
        self._tokens = 0
        self._scanned = 0
        self._visible: list[Message] | None = None
        self.extend(stored)

    def for_model(self) -> list[Message]:
        """The messages a model request shows: all but kernel markers (:func:`hidden_from_model`).

        Only messages added since the last call are examined. Without markers (the usual case)
        this is ``messages`` itself; with them, a filtered list kept up to date incrementally,
        so a round never re-filters, let alone re-encodes, the whole history.
        """
        messages = self.messages
        if self._scanned > len(messages):
            self._scanned, self._visible = 0, None
        for index in range(self._scanned, len(messages)):
            message = messages[index]
            if hidden_from_model(message):
                if self._visible is None:
                    self._visible = messages[:index]
            elif self._visible is not None:
                self._visible.append(message)
        self._scanned = len(messages)
        return messages if self._visible is None else self._visible

    def token_estimate(self) -> int:
        """Estimated tokens of all messages, counting only those added since the last call."""
        from ..compaction import estimate_tokens

        messages = self.messages
        if self._counted > len(messages):
            self._counted, self._tokens = 0, 0
        for message in messages[self._counted :]:
            self._tokens += estimate_tokens(message)
        self._counted = len(messages)
        return self._tokens

    def replace(self, messages: list[Message], seqs: list[int]) -> None:
        """Swap in a new history (after compaction)."""
        self.messages[:] = messages
        self.seqs[:] = seqs
        self._counted, self._tokens = 0, 0
        self._scanned, self._visible = 0, None

    def extend(self, stored: Iterable[StoredMessage]) -> None:
        """Append stored messages (in seq order)."""
        for item in stored:
            self.messages.append(item.message)
            self.seqs.append(item.seq)

    def __len__(self) -> int:
        return len(self.messages)


class HistoryCache:
    """A small LRU of :class:`Transcript` per session."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, Transcript] = OrderedDict()

    def get(self, session_id: str) -> Transcript | None:
        """The cached transcript, marked most recently used."""
        found = self._items.get(session_id)
        if found is not None:
            self._items.move_to_end(session_id)
        return found

    def put(self, session_id: str, transcript: Transcript) -> None:
        """Cache ``transcript`` (evicting the least recently used beyond capacity)."""
        if self.capacity <= 0:
            return
        self._items[session_id] = transcript
        self._items.move_to_end(session_id)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def drop(self, session_id: str) -> None:
        """Forget a session (after an error, or when it is closed)."""
        self._items.pop(session_id, None)

    def clear(self) -> None:
        """Forget everything."""
        self._items.clear()
