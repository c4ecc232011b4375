"""The tools layer: definitions, schema derivation, validation, the registry and the call context.

Everything here runs the real code of ``power_loop.tools``; handlers are plain functions that
record what they received. Types used in ``@tool`` signatures live at module level because the
schema is derived with ``typing.get_type_hints`` (this module uses postponed annotations).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import threading
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Optional, TypedDict

import pytest

import power_loop.tools.context as tool_context
from power_loop import (
    AsyncToolInSyncContext,
    FunctionTool,
    RegisteredTool,
    ToolContext,
    ToolDefinition,
    ToolError,
    ToolNotFound,
    ToolRegistry,
    ToolValidationError,
    current_tool_context,
    tool,
)
from power_loop.tools.registry import MAX_RESULT_CHARS, call_handler, format_tool_result, truncate_result
from power_loop.tools.schema import coerce_arguments, function_schema, parse_docstring, type_to_schema
from power_loop.tools.validation import json_type_name, validate_against_schema

# --------------------------------------------------------------------------- shared types


class Color(enum.Enum):
    """A string-valued enum."""

    RED = "red"
    GREEN = "green"


class Priority(enum.IntEnum):
    """An int-valued enum."""

    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    """A nested dataclass."""

    x: int
    y: int = 0


@dataclasses.dataclass
class Shape:
    """A dataclass holding another dataclass and an enum."""

    origin: Point
    color: Color
    label: str = ""
    tags: list[str] = dataclasses.field(default_factory=list)
    computed: int = dataclasses.field(default=0, init=False)


class Address(TypedDict):
    """A total TypedDict."""

    street: str
    zip: int


class Filters(TypedDict, total=False):
    """A non-total TypedDict."""

    kind: str
    limit: int


class Opaque:
    """A class with no JSON schema form."""


def _weather_def(name: str = "get_weather") -> ToolDefinition:
    return ToolDefinition(
        name,
        "Weather for a city",
        input_schema={
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    )


def _strict_def() -> ToolDefinition:
    """A definition exercising nested objects, arrays and enums, with no extra properties."""
    return ToolDefinition(
        "strict",
        "strict schema",
        input_schema={
            "type": "object",
            "properties": {
                "a": {"type": "integer"},
                "b": {"type": "string"},
                "mode": {"type": "string", "enum": ["fast", "slow"]},
                "address": {
                    "type": "object",
                    "properties": {"zip": {"type": "string"}, "geo": {"type": "object", "properties": {}}},
                    "required": ["zip"],
                },
                "ids": {"type": "array", "items": {"type": "integer"}},
                "points": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
                },
            },
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    )


# --------------------------------------------------------------------------- ToolDefinition


class TestToolDefinition:
    """The 0.11 constructor and its checks."""

    @pytest.mark.parametrize("name", ["a", "get_weather", "get-weather-2", "X" * 64, "0_-"])
    def test_valid_names_accepted(self, name: str) -> None:
        """Names of 1-64 chars from [A-Za-z0-9_-] are accepted as given."""
        assert ToolDefinition(name, "d").name == name

    @pytest.mark.parametrize("name", ["", "x" * 65, "has space", "dot.name", "slash/name", "naïve", "a:b"])
    def test_invalid_names_rejected(self, name: str) -> None:
        """Other names raise ValueError quoting the name."""
        with pytest.raises(ValueError, match="invalid tool name"):
            ToolDefinition(name, "d")

    def test_non_string_name_rejected(self) -> None:
        """A non-string name is a ValueError, not a crash in the regex."""
        with pytest.raises(ValueError, match="invalid tool name 123"):
            ToolDefinition(123, "d")  # type: ignore[arg-type]

    def test_default_schema_is_empty_object(self) -> None:
        """Without input_schema the parameters are an empty object schema."""
        definition = ToolDefinition("noargs", "d")
        assert definition.parameters == {"type": "object", "properties": {}}
        assert definition.required_params == ()

    @pytest.mark.parametrize("kind", ["array", "string", "integer"])
    def test_input_schema_type_must_be_object(self, kind: str) -> None:
        """A schema whose type is not 'object' is refused, naming the wrong type."""
        with pytest.raises(ValueError, match=f"must have type 'object', not '{kind}'"):
            ToolDefinition("t", "d", input_schema={"type": kind})

    def test_input_schema_must_be_mapping(self) -> None:
        """A non-mapping input_schema is refused."""
        with pytest.raises(ValueError, match="input_schema must be a JSON schema object"):
            ToolDefinition("t", "d", input_schema=["not", "a", "schema"])  # type: ignore[arg-type]

    def test_schema_without_type_gets_object_defaults(self) -> None:
        """A schema lacking 'type'/'properties' is completed in .parameters."""
        definition = ToolDefinition("t", "d", input_schema={"required": []})
        assert definition.parameters["type"] == "object"
        assert definition.parameters["properties"] == {}

    def test_required_params_merged_without_duplicates(self) -> None:
        """required_params are appended to the schema's required list, keeping its order."""
        definition = ToolDefinition(
            "t",
            "d",
            input_schema={
                "type": "object",
                "properties": {"a": {}, "b": {}, "c": {}},
                "required": ["b"],
            },
            required_params=("a", "b", "c"),
        )
        assert definition.parameters["required"] == ["b", "a", "c"]

    def test_required_params_only(self) -> None:
        """required_params alone create the required list."""
        definition = ToolDefinition("t", "d", required_params=("x",))
        assert definition.parameters["required"] == ["x"]

    def test_required_params_list_becomes_tuple(self) -> None:
        """A list passed as required_params is stored as a tuple (the dataclass is frozen)."""
        definition = ToolDefinition("t", "d", required_params=["a", "b"])  # type: ignore[arg-type]
        assert definition.required_params == ("a", "b")

    def test_parameters_does_not_mutate_input_schema(self) -> None:
        """Merging required_params works on a copy; the caller's schema is untouched."""
        schema: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "string"}}}
        definition = ToolDefinition("t", "d", input_schema=schema, required_params=("a",))
        assert definition.parameters["required"] == ["a"]
        assert "required" not in schema
        assert "required" not in definition.input_schema

    def test_required_params_enforced_by_validation(self) -> None:
        """The merged required list is what the registry validates against."""
        registry = ToolRegistry()
        definition = ToolDefinition(
            "t", "d", input_schema={"type": "object", "properties": {"q": {"type": "string"}}}, required_params=("q",)
        )
        registry.register(definition, lambda q: q)
        assert registry.validate("t", {}) == "Error: missing required parameter(s): q"
        assert registry.validate("t", {"q": "x"}) is None

    def test_to_openai_tool_shape(self) -> None:
        """to_openai_tool is the Chat Completions tools[] entry with the effective parameters."""
        definition = ToolDefinition(
            "get_weather",
            "Weather for a city",
            input_schema={"type": "object", "properties": {"city": {"type": "string"}}},
            required_params=("city",),
        )
        assert definition.to_openai_tool() == {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
        json.dumps(definition.to_openai_tool())  # serialisable as is

    def test_frozen_and_hashable(self) -> None:
        """Definitions are immutable and hashable despite the dict schema."""
        definition = _weather_def()
        with pytest.raises(dataclasses.FrozenInstanceError):
            definition.name = "other"  # type: ignore[misc]
        assert hash(definition) == hash(_weather_def())
        assert definition == _weather_def()
        assert definition != _weather_def("other_name")


# --------------------------------------------------------------------------- schema derivation


class TestTypeToSchema:
    """Single annotations to JSON schema."""

    @pytest.mark.parametrize(
        ("annotation", "expected"),
        [
            (str, {"type": "string"}),
            (int, {"type": "integer"}),
            (float, {"type": "number"}),
            (bool, {"type": "boolean"}),
            (None, {"type": "null"}),
            (Any, {}),
            (list, {"type": "array"}),
            (dict, {"type": "object"}),
            (list[int], {"type": "array", "items": {"type": "integer"}}),
            (typing.List[str], {"type": "array", "items": {"type": "string"}}),  # noqa: UP006
            (set[str], {"type": "array", "items": {"type": "string"}, "uniqueItems": True}),
            (frozenset[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
            (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
            (
                tuple[int, str],
                {"type": "array", "items": [{"type": "integer"}, {"type": "string"}], "minItems": 2, "maxItems": 2},
            ),
            (dict[str, int], {"type": "object", "additionalProperties": {"type": "integer"}}),
            (dict[str, Any], {"type": "object"}),
            (typing.Mapping[str, bool], {"type": "object", "additionalProperties": {"type": "boolean"}}),
            (Literal["a", "b"], {"enum": ["a", "b"], "type": "string"}),
            (Literal[1, 2, 3], {"enum": [1, 2, 3], "type": "integer"}),
            (Literal["a", 1], {"enum": ["a", 1]}),
            (Color, {"enum": ["red", "green"], "type": "string"}),
            (Priority, {"enum": [1, 2], "type": "integer"}),
            (Optional[int], {"type": ["integer", "null"]}),  # noqa: UP045
            (int | None, {"type": ["integer", "null"]}),
            (int | str, {"type": ["integer", "string"]}),
            (Optional[Literal["a"]], {"anyOf": [{"enum": ["a"], "type": "string"}, {"type": "null"}]}),  # noqa: UP045
            (list[int] | None, {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]}),
            (Annotated[str, "the city"], {"type": "string", "description": "the city"}),
            (Annotated[int | None, "maybe"], {"type": ["integer", "null"], "description": "maybe"}),
        ],
    )
    def test_annotation(self, annotation: Any, expected: dict[str, Any]) -> None:
        """Each supported annotation maps to the expected schema."""
        assert type_to_schema(annotation) == expected

    def test_dataclass(self) -> None:
        """Dataclasses become closed objects; defaulted and init=False fields are handled."""
        assert type_to_schema(Shape) == {
            "type": "object",
            "properties": {
                "origin": {
                    "type": "object",
                    "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
                    "required": ["x"],
                    "additionalProperties": False,
                },
                "color": {"enum": ["red", "green"], "type": "string"},
                "label": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["origin", "color"],
            "additionalProperties": False,
        }

    def test_typeddict_total(self) -> None:
        """A total TypedDict requires all of its keys."""
        assert type_to_schema(Address) == {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": "integer"}},
            "required": ["street", "zip"],
            "additionalProperties": False,
        }

    def test_typeddict_not_total(self) -> None:
        """A total=False TypedDict requires nothing."""
        schema = type_to_schema(Filters)
        assert schema["required"] == []
        assert schema["properties"] == {"kind": {"type": "string"}, "limit": {"type": "integer"}}

    @pytest.mark.parametrize("annotation", [Opaque, complex, bytes, typing.Callable[[], int]])
    def test_unsupported_raises_type_error(self, annotation: Any) -> None:
        """Annotations without a JSON form raise a TypeError subclass naming the type."""
        with pytest.raises(TypeError, match="cannot express .* as JSON schema"):
            type_to_schema(annotation)


class TestFunctionSchema:
    """``ToolDefinition.from_function`` / ``@tool``: whole signatures."""

    def test_required_defaults_and_docstring(self) -> None:
        """Required params, recorded defaults and docstring descriptions all land in the schema."""

        def search(query: str, limit: int = 10, exact: bool = False, ratio: float = 0.5, tags: list[str] = []) -> str:  # noqa: B006
            """Search the catalogue.

            Longer explanation that is not part of the description.

            Args:
                query: Free-text query.
                limit: Maximum number of hits,
                    counted after filtering.
                exact (bool): Match whole words only.

            Returns:
                The hits.
            """
            return query

        definition = ToolDefinition.from_function(search)
        assert definition.name == "search"
        assert definition.description == "Search the catalogue."
        assert definition.parameters == {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Free-text query."},
                "limit": {
                    "type": "integer",
                    "description": "Maximum number of hits, counted after filtering.",
                    "default": 10,
                },
                "exact": {"type": "boolean", "description": "Match whole words only.", "default": False},
                "ratio": {"type": "number", "default": 0.5},
                "tags": {"type": "array", "items": {"type": "string"}, "default": []},
            },
            "required": ["query"],
            "additionalProperties": False,
        }

    def test_optional_none_default_not_required_and_not_recorded(self) -> None:
        """``X | None = None`` is optional and nullable, with no default key."""

        def f(a: int, b: str | None = None, c: Optional[int] = None) -> None:  # noqa: UP045
            """F."""

        params = ToolDefinition.from_function(f).parameters
        assert params["required"] == ["a"]
        assert params["properties"]["b"] == {"type": ["string", "null"]}
        assert params["properties"]["c"] == {"type": ["integer", "null"]}

    def test_no_required_key_when_all_defaulted(self) -> None:
        """The schema has no 'required' key when every parameter has a default."""

        def f(a: int = 1) -> None:
            """F."""

        assert "required" not in ToolDefinition.from_function(f).parameters

    def test_complex_parameter_types(self) -> None:
        """Enum, Literal, tuple, dict, dataclass and TypedDict parameters get their schemas."""

        def f(
            color: Color,
            level: Literal["low", "high"],
            pair: tuple[int, str],
            scores: dict[str, int],
            shape: Shape,
            address: Address,
            priority: Priority = Priority.LOW,
        ) -> None:
            """F."""

        props = ToolDefinition.from_function(f).parameters["properties"]
        assert props["color"] == {"enum": ["red", "green"], "type": "string"}
        assert props["level"] == {"enum": ["low", "high"], "type": "string"}
        assert props["pair"]["items"] == [{"type": "integer"}, {"type": "string"}]
        assert props["scores"] == {"type": "object", "additionalProperties": {"type": "integer"}}
        assert props["shape"] == type_to_schema(Shape)
        assert props["address"] == type_to_schema(Address)
        # An IntEnum member is an int, so its value is recorded as the default.
        assert props["priority"]["default"] == 1

    def test_annotated_description_wins_over_docstring(self) -> None:
        """An Annotated string is the description even when the docstring also has one."""

        def f(city: Annotated[str, "City from Annotated"], country: Annotated[str, "Country"] = "NL") -> None:
            """F.

            Args:
                city: City from docstring.
            """

        props = ToolDefinition.from_function(f).parameters["properties"]
        assert props["city"] == {"type": "string", "description": "City from Annotated"}
        assert props["country"] == {"type": "string", "description": "Country", "default": "NL"}

    def test_tool_context_parameter_left_out(self) -> None:
        """A ToolContext parameter is injected, never part of the schema."""

        def f(query: str, ctx: ToolContext) -> str:
            """F."""
            return query

        params = ToolDefinition.from_function(f).parameters
        assert list(params["properties"]) == ["query"]
        assert params["required"] == ["query"]

    def test_var_args_and_unannotated(self) -> None:
        """*args/**kwargs are skipped; unannotated parameters accept anything."""

        def f(a, *rest, b=2, **extra):  # type: ignore[no-untyped-def]
            pass

        params = ToolDefinition.from_function(f).parameters
        assert params["properties"] == {"a": {}, "b": {"default": 2}}
        assert params["required"] == ["a"]

    def test_no_docstring_gives_empty_description(self) -> None:
        """Without a docstring the description is empty."""

        def f(a: int) -> None:
            pass

        assert ToolDefinition.from_function(f).description == ""

    def test_unsupported_annotation_names_the_parameter(self) -> None:
        """An unsupported annotation raises a TypeError naming the parameter and function."""

        def f(ok: int, bad: Opaque) -> None:
            """F."""

        with pytest.raises(TypeError, match=r"parameter 'bad' of .*f: cannot express .*Opaque"):
            ToolDefinition.from_function(f)
        with pytest.raises(TypeError, match="parameter 'bad'"):
            tool(f)

    def test_name_and_description_overrides(self) -> None:
        """from_function honours explicit name/description, including an empty description."""

        def f(a: int) -> None:
            """Docstring description."""

        assert ToolDefinition.from_function(f, name="renamed").name == "renamed"
        assert ToolDefinition.from_function(f, description="Custom").description == "Custom"
        assert ToolDefinition.from_function(f, description="").description == ""

    def test_function_name_must_be_a_valid_tool_name(self) -> None:
        """An invalid explicit name is refused by the ToolDefinition check."""

        def f() -> None:
            pass

        with pytest.raises(ValueError, match="invalid tool name"):
            ToolDefinition.from_function(f, name="bad name")

    def test_function_schema_returns_description_and_schema(self) -> None:
        """function_schema is the pair used by from_function."""

        def f(a: int) -> None:
            """Describe f.

            Args:
                a: The a.
            """

        description, schema = function_schema(f)
        assert description == "Describe f."
        assert schema["properties"]["a"] == {"type": "integer", "description": "The a."}


class TestParseDocstring:
    """Google-style docstring parsing."""

    def test_empty(self) -> None:
        """No docstring: no description, no params."""
        assert parse_docstring(None) == ("", {})
        assert parse_docstring("") == ("", {})

    def test_first_paragraph_joined(self) -> None:
        """The description is the first paragraph, lines joined by spaces."""
        description, params = parse_docstring("First line\ncontinues.\n\nSecond paragraph.")
        assert description == "First line continues."
        assert params == {}

    def test_args_section_variants(self) -> None:
        """Typed entries, continuation lines, colons inside text and *args are handled."""
        doc = """Summary.

        Arguments:
            city (str): The city.
                Use the English name.
            fmt: Format: YYYY-MM-DD.
            *args: Extra positionals.

        Raises:
            ValueError: never listed as a parameter.
        """
        description, params = parse_docstring(doc)
        assert description == "Summary."
        assert params == {
            "city": "The city. Use the English name.",
            "fmt": "Format: YYYY-MM-DD.",
            "args": "Extra positionals.",
        }


# --------------------------------------------------------------------------- @tool


class TestToolDecorator:
    """``@tool`` and ``FunctionTool``."""

    def test_bare_decorator(self) -> None:
        """@tool returns a FunctionTool that is still callable as the function."""

        @tool
        def add(a: int, b: int = 1) -> int:
            """Add two numbers."""
            return a + b

        assert isinstance(add, FunctionTool)
        assert add.name == "add"
        assert add.definition.description == "Add two numbers."
        assert add.timeout_s is None
        assert add(2, b=3) == 5

    def test_decorator_with_options(self) -> None:
        """@tool(name=..., description=..., timeout_s=...) sets all three."""

        @tool(name="lookup", description="Look something up", timeout_s=5)
        def find(key: str) -> str:
            """Ignored docstring."""
            return key.upper()

        assert find.name == "lookup"
        assert find.definition.name == "lookup"
        assert find.definition.description == "Look something up"
        assert find.timeout_s == 5
        assert find("k") == "K"

    def test_async_function(self) -> None:
        """An async function keeps its coroutine handler."""

        @tool
        async def fetch(url: str) -> str:
            """Fetch."""
            return url

        assert fetch.definition.parameters["required"] == ["url"]
        registered = ToolRegistry().register(fetch)
        assert registered.is_async is True


# --------------------------------------------------------------------------- validation


class TestValidateAgainstSchema:
    """The JSON-schema subset validator."""

    def test_valid_returns_no_errors(self) -> None:
        """A conforming value yields an empty list."""
        value = {"a": 1, "b": "x", "mode": "fast", "address": {"zip": "1234"}, "ids": [1, 2], "points": [{"x": 1}]}
        assert validate_against_schema(value, _strict_def().parameters) == []

    def test_string_for_integer(self) -> None:
        """Type errors name the path, the expected and the actual type."""
        errors = validate_against_schema({"count": "5"}, {"properties": {"count": {"type": "integer"}}})
        assert errors == ["count: expected integer, got string"]

    def test_bool_is_not_integer(self) -> None:
        """True is a boolean in JSON, not an integer."""
        errors = validate_against_schema({"n": True}, {"properties": {"n": {"type": "integer"}}})
        assert errors == ["n: expected integer, got boolean"]

    def test_bool_is_not_number(self) -> None:
        """False is not a number either."""
        errors = validate_against_schema(False, {"type": "number"})
        assert errors == ["arguments: expected number, got boolean"]

    def test_integral_float_is_integer(self) -> None:
        """3.0 is accepted as an integer, 3.5 is not."""
        schema = {"type": "integer"}
        assert validate_against_schema(3.0, schema) == []
        assert validate_against_schema(3.5, schema) == ["arguments: expected integer, got number"]

    def test_integer_is_number(self) -> None:
        """An integer satisfies 'number'."""
        assert validate_against_schema(3, {"type": "number"}) == []

    def test_type_list_and_null(self) -> None:
        """A list of types accepts any of them; the message lists all of them."""
        schema = {"type": ["integer", "null"]}
        assert validate_against_schema(None, schema) == []
        assert validate_against_schema(4, schema) == []
        assert validate_against_schema("x", schema) == ["arguments: expected integer or null, got string"]

    def test_enum_violation(self) -> None:
        """A value outside the enum is reported with the allowed values."""
        errors = validate_against_schema({"mode": "medium"}, {"properties": {"mode": {"enum": ["fast", "slow"]}}})
        assert errors == ["mode: 'medium' is not one of 'fast', 'slow'"]

    def test_nested_object_dotted_path(self) -> None:
        """Errors inside nested objects use dotted paths, including nested 'missing'."""
        schema = _strict_def().parameters
        errors = validate_against_schema({"a": 1, "b": "x", "address": {"zip": 1234}}, schema)
        assert errors == ["address.zip: expected string, got integer"]
        errors = validate_against_schema({"a": 1, "b": "x", "address": {}}, schema)
        assert errors == ["address: missing required parameter(s): zip"]
        errors = validate_against_schema({"a": 1, "b": "x", "address": {"zip": "1", "geo": []}}, schema)
        assert errors == ["address.geo: expected object, got array"]

    def test_array_item_paths(self) -> None:
        """Array item errors carry [i], also inside objects in arrays."""
        schema = _strict_def().parameters
        errors = validate_against_schema({"a": 1, "b": "x", "ids": [1, "two", 3, None]}, schema)
        assert errors == ["ids[1]: expected integer, got string", "ids[3]: expected integer, got null"]
        errors = validate_against_schema({"a": 1, "b": "x", "points": [{"x": 1}, {"x": "no"}, {}]}, schema)
        assert errors == [
            "points[1].x: expected integer, got string",
            "points[2]: missing required parameter(s): x",
        ]

    def test_missing_and_unexpected(self) -> None:
        """Missing required keys are listed together; extra keys are named with the known ones."""
        errors = validate_against_schema({"zzz": 1}, _strict_def().parameters)
        assert errors == [
            "missing required parameter(s): a, b",
            "zzz: unexpected parameter (known: a, b, mode, address, ids, points)",
        ]

    def test_additional_properties_schema(self) -> None:
        """A schema-valued additionalProperties validates the extra values."""
        schema = type_to_schema(dict[str, int])
        assert validate_against_schema({"x": 1}, schema) == []
        assert validate_against_schema({"x": 1, "y": "2"}, schema) == ["y: expected integer, got string"]

    def test_root_type_error(self) -> None:
        """A root type error is reported against 'arguments'."""
        assert validate_against_schema("x", {"type": "object"}) == ["arguments: expected object, got string"]

    def test_type_error_stops_deeper_checks(self) -> None:
        """After a type mismatch no further keyword errors are reported for that value."""
        assert validate_against_schema(5, {"type": "string", "enum": ["a"], "minLength": 3}) == [
            "arguments: expected string, got integer"
        ]

    def test_tuple_items_and_lengths(self) -> None:
        """The tuple form of items, minItems/maxItems and uniqueItems."""
        schema = type_to_schema(tuple[int, str])
        assert validate_against_schema([1, "a"], schema) == []
        assert validate_against_schema(["a", 1], schema) == [
            "[0]: expected integer, got string",
            "[1]: expected string, got integer",
        ]
        assert validate_against_schema([1], schema) == ["arguments: needs at least 2 item(s)"]
        assert validate_against_schema([1, "a", 2], schema) == ["arguments: allows at most 2 item(s)"]
        assert validate_against_schema(["a", "a"], type_to_schema(set[str])) == [
            "arguments: items must be unique ('a' repeats)"
        ]

    def test_string_and_number_constraints(self) -> None:
        """minLength/maxLength/pattern and numeric bounds."""
        string = {"type": "string", "minLength": 2, "maxLength": 4, "pattern": "^[a-z]+$"}
        assert validate_against_schema("abc", string) == []
        assert validate_against_schema("a", string) == ["arguments: must be at least 2 character(s)"]
        assert validate_against_schema("abcde", string) == ["arguments: must be at most 4 character(s)"]
        assert validate_against_schema("AB", string) == ["arguments: must match pattern '^[a-z]+$'"]
        number = {"type": "number", "minimum": 0, "maximum": 10, "exclusiveMaximum": 10}
        assert validate_against_schema(5, number) == []
        assert validate_against_schema(-1, number) == ["arguments: must be >= 0"]
        assert validate_against_schema(10, number) == ["arguments: must be < 10"]
        assert validate_against_schema(0, {"exclusiveMinimum": 0}) == ["arguments: must be > 0"]

    def test_combinators_const_and_ref(self) -> None:
        """anyOf/oneOf/allOf, const and local $ref."""
        any_of = {"anyOf": [{"type": "string"}, {"type": "integer"}]}
        assert validate_against_schema(1, any_of) == []
        assert validate_against_schema(None, any_of) == [
            "arguments: does not match any allowed form (arguments: expected string, got null)"
        ]
        one_of = {"oneOf": [{"type": "number"}, {"type": "integer"}]}
        assert validate_against_schema(1, one_of) == ["arguments: matches more than one allowed form"]
        assert validate_against_schema(1.5, one_of) == []
        all_of = {"allOf": [{"type": "integer"}, {"minimum": 3}]}
        assert validate_against_schema(2, all_of) == ["arguments: must be >= 3"]
        assert validate_against_schema("b", {"const": "a"}) == ["arguments: must be 'a'"]
        ref = {
            "type": "object",
            "properties": {"p": {"$ref": "#/$defs/P"}},
            "$defs": {"P": {"type": "object", "properties": {"x": {"type": "integer"}}}},
        }
        assert validate_against_schema({"p": {"x": "1"}}, ref) == ["p.x: expected integer, got string"]

    def test_unknown_keywords_ignored(self) -> None:
        """Keywords outside the supported subset do not produce errors."""
        assert validate_against_schema("x", {"type": "string", "format": "email", "x-custom": 1}) == []

    def test_error_count_is_capped(self) -> None:
        """At most 10 errors are returned."""
        schema = {"type": "array", "items": {"type": "integer"}}
        errors = validate_against_schema(["x"] * 25, schema)
        assert len(errors) == 10
        assert errors[0] == "[0]: expected integer, got string"

    @pytest.mark.parametrize(
        ("value", "name"),
        [(None, "null"), (True, "boolean"), (1, "integer"), (1.5, "number"), ("s", "string"), ([], "array"),
         ((), "array"), ({}, "object"), (b"x", "bytes")],
    )  # fmt: skip
    def test_json_type_name(self, value: Any, name: str) -> None:
        """json_type_name follows JSON, not Python, types."""
        assert json_type_name(value) == name


class TestRegistryValidate:
    """``ToolRegistry.validate``: the messages the model sees."""

    @pytest.fixture
    def registry(self) -> ToolRegistry:
        """A registry holding the strict tool."""
        registry = ToolRegistry()
        registry.register(_strict_def(), lambda **kw: kw)
        return registry

    def test_valid(self, registry: ToolRegistry) -> None:
        """Valid arguments give None."""
        assert registry.validate("strict", {"a": 1, "b": "x"}) is None

    def test_unknown_tool(self, registry: ToolRegistry) -> None:
        """An unknown name gives the 0.11 text."""
        assert registry.validate("nope", {}) == "Unknown tool: nope"

    def test_missing_required_exact_text(self, registry: ToolRegistry) -> None:
        """Missing parameters produce exactly the 0.11 message."""
        assert registry.validate("strict", {}) == "Error: missing required parameter(s): a, b"
        assert registry.validate("strict", {"b": "x"}) == "Error: missing required parameter(s): a"

    def test_type_error_message(self, registry: ToolRegistry) -> None:
        """A type error names the tool, the path and the expected type."""
        assert (
            registry.validate("strict", {"a": "one", "b": "x"})
            == "Error: invalid arguments for tool 'strict': a: expected integer, got string"
        )

    def test_several_errors_joined(self, registry: ToolRegistry) -> None:
        """Missing and other errors are combined into one message."""
        message = registry.validate("strict", {"a": True, "mode": "medium"})
        assert message == (
            "Error: missing required parameter(s): b. invalid arguments for tool 'strict': "
            "a: expected integer, got boolean; mode: 'medium' is not one of 'fast', 'slow'"
        )

    def test_unexpected_parameter(self, registry: ToolRegistry) -> None:
        """additionalProperties false rejects unknown keys."""
        message = registry.validate("strict", {"a": 1, "b": "x", "c": 0})
        assert message == (
            "Error: invalid arguments for tool 'strict': "
            "c: unexpected parameter (known: a, b, mode, address, ids, points)"
        )

    def test_nested_paths(self, registry: ToolRegistry) -> None:
        """Nested and array paths reach the model message."""
        message = registry.validate("strict", {"a": 1, "b": "x", "address": {"zip": 1}, "ids": [0, "1"]})
        assert message == (
            "Error: invalid arguments for tool 'strict': "
            "address.zip: expected string, got integer; ids[1]: expected integer, got string"
        )

    @pytest.mark.parametrize(("args", "kind"), [(["a"], "list"), ("a=1", "str"), (None, "NoneType"), (3, "int")])
    def test_non_dict_arguments(self, registry: ToolRegistry, args: Any, kind: str) -> None:
        """Arguments that are not a JSON object are refused with their type."""
        assert (
            registry.validate("strict", args) == f"Error: arguments for tool 'strict' must be a JSON object, got {kind}"
        )

    def test_derived_schema_enforced(self) -> None:
        """A @tool function's derived schema is what validate checks (enum and dataclass fields)."""

        @tool
        def paint(shape: Shape, color: Color) -> str:
            """Paint."""
            return ""

        registry = ToolRegistry([paint])
        good = {"shape": {"origin": {"x": 1}, "color": "red"}, "color": "green"}
        assert registry.validate("paint", good) is None
        message = registry.validate("paint", {"shape": {"origin": {"x": "1"}, "color": "blue"}, "color": "red"})
        assert message == (
            "Error: invalid arguments for tool 'paint': shape.origin.x: expected integer, got string; "
            "shape.color: 'blue' is not one of 'red', 'green'"
        )


# --------------------------------------------------------------------------- registry API


class TestRegistryAPI:
    """Registration and lookup (0.11 API plus function registration)."""

    def test_register_definition_and_handler(self) -> None:
        """register(definition, handler) returns the RegisteredTool and makes it visible."""
        registry = ToolRegistry()

        def handler(city: str, days: int = 1) -> str:
            return city

        registered = registry.register(_weather_def(), handler)
        assert isinstance(registered, RegisteredTool)
        assert registered.name == "get_weather"
        assert registered.handler is handler
        assert registered.is_async is False
        assert registered.coerce is False
        assert registry.has("get_weather")
        assert "get_weather" in registry
        assert len(registry) == 1
        assert registry.get("get_weather") is registered
        assert registry.definitions() == [_weather_def()]

    def test_duplicate_rejected(self) -> None:
        """A second registration under the same name is a ValueError; the first stays."""
        registry = ToolRegistry()
        first = registry.register(_weather_def(), lambda city: "first")
        with pytest.raises(ValueError) as excinfo:
            registry.register(_weather_def(), lambda city: "second")
        assert str(excinfo.value) == "Tool already registered: get_weather"
        assert registry.get("get_weather") is first
        assert registry.invoke("get_weather", {"city": "x"}) == "first"

    def test_overwrite(self) -> None:
        """overwrite=True replaces the handler in place (position unchanged)."""
        registry = ToolRegistry()
        registry.register(_weather_def(), lambda city: "first")
        registry.register(_weather_def("other"), lambda city: "other")
        registry.register(_weather_def(), lambda city: "second", overwrite=True)
        assert registry.invoke("get_weather", {"city": "x"}) == "second"
        assert registry.names() == ["get_weather", "other"]

    def test_unregister(self) -> None:
        """unregister returns whether the tool existed and never raises."""
        registry = ToolRegistry()
        registry.register(_weather_def(), lambda city: city)
        assert registry.unregister("get_weather") is True
        assert registry.unregister("get_weather") is False
        assert registry.unregister("never_there") is False
        assert not registry.has("get_weather")
        assert registry.get("get_weather") is None
        assert len(registry) == 0

    def test_get_missing_is_none(self) -> None:
        """get() of an unknown name is None, has() is False."""
        registry = ToolRegistry()
        assert registry.get("x") is None
        assert registry.has("x") is False
        assert "x" not in registry

    def test_names_definitions_in_insertion_order(self) -> None:
        """names(), definitions(), iteration and to_openai_tools follow registration order."""
        registry = ToolRegistry()
        for name in ["zeta", "alpha", "mid"]:
            registry.register(ToolDefinition(name, f"{name} tool"), lambda: None)
        assert registry.names() == ["zeta", "alpha", "mid"]
        assert [d.name for d in registry.definitions()] == ["zeta", "alpha", "mid"]
        assert list(registry) == ["zeta", "alpha", "mid"]
        assert [t["function"]["name"] for t in registry.to_openai_tools()] == ["zeta", "alpha", "mid"]
        assert repr(registry) == "ToolRegistry(['zeta', 'alpha', 'mid'])"

    def test_to_openai_tools(self) -> None:
        """to_openai_tools is the list of each definition's to_openai_tool."""
        registry = ToolRegistry()
        registry.register(_weather_def(), lambda city: city)
        assert registry.to_openai_tools() == [_weather_def().to_openai_tool()]
        assert ToolRegistry().to_openai_tools() == []

    def test_subset(self) -> None:
        """subset keeps only known requested names, in registry order, as a new registry."""
        registry = ToolRegistry()
        for name in ["a", "b", "c"]:
            registry.register(ToolDefinition(name, name), lambda name=name: name)
        sub = registry.subset(["c", "a", "missing"])
        assert isinstance(sub, ToolRegistry)
        assert sub is not registry
        assert sub.names() == ["a", "c"]
        assert sub.get("a") is registry.get("a")
        assert sub.invoke("c") == "c"
        sub.unregister("a")
        assert registry.has("a")  # the original is unaffected
        assert registry.subset([]).names() == []

    def test_register_tool_function(self) -> None:
        """A @tool function registers with its own name, timeout and argument coercion."""

        @tool(name="lookup", timeout_s=2.5)
        def find(key: str) -> str:
            """Find."""
            return key

        registry = ToolRegistry()
        registered = registry.register(find)
        assert registered.name == "lookup"
        assert registered.timeout_s == 2.5
        assert registered.coerce is True
        assert registered.handler is find.handler
        assert registry.invoke("lookup", {"key": "k"}) == "k"

    def test_register_timeout_override(self) -> None:
        """An explicit timeout_s overrides the decorator's; non-positive timeouts are refused."""

        @tool(timeout_s=5)
        def slow() -> None:
            """Slow."""

        registry = ToolRegistry()
        assert registry.register(slow, timeout_s=1).timeout_s == 1
        with pytest.raises(ValueError, match="timeout_s must be > 0"):
            registry.register(_weather_def(), lambda city: city, timeout_s=0)
        assert not registry.has("get_weather")

    def test_register_plain_function(self) -> None:
        """A plain function is registered with a schema derived from its hints."""

        def multiply(a: int, b: int = 2) -> int:
            """Multiply two integers."""
            return a * b

        registry = ToolRegistry()
        registered = registry.register(multiply)
        assert registered.definition == ToolDefinition.from_function(multiply)
        assert registered.coerce is True
        assert registry.get("multiply") is registered
        assert registry.invoke("multiply", {"a": 3}) == 6
        assert registry.validate("multiply", {"a": "3"}) is not None

    def test_constructor_accepts_tools(self) -> None:
        """ToolRegistry([...]) registers FunctionTools and RegisteredTools."""

        @tool
        def one() -> int:
            """One."""
            return 1

        other = ToolRegistry()
        registered = other.register(_weather_def(), lambda city: city)
        registry = ToolRegistry([one, registered])
        assert registry.names() == ["one", "get_weather"]
        assert registry.invoke("one") == 1

    def test_missing_handler(self) -> None:
        """A ToolDefinition without a handler is refused."""
        registry = ToolRegistry()
        with pytest.raises(ValueError, match="Missing handler for tool definition: get_weather"):
            registry.register(_weather_def())
        with pytest.raises(ValueError, match="Missing handler"):
            registry.register(_weather_def(), "not callable")  # type: ignore[arg-type]
        assert len(registry) == 0

    def test_non_callable_rejected(self) -> None:
        """Something that is neither a definition nor callable is a TypeError."""
        with pytest.raises(TypeError, match="cannot register 42 as a tool"):
            ToolRegistry().register(42)  # type: ignore[arg-type]

    def test_async_detection(self) -> None:
        """Coroutine functions and objects with an async __call__ are async handlers."""

        async def coro(city: str) -> str:
            return city

        class AsyncCallable:
            async def __call__(self, city: str) -> str:
                return city

        registry = ToolRegistry()
        assert registry.register(_weather_def("a"), coro).is_async is True
        assert registry.register(_weather_def("b"), AsyncCallable()).is_async is True
        assert registry.register(_weather_def("c"), lambda city: city).is_async is False


# --------------------------------------------------------------------------- invoke


class TestInvoke:
    """``invoke`` (sync) and ``invoke_async``."""

    def test_invoke_returns_handler_value(self) -> None:
        """invoke validates, calls with keyword arguments and returns the raw value."""
        received: list[dict[str, Any]] = []

        def handler(**kwargs: Any) -> dict[str, Any]:
            received.append(kwargs)
            return {"ok": True}

        registry = ToolRegistry()
        registry.register(_weather_def(), handler)
        assert registry.invoke("get_weather", {"city": "Oslo", "days": 2}) == {"ok": True}
        assert received == [{"city": "Oslo", "days": 2}]

    def test_invoke_without_args(self) -> None:
        """args=None means no arguments."""
        registry = ToolRegistry()
        registry.register(ToolDefinition("ping", "p"), lambda: "pong")
        assert registry.invoke("ping") == "pong"
        assert registry.invoke("ping", None) == "pong"

    def test_tool_not_found(self) -> None:
        """An unknown name raises ToolNotFound (a ToolError and KeyError) with a plain message."""
        registry = ToolRegistry()
        with pytest.raises(ToolNotFound) as excinfo:
            registry.invoke("nope", {})
        assert isinstance(excinfo.value, ToolError)
        assert isinstance(excinfo.value, KeyError)
        assert str(excinfo.value) == "tool not found: nope"

    async def test_tool_not_found_async(self) -> None:
        """invoke_async raises ToolNotFound too."""
        with pytest.raises(ToolNotFound, match="nope"):
            await ToolRegistry().invoke_async("nope", {})

    def test_validation_error_and_handler_not_called(self) -> None:
        """Invalid arguments raise ToolValidationError and never reach the handler."""
        calls: list[Any] = []
        registry = ToolRegistry()
        registry.register(_weather_def(), lambda **kw: calls.append(kw))
        with pytest.raises(ToolValidationError) as excinfo:
            registry.invoke("get_weather", {"city": 5})
        assert str(excinfo.value) == "invalid arguments for tool 'get_weather': city: expected string, got integer"
        assert isinstance(excinfo.value, ValueError)
        with pytest.raises(ToolValidationError, match=r"^tool 'get_weather': missing required parameter\(s\): city$"):
            registry.invoke("get_weather", {})
        assert calls == []

    async def test_validation_error_async(self) -> None:
        """invoke_async validates before calling."""
        calls: list[Any] = []
        registry = ToolRegistry()
        registry.register(_weather_def(), lambda **kw: calls.append(kw))
        with pytest.raises(ToolValidationError, match="days: expected integer, got boolean"):
            await registry.invoke_async("get_weather", {"city": "x", "days": True})
        assert calls == []

    def test_async_handler_in_sync_invoke(self) -> None:
        """invoke refuses async handlers (a TypeError subclass) without creating a coroutine."""
        calls: list[str] = []

        async def handler(city: str) -> str:
            calls.append(city)
            return city

        registry = ToolRegistry()
        registry.register(_weather_def(), handler)
        with pytest.raises(AsyncToolInSyncContext, match="invoke_async") as excinfo:
            registry.invoke("get_weather", {"city": "x"})
        assert isinstance(excinfo.value, TypeError)
        assert calls == []

    def test_sync_invoke_runs_in_calling_thread(self) -> None:
        """invoke calls a sync handler in the current thread."""
        threads: list[int] = []
        registry = ToolRegistry()
        registry.register(ToolDefinition("where", "w"), lambda: threads.append(threading.get_ident()))
        registry.invoke("where")
        assert threads == [threading.get_ident()]

    async def test_invoke_async_runs_sync_handler_in_worker_thread(self) -> None:
        """Sync handlers under invoke_async run off the event-loop thread."""
        loop_thread = threading.get_ident()
        seen: list[int] = []

        def handler(city: str) -> str:
            seen.append(threading.get_ident())
            return city.upper()

        registry = ToolRegistry()
        registry.register(_weather_def(), handler)
        assert await registry.invoke_async("get_weather", {"city": "oslo"}) == "OSLO"
        assert len(seen) == 1
        assert seen[0] != loop_thread

    async def test_invoke_async_awaits_async_handler_on_loop(self) -> None:
        """Async handlers are awaited on the event-loop thread and their result returned."""
        loop_thread = threading.get_ident()
        seen: list[int] = []

        async def handler(city: str) -> dict[str, str]:
            seen.append(threading.get_ident())
            return {"city": city}

        registry = ToolRegistry()
        registry.register(_weather_def(), handler)
        assert await registry.invoke_async("get_weather", {"city": "oslo"}) == {"city": "oslo"}
        assert seen == [loop_thread]

    async def test_invoke_async_sync_callable_returning_coroutine(self) -> None:
        """A sync callable that returns an awaitable has that awaitable awaited."""

        async def inner(city: str) -> str:
            return f"inner:{city}"

        registry = ToolRegistry()
        registered = registry.register(_weather_def(), lambda city: inner(city))
        assert registered.is_async is False
        assert await registry.invoke_async("get_weather", {"city": "x"}) == "inner:x"

    def test_type_error_handler_called_once_sync(self) -> None:
        """A handler raising TypeError is not retried: one call, the error propagates."""
        calls: list[dict[str, Any]] = []

        def handler(**kwargs: Any) -> None:
            calls.append(kwargs)
            raise TypeError("boom from handler")

        registry = ToolRegistry()
        registry.register(_weather_def(), handler)
        with pytest.raises(TypeError, match="boom from handler"):
            registry.invoke("get_weather", {"city": "x"})
        assert calls == [{"city": "x"}]

    async def test_type_error_handler_called_once_async(self) -> None:
        """Same for invoke_async, for sync and async handlers."""
        calls: list[str] = []

        def sync_handler(city: str) -> None:
            calls.append("sync")
            raise TypeError("sync boom")

        async def async_handler(city: str) -> None:
            calls.append("async")
            raise TypeError("async boom")

        registry = ToolRegistry()
        registry.register(_weather_def("s"), sync_handler)
        registry.register(_weather_def("a"), async_handler)
        with pytest.raises(TypeError, match="sync boom"):
            await registry.invoke_async("s", {"city": "x"})
        with pytest.raises(TypeError, match="async boom"):
            await registry.invoke_async("a", {"city": "x"})
        assert calls == ["sync", "async"]

    def test_handler_exception_propagates_unchanged(self) -> None:
        """Other handler exceptions reach the caller as they are."""

        class Boom(Exception):
            pass

        def handler() -> None:
            raise Boom("bad")

        registry = ToolRegistry()
        registry.register(ToolDefinition("boom", "b"), handler)
        with pytest.raises(Boom, match="bad"):
            registry.invoke("boom")

    def test_coercion_for_tool_functions(self) -> None:
        """@tool handlers receive Enum members, dataclass instances, tuples, sets and ints."""
        received: dict[str, Any] = {}

        @tool
        def paint(
            color: Color,
            shape: Shape,
            pair: tuple[int, str],
            labels: set[str],
            count: int,
            ratio: float,
            maybe: Priority | None = None,
            many: list[Color] = [],  # noqa: B006
        ) -> str:
            """Paint."""
            received.update(locals())
            return "ok"

        registry = ToolRegistry([paint])
        args = {
            "color": "green",
            "shape": {"origin": {"x": 1, "y": 2}, "color": "red", "tags": ["t"]},
            "pair": [7, "seven"],
            "labels": ["a", "b"],
            "count": 3.0,
            "ratio": 2,
            "maybe": 2,
            "many": ["red", "green"],
        }
        assert registry.invoke("paint", args) == "ok"
        assert received["color"] is Color.GREEN
        assert received["shape"] == Shape(origin=Point(1, 2), color=Color.RED, tags=["t"])
        assert isinstance(received["shape"].origin, Point)
        assert received["shape"].color is Color.RED
        assert received["pair"] == (7, "seven")
        assert received["labels"] == {"a", "b"}
        assert received["count"] == 3 and type(received["count"]) is int
        assert received["ratio"] == 2.0 and type(received["ratio"]) is float
        assert received["maybe"] is Priority.HIGH
        assert received["many"] == [Color.RED, Color.GREEN]
        assert args["color"] == "green"  # the caller's dict is not modified

    async def test_coercion_async(self) -> None:
        """Coercion also applies under invoke_async, for plain registered functions too."""

        def area(shape: Shape) -> int:
            assert isinstance(shape.origin, Point)
            return shape.origin.x * shape.origin.y

        registry = ToolRegistry()
        registry.register(area)
        assert await registry.invoke_async("area", {"shape": {"origin": {"x": 3, "y": 4}, "color": "red"}}) == 12

    def test_no_coercion_for_definition_handlers(self) -> None:
        """register(definition, handler) passes the JSON values through untouched."""
        received: list[Any] = []

        def handler(color: Color) -> None:
            received.append(color)

        definition = ToolDefinition("c", "c", input_schema={"type": "object", "properties": {"color": {}}})
        registry = ToolRegistry()
        registry.register(definition, handler)
        registry.invoke("c", {"color": "red"})
        assert received == ["red"]

    def test_coerce_arguments_direct(self) -> None:
        """coerce_arguments handles Optional None and nested containers."""

        def f(a: Color | None, b: dict[str, Point], c: tuple[int, ...]) -> None:
            pass

        assert coerce_arguments(f, {"a": None, "b": {"k": {"x": 1}}, "c": [1, 2]}) == {
            "a": None,
            "b": {"k": Point(1)},
            "c": (1, 2),
        }

    def test_context_param_gets_none_outside_loop(self) -> None:
        """Under invoke (no run) a ToolContext parameter receives None and is not a model argument."""
        received: list[Any] = []

        @tool
        def who(name: str, ctx: ToolContext) -> str:
            """Who."""
            received.append(ctx)
            return name

        registry = ToolRegistry([who])
        assert registry.get("who").context_params == ("ctx",)  # type: ignore[union-attr]
        assert registry.invoke("who", {"name": "n"}) == "n"
        assert received == [None]
        assert "ctx" in str(registry.validate("who", {"name": "n", "ctx": {}}))


# --------------------------------------------------------------------------- results


class TestResultFormatting:
    """``format_tool_result`` and ``truncate_result``."""

    def test_limit_constant(self) -> None:
        """The default limit is 50,000 characters."""
        assert MAX_RESULT_CHARS == 50_000

    @pytest.mark.parametrize(
        ("value", "text"),
        [
            ("plain", "plain"),
            ({"a": 1, "b": [1, 2]}, '{"a": 1, "b": [1, 2]}'),
            ([1, "x", None], '[1, "x", null]'),
            (42, "42"),
            (1.5, "1.5"),
            (True, "true"),
            (None, "null"),
            ({"city": "Zürich"}, '{"city": "Zürich"}'),
            (b"bytes \xff", "bytes \ufffd"),
        ],
    )
    def test_json_encoding(self, value: Any, text: str) -> None:
        """Strings pass through, bytes are decoded, other values are JSON-encoded."""
        assert format_tool_result(value) == text

    def test_unserialisable_values_use_str(self) -> None:
        """Values json cannot encode fall back to str() inside the JSON."""
        assert format_tool_result({"p": Point(1, 2)}) == json.dumps({"p": str(Point(1, 2))})

    def test_exact_limit_not_truncated(self) -> None:
        """A 50,000-character result is returned whole."""
        text = "a" * 50_000
        assert format_tool_result(text) == text

    @pytest.mark.parametrize("size", [50_001, 60_000, 1_000_000])
    def test_long_string_truncated(self, size: int) -> None:
        """Longer results are cut to at most 50,000 chars ending with the original length."""
        result = format_tool_result("b" * size)
        assert len(result) <= 50_000
        assert result.endswith(f"(truncated, {size} total chars)")
        assert result.startswith("b" * 49_000)

    def test_long_non_string_truncated(self) -> None:
        """Truncation applies after JSON encoding."""
        value = list(range(20_000))
        encoded = json.dumps(value)
        result = format_tool_result(value)
        assert len(encoded) > 50_000
        assert len(result) <= 50_000
        assert result.endswith(f"(truncated, {len(encoded)} total chars)")
        assert result.startswith(encoded[:40_000])

    def test_custom_limit(self) -> None:
        """truncate_result honours a custom limit."""
        assert truncate_result("x" * 100, 100) == "x" * 100
        result = truncate_result("x" * 500, 200)
        assert len(result) <= 200
        assert result.endswith("(truncated, 500 total chars)")
        assert format_tool_result("y" * 500, 200) == result.replace("x", "y")


# --------------------------------------------------------------------------- ToolContext


class TestToolContext:
    """The call context."""

    def test_none_outside_a_tool_call(self) -> None:
        """No context is set outside a tool call."""
        assert current_tool_context() is None

    def test_none_inside_plain_invoke(self) -> None:
        """invoke does not create a context (only the loop does)."""
        seen: list[Any] = []
        registry = ToolRegistry()
        registry.register(ToolDefinition("peek", "p"), lambda: seen.append(current_tool_context()))
        registry.invoke("peek")
        assert seen == [None]

    def test_idempotency_key(self) -> None:
        """The key is '<session>:<call id>' and defaults are empty run / round 0."""
        ctx = ToolContext(session_id="sess-1", tool_call_id="call_9", tool_name="t")
        assert ctx.idempotency_key == "sess-1:call_9"
        assert ctx.idempotency_key == f"{ctx.session_id}:{ctx.tool_call_id}"
        assert ctx.run_id == ""
        assert ctx.round_index == 0

    def test_keyword_only_and_frozen(self) -> None:
        """ToolContext takes keywords only and cannot be modified."""
        with pytest.raises(TypeError):
            ToolContext("s", "c", "t")  # type: ignore[misc]
        ctx = ToolContext(session_id="s", tool_call_id="c", tool_name="t")
        with pytest.raises(dataclasses.FrozenInstanceError):
            ctx.session_id = "other"  # type: ignore[misc]

    async def test_context_injected_and_visible_in_worker_thread(self) -> None:
        """call_handler injects the context and the context variable reaches worker threads."""
        seen: list[tuple[Any, Any]] = []

        @tool
        def sync_tool(q: str, ctx: ToolContext) -> str:
            """Sync."""
            seen.append((ctx, current_tool_context()))
            return q

        @tool
        async def async_tool(q: str, ctx: ToolContext) -> str:
            """Async."""
            seen.append((ctx, current_tool_context()))
            return q

        registry = ToolRegistry([sync_tool, async_tool])
        ctx = ToolContext(session_id="s", tool_call_id="c1", tool_name="sync_tool", run_id="r", round_index=2)
        token = tool_context._set_context(ctx)
        try:
            assert await call_handler(registry.get("sync_tool"), {"q": "a"}, ctx) == "a"  # type: ignore[arg-type]
            assert await call_handler(registry.get("async_tool"), {"q": "b"}, ctx) == "b"  # type: ignore[arg-type]
        finally:
            tool_context._reset_context(token)
        assert seen == [(ctx, ctx), (ctx, ctx)]
        assert current_tool_context() is None


# --------------------------------------------------------------------------- regressions


class TestRegressions:
    """Bugs found and fixed: each test failed before its fix."""

    def test_name_with_trailing_newline_rejected(self) -> None:
        """'abc\\n' is not 1-64 chars of [A-Za-z0-9_-] and must be refused."""
        with pytest.raises(ValueError, match="invalid tool name"):
            ToolDefinition("abc\n", "d")

    @pytest.mark.parametrize(
        "annotation",
        [Sequence[int], typing.Sequence[int], typing.MutableSequence[int], typing.AbstractSet[int]],
    )
    def test_sequence_annotations_supported(self, annotation: Any) -> None:
        """The module docstring lists Sequence[X] (and the code lists MutableSequence/AbstractSet)."""
        assert type_to_schema(annotation)["type"] == "array"
        assert type_to_schema(annotation)["items"] == {"type": "integer"}

    def test_annotated_mapping_metadata(self) -> None:
        """The Annotated branch merges Mapping metadata into the schema (schema.py:68-69)."""
        assert type_to_schema(Annotated[int, {"minimum": 0}]) == {"type": "integer", "minimum": 0}

    @pytest.mark.skipif(sys.version_info < (3, 11), reason="typing.NotRequired is 3.11+")
    def test_typeddict_not_required_field(self) -> None:
        """A TypedDict with a NotRequired field is a supported TypedDict."""
        partial = TypedDict("partial", {"a": int, "b": typing.NotRequired[str]})  # type: ignore[misc]  # noqa: UP013
        schema = type_to_schema(partial)
        assert schema["properties"] == {"a": {"type": "integer"}, "b": {"type": "string"}}
        assert schema["required"] == ["a"]

    def test_qualified_tool_context_annotation_injected(self) -> None:
        """``ctx: tool_context.ToolContext`` (a string under PEP 563) is left out of the schema AND injected."""

        @tool
        def who(name: str, ctx: tool_context.ToolContext) -> str:
            """Who."""
            return name

        assert "ctx" not in who.definition.parameters["properties"]
        assert ToolRegistry([who]).invoke("who", {"name": "n"}) == "n"

    @pytest.mark.parametrize(
        ("value", "schema", "expected_valid"),
        [
            ({"level": True}, type_to_schema(dict[str, Literal[1, "auto"]]), False),
            (True, {"const": 1}, False),
            ([1, True], {"type": "array", "uniqueItems": True}, True),
        ],
    )
    def test_booleans_are_not_numbers_in_equality_keywords(
        self, value: Any, schema: dict[str, Any], expected_valid: bool
    ) -> None:
        """JSON Schema equality distinguishes true from 1: enum/const reject it, uniqueItems accepts [1, true]."""
        assert (validate_against_schema(value, schema) == []) is expected_valid

    @pytest.mark.parametrize("args", [["a"], "ab", 5, [("city", "x")]])
    def test_invoke_non_mapping_args(self, args: Any) -> None:
        """invoke documents ToolValidationError for invalid arguments; a non-object is invalid."""
        registry = ToolRegistry()
        registry.register(_weather_def(), lambda city: city)
        with pytest.raises(ToolValidationError):
            registry.invoke("get_weather", args)

    def test_truncate_respects_small_limit(self) -> None:
        """truncate_result promises to cut text to ``limit`` characters."""
        assert len(truncate_result("x" * 100, 20)) <= 20
