"""One vendor-neutral message model.

Invariants:

* Messages are frozen, keyword-only dataclasses discriminated by ``role``. Nothing in the
  engine mutates a message; hooks that "rewrite" one replace it.
* Content is either a ``str`` or a tuple of parts. Parts the model does not know
  (``RawPart``) are kept verbatim, so list and multimodal content round-trips through the
  store and :func:`message_to_dict` / :func:`message_from_dict` unchanged.
* :func:`message_to_dict` produces the 0.11 dict view: the OpenAI Chat Completions shape, with
  empty optional keys omitted (``content`` is always there). It is also the storage format.
  Provider modules map messages to their own wire shapes; nothing here knows about a vendor
  other than that edge view.
* ``ToolCall.arguments`` keeps the raw JSON string the model produced, because models emit
  malformed JSON and the history must record what was actually said.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union

__all__ = [
    "AgentMessage",
    "AssistantMessage",
    "Content",
    "ContentPart",
    "ImagePart",
    "Message",
    "MessageRole",
    "RawPart",
    "RuntimeMessage",
    "SystemMessage",
    "TextPart",
    "ToolCall",
    "ToolResultMessage",
    "Usage",
    "UserMessage",
    "content_text",
    "message_from_dict",
    "message_to_dict",
]


# --------------------------------------------------------------------------- content


@dataclass(frozen=True, kw_only=True)
class TextPart:
    """A text part of list content."""

    text: str
    type: Literal["text"] = "text"


@dataclass(frozen=True, kw_only=True)
class ImagePart:
    """An image part: an ``http(s)://`` or ``data:`` URL."""

    url: str
    detail: str | None = None
    type: Literal["image_url"] = "image_url"


@dataclass(frozen=True, kw_only=True)
class RawPart:
    """A content part of a kind this model does not interpret, kept verbatim."""

    data: Mapping[str, Any]

    @property
    def type(self) -> str:
        """The part's ``type`` field, or ``""``."""
        return str(self.data.get("type", ""))


ContentPart = Union[TextPart, ImagePart, RawPart]
Content = Union[str, tuple[ContentPart, ...]]


