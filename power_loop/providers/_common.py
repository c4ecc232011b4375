"""Helpers shared by the provider modules: JSON bytes, memoised wire fragments, the lazily
built SDK client (its SDK imported by :mod:`._sdk_import`) and the SDK-error to
:mod:`power_loop.errors` translation rules."""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, TypeVar

from .._types import HTTP_TRANSPORTS, HttpTransport
from ..errors import (
    ConfigurationError,
    ControlSignal,
    LLMConnectionError,
    LLMError,
    LLMRateLimitError,
    LLMResponseError,
    LLMServerError,
    LLMStatusError,
    LLMTimeout,
)
from ._sdk_import import import_sdk

T = TypeVar("T")

_RETRYABLE_STATUS = frozenset({408, 409, 429})


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON, as the SDKs themselves send it (lone surrogates sent as U+FFFD)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate (a non-UTF-8 file name, a half escape)
        from ..messages import scrub_surrogates

        return scrub_surrogates(text).encode()


def memo(obj: object, key: str, build: Callable[[], T]) -> T:
    """Return ``build()`` cached on ``obj`` (a frozen dataclass instance) under ``key``.

    Messages and tool definitions are immutable, so their wire form never changes; caching it
    makes building a request cost a join of byte strings instead of re-encoding the history.
    """
    cache = obj.__dict__
    found = cache.get(key)
    if found is None:
        found = build()
        cache[key] = found
    return found


_SDK_LIBRARIES: dict[str, ModuleType] = {}


def sdk_http_library(sdk: ModuleType | None) -> ModuleType:
    """The HTTP library an SDK is built on: ``httpx2`` (this generation) or ``httpx`` (older
    releases), read off its default client's class rather than guessed from what is installed
    (another package may bring ``httpx2`` beside an SDK built on ``httpx``)."""
    key = getattr(sdk, "__name__", "")
    found = _SDK_LIBRARIES.get(key)
    if found is not None:
        return found
    library = None
    client = getattr(sdk, "DefaultAsyncHttpxClient", None)
    for cls in getattr(client, "__mro__", ()):
        root = cls.__module__.partition(".")[0]
        if cls.__name__ == "AsyncClient" and root in ("httpx", "httpx2"):
            library = sys.modules.get(root) or importlib.import_module(root)
            break
    if library is None:
        from ._transport import default_http_library

        library = default_http_library()
    if sdk is not None:
        _SDK_LIBRARIES[key] = library  # looked up per request
    return library


def http_response_class(sdk: ModuleType | None = None) -> type[Any]:
    """The HTTP response class of ``sdk``'s HTTP library (``httpx2``, or ``httpx`` for older SDKs).

    Passing it as ``cast_to`` makes an SDK return the raw response, whose JSON we decode
    ourselves (headers included, no per-field model building).
    """
    response: type[Any] = sdk_http_library(sdk).Response
    return response


def check_http_transport(transport: str) -> HttpTransport:
    """``transport`` if it names an HTTP transport, else a ``ValueError`` listing the choices."""
    if transport not in HTTP_TRANSPORTS:
        raise ValueError(f"http_transport must be 'native', 'httpx' or 'aiohttp', not {transport!r}")
    return transport


def build_http_client(sdk: ModuleType, transport: str, timeout_s: float) -> Any:
    """The HTTP client an SDK should use: ``None`` for the SDK's default, one on the native
    transport (see :mod:`power_loop.providers._transport`), or the SDK's own aiohttp-based
    client (``DefaultAioHttpClient``, installed by ``pip install power-loop[aiohttp]``).

    The native transport is skipped when the environment configures a proxy, which only the
    SDK's default transport (and its aiohttp client) honours.
    """
    check_http_transport(transport)
    if transport == "httpx":
        return None
    if transport == "aiohttp":
        return _aiohttp_client(sdk, timeout_s)
    from ._transport import native_transport, proxy_configured

    if proxy_configured():
        return None
    library = sdk_http_library(sdk)
    factory = getattr(sdk, "DefaultAsyncHttpxClient", None) or library.AsyncClient
    return factory(transport=native_transport(library), timeout=timeout_s)


def _aiohttp_client(sdk: ModuleType, timeout_s: float) -> Any:
    factory = getattr(sdk, "DefaultAioHttpClient", None)
    try:
        if factory is None:
            raise RuntimeError(f"{sdk.__name__} {getattr(sdk, '__version__', '')} has no DefaultAioHttpClient")
        return factory(timeout=timeout_s)
    except RuntimeError as exc:  # the SDK's placeholder class raises this when aiohttp is missing
        raise ConfigurationError(
            f"http_transport='aiohttp' needs the {sdk.__name__} SDK's aiohttp client: "
            f"install it with `pip install power-loop[aiohttp]`, or use http_transport='native' ({exc})"
        ) from exc


