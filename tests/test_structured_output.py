"""Structured output: parse_structured (0.11), send(response_format=...) over the real SDKs,
validation, one corrective round, the degraded end after two invalid answers."""

from __future__ import annotations

import os
from typing import Any

import pydantic
import pytest

from power_loop import (
    AgentEventType,
    AgentLoopConfig,
    ConfigurationError,
    StatefulAgentLoop,
    StructuredOutputError,
    StructuredOutputSpec,
    parse_structured,
)
from power_loop.testing import ScriptedLLM, ScriptedServer, text_reply, tool_reply
from power_loop.tools.definition import tool
from power_loop.tools.registry import ToolRegistry

from .conftest import ServiceFactory


class City(pydantic.BaseModel):
    name: str
    population: int


CITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population": {"type": "integer", "minimum": 0}},
    "required": ["name", "population"],
    "additionalProperties": False,
}
SPEC = StructuredOutputSpec("city", CITY_SCHEMA)
VALID = '{"name": "Oslo", "population": 709000}'


# --------------------------------------------------------------------------- parse_structured


def test_parse_plain_and_fenced_json() -> None:
    assert parse_structured(VALID) == {"name": "Oslo", "population": 709000}
    assert parse_structured(f"```json\n{VALID}\n```") == {"name": "Oslo", "population": 709000}
    assert parse_structured(f"  ```\n{VALID}\n```  ") == {"name": "Oslo", "population": 709000}
    assert parse_structured(f"Here it is:\n```json\n{VALID}\n```\nDone.")["name"] == "Oslo"
    assert parse_structured({"a": 1}) == {"a": 1}


@pytest.mark.parametrize(
    ("text", "reason", "words"),
    [
        ("", "empty", "empty"),
        ("   ", "empty", "empty"),
        ("{not json", "invalid_json", "not valid JSON"),
        ("[1, 2]", "not_an_object", "got list"),
        ('"text"', "not_an_object", "got str"),
    ],
)
def test_parse_failures_say_what_is_wrong(text: str, reason: str, words: str) -> None:
    with pytest.raises(StructuredOutputError) as info:
        parse_structured(text)
    assert info.value.reason == reason
    assert info.value.raw_text == text
    assert words in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("schema", [CITY_SCHEMA, SPEC, City])
def test_parse_validates_against_a_schema(schema: Any) -> None:
    assert parse_structured(VALID, schema=schema) == {"name": "Oslo", "population": 709000}
    with pytest.raises(StructuredOutputError) as info:
        parse_structured('{"name": "Oslo"}', schema=schema)
    assert info.value.reason == "schema_mismatch"
    assert "population" in str(info.value)


def test_raw_schema_is_validated_in_full() -> None:
    with pytest.raises(StructuredOutputError) as info:
        parse_structured('{"name": "Oslo", "population": -3}', schema=CITY_SCHEMA)
    assert "population" in str(info.value) and "minimum" in str(info.value)
    with pytest.raises(StructuredOutputError, match="extra"):
        parse_structured('{"name": "Oslo", "population": 3, "extra": 1}', schema=CITY_SCHEMA)


def test_spec_fields_and_openai_format() -> None:
    spec = StructuredOutputSpec("city", CITY_SCHEMA, description="A city")
    assert (spec.strict, spec.examples) == (True, [])
    assert spec.to_openai_response_format() == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": CITY_SCHEMA, "strict": True, "description": "A city"},
    }
    with pytest.raises(ValueError, match="name"):
        StructuredOutputSpec("a city", CITY_SCHEMA)
    with pytest.raises(ValueError, match="schema"):
        StructuredOutputSpec("city", "not a schema")  # type: ignore[arg-type]


def test_error_keeps_011_constructor() -> None:
    error = StructuredOutputError(reason="invalid_json", raw_text="{", detail="line 1")
    assert (error.reason, error.raw_text, error.detail) == ("invalid_json", "{", "line 1")
    assert str(error) == "the answer is not valid JSON: line 1"


# --------------------------------------------------------------------------- the wire


async def test_native_format_goes_over_the_wire(
    db_path: str, scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply(VALID))
    async with StatefulAgentLoop(llm=llm_factory(protocol, scripted_server), db_path=db_path) as loop:
        sid = loop.new_session()
        result = await loop.send("Which city?", sid, response_format=SPEC)
    assert result.status == "completed"
    assert result.output == {"name": "Oslo", "population": 709000}
    received = scripted_server.requests[0]
    if protocol == "openai":
        assert received.body["response_format"] == SPEC.to_openai_response_format()
        assert received.response_format == SPEC.to_openai_response_format()
    else:
        assert received.body["output_config"] == {"format": {"type": "json_schema", "schema": CITY_SCHEMA}}
        assert received.response_format == {"type": "json_schema", "schema": CITY_SCHEMA}


