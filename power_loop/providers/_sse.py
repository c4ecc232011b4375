"""Server-sent events read straight from the SDK's streaming HTTP response.

The provider SDKs build and send the request, authenticate it and turn error statuses into
exceptions; the response body of a successful streaming call is then parsed here instead of
through the SDKs' stream classes. Those stack several async generators and a line-by-line
decoder per event; splitting the byte stream on blank lines and decoding each ``data:``
payload once does the same work at a fraction of the cost on the event-loop thread.

Guarantees:

* Every decoding fault (bytes that are not UTF-8, data that is not JSON, a body that is
  neither an event stream nor JSON) raises :class:`~power_loop.errors.LLMResponseError`,
  never a raw exception.
* A body that is a single JSON document (some compatible servers answer a streaming request
  with the complete, non-streamed answer) is not parsed as events: :attr:`EventStream.document`
  holds it, and the provider decodes it as a non-streaming answer.
* :attr:`EventStream.saw_done` tells whether ``data: [DONE]`` arrived; the provider decides,
  per dialect, whether the stream reached its terminal event (a stream cut short is a
  connection failure, never a complete answer).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import LLMResponseError

if TYPE_CHECKING:
    from .base import StreamCallbacks

__all__ = ["EventStream", "PendingDeltas", "SurrogateJoiner", "fix_surrogates", "iter_sse"]

_MAX_DOCUMENT = 64 * 1024 * 1024
"""Largest JSON body accepted in place of an event stream."""

_SSE_FIELDS = (b"data", b"event", b"id", b"retry", b":")
_BOM = b"\xef\xbb\xbf"
_SURROGATE = re.compile("[\ud800-\udfff]")
_HIGH_SURROGATE_END = re.compile("[\ud800-\udbff]$")


def fix_surrogates(text: str) -> str:
    """Join surrogate pairs that arrived as separate ``\\uXXXX`` escapes.

    JSON escapes an astral character (an emoji) as two surrogates; a server that splits the
    pair across two deltas leaves each half alone in its own string. Once the deltas are
    joined, the halves are adjacent and this turns them into the one real character. A
    surrogate without its partner stays as it is (the store handles lone surrogates).
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "surrogatepass")