def content_text(content: Content | None) -> str:
    """Return the text of ``content``: the string itself, or its text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, TextPart))


def _part_to_dict(part: ContentPart) -> dict[str, Any]:
    if isinstance(part, TextPart):
        return {"type": "text", "text": part.text}
    if isinstance(part, ImagePart):
        image: dict[str, Any] = {"url": part.url}
        if part.detail:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    return dict(part.data)


def _part_from_dict(data: Mapping[str, Any]) -> ContentPart:
    kind = data.get("type")
    if kind == "text" and isinstance(data.get("text"), str) and len(data) == 2:
        return TextPart(text=data["text"])
    image = data.get("image_url")
    if kind == "image_url" and isinstance(image, Mapping) and len(data) == 2:
        url = image.get("url")
        if isinstance(url, str) and set(image) <= {"url", "detail"}:
            return ImagePart(url=url, detail=image.get("detail"))
    return RawPart(data=dict(data))


def _content_to_wire(content: Content) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    return [_part_to_dict(p) for p in content]


def _content_from_wire(value: Any) -> Content:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts: list[ContentPart] = []
        for item in value:
            if isinstance(item, str):
                parts.append(TextPart(text=item))
            elif isinstance(item, Mapping):
                parts.append(_part_from_dict(item))
            else:
                raise ValueError(f"content part must be an object or a string, got {type(item).__name__}")
        return tuple(parts)
    raise ValueError(f"content must be a string or a list of parts, got {type(value).__name__}")


def coerce_content(value: str | Sequence[Any] | Content) -> Content:
    """Accept a str, a tuple of parts, or a list of part dicts (OpenAI shape)."""
    if isinstance(value, str):
        return value
    if isinstance(value, tuple) and all(isinstance(p, (TextPart, ImagePart, RawPart)) for p in value):
        return value
    return _content_from_wire(list(value))


# --------------------------------------------------------------------------- tool calls and usage


@dataclass(frozen=True)
class ToolCall:
    """One tool call requested by the model.

    Constructed by keyword or, as in 0.11, by position: ``ToolCall(id, name, arguments)``.
    ``arguments`` may be given as a dict (0.11's form); it is stored as its JSON text.

    Attributes:
        id: The provider's call id; tool results answer it.
        name: Tool name as the model wrote it.
        arguments: The raw JSON arguments string, exactly as the model produced it (use
            :meth:`parsed_arguments` for the dict).
    """

    id: str
    name: str
    arguments: str = "{}"

    def __post_init__(self) -> None:
        raw: Any = self.arguments
        if not isinstance(raw, str):
            if not isinstance(raw, Mapping):
                raise TypeError(f"ToolCall.arguments must be a JSON object string or a dict, got {type(raw).__name__}")
            object.__setattr__(self, "arguments", json.dumps(dict(raw), ensure_ascii=False))

    def parsed_arguments(self) -> dict[str, Any]:
        """Decode ``arguments``.

        Raises:
            ValueError: The arguments are not a JSON object.
        """
        text = self.arguments.strip() or "{}"
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"tool arguments must be a JSON object, got {type(value).__name__}")
        return value

    def to_dict(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls[]`` entry."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def to_openai_tool_call(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls[]`` entry (0.11's name for :meth:`to_dict`)."""
        return self.to_dict()


@dataclass(frozen=True, kw_only=True)
class Usage:
    """Token usage of one or more model calls (add them with ``+``).

    Attributes:
        calls: Number of model calls covered.
        prompt_tokens: Input tokens, cached ones included.
        completion_tokens: Output tokens, reasoning ones included.
        cache_read_tokens: Input tokens served from the provider's prompt cache.
        reasoning_tokens: Output tokens spent on reasoning.
        total_tokens: prompt + completion as the provider reported them.
    """

    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0
    reasoning_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            calls=self.calls + other.calls,
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        """The 0.11 ``usage`` dict (``calls, prompt_tokens, ..., total_tokens``)."""
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "total_tokens": self.total_tokens,
        }

    @classmethod
    def of_call(
        cls,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cache_read_tokens: int = 0,
        reasoning_tokens: int = 0,
        total_tokens: int | None = None,
    ) -> Usage:
        """Usage of a single call; ``total_tokens`` defaults to prompt + completion."""
        return cls(
            calls=1,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            cache_read_tokens=cache_read_tokens,
            reasoning_tokens=reasoning_tokens,
            total_tokens=prompt_tokens + completion_tokens if total_tokens is None else total_tokens,
        )


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True, kw_only=True)
class SystemMessage:
    """A system instruction."""

    content: str
    role: Literal["system"] = field(default="system", init=False)

    @property
    def text(self) -> str:
        """The message text."""
        return self.content


@dataclass(frozen=True, kw_only=True)
class UserMessage:
    """What the user (or the host on the user's behalf) said."""

    content: Content
    name: str | None = None
    role: Literal["user"] = field(default="user", init=False)

    @property
    def text(self) -> str:
        """The text of the message (text parts joined)."""
        return content_text(self.content)


@dataclass(frozen=True, kw_only=True)
class AssistantMessage:
    """A model turn: text, tool calls, or both.

    Attributes:
        content: The visible answer (may be empty when the turn only calls tools).
        tool_calls: Calls the model asked for, in the order it gave them.
        reasoning: Reasoning text when the provider exposes it.
        reasoning_signature: Opaque signature some providers need echoed back with reasoning.
    """

    content: Content = ""
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str | None = None
    reasoning_signature: str | None = None
    name: str | None = None
    role: Literal["assistant"] = field(default="assistant", init=False)

    @property
    def text(self) -> str:
        """The text of the answer."""
        return content_text(self.content)


