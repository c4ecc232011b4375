"""In-memory session histories kept between sends.

A run loads its session's history once (when its cached copy is stale) and then appends to
it as its writes commit, so no round re-reads the store. The cache is keyed by session and
validated by the store's per-session ``version``: any write by another loop, process or the
sync conveniences bumps it, and the next run reloads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from ..messages import Message
from ..store.rows import StoredMessage


class Transcript:
    """A session's loadable history: messages with their seqs, and the store version."""

    __slots__ = ("_counted", "_tokens", "messages", "seqs", "version")

    def __init__(self, stored: Iterable[StoredMessage] = (), *, version: int = -1) -> None:
        self.messages: list[Message] = []
        self.seqs: list[int] = []
        self.version = version
        self._counted = 0
        self._tokens = 0
        self.extend(stored)

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
