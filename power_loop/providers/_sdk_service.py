"""What the two SDK-backed providers share: their options, the lazily built SDK client, and
one place where SDK and transport errors are translated."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from .._types import HttpTransport
from ..errors import ConfigurationError, ControlSignal, LLMError
from ._common import (
    ClientHolder,
    build_http_client,
    check_http_transport,
    map_sdk_error,
    server_of,
    timeout_error,
)
from ._sdk_import import import_sdk

__all__ = ["SDKService"]

T = TypeVar("T")


class _DeadlinePassed(ControlSignal):
    """The attempt's ``timeout_s`` ran out."""


class SDKService:
    """Base of :class:`~power_loop.providers.openai.OpenAIChatService` and
    :class:`~power_loop.providers.anthropic.AnthropicMessagesService` (see their docs for the
    options)."""

    provider: str
    _sdk_name: ClassVar[str]
    _client_class: ClassVar[str]

    def __init__(
        self,
        *,
        model: str,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stream: bool = True,
        context_window: int | None = None,
        default_headers: Mapping[str, str] | None = None,
        client: Any = None,
        http_transport: HttpTransport = "native",
        prepared_requests: bool = True,
    ) -> None:
        if not model:
            raise ConfigurationError(f"{type(self).__name__} needs a model name")
        self.model = model
        self.api_key = api_key
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.stream = stream
        self.context_window = context_window
        self.default_headers = dict(default_headers or {})
        self.http_transport = check_http_transport(http_transport)
        self._holder = ClientHolder(client, prepared_requests=prepared_requests)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, base_url={self.base_url!r})"

    def _build(self, sdk: ModuleType) -> Any:
        return getattr(sdk, self._client_class)(
            api_key=self.api_key or "not-needed",
            base_url=self.base_url,
            max_retries=0,
            timeout=self.timeout_s,
            default_headers=self.default_headers or None,
            http_client=build_http_client(sdk, self.http_transport, self.timeout_s),
        )

    async def warm_up(self) -> None:
        """Import the SDK ahead of the first call, in a worker thread (once per process).

        ``StatefulAgentLoop.open()`` (and ``async with``) starts this in the background, so
        the first send does not wait for the import and the import's own pause falls at
        start-up rather than among the first requests. Unless ``POWER_LOOP_GC_FREEZE=0``, the
        objects alive after the import are then frozen out of the garbage collector's full
        passes (see the "Event loop and garbage collector" section of docs/providers.md).
        """
        await import_sdk(self._sdk_name)

    async def _client(self) -> tuple[Any, ModuleType]:
        """The SDK client for the running event loop, and the SDK module."""
        return await self._holder.ensure(self._sdk_name, self._build)

    async def _mapped(
        self, sdk: ModuleType, call: Callable[[], Awaitable[T]], *, client: Any, timeout: float | None
    ) -> T:
        """Await ``call()`` within ``timeout`` seconds, translating SDK and transport errors
        into power_loop's.

        ``timeout`` bounds the whole attempt, from sending the request to the last byte of the
        answer (a stream included), whatever the HTTP transport: the transports' own timeouts
        only bound single waits (connecting, each read), so a server dripping bytes would
        otherwise hold an attempt indefinitely.
        """
        try:
            if timeout is None:
                return await call()
            if sys.version_info >= (3, 11):
                scope = asyncio.timeout(timeout)
                try:
                    async with scope:
                        return await call()
                except TimeoutError as exc:
                    if scope.expired():
                        raise _DeadlinePassed from exc
                    raise
            try:  # pragma: no cover - Python 3.10
                return await asyncio.wait_for(call(), timeout)
            except asyncio.TimeoutError as exc:  # pragma: no cover - Python 3.10
                raise _DeadlinePassed from exc
        except _DeadlinePassed as exc:
            raise timeout_error(self.provider, server_of(client), timeout) from exc.__cause__
        except (asyncio.CancelledError, LLMError):
            raise
        except Exception as exc:
            mapped = map_sdk_error(exc, provider=self.provider, sdk=sdk, server=server_of(client), timeout=timeout)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._holder.aclose()