@dataclass(frozen=True, kw_only=True)
class ToolResultMessage:
    """The result of one tool call.

    Attributes:
        tool_call_id: The call this answers.
        content: The result text (or parts).
        name: The tool's name (informative; providers match on ``tool_call_id``).
        is_error: The result reports a failure (validation, exception, abort).
    """

    tool_call_id: str
    content: Content
    name: str | None = None
    is_error: bool = False
    role: Literal["tool"] = field(default="tool", init=False)

    @property
    def text(self) -> str:
        """The text of the result."""
        return content_text(self.content)


Message = Union[SystemMessage, UserMessage, AssistantMessage, ToolResultMessage]


MessageRole = Literal["system", "user", "assistant", "tool"]
"""The ``role`` values of the dict view (0.11's type name)."""

RuntimeMessage = dict[str, Any]
"""A message in its dict view, as ``get_messages`` returns it (0.11's type name)."""


@dataclass
class AgentMessage:
    """0.11's mutable message record: role, text content, tool calls and a metadata dict.

    The loop itself works on the frozen message classes above; this type exists for 0.11
    programs that build messages with it. Convert with :meth:`to_openai_message` (the dict
    view, accepted wherever a message dict is) or :meth:`to_message`.

    Attributes:
        role: ``"system"``, ``"user"``, ``"assistant"`` or ``"tool"``.
        content: The text (None is kept as None in the dict view).
        tool_calls: Calls made by an assistant message.
        tool_call_id: The call a tool message answers.
        name: Optional author or tool name.
        metadata: Free-form data; not part of the dict view.
    """

    role: MessageRole
    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_openai_message(self) -> dict[str, Any]:
        """The OpenAI Chat Completions dict: ``role`` and ``content`` always, then
        ``tool_calls``, ``tool_call_id`` and ``name`` when set."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai_tool_call() for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.name:
            out["name"] = self.name
        return out

    def to_message(self) -> Message:
        """The equivalent frozen message.

        Raises:
            ValueError: The role is unknown, or a tool message has no ``tool_call_id``.
        """
        return message_from_dict(self.to_openai_message())

    @classmethod
    def from_message(cls, message: Message) -> AgentMessage:
        """An ``AgentMessage`` holding ``message`` (list content becomes its text)."""
        return cls(
            role=message.role,
            content=content_text(message.content),
            tool_calls=list(message.tool_calls) if isinstance(message, AssistantMessage) else [],
            tool_call_id=message.tool_call_id if isinstance(message, ToolResultMessage) else None,
            name=None if isinstance(message, SystemMessage) else message.name,
        )


def message_to_dict(message: Message) -> dict[str, Any]:
    """Return the 0.11 dict view of ``message`` (OpenAI shape, empty keys omitted).

    Every message has ``content``; an assistant turn that only calls tools has ``""``, as
    in 0.11 (so ``m["content"]`` never raises). Extra keys beyond the OpenAI shape:
    ``reasoning`` / ``reasoning_signature`` on assistant messages and ``is_error`` on tool
    results, present only when set.
    """
    out: dict[str, Any] = {"role": message.role}
    if isinstance(message, AssistantMessage):
        out["content"] = _content_to_wire(message.content)
        if message.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in message.tool_calls]
        if message.reasoning:
            out["reasoning"] = message.reasoning
        if message.reasoning_signature:
            out["reasoning_signature"] = message.reasoning_signature
        if message.name:
            out["name"] = message.name
        return out
    if isinstance(message, ToolResultMessage):
        out["tool_call_id"] = message.tool_call_id
        out["content"] = _content_to_wire(message.content)
        if message.name:
            out["name"] = message.name
        if message.is_error:
            out["is_error"] = True
        return out
    out["content"] = _content_to_wire(message.content)
    if isinstance(message, UserMessage) and message.name:
        out["name"] = message.name
    return out


def _tool_call_from_dict(data: Mapping[str, Any]) -> ToolCall:
    function = data.get("function")
    if not isinstance(function, Mapping):
        raise ValueError("tool_calls[] entry needs a 'function' object")
    arguments = function.get("arguments", "{}")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return ToolCall(id=str(data.get("id", "")), name=str(function.get("name", "")), arguments=arguments)


_PLAIN: dict[Any, tuple[type, dict[str, Any]]] = {}


def _plain_message(role: str, content: str) -> Message:
    """A text-only user or assistant message, built without the frozen-dataclass ``__init__``
    (about five times faster; loading a long history is dominated by it)."""
    cls, defaults = _PLAIN[role]
    message: Any = object.__new__(cls)
    message.__dict__.update(defaults)
    message.__dict__["content"] = content
    return message  # type: ignore[no-any-return]


def message_from_dict(data: Mapping[str, Any]) -> Message:
    """Build a message from its dict view (the inverse of :func:`message_to_dict`).

    Raises:
        ValueError: ``data`` is not a valid message dict.
    """
    role = data.get("role")
    content = data.get("content")
    if type(content) is str and len(data) == 2 and role in _PLAIN:  # the common {"role", "content": text}
        return _plain_message(str(role), content)
    if role == "user":
        return UserMessage(content=_content_from_wire(content), name=data.get("name"))
    if role == "assistant":
        raw_calls = data.get("tool_calls") or ()
        if not isinstance(raw_calls, (list, tuple)):
            raise ValueError("assistant 'tool_calls' must be a list")
        return AssistantMessage(
            content=_content_from_wire(data.get("content")),
            tool_calls=tuple(_tool_call_from_dict(c) for c in raw_calls),
            reasoning=data.get("reasoning"),
            reasoning_signature=data.get("reasoning_signature"),
            name=data.get("name"),
        )
    if role == "tool":
        call_id = data.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise ValueError("tool message needs a 'tool_call_id'")
        return ToolResultMessage(
            tool_call_id=call_id,
            content=_content_from_wire(data.get("content")),
            name=data.get("name"),
            is_error=bool(data.get("is_error", False)),
        )
    if role in ("system", "developer"):
        return SystemMessage(content=content_text(_content_from_wire(data.get("content"))))
    raise ValueError(f"unknown message role {role!r}; expected system, user, assistant or tool")


_PLAIN["user"] = (UserMessage, dict(UserMessage(content="").__dict__))
_PLAIN["assistant"] = (AssistantMessage, dict(AssistantMessage(content="").__dict__))

_JSON_KEY = "_power_loop_json"
MESSAGE_JSON_KEY = _JSON_KEY


def scrub_surrogates(text: str) -> str:
    """``text`` made encodable as UTF-8: each lone surrogate becomes U+FFFD.

    Lone surrogates come from ``os.fsdecode`` of non-UTF-8 bytes (``os.listdir`` of such a
    file name) and from ``\\udXXX`` escapes a model or server sent without their partner; no
    store or wire accepts them. A surrogate pair kept as two code points is joined. ASCII
    text costs one flag check, other text one encode attempt; only a failing text is rebuilt.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def message_json(message: Message) -> str:
    """The compact JSON of the message's dict view, computed once per message object.

    The store writes exactly this text, and a message loaded from the store is seeded with the
    text it was read from, so a message is encoded at most once in its lifetime. Lone
    surrogates in any field (see :func:`scrub_surrogates`) are stored and sent as U+FFFD.
    """
    cache = message.__dict__
    found = cache.get(_JSON_KEY)
    if found is None:
        found = json.dumps(message_to_dict(message), ensure_ascii=False, separators=(",", ":"))
        if not found.isascii():
            # Raw non-ASCII characters appear only inside JSON strings, so replacing a
            # surrogate there keeps the JSON valid.
            found = scrub_surrogates(found)
        cache[_JSON_KEY] = found
    return found


def message_from_json(text: str) -> Message:
    """Decode a message from its JSON (as written by :func:`message_json`), keeping the text.

    Raises:
        ValueError: Not valid JSON, or not a valid message.
    """
    message = message_from_dict(json.loads(text))
    message.__dict__[_JSON_KEY] = text
    return message


def tool_call_ids(messages: Iterable[Message]) -> list[str]:
    """Ids of every tool call made by the assistant messages in ``messages``, in order."""
    return [c.id for m in messages if isinstance(m, AssistantMessage) for c in m.tool_calls]