async def test_no_format_sends_nothing(
    db_path: str, scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply("plain"))
    async with StatefulAgentLoop(llm=llm_factory(protocol, scripted_server), db_path=db_path) as loop:
        result = await loop.send("hi", loop.new_session())
    assert result.output is None
    body = scripted_server.requests[0].body
    assert "response_format" not in body and "output_config" not in body


async def test_model_class_gives_an_instance_and_tools_still_run(
    db_path: str, scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    @tool
    def lookup(city: str) -> str:
        """Population of a city."""
        return "709000"

    registry = ToolRegistry()
    registry.register(lookup)
    scripted_server.push(tool_reply(("lookup", {"city": "Oslo"})), text_reply(VALID))
    llm = llm_factory(protocol, scripted_server)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        result = await loop.send("Which city?", loop.new_session(), response_format=City)
    assert result.status == "completed" and result.rounds == 2
    assert result.output == City(name="Oslo", population=709000)
    # The format travels with every round of the run, the tool round included.
    assert all(r.response_format is not None for r in scripted_server.requests)


# --------------------------------------------------------------------------- correction


async def test_corrected_after_one_invalid_answer(
    db_path: str, scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply('```json\n{"name": "Oslo", "population": "many"}\n```'), text_reply(VALID))
    async with StatefulAgentLoop(llm=llm_factory(protocol, scripted_server), db_path=db_path) as loop:
        sid = loop.new_session()
        result = await loop.send("Which city?", sid, response_format=City)
        messages = loop.get_messages(sid)
    assert result.status == "completed" and result.rounds == 2
    assert result.output == City(name="Oslo", population=709000)
    correction = scripted_server.requests[1].last_user_text
    assert "does not match the schema" in correction and "population" in correction
    # Stored: question, invalid answer, the correction request, valid answer.
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant"]
    assert messages[2].get("name") == "structured_output"


async def test_clear_failure_after_two_invalid_answers(
    db_path: str, scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    scripted_server.push(text_reply("not json"), text_reply("[1]"), text_reply("fine"))
    events: list[Any] = []
    async with StatefulAgentLoop(llm=llm_factory(protocol, scripted_server), db_path=db_path) as loop:
        loop.event_bus.subscribe(AgentEventType.LLM_DEGRADED, events.append)
        sid = loop.new_session()
        result = await loop.send("Which city?", sid, response_format=SPEC)
        assert result.status == "degraded" and result.output is None and result.rounds == 2
        assert result.final_text.startswith("[degraded: structured output invalid after 2 answers")
        assert "not a JSON object" in result.final_text
        assert events[0].data.reason == "invalid_output" and events[0].data.attempts == 2
        assert len(scripted_server.requests) == 2
        # The session is consistent and usable: the next send works; the note is not sent.
        again = await loop.send("hello", sid)
        assert (again.status, again.final_text) == ("completed", "fine")
    assert "[degraded" not in str(scripted_server.requests[-1].body)


# --------------------------------------------------------------------------- config


async def test_config_default_and_per_call_wins(db_path: str) -> None:
    class Name(pydantic.BaseModel):
        name: str

    llm = ScriptedLLM([text_reply(VALID), text_reply('{"name": "Bergen"}')])
    config = AgentLoopConfig(response_format=SPEC)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        sid = loop.new_session()
        first = await loop.send("a", sid)
        second = await loop.send("b", sid, response_format=Name)
    assert first.output == {"name": "Oslo", "population": 709000}
    assert second.output == Name(name="Bergen")
    assert llm.requests[0].response_format == SPEC.to_openai_response_format()
    assert llm.requests[1].response_format["json_schema"]["name"] == "Name"  # type: ignore[index]


async def test_bad_response_format_is_refused_before_anything_is_stored(db_path: str) -> None:
    with pytest.raises(ConfigurationError, match="response_format"):
        AgentLoopConfig(response_format=42)
    async with StatefulAgentLoop(llm=ScriptedLLM(), db_path=db_path) as loop:
        sid = loop.new_session()
        with pytest.raises(TypeError, match="response_format"):
            await loop.send("a", sid, response_format=42)
        with pytest.raises(TypeError, match="response_format"):
            await loop.follow_up("a", sid, response_format="x")
        assert loop.get_messages(sid) == []
    assert os.path.exists(db_path)


def test_send_sync_forwards_response_format(db_path: str) -> None:
    llm = ScriptedLLM([text_reply(VALID)])
    loop = StatefulAgentLoop(llm=llm, db_path=db_path)
    sid = loop.new_session()
    result = loop.send_sync("a", sid, response_format=CITY_SCHEMA)
    assert result.output == {"name": "Oslo", "population": 709000}