_HOOK_CHANGES = (AttributeError, TypeError, ImportError, LookupError)
"""What calling a renamed or reshaped private SDK hook raises (nothing here touches the network)."""


class HooksChanged(ControlSignal):
    """A private SDK hook of :class:`PreparedRequests` no longer works as expected: the
    client falls back to the SDK's public ``post``."""


class PreparedRequests:
    """POST requests prepared once by the SDK and re-sent with a new body.

    For every request, an SDK's ``post`` validates its options into a model, merges the base
    URL, builds the auth, platform and retry headers, and constructs the HTTP request: about
    150 µs per request on the event-loop thread, more than the rest of a round's kernel work.
    Here the SDK runs those steps once per endpoint and timeout (``_prepare_options``,
    ``_build_request``, ``_prepare_request``, exactly as its own ``post`` does); each call
    copies that request with the new body and sends it through the SDK client's HTTP client.
    Error statuses are raised as the SDK's own exceptions (``_make_status_error_from_response``),
    so error handling is unchanged.

    Only used for clients power_loop builds itself, and only while nothing about the client
    acts per request: no API-key provider (a callable key), custom auth, workload identity or
    middleware. The first request of a client (which lets the SDK resolve its platform
    headers) goes through ``client.post``. Cookies are taken from the client's jar for every
    request; transport failures are raised as the SDK's ``APITimeoutError`` /
    ``APIConnectionError``, and any non-2xx status as the SDK's status error, as ``post`` does.

    The private SDK names used, and what happens when a release renames one (the public
    ``client.post`` then carries every request; tests/test_sdk_compat.py renames each):

    * required: ``_prepare_options``, ``_build_request``, ``_prepare_request``,
      ``_make_status_error_from_response``, ``_client`` (the HTTP client),
      ``_idempotency_header`` and ``<sdk>._models.FinalRequestOptions``; when one is missing,
      or building a request with them fails with an error of shape (``AttributeError``,
      ``TypeError``, ``ImportError``, ``LookupError``), this client falls back to ``post``;
    * optional: ``_send_request`` (the SDK's send step; else the HTTP client's ``send``),
      ``_platform`` (set once the SDK resolved its platform headers; without it every request
      goes through ``post``), and ``_workload_identity_auth``, ``_middleware``,
      ``_api_key_provider``, which must be unset (absent counts as unset: older releases do
      not have them).
    """

    _REQUIRED = (
        "_build_request",
        "_prepare_options",
        "_prepare_request",
        "_make_status_error_from_response",
        "_client",
        "_idempotency_header",
    )

    def __init__(self, client: Any, sdk: ModuleType, options_class: Any) -> None:
        self.client = client
        self._sdk = sdk
        self._options_class = options_class
        self._templates: dict[tuple[str, Any], tuple[Any, Any, Any, Any]] = {}
        self._idempotency_header: str | None = getattr(client, "_idempotency_header", None)

    @classmethod
    def for_client(cls, client: Any, sdk: ModuleType) -> PreparedRequests | None:
        """Prepared requests for ``client``, or None when its SDK lacks a hook used here or
        the client acts per request (then every request goes through ``client.post``)."""
        if not cls.supported(client):
            return None
        try:
            options_class = importlib.import_module(f"{sdk.__name__}._models").FinalRequestOptions
        except (ImportError, AttributeError):  # the SDK moved its private request options
            return None
        return cls(client, sdk, options_class)

    @classmethod
    def supported(cls, client: Any) -> bool:
        """True when ``client`` has the SDK hooks used here and nothing that acts per request."""
        return (
            all(hasattr(client, name) for name in cls._REQUIRED)
            and getattr(client, "custom_auth", None) is None
            and getattr(client, "_workload_identity_auth", None) is None
            and not getattr(client, "_middleware", ())
            and getattr(client, "_api_key_provider", None) is None
        )

    def ready(self) -> bool:
        """True once the SDK has resolved its platform headers (its first request does)."""
        return getattr(self.client, "_platform", None) is not None

    async def _template(self, path: str, options: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
        key = (path, options.get("timeout"))
        found = self._templates.get(key)
        if found is None:
            client = self.client
            try:
                opts = self._options_class.construct(method="post", url=path, content=b"", **options)
                opts = await client._prepare_options(opts)
                request = client._build_request(opts, retries_taken=0)
                await client._prepare_request(request)
                drop = {b"content-length", b"cookie"}
                if self._idempotency_header:
                    drop.add(self._idempotency_header.lower().encode())
                headers = type(request.headers)([(k, v) for k, v in request.headers.raw if k.lower() not in drop])
                found = (type(request), request.url, headers, dict(request.extensions))
            except _HOOK_CHANGES as exc:
                raise HooksChanged(f"the {self._sdk.__name__} SDK's private request hooks changed: {exc!r}") from exc
            if len(self._templates) >= 32:  # callers varying timeout_s per request: stay bounded
                self._templates.clear()
            self._templates[key] = found
        return found

    async def post(self, path: str, body: bytes, options: Mapping[str, Any], *, stream: bool) -> Any:
        """Send ``body`` to ``path``; the raw HTTP response (read unless ``stream``)."""
        request_class, url, headers, extensions = await self._template(path, options)
        request = request_class("POST", url, headers=headers, content=body, extensions=extensions)
        if self._idempotency_header:
            request.headers[self._idempotency_header] = f"stainless-python-retry-{uuid.uuid4()}"
        client = self.client
        http = client._client
        cookies = getattr(http, "cookies", None)
        if cookies:
            cookies.set_cookie_header(request)
        send = getattr(client, "_send_request", None)  # the SDK's send step (auth retry), when it has one
        try:
            response = await (send(request, stream=stream) if send is not None else http.send(request, stream=stream))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # As the SDK's post does: timeouts and any other transport failure become its errors.
            if "Timeout" in type(exc).__name__:
                raise self._sdk.APITimeoutError(request=request) from exc
            raise self._sdk.APIConnectionError(request=request) from exc
        if not 200 <= response.status_code < 300:
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise client._make_status_error_from_response(response)
        return response


class ClientHolder:
    """A lazily built SDK client, rebuilt when used from a different event loop.

    HTTP connections belong to the loop that opened them; ``send_sync`` runs each call in a
    fresh loop, so a client must not outlive its loop.
    """

    def __init__(self, client: Any = None, *, prepared_requests: bool = True) -> None:
        self.client = client
        self.given = client is not None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sdk: ModuleType | None = None
        self._building: asyncio.Future[None] | None = None
        self.use_prepared = prepared_requests and not self.given
        self._prepared: PreparedRequests | None = None
        self._checked: Any = None

    async def post(
        self, client: Any, sdk: ModuleType, path: str, body: bytes, options: Mapping[str, Any], *, stream: bool
    ) -> Any:
        """POST ``body`` through ``client`` (see :class:`PreparedRequests`); the raw response."""
        if self.use_prepared:
            if self._checked is not client:
                self._checked = client
                self._prepared = PreparedRequests.for_client(client, sdk)
            prepared = self._prepared
            if prepared is not None and prepared.ready():
                try:
                    return await prepared.post(path, body, options, stream=stream)
                except HooksChanged as exc:
                    # Raised before anything was sent: this request and the later ones take
                    # the SDK's public path, which does the same work per request.
                    logging.getLogger("power_loop.providers").info("%s; using the SDK's public post", exc)
                    self._prepared = None
        return await client.post(path, cast_to=http_response_class(sdk), content=body, options=options, stream=stream)

    def current(self) -> Any:
        """The client if it is usable on the running loop, else None."""
        if self.client is None or self.sdk is None:
            return None
        if not self.given and self.loop is not asyncio.get_running_loop():
            return None
        return self.client

    async def ensure(self, sdk_name: str, build: Callable[[ModuleType], Any]) -> tuple[Any, ModuleType]:
        """The client and SDK module, building the client (off the loop's import) if needed."""
        while True:
            client = self.current()
            if client is not None:
                assert self.sdk is not None
                return client, self.sdk
            building = self._building
            if building is None or building.get_loop() is not asyncio.get_running_loop():
                break
            await asyncio.shield(building)  # another call is building the client
        self._building = asyncio.get_running_loop().create_future()
        try:
            sdk = await import_sdk(sdk_name)
            if not self.given:
                self.client = build(sdk)
                self.loop = asyncio.get_running_loop()
            self.sdk = sdk
        finally:
            done, self._building = self._building, None
            done.set_result(None)
        return self.client, sdk

    async def aclose(self) -> None:
        """Close the client power_loop built (on its own loop); a client you passed in is
        yours to close and stays usable."""
        if self.given:
            return
        client, self.client = self.client, None
        self._prepared = self._checked = None
        if client is not None and self.loop is asyncio.get_running_loop():
            await client.close()


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (delta seconds or HTTP date)."""
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms:
        try:
            return _bounded_wait(float(raw_ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return _bounded_wait(float(raw))
    except ValueError:
        pass
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None  # unreadable: fall back to the policy's own backoff
    if parsed is None:
        return None
    return _bounded_wait(parsed.timestamp() - time.time())


MAX_RETRY_AFTER_S = 120.0
"""The longest ``Retry-After`` honoured; a longer or non-finite one falls back to backoff."""


def _bounded_wait(seconds: float) -> float | None:
    if not math.isfinite(seconds) or seconds > MAX_RETRY_AFTER_S:
        return None
    return max(0.0, seconds)


def status_error(
    message: str,
    *,
    provider: str,
    status: int,
    request_id: str | None,
    headers: Mapping[str, str] | None,
) -> LLMError:
    """The error for an HTTP error status (429 and 5xx retryable, 408/409 too, other 4xx not)."""
    retry_after = parse_retry_after(headers)
    text = f"{provider} returned HTTP {status}: {message}"
    if status == 429:
        return LLMRateLimitError(
            text, provider=provider, status_code=status, request_id=request_id, retry_after=retry_after
        )
    if status >= 500:
        return LLMServerError(
            text, provider=provider, status_code=status, request_id=request_id, retry_after=retry_after
        )
    hint = ""
    if status in (401, 403):
        hint = " (check the API key and its permissions)"
    elif status == 404:
        hint = " (check the base URL and the model name)"
    elif status == 400:
        hint = " (the request was rejected as invalid; it is not retried)"
    return LLMStatusError(
        text + hint,
        provider=provider,
        status_code=status,
        retryable=status in _RETRYABLE_STATUS,
        request_id=request_id,
        retry_after=retry_after,
    )


def json_answer(raw: Any, provider: str) -> Any:
    """The decoded JSON body of a non-streamed answer; ``LLMResponseError`` if it is not JSON."""
    try:
        return raw.json()
    except ValueError as exc:  # not JSON, or not UTF-8
        raise LLMResponseError(
            f"the server's answer is not JSON ({exc}): {raw.content[:200]!r}", provider=provider
        ) from exc


def stream_error(provider: str, error: Any, request_id: str | None) -> LLMError:
    """The error for an error event inside a stream (the HTTP status was already 200).

    Read from the error's ``type`` (Anthropic and OpenAI name the kind there) and, for
    OpenAI-compatible servers and proxies, its ``code`` (``"rate_limit_exceeded"``, or an
    HTTP status such as ``429``). Overload and rate-limit errors are retryable, like their
    HTTP counterparts; an invalid request, a failed authentication or an exhausted quota is
    not.
    """
    message = error.get("message") if isinstance(error, Mapping) else str(error)
    kind = str(error.get("type") or "") if isinstance(error, Mapping) else ""
    code = error.get("code") if isinstance(error, Mapping) else None
    code_text = str(code or "").strip().lower()
    text = f"{provider} reported an error while streaming: {message or kind or error!r}"
    status = _status_code(code) or _status_code(error.get("status") if isinstance(error, Mapping) else None)
    if (
        kind in ("invalid_request_error", "authentication_error", "permission_error", "not_found_error")
        or code_text in _FATAL_CODES
        or kind in _FATAL_CODES
    ):
        return LLMStatusError(text, provider=provider, retryable=False, request_id=request_id)
    if kind == "rate_limit_error" or code_text in _RATE_LIMIT_CODES or kind in _RATE_LIMIT_CODES or status == 429:
        return LLMRateLimitError(text, provider=provider, request_id=request_id)
    if status is not None and 400 <= status < 500:
        return LLMStatusError(text, provider=provider, retryable=status in _RETRYABLE_STATUS, request_id=request_id)
    return LLMServerError(text, provider=provider, request_id=request_id)


_RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded", "rate_limit_error", "rate_limited", "too_many_requests"})
_FATAL_CODES = frozenset({"insufficient_quota", "invalid_api_key", "model_not_found", "context_length_exceeded"})


def _status_code(value: Any) -> int | None:
    """An HTTP status carried as an error ``code`` (``429`` or ``"429"``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    return number if 400 <= number < 600 else None


DECODING_FAULTS: tuple[type[Exception], ...] = (AttributeError, TypeError, ValueError, LookupError)
"""What decoding a malformed answer raises (a ``null`` where an object belongs, a string
where a number belongs, bytes that are not UTF-8, ...); each becomes an ``LLMResponseError``."""


def server_of(client: Any) -> str:
    """``host[:port]`` of the server an SDK client talks to, for error messages."""
    url = getattr(client, "base_url", None)
    host = getattr(url, "host", None)
    if not host:
        return str(url or "the server")
    port = getattr(url, "port", None)
    return f"{host}:{port}" if port else str(host)


def response_fault(provider: str, what: str, value: Any, exc: BaseException) -> LLMResponseError:
    """The error for ``value`` (a decoded event or answer) that has the wrong shape."""
    snippet = repr(value)
    if len(snippet) > 200:
        snippet = snippet[:200] + "..."
    return LLMResponseError(
        f"{provider} sent {what} that cannot be decoded ({type(exc).__name__}: {exc}): {snippet}; "
        "the server does not speak the protocol as expected (check the base URL, the provider "
        "setting and any proxy in between)",
        provider=provider,
    )


def truncated_stream(provider: str, client: Any, detail: str) -> LLMConnectionError:
    """The error for an event stream that ended before its terminal event."""
    return LLMConnectionError(
        f"the {provider} event stream from {server_of(client)} ended before its final event ({detail}): "
        "the connection was cut or the server stopped mid-answer; the partial answer was "
        "discarded and the call can be retried",
        provider=provider,
    )


def timeout_error(provider: str, server: str, timeout: float | None) -> LLMTimeout:
    """The error for an attempt that ran out of time, worded the same for every transport."""
    limit = f" after {timeout:g}s" if timeout is not None else ""
    return LLMTimeout(
        f"{provider} request to {server} timed out{limit} (timeout_s bounds each attempt: "
        "connecting, sending the request and receiving the whole answer); it can be retried. "
        "If the server is just slow or answers are long, raise timeout_s (or LLMRequest.timeout_s)",
        provider=provider,
    )


def connection_error(provider: str, server: str, exc: BaseException) -> LLMConnectionError:
    """The error for a failed or dropped connection, worded the same for every transport."""
    return LLMConnectionError(
        f"connection to {provider} at {server} failed: {_reason(exc)}; it can be retried. "
        "If it persists, check that the server is running and that base_url is right",
        provider=provider,
    )


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        # ``raise ... from None`` hides the context on purpose (a low-level message replaced
        # by a clearer one): do not dig it back up.
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def _socket_failure(exc: BaseException) -> bool:
    """True when a "timeout" was really a refused or failed socket (the SDKs' aiohttp client
    reports a refused connection as a connect timeout)."""
    return any(isinstance(e, OSError) and not isinstance(e, TimeoutError) for e in _chain(exc)[1:])


def _reason(exc: BaseException) -> str:
    """The most telling message along ``exc``'s chain of causes (SDK errors say only
    "Connection error."; the transport's own error says what happened)."""
    seen = _chain(exc)
    for candidate in reversed(seen):
        text = str(candidate).strip()
        if text and text not in ("Connection error.", "Request timed out."):
            return text
    return type(seen[-1]).__name__


def map_sdk_error(
    exc: BaseException,
    *,
    provider: str,
    sdk: ModuleType,
    server: str = "the server",
    timeout: float | None = None,
) -> LLMError | None:
    """Translate an SDK or transport exception; None when ``exc`` is not one of theirs.

    ``sdk`` is the imported ``openai`` or ``anthropic`` module; both expose the same
    exception names. ``server`` and ``timeout`` go into the messages, which read the same
    whichever HTTP transport raised.
    """
    if isinstance(exc, sdk.APITimeoutError) and not _socket_failure(exc):
        return timeout_error(provider, server, timeout)
    if isinstance(exc, sdk.APIConnectionError):
        return connection_error(provider, server, exc)
    if isinstance(exc, sdk.APIStatusError):
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None)
        return status_error(
            _api_message(exc),
            provider=provider,
            status=int(exc.status_code),
            request_id=getattr(exc, "request_id", None),
            headers=headers,
        )
    if isinstance(exc, sdk.APIError):
        # An error event inside an otherwise successful stream: the provider failed mid-answer.
        return LLMServerError(f"{provider} reported an error while streaming: {exc}", provider=provider)
    name = type(exc).__module__.split(".")[0]
    if name in ("httpx", "httpx2", "httpcore", "httpcore2", "aiohttp"):
        if "Timeout" in type(exc).__name__ and not _socket_failure(exc):
            return timeout_error(provider, server, timeout)
        return connection_error(provider, server, exc)
    return None


def _api_message(exc: BaseException) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, Mapping):
        error = body.get("error", body)
        if isinstance(error, Mapping) and isinstance(error.get("message"), str):
            return str(error["message"])
    return str(getattr(exc, "message", exc))