class SurrogateJoiner:
    """Holds back a trailing high surrogate of a delta until its partner arrives, so stream
    callbacks never see half of a character that the next delta completes."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> str:
        """The part of ``text`` (after anything held back) that can be passed on now."""
        if self._pending:
            text, self._pending = self._pending + text, ""
        elif text.isascii():
            return text  # the common case: no surrogate possible, no search
        if _SURROGATE.search(text) is None:
            return text
        if _HIGH_SURROGATE_END.search(text) is not None:
            text, self._pending = text[:-1], text[-1]
        return fix_surrogates(text)

    def flush(self) -> str:
        """Whatever is still held back (a lone high surrogate at the end of the stream)."""
        pending, self._pending = self._pending, ""
        return pending


class PendingDeltas:
    """Text and reasoning deltas decoded from one event, waiting for the stream callbacks.

    The accumulators queue deltas here while they decode an event and the provider passes
    them on afterwards, outside the decoding step, so that a fault in a callback is never
    mistaken for a malformed event. A surrogate pair split across deltas goes out whole.
    """

    __slots__ = ("_callbacks", "_joiners", "items")

    def __init__(self, callbacks: StreamCallbacks) -> None:
        self._callbacks = callbacks
        self._joiners = (SurrogateJoiner(), SurrogateJoiner())
        self.items: list[tuple[bool, str]] = []
        """``(is_reasoning, text)`` in arrival order."""

    def pass_on(self, *, final: bool = False) -> None:
        """Call the callbacks with the queued deltas; ``final`` also flushes what is held back."""
        callbacks = self._callbacks
        for is_reasoning, text in self.items:
            text = self._joiners[is_reasoning].feed(text)
            target = callbacks.on_reasoning_delta if is_reasoning else callbacks.on_text_delta
            if text and target:
                target(text)
        self.items.clear()
        if final:
            for is_reasoning in (True, False):
                rest = self._joiners[is_reasoning].flush()
                target = callbacks.on_reasoning_delta if is_reasoning else callbacks.on_text_delta
                if rest and target:
                    target(rest)


def _parse_event(raw: bytes) -> tuple[str | None, str | None]:
    name: str | None = None
    data: list[str] = []
    for line in raw.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(_text(value))
        elif field == b"event":
            name = _text(value)
    return name, "\n".join(data) if data else None


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LLMResponseError(f"the server sent an event that is not valid UTF-8 ({exc}): {value[:200]!r}") from exc


def _decode(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        snippet = data[:200]
        raise LLMResponseError(f"the server sent an event that is not JSON ({exc}): {snippet!r}") from exc


class EventStream:
    """The events of one streaming response (see the module docs).

    Args:
        response: The SDK's raw HTTP response (anything with ``aiter_bytes()`` and, optionally,
            ``headers``).
        provider: Provider name, for error messages.

    Attributes:
        saw_done: ``data: [DONE]`` arrived.
        document: The decoded body when the server answered with one JSON document instead of
            an event stream; None otherwise.
    """

    def __init__(self, response: Any, provider: str | None = None) -> None:
        self._response = response
        self._provider = provider
        self.saw_done = False
        self.document: Any = None
        headers = getattr(response, "headers", None)
        self._content_type = str(headers.get("content-type") or "") if headers is not None else ""

    def _not_a_stream(self, head: bytes) -> LLMResponseError:
        kind = self._content_type or "untyped"
        return LLMResponseError(
            f"the server answered a streaming request with a {kind} body that is neither an event "
            f"stream nor a JSON answer: {head[:200]!r}; check the base URL (a proxy or web page "
            "may be answering instead of the model server)",
            provider=self._provider,
        )

    async def events(self) -> AsyncIterator[tuple[str | None, Any]]:
        """Yield ``(event name, decoded JSON data)`` for each event.

        Stops at ``data: [DONE]`` (after draining the rest of the body, so the connection can
        be reused) or at the end of the body. Events without data are skipped.
        """
        chunks = self._response.aiter_bytes()
        sniffing = True
        head = b""
        buffer = bytearray()
        carry_cr = False  # a chunk ended in CR: it may be the first half of a CRLF
        done = False
        async for chunk in chunks:
            if done:
                continue  # drain
            if sniffing:
                # Whatever the content type says, look at the body: an event stream starts
                # with a field name, a complete JSON answer with "{"; anything else (an HTML
                # page from a proxy, say) is no answer at all.
                head += chunk
                start = head.lstrip()
                if start.startswith(_BOM):
                    start = start[len(_BOM) :]
                if start.startswith(b"{"):
                    self.document = await self._read_document(start, chunks)
                    return
                if not start.startswith(_SSE_FIELDS):
                    if any(field.startswith(start) for field in (_BOM, *_SSE_FIELDS)):
                        continue  # too few bytes yet to tell
                    raise self._not_a_stream(start)
                sniffing = False
                chunk, head = start, b""
            # Lines may end in CRLF, LF or a lone CR (the SSE grammar allows all three);
            # normalise each chunk to LF as it arrives, holding back a trailing CR until the
            # next chunk says whether an LF follows it.
            if carry_cr:
                chunk, carry_cr = b"\r" + chunk, False
            if b"\r" in chunk:
                if chunk.endswith(b"\r"):
                    chunk, carry_cr = chunk[:-1], True
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            # Search only the new bytes (and the one before them) for an event boundary: an
            # event far larger than one read must not be rescanned from its start each time.
            search = max(0, len(buffer) - 1)
            buffer += chunk
            pos = 0
            while True:
                end = buffer.find(b"\n\n", max(pos, search))
                if end < 0:
                    break
                raw, pos = bytes(buffer[pos:end]), end + 2
                name, data = _parse_event(raw)
                if data is None:
                    continue
                if data == "[DONE]":
                    done = self.saw_done = True
                    break
                yield name, _decode(data)
            if pos:
                del buffer[:pos]
        if not done and buffer.strip():
            # The last event may end at the end of the body without its blank line.
            name, data = _parse_event(bytes(buffer))
            if data == "[DONE]":
                self.saw_done = True
            elif data is not None:
                yield name, _decode(data)

    async def _read_document(self, buffer: bytes, chunks: AsyncIterator[bytes]) -> Any:
        parts = [buffer]
        size = len(buffer)
        async for chunk in chunks:
            parts.append(chunk)
            size += len(chunk)
            if size > _MAX_DOCUMENT:
                raise LLMResponseError(
                    f"the server's JSON answer exceeds {_MAX_DOCUMENT} bytes", provider=self._provider
                )
        body = b"".join(parts)
        try:
            return json.loads(body)
        except ValueError as exc:  # bad JSON, or bytes that are not UTF-8
            raise LLMResponseError(
                f"the server answered a streaming request with a body that is not valid JSON ({exc}): {body[:200]!r}",
                provider=self._provider,
            ) from exc


async def iter_sse(response: Any) -> AsyncIterator[tuple[str | None, Any]]:
    """Yield ``(event name, decoded JSON data)`` for each event of a streaming response
    (see :meth:`EventStream.events`)."""
    async for item in EventStream(response).events():
        yield item
