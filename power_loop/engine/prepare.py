"""Preparing a model call: system prompt, offered tools, request.

Precedence of the system prompt: per call > session > config > built-in default. Per-call
``tools`` and ``system_prompt`` live only in the run; nothing here writes to the store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..config import DEFAULT_SYSTEM_PROMPT, AgentLoopConfig
from ..messages import (
    AssistantMessage,
    Message,
    ToolCall,
    UserMessage,
    coerce_content,
    scrub_surrogates,
)
from ..providers.base import LLMRequest
from ..tools.definition import ToolDefinition
from ..tools.registry import ToolRegistry
from .history import Transcript, without_hidden

__all__ = [
    "build_request",
    "normalize_input",
    "resolve_system_prompt",
    "select_tools",
    "tool_catalog",
    "unique_call_ids",
]


def resolve_system_prompt(*, call_prompt: str | None, session_prompt: str | None, config: AgentLoopConfig) -> str:
    """The system prompt of a run (per call > session > config > built-in default)."""
    for candidate in (call_prompt, session_prompt, config.system_prompt):
        if candidate is not None:
            return candidate
    return DEFAULT_SYSTEM_PROMPT


def tool_catalog(tools: Sequence[ToolDefinition], header: str) -> str:
    """The "Available Tools" section appended to the system prompt."""
    lines = [header, ""]
    lines += [f"- **{t.name}**: {t.description}" for t in tools]
    return "\n".join(lines)


def system_text(
    base: str,
    tools: Sequence[ToolDefinition],
    config: AgentLoopConfig,
    memory: str | None,
    skills: str | None = None,
    runtime: str | None = None,
) -> str:
    """The system prompt sent to the model: base, recalled memory, skills, tool catalog, and
    last (it may change every round) the runtime projection."""
    parts = [base.strip()] if base.strip() else []
    if memory:
        parts.append(memory)
    if skills:
        parts.append(skills)
    if tools and config.inject_tool_descriptions:
        parts.append(tool_catalog(tools, config.tool_catalog_header))
    if runtime:
        parts.append(runtime)
    return "\n\n".join(parts)


def select_tools(registry: ToolRegistry | None, tools: Iterable[str] | ToolRegistry | None) -> ToolRegistry | None:
    """The registry a run offers: the loop's, a per-call ``ToolRegistry``, or the loop's
    narrowed to the per-call names.

    Raises:
        ValueError: A per-call name is not registered (a typo would otherwise silently
            remove a tool).
        TypeError: ``tools`` is neither a list of names nor a ``ToolRegistry``.
    """
    if tools is None:
        return registry
    if isinstance(tools, ToolRegistry):
        return tools
    if isinstance(tools, (str, bytes)) or not isinstance(tools, Iterable):
        raise TypeError("tools= takes a list of tool names or a ToolRegistry")
    names = list(tools)
    if not all(isinstance(n, str) for n in names):
        raise TypeError("tools= takes a list of tool names or a ToolRegistry")
    known = set(registry.names()) if registry is not None else set()
    unknown = [n for n in names if n not in known]
    if unknown:
        available = ", ".join(sorted(known)) or "none registered"
        raise ValueError(f"tools= names unknown tool(s): {', '.join(unknown)} (available: {available})")
    assert registry is not None or not names
    return registry.subset(names) if registry is not None else ToolRegistry()


def normalize_input(user_input: Any, *, max_chars: int) -> UserMessage:
    """Turn ``send``'s input (text, or a user message dict) into a :class:`UserMessage`.

    Raises:
        TypeError: Not a str or dict.
        ValueError: Empty, too large, or a malformed message dict.
    """
    if isinstance(user_input, str):
        text = user_input
        if not text.strip():
            raise ValueError("user_input is empty; send some text (or use resume() to continue a run)")
        if len(text) > max_chars:
            raise ValueError(
                f"user_input has {len(text)} characters, above max_input_chars={max_chars}; "
                "split it or raise AgentLoopConfig.max_input_chars"
            )
        return UserMessage(content=text)
    if isinstance(user_input, dict):
        role = user_input.get("role", "user")
        if role != "user":
            raise ValueError(f"a dict user_input must be a user message (role 'user'), got role {role!r}")
        if "content" not in user_input:
            raise ValueError("a dict user_input needs 'content' (a string or a list of content parts)")
        try:
            content = coerce_content(user_input["content"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"user_input content is malformed: {exc}") from exc
        size = len(content) if isinstance(content, str) else sum(len(str(p)) for p in content)
        if size > max_chars:
            raise ValueError(f"user_input is larger than max_input_chars={max_chars}")
        if not content:
            raise ValueError("user_input content is empty")
        name = user_input.get("name")
        return UserMessage(content=content, name=name if isinstance(name, str) else None)
    raise TypeError(f"user_input must be a str or a user message dict, not {type(user_input).__name__}")


def unique_call_ids(message: AssistantMessage, prefix: str) -> AssistantMessage:
    """Give every tool call a non-empty id, unique within the message.

    Some OpenAI-compatible servers send empty or repeated ids; results could not be matched
    to their calls otherwise. Lone surrogates (a half ``\\udXXX`` escape) in a call's id, name
    or arguments become U+FFFD, so the call can be stored and sent back.
    """
    seen: set[str] = set()
    fixed: list[ToolCall] = []
    changed = False
    for i, call in enumerate(message.tool_calls):
        call_id = scrub_surrogates(call.id) or f"call_{prefix}_{i}"
        while call_id in seen:
            call_id = f"{call_id}_{i}"
        seen.add(call_id)
        name, arguments = scrub_surrogates(call.name), scrub_surrogates(call.arguments)
        if call_id != call.id or name is not call.name or arguments is not call.arguments:
            changed = True
            call = ToolCall(id=call_id, name=name, arguments=arguments)
        fixed.append(call)
    if not changed:
        return message
    return AssistantMessage(
        content=message.content,
        tool_calls=tuple(fixed),
        reasoning=message.reasoning,
        reasoning_signature=message.reasoning_signature,
        name=message.name,
    )


def build_request(
    *,
    messages: Sequence[Message],
    system_prompt: str,
    tools: Sequence[ToolDefinition],
    config: AgentLoopConfig,
    max_tokens: int | None = None,
    temperature: float | None = None,
    tool_choice: str | None = None,
    transcript: Transcript | None = None,
    response_format: Mapping[str, Any] | None = None,
) -> LLMRequest:
    """The provider request of one model call.

    Kernel markers (a degraded run's ``[degraded: ...]`` note) stay in the history but are
    left out here: the model must not read kernel error text as something it said. When
    ``messages`` is ``transcript.messages``, the transcript's incrementally kept view is used.
    """
    if transcript is not None and messages is transcript.messages:
        messages = transcript.for_model()
    else:
        messages = without_hidden(messages)
    return LLMRequest(
        messages=tuple(messages),  # a snapshot: the run keeps appending to its history
        system_prompt=system_prompt or None,
        tools=tuple(tools),
        max_tokens=config.max_tokens if max_tokens is None else max_tokens,
        temperature=config.temperature if temperature is None else temperature,
        model=config.model,
        stream=config.stream,
        tool_choice=tool_choice,  # type: ignore[arg-type]
        response_format=response_format,
    )
