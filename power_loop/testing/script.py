"""Scripted replies shared by :class:`ScriptedLLM` and :class:`ScriptedServer`.

A script is a sequence of :class:`ScriptedReply` consumed one per model request, or a rule:
a function from the :class:`ScriptedRequest` to the reply. Helpers build the common replies::

    script = [
        tool_reply(("get_weather", {"city": "Paris"})),
        text_reply("It is sunny in Paris."),
    ]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from ..messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    content_text,
    message_from_dict,
)

__all__ = [
    "Rule",
    "ScriptExhausted",
    "ScriptedReply",
    "ScriptedRequest",
    "error_reply",
    "hang_reply",
    "text_reply",
    "tool_reply",
]


@dataclass(frozen=True, kw_only=True)
class ScriptedReply:
    """One scripted model answer (or failure).

    Attributes:
        text: Answer text (streamed in pieces of ``chunk_chars`` characters).
        tool_calls: Tool calls to make.
        reasoning: Reasoning text, streamed before the answer.
        usage: Reported usage; estimated from the request and answer sizes when None.
        status: An HTTP error status to answer with instead (e.g. 429, 500, 400).
        error_message: The error's message.
        retry_after: ``Retry-After`` seconds sent with an error status.
        delay_s: Wait this long before answering (a large value simulates a hung call).
        chunk_delay_s: Pause between streamed chunks.
        chunk_chars: Size of streamed text pieces.
        drop_after_chunks: Close the connection after this many stream chunks (a network drop).
        finish_reason: Override the finish reason.
    """

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    usage: Usage | None = None
    status: int | None = None
    error_message: str = "scripted error"
    retry_after: float | None = None
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0
    chunk_chars: int = 16
    drop_after_chunks: int | None = None
    finish_reason: str | None = None

    def chunks(self, text: str | None = None) -> list[str]:
        """``text`` (default: the answer) split into stream pieces."""
        value = self.text if text is None else text
        size = max(1, self.chunk_chars)
        return [value[i : i + size] for i in range(0, len(value), size)]

    def usage_for(self, prompt_chars: int) -> Usage:
        """The reported usage: ``usage`` or an estimate at four characters per token."""
        if self.usage is not None:
            return self.usage
        out = len(self.text) + len(self.reasoning or "") + sum(len(c.arguments) + len(c.name) for c in self.tool_calls)
        return Usage.of_call(prompt_tokens=max(1, prompt_chars // 4), completion_tokens=max(1, out // 4))


def text_reply(text: str, **options: Any) -> ScriptedReply:
    """A plain text answer."""
    return ScriptedReply(text=text, **options)


CallSpec = Union[ToolCall, tuple[str, Mapping[str, Any]], tuple[str, Mapping[str, Any], str], tuple[str, str]]


def tool_reply(*calls: CallSpec, text: str = "", **options: Any) -> ScriptedReply:
    """An answer with tool calls.

    Each call is a ``ToolCall``, ``(name, args_dict)``, ``(name, args_dict, call_id)`` or
    ``(name, raw_json_string)`` (to script malformed arguments).
    """
    built: list[ToolCall] = []
    for i, spec in enumerate(calls):
        if isinstance(spec, ToolCall):
            built.append(spec)
            continue
        name, args = spec[0], spec[1]
        call_id = spec[2] if len(spec) > 2 else f"call_{i}_{name}"
        arguments = args if isinstance(args, str) else json.dumps(dict(args))
        built.append(ToolCall(id=str(call_id), name=name, arguments=arguments))
    return ScriptedReply(text=text, tool_calls=tuple(built), **options)


def error_reply(status: int, message: str = "scripted error", *, retry_after: float | None = None) -> ScriptedReply:
    """An HTTP error answer (429 and 5xx are retryable, other 4xx are not)."""
    return ScriptedReply(status=status, error_message=message, retry_after=retry_after)


def hang_reply(seconds: float = 3600.0, **options: Any) -> ScriptedReply:
    """An answer that arrives only after ``seconds`` (simulates a hung provider)."""
    return ScriptedReply(delay_s=seconds, text=options.pop("text", "late"), **options)


class ScriptExhausted(AssertionError):
    """More model requests arrived than the script has replies."""


@dataclass(frozen=True)
class ScriptedRequest:
    """A model request as the scripted model received it.

    Attributes:
        protocol: ``"openai"``, ``"anthropic"`` or ``"inprocess"`` (ScriptedLLM).
        messages: The conversation in power_loop's message model.
        system_prompt: The system text.
        tools: Names of the tools offered.
        model: Requested model.
        stream: Whether streaming was requested.
        body: The decoded JSON body (empty for in-process requests).
        headers: Lower-cased request headers (empty for in-process requests).
        path: Request path.
        response_format: The structured-output request as the protocol carried it: Chat
            Completions' ``response_format``, Messages' ``output_config.format``, or the
            ``LLMRequest.response_format`` in process (None when none was sent).
        max_tokens: The completion cap asked for (``max_tokens`` or
            ``max_completion_tokens``; None when none was sent). A rule may honour it as a
            provider does.
    """

    protocol: Literal["openai", "anthropic", "inprocess"]
    messages: Sequence[Message]
    system_prompt: str | None
    tools: Sequence[str]
    model: str | None
    stream: bool
    body: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    path: str = ""
    response_format: Mapping[str, Any] | None = None
    max_tokens: int | None = None

    @property
    def last_user_text(self) -> str:
        """Text of the last user message ("" when none)."""
        for message in reversed(self.messages):
            if isinstance(message, UserMessage):
                return message.text
        return ""

    @property
    def tool_results(self) -> list[ToolResultMessage]:
        """Tool results after the last assistant message."""
        out: list[ToolResultMessage] = []
        for message in reversed(self.messages):
            if not isinstance(message, ToolResultMessage):
                break
            out.append(message)
        return list(reversed(out))


Rule = Callable[[ScriptedRequest], ScriptedReply]


def request_from_openai(body: Mapping[str, Any], headers: Mapping[str, str], path: str) -> ScriptedRequest:
    """Decode a Chat Completions body."""
    system: list[str] = []
    messages: list[Message] = []
    for raw in body.get("messages", ()):
        message = message_from_dict(raw)
        if isinstance(message, SystemMessage):
            system.append(message.content)
        else:
            messages.append(message)
    tools = [t.get("function", {}).get("name", "") for t in body.get("tools", ()) or ()]
    return ScriptedRequest(
        protocol="openai",
        messages=messages,
        system_prompt="\n\n".join(system) or None,
        tools=tools,
        model=body.get("model"),
        stream=bool(body.get("stream")),
        body=body,
        headers=headers,
        path=path,
        response_format=body.get("response_format"),
        max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
    )


def _block_text(blocks: Any) -> str:
    if isinstance(blocks, str):
        return blocks
    return "".join(b.get("text", "") for b in blocks or () if isinstance(b, Mapping) and b.get("type") == "text")


def request_from_anthropic(body: Mapping[str, Any], headers: Mapping[str, str], path: str) -> ScriptedRequest:
    """Decode a Messages body."""
    messages: list[Message] = []
    for turn in body.get("messages", ()):
        content = turn.get("content")
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content or ())
        if turn.get("role") == "assistant":
            calls = tuple(
                ToolCall(id=b["id"], name=b["name"], arguments=json.dumps(b.get("input", {})))
                for b in blocks
                if b.get("type") == "tool_use"
            )
            thinking = [b for b in blocks if b.get("type") == "thinking"]
            messages.append(
                AssistantMessage(
                    content=_block_text(blocks),
                    tool_calls=calls,
                    reasoning=thinking[0].get("thinking") if thinking else None,
                    reasoning_signature=thinking[0].get("signature") if thinking else None,
                )
            )
            continue
        text_blocks = [b for b in blocks if b.get("type") != "tool_result"]
        for b in blocks:
            if b.get("type") == "tool_result":
                messages.append(
                    ToolResultMessage(
                        tool_call_id=b.get("tool_use_id", ""),
                        content=_block_text(b.get("content")),
                        is_error=bool(b.get("is_error")),
                    )
                )
        if text_blocks:
            messages.append(UserMessage(content=_block_text(text_blocks)))
    system = body.get("system")
    tools = [t.get("name", "") for t in body.get("tools", ()) or ()]
    return ScriptedRequest(
        protocol="anthropic",
        messages=messages,
        system_prompt=_block_text(system) if system else None,
        tools=tools,
        model=body.get("model"),
        stream=bool(body.get("stream")),
        body=body,
        headers=headers,
        path=path,
        response_format=(body.get("output_config") or {}).get("format"),
        max_tokens=body.get("max_tokens"),
    )


def prompt_chars(request: ScriptedRequest) -> int:
    """Characters of text in a request (for usage estimates)."""
    return len(request.system_prompt or "") + sum(len(content_text(m.content)) for m in request.messages)
