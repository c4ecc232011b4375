"""The LLM protocol the engine calls: one request in, one response out.

A provider turns an :class:`LLMRequest` into exactly one HTTP request (streaming or not) and
returns an :class:`LLMResponse`, calling the optional :class:`StreamCallbacks` as deltas
arrive. Providers never retry: retries live in one place, :mod:`power_loop.providers.retry`.
Provider failures are raised as :class:`~power_loop.errors.LLMError` subclasses, mapped once
in the provider module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from ..messages import AssistantMessage, Message, Usage
from ..tools.definition import ToolDefinition

__all__ = ["LLMRequest", "LLMResponse", "LLMService", "StreamCallbacks"]


@dataclass(frozen=True, kw_only=True)
class LLMRequest:
    """Everything one model call needs.

    Attributes:
        messages: The conversation, oldest first (system text goes in ``system_prompt``).
        system_prompt: The system instruction, or None.
        tools: Tools offered to the model for this call.
        max_tokens: Completion cap; None uses the provider's default.
        temperature: Sampling temperature; None uses the provider's default.
        model: Model override; None uses the provider's model.
        stream: Stream the response (deltas reach the callbacks as they arrive).
        tool_choice: ``"auto"`` (default), ``"none"`` or ``"required"``.
        response_format: Structured output, in the Chat Completions shape (``{"type":
            "json_schema", "json_schema": {"name", "schema", "strict"}}`` or ``{"type":
            "json_object"}``). The OpenAI provider sends it as ``response_format``; the
            Anthropic provider sends a ``json_schema`` one as ``output_config.format``
            (the Messages API's native structured output) and has no equivalent for others.
        timeout_s: Time limit of this attempt (the whole answer included); None uses the
            provider's ``timeout_s``.
        extra_body: Extra top-level JSON fields merged into the request body.
    """

    messages: Sequence[Message]
    system_prompt: str | None = None
    tools: Sequence[ToolDefinition] = ()
    max_tokens: int | None = None
    temperature: float | None = None
    model: str | None = None
    stream: bool = True
    tool_choice: Literal["auto", "none", "required"] | None = None
    response_format: Mapping[str, Any] | None = None
    timeout_s: float | None = None
    extra_body: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class LLMResponse:
    """The outcome of one model call.

    Attributes:
        message: The assistant turn (text, tool calls, reasoning).
        usage: Token usage of this call (``calls == 1``).
        finish_reason: Why generation stopped, normalised to ``stop``, ``tool_calls``,
            ``length`` or the provider's own word.
        model: The model that answered, when reported.
        request_id: The provider's request id, when reported.
    """

    message: AssistantMessage
    usage: Usage = field(default_factory=lambda: Usage(calls=1))
    finish_reason: str | None = None
    model: str | None = None
    request_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class StreamCallbacks:
    """Optional, synchronous callbacks a provider calls while streaming.

    Callbacks run on the event loop thread and must be quick (publish an event, append to a
    buffer). ``on_stream_start`` is called once the provider has accepted the request and
    ``on_stream_end`` once the response is complete; neither is called for a failed attempt
    that never produced a response.
    """

    on_stream_start: Callable[[], None] | None = None
    on_text_delta: Callable[[str], None] | None = None
    on_reasoning_delta: Callable[[str], None] | None = None
    on_stream_end: Callable[[], None] | None = None


@runtime_checkable
class LLMService(Protocol):
    """What the engine needs from a model provider.

    Attributes:
        provider: Short provider name (``"openai"``, ``"anthropic"``, ``"scripted"``, ...).
        model: Default model name.
        max_retries: Retries the engine may make for a transient failure when no
            ``LLMRetryPolicy`` is configured (so ``max_retries + 1`` requests at most).
        context_window: The model's context window in tokens, if known.
    """

    provider: str
    model: str
    max_retries: int
    context_window: int | None

    async def complete(self, request: LLMRequest, *, callbacks: StreamCallbacks | None = None) -> LLMResponse:
        """Make exactly one request and return its response (no retries).

        Raises:
            LLMError: The call failed; ``retryable`` says whether trying again may help.
        """
        ...
