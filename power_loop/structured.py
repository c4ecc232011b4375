"""Structured output: the schema a final answer must match, and parsing it.

* :class:`StructuredOutputSpec` names a JSON schema (0.11's class); its
  :meth:`~StructuredOutputSpec.to_openai_response_format` is the Chat Completions
  ``response_format`` that asks the model for it.
* :func:`parse_structured` turns a model's text into a dict (0.11's function): the text may
  be wrapped in a Markdown code fence; with a schema, the value is validated against it.
* :func:`resolve_response_format` accepts what ``send(response_format=...)`` and
  ``AgentLoopConfig(response_format=...)`` take (a spec, a pydantic model class or a JSON
  schema dict) and returns the :class:`ResponseFormat` the engine and the providers use.

Invariants: every failure is a :class:`~power_loop.errors.StructuredOutputError` whose
``reason`` is one of ``empty``, ``invalid_json``, ``not_an_object`` or ``schema_mismatch``,
and whose message names what is wrong. A pydantic model class is validated with pydantic
(full validation, its own rules); a JSON schema dict with the ``jsonschema`` package, a
dependency of power_loop (full validation; should it be missing, a minimal check remains:
the value is an object with every ``required`` key, and no other key when
``additionalProperties`` is false). Nothing here imports pydantic or jsonschema until a value
is validated.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import StructuredOutputError

__all__ = [
    "ResponseFormat",
    "ResponseFormatLike",
    "StructuredOutputSpec",
    "parse_structured",
    "resolve_response_format",
]

ResponseFormatLike = Any
"""What ``response_format=`` accepts: a :class:`StructuredOutputSpec`, a pydantic model class
or a JSON schema dict (``Any`` so that a pydantic class type-checks without importing pydantic)."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n(.*?)\n?[ \t]*```", re.DOTALL)


@dataclass(frozen=True)
class StructuredOutputSpec:
    """A named JSON schema the model's final answer must match.

    Args:
        name: The schema's name (letters, digits, ``_`` and ``-``, at most 64), sent to the
            provider.
        schema: The JSON schema (an object schema, as providers require).
        strict: Ask the provider to enforce the schema exactly (OpenAI's strict mode needs
            ``additionalProperties: false`` and every property listed in ``required``).
        description: What the answer is, sent to the provider when set.
        examples: Example answers, for the application's own prompts (not sent).

    Raises:
        ValueError: The name is malformed or the schema is not a mapping.
    """

    name: str
    schema: Mapping[str, Any]
    strict: bool = True
    description: str | None = None
    examples: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"StructuredOutputSpec.name must be 1-64 letters, digits, '_' or '-', got {self.name!r}")
        if not isinstance(self.schema, Mapping):
            raise ValueError(
                f"StructuredOutputSpec.schema must be a JSON schema dict, not {type(self.schema).__name__}"
            )

    def to_openai_response_format(self) -> dict[str, Any]:
        """The Chat Completions ``response_format`` asking for this schema."""
        inner: dict[str, Any] = {"name": self.name, "schema": dict(self.schema), "strict": self.strict}
        if self.description:
            inner["description"] = self.description
        return {"type": "json_schema", "json_schema": inner}


def parse_structured(output: Any, *, schema: Any = None) -> dict[str, Any]:
    """Parse a model's answer as a JSON object, optionally validated against ``schema``.

    Args:
        output: The answer: a string (possibly wrapped in a Markdown code fence such as
            ````` ```json `````), a dict, or an object with a ``final_text`` (a result).
        schema: None, a JSON schema dict, a :class:`StructuredOutputSpec` or a pydantic
            model class.

    Returns:
        The parsed object (for a pydantic model class: the validated model dumped to a dict).

    Raises:
        StructuredOutputError: The answer is empty, not JSON, not an object, or does not
            match the schema; ``reason`` says which and the message names the problem.
    """
    if isinstance(output, Mapping):
        value: Any = dict(output)
        raw = json.dumps(value, ensure_ascii=False, default=str)
    else:
        raw = output if isinstance(output, str) else str(getattr(output, "final_text", output))
        value = _load(raw)
    if schema is None:
        return _object(value, raw)
    validated = resolve_response_format(schema).validate_value(value, raw)
    if isinstance(validated, dict):
        return validated
    dumped: dict[str, Any] = validated.model_dump(mode="json")
    return dumped


