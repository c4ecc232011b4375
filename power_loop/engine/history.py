"""In-memory session histories kept between sends.

A run loads its session's history once (when its cached copy is stale) and then appends to
it as its writes commit, so no round re-reads the store. The cache is keyed by session and
validated by the store's per-session ``version``: any write by another loop, process or the
sync conveniences bumps it, and the next run reloads.

Two tiers keep the cache out of the garbage collector's way. The ``hot`` most recently used
sessions keep their messages as objects; the others are *parked*: their messages become one
string of their stored JSON (each message carries it already: the store wrote it). A string
is not tracked by CPython's cyclic collector, while every message object is, and a full
collection walks every tracked object with the event loop stopped: 256 cached sessions of 40
messages made each such pause about 10 ms; parked, they cost nothing. A parked session used
again is decoded in one ``json.loads`` (what loading it from the store would cost, without
the read).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from ..messages import MESSAGE_JSON_KEY, AssistantMessage, Message, message_from_dict, message_json
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


UNPARK_ON_LOOP_MAX = 200
"""Parked histories up to this many messages are decoded on the event loop (well under a
millisecond); longer ones in a worker thread."""


class _Parked:
    """A transcript out of the collector's sight: its messages' JSON and seqs, as tuples of
    strings and ints (CPython stops tracking such a tuple at the first collection that sees it)."""

    __slots__ = ("bodies", "seqs", "version")

    def __init__(self, transcript: Transcript) -> None:
        self.bodies = tuple([message_json(m) for m in transcript.messages])
        self.seqs = tuple(transcript.seqs)
        self.version = transcript.version

    def unpark(self) -> Transcript:
        """The transcript again, decoded in one parse, each message seeded with its JSON."""
        transcript = Transcript(version=self.version)
        messages = transcript.messages
        for data, body in zip(json.loads("[" + ",".join(self.bodies) + "]"), self.bodies, strict=True):
            message = message_from_dict(data)
            message.__dict__[MESSAGE_JSON_KEY] = body
            messages.append(message)
        transcript.seqs.extend(self.seqs)
        return transcript


class HistoryCache:
    """An LRU of :class:`Transcript` per session, the ``hot`` most recent ones as objects and
    the others parked (see the module docs)."""

    def __init__(self, capacity: int, hot: int = 64) -> None:
        self.capacity = capacity
        self.hot = max(0, min(hot, capacity))
        self._hot: OrderedDict[str, Transcript] = OrderedDict()
        self._parked: OrderedDict[str, _Parked] = OrderedDict()
        # ``send_sync`` in several threads shares one loop's cache: each change of the two
        # tiers (several steps; parking encodes) happens under this lock.
        self._lock = threading.Lock()

    def get(self, session_id: str) -> Transcript | None:
        """The cached transcript, marked most recently used (unparked if it was parked)."""
        with self._lock:
            return self._get(session_id)

    def _get(self, session_id: str) -> Transcript | None:
        found = self._hot.get(session_id)
        if found is not None:
            self._hot.move_to_end(session_id)
            return found
        parked = self._parked.pop(session_id, None)
        if parked is None:
            return None
        transcript = parked.unpark()
        self._keep(session_id, transcript)
        return transcript

    async def take(self, session_id: str) -> Transcript | None:
        """:meth:`get` for the event loop: a long parked history is decoded in a worker
        thread (where CPython's switch interval lets the loop run meanwhile), not on the loop."""
        with self._lock:
            parked = self._parked.get(session_id)
            if parked is None or len(parked.bodies) <= UNPARK_ON_LOOP_MAX:
                return self._get(session_id)
        transcript = await asyncio.to_thread(parked.unpark)
        with self._lock:
            if self._parked.get(session_id) is not parked:
                return self._get(session_id)  # dropped or replaced meanwhile: what is cached now
            del self._parked[session_id]
            self._keep(session_id, transcript)
        return transcript

    def put(self, session_id: str, transcript: Transcript) -> None:
        """Cache ``transcript`` (parking, then evicting, the least recently used)."""
        if self.capacity <= 0:
            return
        with self._lock:
            self._parked.pop(session_id, None)
            self._keep(session_id, transcript)

    def _keep(self, session_id: str, transcript: Transcript) -> None:
        hot, parked = self._hot, self._parked
        hot[session_id] = transcript
        hot.move_to_end(session_id)
        while len(hot) > self.hot:
            old_id, old = hot.popitem(last=False)
            if self.capacity > self.hot:
                parked[old_id] = _Parked(old)
        while len(hot) + len(parked) > self.capacity:
            if parked:
                parked.popitem(last=False)
            else:
                hot.popitem(last=False)

    def settle(self, session_id: str, transcript: Transcript) -> None:
        """The run of ``session_id`` ended with ``transcript``.

        A run's history is parked when more sessions were used since it began than stay hot
        (many sessions running at once); the run goes on extending its own transcript, so the
        parked copy is older than the run's end, and the next send would reload the history
        from the store. The run's transcript takes its place. A session no longer cached (its
        entry was dropped or evicted meanwhile) stays out.
        """
        with self._lock:
            parked = self._parked.get(session_id)
            if parked is not None and parked.version != transcript.version:
                del self._parked[session_id]
                self._keep(session_id, transcript)

    def drop(self, session_id: str) -> None:
        """Forget a session (after an error, or when it is closed)."""
        with self._lock:
            self._hot.pop(session_id, None)
            self._parked.pop(session_id, None)

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._hot.clear()
            self._parked.clear()

    def __len__(self) -> int:
        return len(self._hot) + len(self._parked)
