"""The vendor-neutral message model: frozen dataclasses, the dict view and its inverse."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from power_loop.messages import (
    AssistantMessage,
    ImagePart,
    Message,
    RawPart,
    SystemMessage,
    TextPart,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    content_text,
    message_from_dict,
    message_to_dict,
)

UNKNOWN_PART: dict[str, Any] = {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}


# --------------------------------------------------------------------------- immutability


@pytest.mark.parametrize(
    ("message", "attribute"),
    [
        (SystemMessage(content="be brief"), "content"),
        (UserMessage(content="hi"), "content"),
        (AssistantMessage(content="hello"), "tool_calls"),
        (ToolResultMessage(tool_call_id="c1", content="5"), "is_error"),
    ],
)
def test_messages_are_frozen(message: Message, attribute: str) -> None:
    """Assigning to any field of a message raises."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(message, attribute, "changed")
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.role = "user"  # type: ignore[misc]


def test_parts_tool_calls_and_usage_are_frozen() -> None:
    for obj, attribute in (
        (TextPart(text="a"), "text"),
        (ImagePart(url="https://example.com/a.png"), "url"),
        (RawPart(data={"type": "x"}), "data"),
        (ToolCall(id="c", name="n"), "arguments"),
        (Usage(), "calls"),
    ):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, attribute, "changed")


def test_role_is_not_an_init_argument() -> None:
    with pytest.raises(TypeError):
        UserMessage(content="hi", role="assistant")  # type: ignore[call-arg]
    assert UserMessage(content="hi").role == "user"
    assert SystemMessage(content="x").role == "system"
    assert AssistantMessage().role == "assistant"
    assert ToolResultMessage(tool_call_id="c", content="").role == "tool"


def test_messages_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        UserMessage("hi")  # type: ignore[misc]


# --------------------------------------------------------------------------- round trips


def _round_trip(message: Message) -> tuple[dict[str, Any], Message]:
    data = message_to_dict(message)
    return data, message_from_dict(data)


def test_system_round_trip() -> None:
    message = SystemMessage(content="You are terse.")
    data, back = _round_trip(message)
    assert data == {"role": "system", "content": "You are terse."}
    assert back == message
    assert isinstance(back, SystemMessage)


def test_user_string_round_trip() -> None:
    message = UserMessage(content="What is 2+2?", name="alice")
    data, back = _round_trip(message)
    assert data == {"role": "user", "content": "What is 2+2?", "name": "alice"}
    assert back == message


def test_user_without_name_has_no_name_key() -> None:
    data = message_to_dict(UserMessage(content="hi"))
    assert data == {"role": "user", "content": "hi"}


def test_user_list_content_round_trip_keeps_unknown_parts_verbatim() -> None:
    message = UserMessage(
        content=(
            TextPart(text="Look at these:"),
            ImagePart(url="https://example.com/cat.png", detail="high"),
            ImagePart(url="data:image/png;base64,iVBORw0KGgo="),
            RawPart(data=UNKNOWN_PART),
        )
    )
    data, back = _round_trip(message)
    assert data == {
        "role": "user",
        "content": [
            {"type": "text", "text": "Look at these:"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            UNKNOWN_PART,
        ],
    }
    assert back == message
    assert isinstance(back, UserMessage)
    assert isinstance(back.content, tuple)
    raw = back.content[3]
    assert isinstance(raw, RawPart)
    assert raw.type == "input_audio"
    assert dict(raw.data) == UNKNOWN_PART
    assert back.text == "Look at these:"


def test_dict_list_content_is_decoded_into_typed_parts() -> None:
    data = {
        "role": "user",
        "content": [
            {"type": "text", "text": "a"},
            "b",
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            UNKNOWN_PART,
        ],
    }
    message = message_from_dict(data)
    assert isinstance(message, UserMessage)
    assert message.content == (
        TextPart(text="a"),
        TextPart(text="b"),
        ImagePart(url="https://x/y.png"),
        RawPart(data=UNKNOWN_PART),
    )
    assert message.text == "ab"


def test_parts_with_extra_keys_are_kept_raw() -> None:
    """A text part carrying e.g. cache_control is not silently stripped to a TextPart."""
    part = {"type": "text", "text": "cached", "cache_control": {"type": "ephemeral"}}
    message = message_from_dict({"role": "user", "content": [part]})
    assert isinstance(message, UserMessage)
    assert message.content == (RawPart(data=part),)
    assert message_to_dict(message)["content"] == [part]


def test_invalid_content_raises() -> None:
    with pytest.raises(ValueError, match="content"):
        message_from_dict({"role": "user", "content": 42})
    with pytest.raises(ValueError, match="content part"):
        message_from_dict({"role": "user", "content": [1]})


def test_assistant_full_round_trip() -> None:
    message = AssistantMessage(
        content="Let me check.",
        tool_calls=(
            ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}'),
            ToolCall(id="call_2", name="add", arguments='{"a": 1, "b": 2}'),
        ),
        reasoning="The user wants weather.",
        reasoning_signature="sig-123",
        name="bot",
    )
    data, back = _round_trip(message)
    assert data == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "call_2", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}},
        ],
        "reasoning": "The user wants weather.",
        "reasoning_signature": "sig-123",
        "name": "bot",
    }
    assert back == message


