"""Build a provider from a config object or from the environment.

Environment variables (``P`` is the prefix, ``POWER_LOOP`` by default; each falls back to the
same name under ``OPENAI_COMPAT``):

=====================  ==========================================  =========
variable               meaning                                     default
=====================  ==========================================  =========
``P_BASE_URL``         server base URL                             required
``P_API_KEY``          API key                                     required
``P_MODEL``            model name                                  required
``P_PROVIDER``         ``openai`` or ``anthropic``                 openai
``P_TIMEOUT_S``        time limit of each attempt (seconds)        60
``P_MAX_TOKENS``       cap on completion tokens per call           none
``P_TEMPERATURE``      default temperature                         none
``P_MAX_RETRIES``      retries for transient errors                3
``P_CONTEXT_WINDOW``   the model's context window (tokens)         none
``P_HTTP_TRANSPORT``   ``native``, ``httpx`` or ``aiohttp``        native
=====================  ==========================================  =========

Values in the process environment win over a ``.env`` file, which is read (never written
into ``os.environ``) through python-dotenv.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, cast

from .._types import HTTP_TRANSPORTS, HttpTransport
from ..errors import ConfigurationError
from .base import LLMService

__all__ = [
    "LLMProviderConfig",
    "create_llm_service_from_config",
    "create_llm_service_from_env",
    "provider_config_from_env",
]

ProviderName = Literal["openai", "anthropic"]


@dataclass(frozen=True)
class LLMProviderConfig:
    """Everything needed to build a provider.

    The first nine fields may be given by position in 0.11's order
    (``LLMProviderConfig(base_url, api_key, model, provider, ...)``); the rest are keyword-only.

    Attributes:
        base_url: Server base URL (None = the SDK's default endpoint).
        api_key: API key (None = the SDK reads its own environment variable).
        model: Model name (required, by position or keyword).
        provider: ``"openai"`` (any Chat Completions server) or ``"anthropic"``.
        timeout_s: Time limit of each attempt in seconds (connecting to the last byte of the answer).
        max_tokens: Cap on completion tokens per call (None = the request decides).
        temperature: Temperature used when a request sets none.
        max_retries: Retries for transient errors when the loop has no ``retry_policy``.
        extra: Free-form settings kept with the config for the host's own use (as in 0.11,
            nothing here reads them).
        context_window: The model's context window in tokens, if known.
        stream: Stream responses.
        default_headers: Extra headers for every request.
        http_transport: The HTTP client under the SDK: ``"native"`` (power_loop's keep-alive
            pool), ``"httpx"`` (the SDK's default) or ``"aiohttp"`` (the SDK's aiohttp client).
    """

    base_url: str | None = None
    api_key: str | None = None
    model: str = ""
    provider: ProviderName = "openai"
    timeout_s: float = 60.0
    max_tokens: int | None = None
    temperature: float | None = None
    max_retries: int = 3
    extra: Mapping[str, Any] = field(default_factory=dict)
    _: KW_ONLY
    context_window: int | None = None
    stream: bool = True
    default_headers: Mapping[str, str] = field(default_factory=dict)
    http_transport: HttpTransport = "native"

    def __post_init__(self) -> None:
        if not self.model:
            raise ConfigurationError(
                "LLMProviderConfig.model must be a non-empty model name: pass model= "
                "(or the third positional argument, after base_url and api_key)"
            )
        if self.provider not in ("openai", "anthropic"):
            raise ConfigurationError(
                f"unknown provider {self.provider!r}; use 'openai' (any Chat Completions server) or 'anthropic'"
            )
        if not math.isfinite(self.timeout_s) or self.timeout_s <= 0:
            raise ConfigurationError(f"timeout_s must be a finite number > 0, got {self.timeout_s}")
        if self.temperature is not None and not math.isfinite(self.temperature):
            raise ConfigurationError(f"temperature must be finite, got {self.temperature}")
        if self.max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise ConfigurationError(f"max_tokens must be > 0, got {self.max_tokens}")
        if self.context_window is not None and self.context_window <= 0:
            raise ConfigurationError(f"context_window must be > 0, got {self.context_window}")
        if self.http_transport not in HTTP_TRANSPORTS:
            raise ConfigurationError(
                f"unknown http_transport {self.http_transport!r}; use one of {', '.join(map(repr, HTTP_TRANSPORTS))}"
            )

    @classmethod
    def from_env(
        cls,
        *,
        prefix: str = "POWER_LOOP",
        fallback_prefix: str | None = "OPENAI_COMPAT",
        env: Mapping[str, str] | None = None,
    ) -> LLMProviderConfig:
        """Read a config from ``{prefix}_*`` variables, each falling back to ``{fallback_prefix}_*``.

        The variables are those of the module docs (``BASE_URL``, ``API_KEY`` and ``MODEL``
        required). ``env`` replaces the process environment (and the ``.env`` file) when
        given, which is handy in tests; by default the process environment is read, then
        ``./.env``.

        Raises:
            ConfigurationError: (a ``ValueError``) a required variable is missing or a value is
                malformed; the message names the variable.
        """
        return provider_config_from_env(prefix=prefix, fallback_prefix=fallback_prefix, env=env)

    @property
    def is_ready(self) -> bool:
        """True when the config names a model and an API key, and its ``base_url`` is not
        blank (None means the SDK's default endpoint)."""
        return bool(self.model) and bool(self.api_key) and self.base_url != ""

    def to_openai_compatible(self) -> LLMProviderConfig:
        """This config routed to the OpenAI Chat Completions transport (``provider="openai"``).

        0.11 returned its internal client's config object; this returns an
        ``LLMProviderConfig`` with the same attributes (``base_url``, ``api_key``, ``model``,
        ``timeout_s``, ``max_tokens``, ``temperature``, ``max_retries``), which
        :func:`create_llm_service_from_config` accepts.
        """
        return replace(self, provider="openai")

    def to_anthropic(self) -> LLMProviderConfig:
        """This config routed to the Anthropic Messages transport (``provider="anthropic"``);
        see :meth:`to_openai_compatible`."""
        return replace(self, provider="anthropic")


def create_llm_service_from_config(
    cfg: LLMProviderConfig | None = None, *, config: LLMProviderConfig | None = None
) -> LLMService:
    """Build the provider the config describes. The SDK itself is imported on first use.

    Args:
        cfg: The config (0.11's parameter name; positional or keyword).
        config: The same, under the name earlier versions of this library used.

    Raises:
        TypeError: No config, or both ``cfg`` and ``config``, were given.
    """
    if cfg is None:
        if config is None:
            raise TypeError("create_llm_service_from_config() needs an LLMProviderConfig (cfg)")
        cfg = config
    elif config is not None:
        raise TypeError("create_llm_service_from_config() got both cfg and config=; pass one")
    config = cfg
    common = dict(
        model=config.model,
        api_key=config.api_key,
        base_url=config.base_url,
        timeout_s=config.timeout_s,
        max_retries=config.max_retries,
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        stream=config.stream,
        context_window=config.context_window,
        default_headers=config.default_headers,
        http_transport=config.http_transport,
    )
    if config.provider == "anthropic":
        from .anthropic import AnthropicMessagesService

        return AnthropicMessagesService(**common)  # type: ignore[arg-type]
    from .openai import OpenAIChatService

    return OpenAIChatService(**common)  # type: ignore[arg-type]


class _Env:
    def __init__(
        self,
        prefix: str,
        fallback_prefix: str | None,
        dotenv: Mapping[str, str | None],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.prefix = prefix
        self.fallback = fallback_prefix
        self.dotenv = dotenv
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def names(self, key: str) -> list[str]:
        names = [f"{self.prefix}_{key}"]
        if self.fallback:
            names.append(f"{self.fallback}_{key}")
        return names

    def lookup(self, key: str) -> tuple[str, str] | None:
        """(variable name, value) of the first of the key's names that is set."""
        for name in self.names(key):
            value = self.environ.get(name)
            if value is None:
                value = self.dotenv.get(name)
            if value is not None and value.strip() != "":
                return name, value.strip()
        return None

    def get(self, key: str) -> str | None:
        found = self.lookup(key)
        return found[1] if found else None

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            tried = " or ".join(self.names(key))
            raise ConfigurationError(
                f"{self.names(key)[0]} is not set (looked for {tried} in the environment and .env); "
                "set it, or pass an LLMProviderConfig to create_llm_service_from_config()"
            )
        return value

    def number(self, key: str, kind: type[float] | type[int]) -> float | int | None:
        found = self.lookup(key)
        if found is None:
            return None
        name, raw = found
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigurationError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        if not math.isfinite(value):
            raise ConfigurationError(f"{name}={raw!r} must be a finite number")
        return value


def _read_dotenv(env_file: str | os.PathLike[str] | None) -> Mapping[str, str | None]:
    if env_file is None:
        return {}
    path = Path(env_file)
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return dotenv_values(path)


def provider_config_from_env(
    *,
    prefix: str = "POWER_LOOP",
    fallback_prefix: str | None = "OPENAI_COMPAT",
    env_file: str | os.PathLike[str] | None = ".env",
    env: Mapping[str, str] | None = None,
) -> LLMProviderConfig:
    """Read an :class:`LLMProviderConfig` from the environment (see the module docs).

    Args:
        prefix: Variable prefix.
        fallback_prefix: Second prefix tried for each variable (None to disable).
        env_file: A ``.env`` file read through python-dotenv (None to skip).
        env: A mapping read instead of the process environment; ``env_file`` is then not read.

    Raises:
        ConfigurationError: (a ``ValueError``) a required variable is missing or a value is
            malformed; the message names the variable.
    """
    source = _Env(prefix, fallback_prefix, _read_dotenv(env_file) if env is None else {}, env)
    provider = (source.get("PROVIDER") or "openai").lower()
    if provider not in ("openai", "anthropic"):
        raise ConfigurationError(f"{prefix}_PROVIDER={provider!r}: use 'openai' or 'anthropic'")
    timeout = source.number("TIMEOUT_S", float)
    max_tokens = source.number("MAX_TOKENS", int)
    temperature = source.number("TEMPERATURE", float)
    retries = source.number("MAX_RETRIES", int)
    window = source.number("CONTEXT_WINDOW", int)
    transport = source.lookup("HTTP_TRANSPORT")
    if transport is not None and transport[1].lower() not in HTTP_TRANSPORTS:
        raise ConfigurationError(
            f"{transport[0]}={transport[1]!r}: use one of {', '.join(HTTP_TRANSPORTS)} "
            "(the HTTP client under the provider SDK)"
        )
    return LLMProviderConfig(
        provider=provider,  # type: ignore[arg-type]
        base_url=source.require("BASE_URL"),
        api_key=source.require("API_KEY"),
        model=source.require("MODEL"),
        timeout_s=float(timeout) if timeout is not None else 60.0,
        max_tokens=int(max_tokens) if max_tokens is not None else None,
        temperature=float(temperature) if temperature is not None else None,
        max_retries=int(retries) if retries is not None else 3,
        context_window=int(window) if window is not None else None,
        http_transport=cast(HttpTransport, transport[1].lower()) if transport is not None else "native",
    )


def env_configured(
    *,
    prefix: str = "POWER_LOOP",
    fallback_prefix: str | None = "OPENAI_COMPAT",
    env_file: str | os.PathLike[str] | None = ".env",
) -> bool:
    """True when a model is configured in the environment or ``.env``."""
    env = _Env(prefix, fallback_prefix, _read_dotenv(env_file))
    return env.get("MODEL") is not None


def create_llm_service_from_env(
    *,
    prefix: str = "POWER_LOOP",
    fallback_prefix: str | None = "OPENAI_COMPAT",
    env_file: str | os.PathLike[str] | None = ".env",
    offline_fallback: bool = False,
) -> LLMService:
    """Build a provider from ``{prefix}_*`` variables (falling back to ``{fallback_prefix}_*``).

    Args:
        prefix: Variable prefix.
        fallback_prefix: Second prefix tried for each variable (None to disable).
        env_file: A ``.env`` file read through python-dotenv (None to skip).
        offline_fallback: When no model is configured at all, return the built-in
            :class:`~power_loop.providers.offline.OfflineLLM` instead of raising.

    Raises:
        ConfigurationError: (a ``ValueError``) a required variable is missing (named in the
            message) or malformed.
    """
    if offline_fallback and not env_configured(prefix=prefix, fallback_prefix=fallback_prefix, env_file=env_file):
        from .offline import OfflineLLM

        return OfflineLLM()
    return create_llm_service_from_config(
        provider_config_from_env(prefix=prefix, fallback_prefix=fallback_prefix, env_file=env_file)
    )
