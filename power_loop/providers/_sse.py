"""Server-sent events read straight from the SDK's streaming HTTP response.

The provider SDKs build and send the request, authenticate it and turn error statuses into
exceptions; the response body of a successful streaming call is then parsed here instead of
through the SDKs' stream classes. Those stack several async generators and a line-by-line
decoder per event; splitting the byte stream on blank lines and decoding each ``data:``
payload once does the same work at a fraction of the cost on the event-loop thread.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ..errors import LLMResponseError

__all__ = ["iter_sse"]


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
            data.append(value.decode("utf-8"))
        elif field == b"event":
            name = value.decode("utf-8")
    return name, "\n".join(data) if data else None


async def iter_sse(response: Any) -> AsyncIterator[tuple[str | None, Any]]:
    """Yield ``(event name, decoded JSON data)`` for each event of a streaming response.

    Stops at ``data: [DONE]`` (after draining the rest of the body, so the connection can be
    reused) or at the end of the body. Events without data are skipped.
    """
    buffer = b""
    done = False
    async for chunk in response.aiter_bytes():
        if done:
            continue  # drain
        buffer += chunk
        if b"\r" in buffer:
            buffer = buffer.replace(b"\r\n", b"\n")
        while True:
            end = buffer.find(b"\n\n")
            if end < 0:
                break
            raw, buffer = buffer[:end], buffer[end + 2 :]
            name, data = _parse_event(raw)
            if data is None:
                continue
            if data == "[DONE]":
                done = True
                break
            yield name, _decode(data)
    if not done and buffer.strip():
        name, data = _parse_event(buffer)
        if data is not None and data != "[DONE]":
            yield name, _decode(data)


def _decode(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError as exc:
        snippet = data[:200]
        raise LLMResponseError(f"the server sent an event that is not JSON ({exc}): {snippet!r}") from exc