def test_assistant_with_only_tool_calls_has_empty_content() -> None:
    # 0.11 returned content "" on a tool-call-only turn; m["content"] must not raise.
    message = AssistantMessage(tool_calls=(ToolCall(id="c1", name="ping"),))
    data, back = _round_trip(message)
    assert data == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "ping", "arguments": "{}"}}],
    }
    assert "reasoning" not in data
    assert back == message


def test_assistant_text_only_has_no_tool_calls_key() -> None:
    data = message_to_dict(AssistantMessage(content="done"))
    assert data == {"role": "assistant", "content": "done"}


def test_assistant_malformed_arguments_are_kept_verbatim() -> None:
    message = AssistantMessage(tool_calls=(ToolCall(id="c1", name="f", arguments='{"a": 1'),))
    _, back = _round_trip(message)
    assert isinstance(back, AssistantMessage)
    assert back.tool_calls[0].arguments == '{"a": 1'


def test_assistant_null_content_and_object_arguments_from_wire() -> None:
    """OpenAI sends content=None with tool calls; some servers send arguments as an object."""
    message = message_from_dict(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}],
        }
    )
    assert isinstance(message, AssistantMessage)
    assert message.content == ""
    assert message.tool_calls[0].parsed_arguments() == {"x": 1}


def test_assistant_bad_tool_calls_raise() -> None:
    with pytest.raises(ValueError, match="tool_calls"):
        message_from_dict({"role": "assistant", "tool_calls": "nope"})
    with pytest.raises(ValueError, match="function"):
        message_from_dict({"role": "assistant", "tool_calls": [{"id": "c1"}]})


def test_tool_result_round_trip_with_error_flag() -> None:
    message = ToolResultMessage(tool_call_id="call_1", content="boom: division by zero", name="divide", is_error=True)
    data, back = _round_trip(message)
    assert data == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "boom: division by zero",
        "name": "divide",
        "is_error": True,
    }
    assert back == message
    assert isinstance(back, ToolResultMessage)
    assert back.is_error is True


def test_tool_result_success_has_no_is_error_key() -> None:
    message = ToolResultMessage(tool_call_id="call_1", content="5")
    data, back = _round_trip(message)
    assert data == {"role": "tool", "tool_call_id": "call_1", "content": "5"}
    assert isinstance(back, ToolResultMessage)
    assert back.is_error is False


def test_tool_result_with_empty_content_keeps_content_key() -> None:
    data = message_to_dict(ToolResultMessage(tool_call_id="c", content=""))
    assert data["content"] == ""


@pytest.mark.parametrize(
    "data", [{"role": "tool", "content": "5"}, {"role": "tool", "tool_call_id": "", "content": "5"}]
)
def test_tool_message_without_tool_call_id_raises(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="tool_call_id"):
        message_from_dict(data)


@pytest.mark.parametrize("role", ["function", "bot", None, ""])
def test_unknown_role_raises(role: object) -> None:
    with pytest.raises(ValueError, match="role"):
        message_from_dict({"role": role, "content": "x"})


def test_developer_role_maps_to_system_message() -> None:
    message = message_from_dict({"role": "developer", "content": "Follow the rules."})
    assert isinstance(message, SystemMessage)
    assert message.content == "Follow the rules."
    assert message_to_dict(message) == {"role": "system", "content": "Follow the rules."}


def test_system_list_content_is_flattened_to_text() -> None:
    message = message_from_dict({"role": "system", "content": [{"type": "text", "text": "a"}, "b"]})
    assert message == SystemMessage(content="ab")


