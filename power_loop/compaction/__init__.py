"""Context compaction: token estimates, the ``Compactor`` protocol and ``DefaultCompactor``.

When a session's context grows past a threshold, the older part of its history is folded
into a summary written by a model. The summary and the seq it covers become the session's
load base: loading the session reads the summary and the messages after it, so a send costs
the same at 100 or 100,000 stored messages. Folded rows stay in the store for audit
(``get_messages(..., include_compacted=True)``) until pruned.

Guarantees:

* A tool call is never separated from its results: the folded part always ends before a
  user or assistant message, never inside a call/result group (the engine enforces this
  whatever a custom ``fold_count`` returns, and always keeps the latest message).
* A new summary folds the previous one: there is never more than one summary in context.
* The summary call goes through the retry layer and cancellation; it publishes no stream
  events and no ``round_usage`` status, only ``usage_updated`` with purpose ``compaction``.
  Its tokens count in the run's usage and in ``max_tokens_per_run``.
* A failing summary leaves the history uncompacted and the run goes on without compacting
  again. A summary that would not make the context smaller is not applied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from ..config import DEFAULT_COMPACTOR
from ..errors import ConfigurationError
from ..messages import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolResultMessage,
    UserMessage,
    content_text,
    message_json,
)
from ..providers.base import LLMRequest, LLMResponse, LLMService

__all__ = [
    "DEFAULT_CONTEXT_WINDOW",
    "SUMMARY_PREFIX",
    "Compactor",
    "DefaultCompactor",
    "SummaryCall",
    "estimate_text_tokens",
    "estimate_tokens",
    "resolve_compactor",
    "summary_message",
    "trim_history",
]

MessageT = TypeVar("MessageT", Message, Mapping[str, Any])

DEFAULT_CONTEXT_WINDOW = 128_000
"""Context window assumed when neither the config nor the provider says (tokens)."""

SUMMARY_PREFIX = "[Summary of the earlier conversation]\n"
_TOKENS_KEY = "_power_loop_tokens"
_PER_MESSAGE_OVERHEAD = 4


def estimate_text_tokens(text: str | None) -> int:
    """About four characters a token (the usual rule of thumb for English and JSON); None is 0."""
    if not text:
        return 0
    return (len(text) + 3) // 4


_MESSAGE_TYPES = (SystemMessage, UserMessage, AssistantMessage, ToolResultMessage)


def _message_tokens(message: Message) -> int:
    cache = message.__dict__
    found = cache.get(_TOKENS_KEY)
    if found is None:
        found = estimate_text_tokens(message_json(message)) + _PER_MESSAGE_OVERHEAD
        cache[_TOKENS_KEY] = found
    return found


def _dict_tokens(message: Mapping[str, Any]) -> int:
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=str)
    return estimate_text_tokens(text) + _PER_MESSAGE_OVERHEAD


def estimate_tokens(messages: Message | Iterable[Message | Mapping[str, Any]]) -> int:
    """Estimated tokens of a message list (0.11's form) or of one message.

    List items may be messages or message dicts (the ``get_messages`` view). A message
    object's estimate is computed once and cached on it.
    """
    if isinstance(messages, _MESSAGE_TYPES):
        return _message_tokens(messages)
    total = 0
    for m in messages:
        total += _message_tokens(m) if isinstance(m, _MESSAGE_TYPES) else _dict_tokens(m)
    return total


def _role(message: Message | Mapping[str, Any]) -> Any:
    return message.role if isinstance(message, _MESSAGE_TYPES) else message.get("role")


def trim_history(
    messages: Sequence[MessageT], max_tokens: int, *, keep_system: bool = True, keep_last_n: int = 2
) -> list[MessageT] | Sequence[MessageT]:
    """Drop the oldest messages between the system prompt and the latest exchanges until the
    estimate (:func:`estimate_tokens`) fits ``max_tokens``. No model call, no summary.

    Kept whatever the budget: the leading system messages (when ``keep_system``) and the
    last ``keep_last_n`` exchanges (an exchange is a user message and everything up to the
    next one). The kept part never starts with a tool result: a cut that would orphan tool
    results moves back to keep their assistant message. Items may be message dicts or
    message objects.

    Returns:
        ``messages`` itself when it already fits; otherwise a new list (the input is never
        modified). When even the kept part does not fit, that part is returned.
    """
    if estimate_tokens(messages) <= max_tokens:
        return messages
    head = 0
    if keep_system:
        while head < len(messages) and _role(messages[head]) == "system":
            head += 1
    users = [i for i in range(head, len(messages)) if _role(messages[i]) == "user"]
    if keep_last_n <= 0:
        protected = len(messages)
    elif len(users) >= keep_last_n:
        protected = users[-keep_last_n]
    else:
        protected = users[0] if users else head
    prefix = list(messages[:head])
    budget = max_tokens - estimate_tokens(prefix)
    tail_tokens = estimate_tokens(messages[protected:])
    middle = list(messages[head:protected])
    sizes = [estimate_tokens([m]) for m in middle]
    kept = sum(sizes)
    cut = 0
    # Only cut where the kept part starts with something other than a tool result.
    while cut < len(middle) and (kept + tail_tokens > budget or _role(middle[cut]) == "tool"):
        kept -= sizes[cut]
        cut += 1
    if kept + tail_tokens > budget or cut == len(middle):
        return prefix + _without_leading_results(list(messages[protected:]))
    return prefix + middle[cut:] + list(messages[protected:])


def _without_leading_results(part: list[MessageT]) -> list[MessageT]:
    start = 0
    while start < len(part) and _role(part[start]) == "tool":
        start += 1
    return part[start:]


def summary_message(summary: str) -> SystemMessage:
    """The message standing for the folded history at the head of the context."""
    return SystemMessage(content=SUMMARY_PREFIX + summary)


def is_summary(message: Message) -> bool:
    """True for a message made by :func:`summary_message`."""
    return isinstance(message, SystemMessage) and message.content.startswith(SUMMARY_PREFIX)


SummaryCall = Callable[[LLMRequest], Awaitable[LLMResponse]]
"""Makes the summary model call through the loop's normal path (retries, events, usage)."""


@runtime_checkable
class Compactor(Protocol):
    """A compaction strategy."""

    def should_compact(self, *, estimated_tokens: int, context_window: int) -> bool:
        """Whether a request of ``estimated_tokens`` needs compacting first."""
        ...

    def fold_count(self, messages: Sequence[Message]) -> int:
        """How many leading messages to fold (0: nothing worth folding). ``messages`` may
        start with the current summary; it is always folded into the new one.

        The engine clamps the value to ``len(messages) - 1`` and moves it back past tool
        results, so the kept part never starts with a tool result; when that leaves nothing
        but the summary to fold, no compaction is attempted."""
        ...

    async def summarize(
        self, *, messages: Sequence[Message], previous_summary: str | None, complete: SummaryCall
    ) -> str:
        """The new summary of ``previous_summary`` plus ``messages``."""
        ...


SUMMARY_INSTRUCTIONS = (
    "You maintain the running summary of a conversation between a user and an assistant that "
    "uses tools. Write a new summary that merges the previous summary (if any) with the new "
    "messages. Keep every fact, decision, open task, user preference, identifier, number and "
    "tool result that later turns may need; drop chit-chat. Write plain prose and short lists, "
    "no preamble."
)


def render_for_summary(messages: Sequence[Message], limit_chars: int = 400_000) -> str:
    """The messages as a plain transcript for the summarizer."""
    lines: list[str] = []
    for message in messages:
        if isinstance(message, AssistantMessage):
            text = message.text
            if message.tool_calls:
                calls = ", ".join(f"{c.name}({c.arguments})" for c in message.tool_calls)
                text = f"{text} [called {calls}]".strip()
            lines.append(f"assistant: {text}")
        elif isinstance(message, ToolResultMessage):
            lines.append(f"tool {message.name or ''} result: {message.text}")
        elif isinstance(message, UserMessage):
            lines.append(f"user: {message.text}")
        else:
            lines.append(f"system: {content_text(message.content)}")
    text = "\n".join(lines)
    return text[-limit_chars:]


class DefaultCompactor:
    """Summarise the older history when the context passes a fraction of the model's window.

    Args:
        trigger_ratio: Compact when the estimated request reaches this fraction of the
            context window.
        keep_last_n: Messages always kept verbatim at the end (more if needed to keep a tool
            call with its results, and up to ``keep_last_n`` more to start at a user message).
        summary_max_tokens: Completion cap of the summary call.
        summary_llm: Model for summaries (default: the loop's own).
        absolute_threshold: Compact when the estimate reaches this many tokens, whatever the
            window (None: use only the ratio).
    """

    def __init__(
        self,
        *,
        trigger_ratio: float = 0.75,
        keep_last_n: int = 8,
        summary_max_tokens: int = 1024,
        summary_llm: LLMService | None = None,
        absolute_threshold: int | None = None,
    ) -> None:
        if not 0.0 < trigger_ratio <= 1.0 or math.isnan(trigger_ratio):
            raise ConfigurationError(f"trigger_ratio must be within (0, 1], got {trigger_ratio}")
        if keep_last_n < 1:
            raise ConfigurationError(f"keep_last_n must be >= 1, got {keep_last_n}")
        if summary_max_tokens < 16:
            raise ConfigurationError(f"summary_max_tokens must be >= 16, got {summary_max_tokens}")
        if absolute_threshold is not None and absolute_threshold <= 0:
            raise ConfigurationError(f"absolute_threshold must be > 0, got {absolute_threshold}")
        self.trigger_ratio = trigger_ratio
        self.keep_last_n = keep_last_n
        self.summary_max_tokens = summary_max_tokens
        self.summary_llm = summary_llm
        self.absolute_threshold = absolute_threshold

    def __repr__(self) -> str:
        return (
            f"DefaultCompactor(trigger_ratio={self.trigger_ratio}, keep_last_n={self.keep_last_n}, "
            f"summary_max_tokens={self.summary_max_tokens}, absolute_threshold={self.absolute_threshold})"
        )

    def should_compact(self, *, estimated_tokens: int, context_window: int) -> bool:
        """True past ``absolute_threshold`` or ``trigger_ratio`` of the window."""
        if self.absolute_threshold is not None and estimated_tokens >= self.absolute_threshold:
            return True
        return estimated_tokens >= self.trigger_ratio * context_window

    def fold_count(self, messages: Sequence[Message]) -> int:
        """Fold all but the last ``keep_last_n`` messages, with the cut moved back:

        * past any tool result, so that the kept part starts with a user or assistant message
          and a tool call is never separated from its results;
        * then to the nearest user message (a turn boundary) when there is one within
          ``keep_last_n`` more messages that still leaves something to fold, so that the
          kept part starts with the user's turn (with the summary moved to Anthropic's
          ``system``, the messages then start with ``user``). In a long tool loop there is
          none, and the kept part starts with the assistant's tool call.

        0 when nothing but the current summary would be folded.
        """
        start = 1 if messages and is_summary(messages[0]) else 0
        cut = len(messages) - self.keep_last_n
        while cut > start and isinstance(messages[cut], ToolResultMessage):
            cut -= 1
        if cut <= start:
            return 0
        for index in range(cut, max(start + 1, cut - self.keep_last_n) - 1, -1):
            if isinstance(messages[index], UserMessage):
                return index
        return cut

    async def summarize(
        self, *, messages: Sequence[Message], previous_summary: str | None, complete: SummaryCall
    ) -> str:
        """Ask the summary model for the merged summary."""
        parts = []
        if previous_summary:
            parts.append(f"Previous summary:\n{previous_summary}")
        parts.append(f"New messages:\n{render_for_summary(messages)}")
        parts.append("Write the new summary now.")
        request = LLMRequest(
            messages=(UserMessage(content="\n\n".join(parts)),),
            system_prompt=SUMMARY_INSTRUCTIONS,
            max_tokens=self.summary_max_tokens,
            temperature=0.0,
        )
        response = await complete(request)
        return response.message.text.strip()


def resolve_compactor(value: Any) -> Any:
    """The configured compactor (the default marker becomes a ``DefaultCompactor``)."""
    if value is DEFAULT_COMPACTOR:
        return DefaultCompactor()
    if value is not None and not isinstance(value, Compactor):
        raise ConfigurationError(
            "compactor must implement should_compact, fold_count and summarize (see power_loop.Compactor), "
            "or be None to disable compaction"
        )
    return value