@dataclass(frozen=True)
class ResponseFormat:
    """A resolved ``response_format``: the spec sent to the provider and how to validate.

    Attributes:
        spec: The named schema.
        model: The pydantic model class the answer is validated with, or None (the schema).
    """

    spec: StructuredOutputSpec
    model: Any = None

    def wire(self) -> dict[str, Any]:
        """The provider-neutral request carried by ``LLMRequest.response_format`` (the
        Chat Completions shape; the Anthropic provider maps it to ``output_config``)."""
        return self.spec.to_openai_response_format()

    def validate(self, text: str) -> Any:
        """Parse and validate an answer: the pydantic model instance, or the dict.

        Raises:
            StructuredOutputError: As :func:`parse_structured`.
        """
        return self.validate_value(_load(text), text)

    def validate_value(self, value: Any, raw: str) -> Any:
        """Validate an already parsed value (see :meth:`validate`)."""
        if self.model is not None:
            return _validate_model(self.model, value, raw)
        obj = _object(value, raw)
        problem = _schema_problem(self.spec.schema, obj)
        if problem:
            raise _error("schema_mismatch", raw, problem)
        return obj

    def correction(self, error: StructuredOutputError) -> str:
        """The message asking the model to answer again, saying exactly what was wrong."""
        schema = json.dumps(dict(self.spec.schema), ensure_ascii=False, separators=(",", ":"), default=str)
        if len(schema) > 4000:
            schema = schema[:4000] + "…"
        return (
            f"Your previous answer could not be used: {error}.\n"
            f"Answer again with only a JSON object matching the schema '{self.spec.name}', "
            f"without any other text:\n{schema}"
        )


def resolve_response_format(value: ResponseFormatLike) -> ResponseFormat:
    """Resolve what ``response_format=`` accepts into a :class:`ResponseFormat`.

    A dict shaped like a Chat Completions ``response_format`` (``{"type": "json_schema",
    "json_schema": {...}}``) is read as one; any other dict is a JSON schema named by its
    ``title`` (or ``response``). A pydantic model class is sent with its JSON schema, not in
    strict mode (pydantic's schemas rarely meet strict mode's rules; pass a
    :class:`StructuredOutputSpec` built from a strict-ready schema for that), and the
    answer is validated by the class.

    Raises:
        TypeError: ``value`` is none of these.
        ValueError: The dict is malformed (see :class:`StructuredOutputSpec`).
    """
    if isinstance(value, ResponseFormat):
        return value
    if isinstance(value, StructuredOutputSpec):
        return ResponseFormat(value)
    if isinstance(value, type) and callable(getattr(value, "model_json_schema", None)):
        return _from_model(value)
    if isinstance(value, Mapping):
        inner = value.get("json_schema")
        if value.get("type") == "json_schema" and isinstance(inner, Mapping):
            return ResponseFormat(
                StructuredOutputSpec(
                    name=inner.get("name", "response"),
                    schema=inner.get("schema", {}),
                    strict=bool(inner.get("strict", True)),
                    description=inner.get("description"),
                )
            )
        title = value.get("title")
        name = re.sub(r"[^A-Za-z0-9_-]", "_", title)[:64] if isinstance(title, str) and title else "response"
        return ResponseFormat(StructuredOutputSpec(name=name, schema=value, strict=False))
    raise TypeError(
        "response_format must be a StructuredOutputSpec, a pydantic model class or a JSON schema dict, "
        f"not {type(value).__name__}"
    )


@functools.lru_cache(maxsize=256)
def _from_model(model: type) -> ResponseFormat:
    # Cached: building a model's JSON schema is not free, and a class is sent on every call.
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.__name__)[:64] or "response"
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    return ResponseFormat(StructuredOutputSpec(name=name, schema=schema, strict=False), model=model)


def _error(reason: str, raw: str, detail: str) -> StructuredOutputError:
    return StructuredOutputError(reason=reason, raw_text=raw, detail=detail)


def _load(raw: str) -> Any:
    text = raw.strip()
    if not text:
        raise _error("empty", raw, "expected a JSON object, got no text")
    fenced = _FENCE.search(text)
    if fenced is not None:
        text = fenced.group(1).strip()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _error("invalid_json", raw, str(exc)) from None


def _object(value: Any, raw: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _error("not_an_object", raw, f"expected a JSON object, got {type(value).__name__}")
    return value


def _validate_model(model: Any, value: Any, raw: str) -> Any:
    from pydantic import ValidationError  # the class given is a pydantic model: pydantic is there

    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors(include_url=False)
        ]
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise _error("schema_mismatch", raw, "; ".join(problems[:5]) + more) from None


def _schema_problem(schema: Mapping[str, Any], value: dict[str, Any]) -> str:
    """The first way ``value`` breaks ``schema`` ("" when it matches)."""
    try:
        import jsonschema  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return _minimal_problem(schema, value)
    validator_class = jsonschema.validators.validator_for(schema)
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(value))
    if error is None:
        return ""
    where = ".".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{where}: {error.message}"


def _minimal_problem(schema: Mapping[str, Any], value: dict[str, Any]) -> str:
    missing = [k for k in schema.get("required", ()) if k not in value]
    if missing:
        return f"(root): missing required properties {', '.join(repr(k) for k in missing)}"
    if schema.get("additionalProperties") is False:
        extra = [k for k in value if k not in schema.get("properties", {})]
        if extra:
            return f"(root): unexpected properties {', '.join(repr(k) for k in extra)}"
    return ""