def test_content_text() -> None:
    assert content_text(None) == ""
    assert content_text("plain") == "plain"
    assert content_text((TextPart(text="x"), ImagePart(url="u"), RawPart(data={}), TextPart(text="y"))) == "xy"


# --------------------------------------------------------------------------- tool calls


def test_parsed_arguments_valid() -> None:
    call = ToolCall(id="c", name="f", arguments='{"city": "Paris", "days": 3, "nested": {"a": [1, 2]}}')
    assert call.parsed_arguments() == {"city": "Paris", "days": 3, "nested": {"a": [1, 2]}}


@pytest.mark.parametrize("arguments", ["", "   ", "{}"])
def test_parsed_arguments_empty_is_empty_dict(arguments: str) -> None:
    assert ToolCall(id="c", name="f", arguments=arguments).parsed_arguments() == {}


def test_parsed_arguments_default() -> None:
    call = ToolCall(id="c", name="f")
    assert call.arguments == "{}"
    assert call.parsed_arguments() == {}


@pytest.mark.parametrize("arguments", ['{"a": 1', "{'a': 1}", "not json", '{"a": }'])
def test_parsed_arguments_malformed_json_raises(arguments: str) -> None:
    with pytest.raises(ValueError):
        ToolCall(id="c", name="f", arguments=arguments).parsed_arguments()


@pytest.mark.parametrize("arguments", ["[1, 2]", '"text"', "42", "null", "true"])
def test_parsed_arguments_non_object_raises(arguments: str) -> None:
    with pytest.raises(ValueError, match="JSON object"):
        ToolCall(id="c", name="f", arguments=arguments).parsed_arguments()


def test_tool_call_to_dict() -> None:
    assert ToolCall(id="c1", name="f", arguments='{"x":1}').to_dict() == {
        "id": "c1",
        "type": "function",
        "function": {"name": "f", "arguments": '{"x":1}'},
    }


# --------------------------------------------------------------------------- usage


def test_usage_addition() -> None:
    a = Usage(calls=1, prompt_tokens=10, completion_tokens=5, cache_read_tokens=2, reasoning_tokens=1, total_tokens=15)
    b = Usage(
        calls=2, prompt_tokens=100, completion_tokens=50, cache_read_tokens=20, reasoning_tokens=10, total_tokens=150
    )
    total = a + b
    assert total == Usage(
        calls=3, prompt_tokens=110, completion_tokens=55, cache_read_tokens=22, reasoning_tokens=11, total_tokens=165
    )
    # the operands are untouched
    assert a.calls == 1
    assert b.calls == 2
    assert Usage() + a == a


def test_usage_sum_from_zero() -> None:
    parts = [Usage.of_call(prompt_tokens=i, completion_tokens=1) for i in range(1, 4)]
    total = sum(parts, Usage())
    assert total.calls == 3
    assert total.prompt_tokens == 6
    assert total.total_tokens == 9


def test_usage_to_dict_keys() -> None:
    usage = Usage(
        calls=1, prompt_tokens=2, completion_tokens=3, cache_read_tokens=4, reasoning_tokens=5, total_tokens=6
    )
    data = usage.to_dict()
    assert list(data) == [
        "calls",
        "prompt_tokens",
        "completion_tokens",
        "cache_read_tokens",
        "reasoning_tokens",
        "total_tokens",
    ]
    assert data == {
        "calls": 1,
        "prompt_tokens": 2,
        "completion_tokens": 3,
        "cache_read_tokens": 4,
        "reasoning_tokens": 5,
        "total_tokens": 6,
    }


def test_usage_of_call_total_defaults_to_prompt_plus_completion() -> None:
    usage = Usage.of_call(prompt_tokens=12, completion_tokens=30, cache_read_tokens=4, reasoning_tokens=7)
    assert usage.calls == 1
    assert usage.total_tokens == 42
    assert usage.cache_read_tokens == 4
    assert usage.reasoning_tokens == 7


def test_usage_of_call_explicit_total_wins() -> None:
    assert Usage.of_call(prompt_tokens=12, completion_tokens=30, total_tokens=50).total_tokens == 50
    assert Usage.of_call(prompt_tokens=12, completion_tokens=30, total_tokens=0).total_tokens == 0


def test_usage_defaults_are_zero() -> None:
    assert Usage().to_dict() == dict.fromkeys(
        ("calls", "prompt_tokens", "completion_tokens", "cache_read_tokens", "reasoning_tokens", "total_tokens"), 0
    )
