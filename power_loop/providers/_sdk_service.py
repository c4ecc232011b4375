"""What the two SDK-backed providers share: their options, the lazily built SDK client, and
one place where SDK and transport errors are translated."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar, TypeVar

from ..errors import ConfigurationError
from ._common import ClientHolder, build_http_client, map_sdk_error

__all__ = ["SDKService"]

T = TypeVar("T")


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
        http_transport: str = "native",
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
        self.http_transport = http_transport
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

    async def _client(self) -> tuple[Any, ModuleType]:
        """The SDK client for the running event loop, and the SDK module."""
        return await self._holder.ensure(self._sdk_name, self._build)

    async def _mapped(self, sdk: ModuleType, call: Callable[[], Awaitable[T]]) -> T:
        """Await ``call()``, translating SDK and transport errors into power_loop's."""
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            mapped = map_sdk_error(exc, provider=self.provider, sdk=sdk)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        """Close the underlying HTTP client."""
        await self._holder.aclose()
