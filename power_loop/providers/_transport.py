"""A lean HTTP/1.1 transport for the provider SDKs' HTTP client.

The official SDKs send requests through an ``httpx2`` (or ``httpx``) client; everything
above the transport (request building, auth headers, status errors) stays theirs, and the
providers decode the event stream themselves (:mod:`power_loop.providers._sse`). The
default transport's connection pool probes every idle socket with a ``select`` and
``getpeername`` each time a request is assigned or released: with fifty sessions in
flight that is thousands of syscalls per second on the event-loop thread, and the main cause
of multi-millisecond loop stalls under load.

This transport keeps per-host deques of idle asyncio streams instead. asyncio already
notices a server closing an idle keep-alive connection (the stream reader sees EOF), so
reuse needs no probing. It speaks plain HTTP/1.1 (content-length, chunked and close-delimited
bodies), TLS through ``ssl``, and retries a request once on a fresh connection when a reused
one turns out to have been closed before any response byte arrived. A connection goes back to
the pool only as the HTTP/1.x persistence rules allow: not after ``Connection: close``, an
HTTP/1.0 response without ``Connection: keep-alive``, or a body delimited by the close.

Its timeouts bound single waits (connecting, each read); the providers bound each attempt as
a whole by ``timeout_s``, the same on every transport.

Not supported: proxies and HTTP/2. Providers fall back to the SDK's default transport when a
proxy is configured in the environment, or when asked to (``http_transport="httpx"``).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import ssl
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .._fairness import EVENT_LOOP_GATE
from ..errors import ControlSignal

if TYPE_CHECKING:  # the annotations; at run time each class is built on its SDK's library
    import httpx2 as httpx

__all__ = ["default_http_library", "native_transport", "proxy_configured"]

_MAX_HEAD = 64 * 1024
_READ_SIZE = 64 * 1024
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy")

_Key = tuple[bytes, bytes, int]


def proxy_configured() -> bool:
    """True when the environment asks HTTP clients to use a proxy."""
    return any(os.environ.get(name) or os.environ.get(name.upper()) for name in _PROXY_VARS)


async def _timed(awaitable: Any, timeout: float | None, error: type[Exception], what: str) -> Any:
    if timeout is None:
        return await awaitable
    try:
        if sys.version_info >= (3, 11):
            async with asyncio.timeout(timeout):
                return await awaitable
        return await asyncio.wait_for(awaitable, timeout)
    except asyncio.TimeoutError:
        raise error(f"{what} timed out after {timeout}s") from None


def _build(lib: Any) -> Any:
    """The transport classes built on ``lib``, the HTTP library (``httpx2`` or ``httpx``) of
    the SDK that will use them: its client checks that responses and streams are its own
    library's, so a transport for one cannot serve the other."""

    class _StaleConnection(ControlSignal):
        """A reused connection was closed by the server before any response byte arrived."""

    class _Connection:
        __slots__ = ("idle_since", "key", "reader", "writer")

        def __init__(self, key: _Key, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.key = key
            self.reader = reader
            self.writer = writer
            self.idle_since = 0.0

        def alive(self) -> bool:
            return not self.writer.is_closing() and not self.reader.at_eof()

        def clean(self) -> bool:
            """True when no unread byte waits on the connection.

            A server that sent more than its ``Content-Length`` left bytes that would be read as
            the head of the next response; such a connection must not carry another request.
            ``StreamReader`` has no public accessor for its buffer.
            """
            return not getattr(self.reader, "_buffer", b"")

        def close(self) -> None:
            if not self.writer.is_closing():
                self.writer.close()

    class NativeTransport(lib.AsyncBaseTransport):  # type: ignore[misc]
        """An ``httpx`` transport with a probe-free keep-alive pool (see the module docs).

        Args:
            ssl_context: TLS settings (default: ``ssl.create_default_context()``).
            max_idle_per_host: Idle connections kept per host.
            keepalive_expiry: Seconds an idle connection is kept.
        """

        def __init__(
            self,
            *,
            ssl_context: ssl.SSLContext | None = None,
            max_idle_per_host: int = 128,
            keepalive_expiry: float = 30.0,
        ) -> None:
            self._ssl = ssl_context
            self._max_idle = max_idle_per_host
            self._expiry = keepalive_expiry
            self._idle: dict[_Key, deque[_Connection]] = {}
            self._closed = False

        def _ssl_context(self) -> ssl.SSLContext:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return self._ssl

        async def _open(self, key: _Key, timeout: float | None) -> _Connection:
            scheme, host, port = key
            use_tls = scheme == b"https"
            try:
                reader, writer = await _timed(
                    asyncio.open_connection(
                        host.decode("ascii"),
                        port,
                        ssl=self._ssl_context() if use_tls else None,
                        server_hostname=host.decode("ascii") if use_tls else None,
                        limit=_MAX_HEAD,
                    ),
                    timeout,
                    lib.ConnectTimeout,
                    "connecting",
                )
            except (OSError, ssl.SSLError) as exc:
                raise lib.ConnectError(f"could not connect to {host.decode()}:{port}: {exc}") from exc
            return _Connection(key, reader, writer)

        def _take_idle(self, key: _Key) -> _Connection | None:
            pool = self._idle.get(key)
            now = time.monotonic()
            while pool:
                conn = pool.pop()
                if conn.alive() and conn.clean() and now - conn.idle_since < self._expiry:
                    return conn
                conn.close()
            return None

        def _release(self, conn: _Connection) -> None:
            pool = self._idle.setdefault(conn.key, deque())
            if self._closed or len(pool) >= self._max_idle or not conn.alive() or not conn.clean():
                conn.close()
                return
            conn.idle_since = time.monotonic()
            pool.append(conn)

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            """Send ``request`` and return a response whose body streams from the connection."""
            url = request.url
            scheme = url.raw_scheme
            if scheme not in (b"http", b"https"):
                raise lib.UnsupportedProtocol(f"unsupported URL scheme {scheme.decode()!r}")
            port = url.port or (443 if scheme == b"https" else 80)
            key: _Key = (scheme, url.raw_host, port)
            timeouts = request.extensions.get("timeout") or {}
            payload = await _encode_request(request)
            for attempt in (0, 1):
                conn = self._take_idle(key) if attempt == 0 else None  # the retry uses a fresh connection
                reused = conn is not None
                if conn is None:
                    conn = await self._open(key, timeouts.get("connect"))
                try:
                    conn.writer.write(payload)
                    await _timed(conn.writer.drain(), timeouts.get("write"), lib.WriteTimeout, "sending the request")
                    status, reason, headers, version = await _read_head(conn, timeouts.get("read"), reused)
                except _StaleConnection:
                    conn.close()
                    if attempt == 0:
                        continue
                    raise lib.RemoteProtocolError("the server closed the connection without a response") from None
                except (ConnectionError, OSError) as exc:
                    conn.close()
                    if reused and attempt == 0 and isinstance(exc, (BrokenPipeError, ConnectionResetError)):
                        continue
                    raise lib.WriteError(f"connection lost while sending the request: {exc}") from exc
                except BaseException:
                    conn.close()
                    raise
                # Decoding the response (the SDK's models, the run folding it in) is the other
                # heavy step of a round: responses that arrive together take turns.
                try:
                    await EVENT_LOOP_GATE.turn()
                except BaseException:  # cancelled while waiting: the response is never read
                    conn.close()
                    raise
                stream = _ResponseBody(self, conn, request.method, status, headers, timeouts.get("read"), version)
                response: httpx.Response = lib.Response(
                    status,
                    headers=headers,
                    stream=stream,
                    extensions={"http_version": version, "reason_phrase": reason},
                )
                return response
            raise AssertionError("unreachable")  # pragma: no cover

        async def aclose(self) -> None:
            """Close every idle connection (responses still streaming close when done)."""
            self._closed = True
            for pool in self._idle.values():
                while pool:
                    pool.pop().close()
            self._idle.clear()

    async def _encode_request(request: httpx.Request) -> bytes:
        chunks = [chunk async for chunk in request.stream]  # type: ignore[union-attr]
        body = b"".join(chunks)
        target = request.url.raw_path or b"/"
        lines = [request.method.encode("ascii") + b" " + target + b" HTTP/1.1"]
        chunked = False
        for name, value in request.headers.raw:
            if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
                chunked = True
            lines.append(name + b": " + value)
        head = b"\r\n".join(lines) + b"\r\n\r\n"
        if chunked:
            body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        return head + body

    async def _read_head(
        conn: _Connection, timeout: float | None, reused: bool
    ) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
        while True:
            try:
                raw = await _timed(
                    conn.reader.readuntil(b"\r\n\r\n"), timeout, lib.ReadTimeout, "waiting for the response"
                )
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise _StaleConnection from None
                raise lib.RemoteProtocolError("the server closed the connection mid-response") from None
            except asyncio.LimitOverrunError:
                raise lib.RemoteProtocolError("response headers are too large") from None
            except (ConnectionResetError, BrokenPipeError):
                if reused:
                    raise _StaleConnection from None
                raise
            lines = raw[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise lib.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}")
            try:
                status = int(parts[1])
            except ValueError:
                raise lib.RemoteProtocolError(f"malformed status line {lines[0][:80]!r}") from None
            headers: list[tuple[bytes, bytes]] = []
            for line in lines[1:]:
                name, sep, value = line.partition(b":")
                if not sep:
                    raise lib.RemoteProtocolError(f"malformed header line {line[:80]!r}")
                headers.append((name.strip(), value.strip()))
            if 100 <= status < 200 and status != 101:
                continue  # interim response (100 Continue): the real one follows
            reason = parts[2] if len(parts) > 2 else b""
            return status, reason, headers, parts[0]

    def _persistent(version: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the connection may carry another request after this response (RFC 9112 9.3).

        HTTP/1.1 and later keep the connection unless the server sends ``Connection: close``;
        HTTP/1.0 closes it unless the server sends ``Connection: keep-alive``. ``Connection`` may
        be repeated and lists comma-separated, case-insensitive options.
        """
        options: set[bytes] = set()
        for name, value in headers:
            if name.lower() == b"connection":
                options.update(option.strip().lower() for option in value.split(b","))
        if b"close" in options:
            return False
        major, _, minor = version.partition(b"/")[2].partition(b".")
        try:
            modern = (int(major), int(minor or b"0")) >= (1, 1)
        except ValueError:
            return False  # an unreadable version: do not bet a later request on this connection
        return modern or b"keep-alive" in options

    class _ResponseBody(lib.AsyncByteStream):  # type: ignore[misc]
        """The body of one response; returns the connection to the pool once fully read.

        Reads whatever the socket has (up to 64 KiB) and yields it in one piece, decoding chunked
        framing from its own buffer: a burst of small server-sent events costs one read and one
        yield to the event-stream decoder instead of one per event. The read timeout is an idle
        timeout: one timer per response, re-armed lazily, instead of one per read.
        """

        def __init__(
            self,
            transport: NativeTransport,
            conn: _Connection,
            method: str,
            status: int,
            headers: list[tuple[bytes, bytes]],
            timeout: float | None,
            version: bytes = b"HTTP/1.1",
        ) -> None:
            self._transport = transport
            self._conn: _Connection | None = conn
            self._timeout = timeout
            names = {k.lower(): v for k, v in headers}
            self._keep_alive = _persistent(version, headers)
            self._length: int | None = None
            self._chunked = False
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                self._length = 0
            elif b"chunked" in names.get(b"transfer-encoding", b"").lower():
                self._chunked = True
            elif b"content-length" in names:
                try:
                    self._length = int(names[b"content-length"])
                except ValueError:
                    raise lib.RemoteProtocolError("malformed Content-Length") from None
            else:
                self._keep_alive = False  # delimited by the server closing the connection
            self._buffer = bytearray()
            self._done = False
            self._last_read = 0.0
            self._timer: asyncio.TimerHandle | None = None
            self._reader_task: asyncio.Task[Any] | None = None
            self._timed_out = False

        # -- idle timeout -----------------------------------------------------------------

        def _arm(self) -> None:
            assert self._timeout is not None
            loop = asyncio.get_running_loop()
            self._last_read = loop.time()
            self._timer = loop.call_later(self._timeout, self._check_idle)

        def _check_idle(self) -> None:
            assert self._timeout is not None
            loop = asyncio.get_running_loop()
            idle = loop.time() - self._last_read
            if idle < self._timeout:
                self._timer = loop.call_later(self._timeout - idle, self._check_idle)
                return
            self._timed_out = True
            if self._reader_task is not None:
                self._reader_task.cancel()

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        async def _read(self, reader: asyncio.StreamReader, limit: int) -> bytes:
            self._reader_task = asyncio.current_task()
            try:
                data = await reader.read(limit)
            except asyncio.CancelledError:
                if self._timed_out:
                    raise lib.ReadTimeout(f"no data from the server for {self._timeout}s") from None
                raise
            if self._timer is not None:
                self._last_read = asyncio.get_running_loop().time()
            return data

        # -- body -------------------------------------------------------------------------
        #
        # The decoding state lives on the object, not in a generator: the SDK iterates the
        # stream a second time after the final server-sent event to drain the rest of the body,
        # and that second iteration must continue where the first stopped.

        async def __aiter__(self) -> AsyncIterator[bytes]:
            while True:
                piece = await self._next_piece()
                if piece is None:
                    return
                yield piece

        async def _next_piece(self) -> bytes | None:
            conn = self._conn
            if conn is None:
                return None
            if self._timeout is not None and self._timer is None:
                self._arm()
            try:
                if self._chunked:
                    piece = await self._next_chunked(conn.reader)
                elif self._length is not None:
                    piece = await self._next_sized(conn.reader)
                else:
                    piece = await self._read(conn.reader, _READ_SIZE) or None
                    if piece is None:
                        self._done = True
            except (ConnectionError, OSError) as exc:
                self._discard()
                raise lib.ReadError(f"connection lost while reading the response: {exc}") from exc
            except BaseException:
                self._discard()
                raise
            if self._done:
                self._finish()
            return piece

        async def _next_sized(self, reader: asyncio.StreamReader) -> bytes | None:
            assert self._length is not None
            if self._length == 0:
                self._done = True
                return None
            data = await self._read(reader, min(self._length, _READ_SIZE))
            if not data:
                raise lib.RemoteProtocolError("the server closed the connection mid-body")
            self._length -= len(data)
            if self._length == 0:
                self._done = True
            return data

        async def _next_chunked(self, reader: asyncio.StreamReader) -> bytes | None:
            buffer = self._buffer
            while True:
                out = bytearray()
                while True:  # decode every complete chunk already buffered
                    line_end = buffer.find(b"\r\n")
                    if line_end < 0:
                        break
                    try:
                        size = int(bytes(buffer[:line_end]).split(b";", 1)[0].strip(), 16)
                    except ValueError:
                        raise lib.RemoteProtocolError("malformed chunked body") from None
                    if size == 0:
                        if buffer.find(b"\r\n\r\n", line_end) < 0:
                            break  # trailers (or the final empty line) not complete yet
                        buffer.clear()
                        self._done = True
                        return bytes(out) if out else None
                    if len(buffer) < line_end + 2 + size + 2:
                        break
                    out += buffer[line_end + 2 : line_end + 2 + size]
                    del buffer[: line_end + 2 + size + 2]
                if out:
                    return bytes(out)
                data = await self._read(reader, _READ_SIZE)
                if not data:
                    raise lib.RemoteProtocolError("the server closed the connection mid-body")
                buffer += data

        def _finish(self) -> None:
            self._disarm()
            conn, self._conn = self._conn, None
            if conn is None:
                return
            if self._keep_alive:
                self._transport._release(conn)
            else:
                conn.close()

        def _discard(self) -> None:
            self._disarm()
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

        async def aclose(self) -> None:
            """Close before the body was fully read: the connection cannot be reused."""
            self._disarm()
            self._discard()

    return NativeTransport


_BUILT: dict[str, Any] = {}


def native_transport(lib: ModuleType | None = None, **options: Any) -> Any:
    """A :class:`NativeTransport` for an SDK built on ``lib`` (``httpx2`` or ``httpx``; by
    default ``httpx2`` when installed, else ``httpx``); ``options`` are its keyword arguments."""
    if lib is None:
        lib = default_http_library()
    cls = _BUILT.get(lib.__name__)
    if cls is None:
        cls = _BUILT[lib.__name__] = _build(lib)
    return cls(**options)


def default_http_library() -> ModuleType:
    """``httpx2`` when installed (the SDKs of this generation), else ``httpx``."""
    try:
        return importlib.import_module("httpx2")
    except ImportError:  # pragma: no cover - exercised only with older SDKs
        return importlib.import_module("httpx")
