"""A small JSON Schema validator for tool arguments.

Covers the subset tool schemas use: ``type`` (single or list), ``enum``, ``const``,
``properties`` / ``required`` / ``additionalProperties``, ``items`` / ``minItems`` /
``maxItems`` / ``uniqueItems``, string ``minLength`` / ``maxLength`` / ``pattern``, numeric
bounds, ``anyOf`` / ``oneOf`` / ``allOf``, local ``$ref`` into ``$defs`` / ``definitions``.
Unknown keywords are ignored, as JSON Schema prescribes.

Errors are returned as ``"path: message"`` strings the model can act on, e.g.
``"city: expected string, got integer"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

__all__ = ["json_type_name", "validate_against_schema"]

_MAX_ERRORS = 10


def json_type_name(value: Any) -> str:
    """The JSON type of a Python value (``bool`` is ``boolean``, not ``integer``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: ``true`` is not ``1`` and ``1.0`` is ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _is_type(value: Any, expected: str) -> bool:
    actual = json_type_name(value)
    if expected == actual:
        return True
    if expected == "number":
        return actual == "integer"
    if expected == "integer":
        return actual == "number" and float(value).is_integer()
    return False


@lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def validate_against_schema(value: Any, schema: Mapping[str, Any]) -> list[str]:
    """Validate ``value`` against ``schema``; return the errors (empty when valid)."""
    errors: list[str] = []
    _validate(value, schema, "", errors, schema)
    return errors[:_MAX_ERRORS]


def _where(path: str) -> str:
    return path or "arguments"


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = schema.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/"):
        return schema
    node: Any = root
    for part in ref[2:].split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return schema
        node = node[part]
    return node if isinstance(node, Mapping) else schema


def _validate(value: Any, schema: Any, path: str, errors: list[str], root: Mapping[str, Any]) -> None:
    if len(errors) >= _MAX_ERRORS or not isinstance(schema, Mapping):
        return
    schema = _resolve(schema, root)
    if not _check_type(value, schema, path, errors):
        return
    if "enum" in schema and not any(json_equal(value, option) for option in schema["enum"]):
        allowed = ", ".join(repr(v) for v in schema["enum"])
        errors.append(f"{_where(path)}: {value!r} is not one of {allowed}")
    if "const" in schema and not json_equal(value, schema["const"]):
        errors.append(f"{_where(path)}: must be {schema['const']!r}")
    _check_combinators(value, schema, path, errors, root)
    if isinstance(value, Mapping):
        _check_object(value, schema, path, errors, root)
    elif isinstance(value, (list, tuple)):
        _check_array(value, schema, path, errors, root)
    elif isinstance(value, str):
        _check_string(value, schema, path, errors)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        _check_number(value, schema, path, errors)


def _check_type(value: Any, schema: Mapping[str, Any], path: str, errors: list[str]) -> bool:
    expected = schema.get("type")
    if expected is None:
        return True
    options = expected if isinstance(expected, list) else [expected]
    if any(_is_type(value, str(t)) for t in options):
        return True
    want = " or ".join(str(t) for t in options)
    errors.append(f"{_where(path)}: expected {want}, got {json_type_name(value)}")
    return False


def _check_combinators(
    value: Any, schema: Mapping[str, Any], path: str, errors: list[str], root: Mapping[str, Any]
) -> None:
    for sub in schema.get("allOf", ()) or ():
        _validate(value, sub, path, errors, root)
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if not options:
            continue
        matches = sum(1 for sub in options if not _sub_errors(value, sub, path, root))
        if matches == 0:
            first = _sub_errors(value, options[0], path, root)
            detail = f" ({first[0]})" if first else ""
            errors.append(f"{_where(path)}: does not match any allowed form{detail}")
        elif key == "oneOf" and matches > 1:
            errors.append(f"{_where(path)}: matches more than one allowed form")


def _sub_errors(value: Any, schema: Any, path: str, root: Mapping[str, Any]) -> list[str]:
    errs: list[str] = []
    _validate(value, schema, path, errs, root)
    return errs


def _check_object(
    value: Mapping[str, Any], schema: Mapping[str, Any], path: str, errors: list[str], root: Mapping[str, Any]
) -> None:
    props = schema.get("properties") or {}
    missing = [k for k in schema.get("required", ()) or () if k not in value]
    if missing:
        prefix = f"{path}: " if path else ""
        errors.append(f"{prefix}missing required parameter(s): {', '.join(missing)}")
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        child = f"{path}.{key}" if path else str(key)
        if key in props:
            _validate(item, props[key], child, errors, root)
        elif extra is False:
            known = ", ".join(props) or "none"
            errors.append(f"{child}: unexpected parameter (known: {known})")
        elif isinstance(extra, Mapping):
            _validate(item, extra, child, errors, root)


def _check_array(value: Any, schema: Mapping[str, Any], path: str, errors: list[str], root: Mapping[str, Any]) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        errors.append(f"{_where(path)}: needs at least {schema['minItems']} item(s)")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        errors.append(f"{_where(path)}: allows at most {schema['maxItems']} item(s)")
    if schema.get("uniqueItems"):
        seen: list[Any] = []
        for item in value:
            if any(json_equal(item, other) for other in seen):
                errors.append(f"{_where(path)}: items must be unique ({item!r} repeats)")
                break
            seen.append(item)
    items = schema.get("items")
    if isinstance(items, Mapping):
        for i, item in enumerate(value):
            _validate(item, items, f"{path}[{i}]", errors, root)
    elif isinstance(items, list):  # tuple form
        for i, (item, sub) in enumerate(zip(value, items, strict=False)):
            _validate(item, sub, f"{path}[{i}]", errors, root)


def _check_string(value: str, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        errors.append(f"{_where(path)}: must be at least {schema['minLength']} character(s)")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        errors.append(f"{_where(path)}: must be at most {schema['maxLength']} character(s)")
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and not _compiled(pattern).search(value):
        errors.append(f"{_where(path)}: must match pattern {pattern!r}")


def _check_number(value: float, schema: Mapping[str, Any], path: str, errors: list[str]) -> None:
    where = _where(path)
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: must be >= {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        errors.append(f"{where}: must be <= {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        errors.append(f"{where}: must be > {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        errors.append(f"{where}: must be < {schema['exclusiveMaximum']}")
