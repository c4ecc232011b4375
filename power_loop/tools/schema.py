"""Derive a tool's JSON schema from a Python function's type hints and docstring.

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``,
``list[X]`` / ``Sequence[X]`` / ``set[X]`` / ``tuple[X, ...]``, ``tuple[X, Y]``,
``dict[str, X]`` / ``Mapping[str, X]``, ``Literal[...]``, ``Enum`` subclasses,
``Optional[X]`` / ``X | None``, other unions, ``TypedDict`` classes, dataclasses and
``Annotated[X, "description"]``. Parameter descriptions come from a Google-style ``Args:``
section of the docstring (or an ``Annotated`` string); the docstring's first paragraph is
the tool description.

:func:`coerce_arguments` turns validated JSON arguments back into the declared Python types
(enum members, dataclass instances, tuples, sets) before the handler is called.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Union

__all__ = ["coerce_arguments", "function_schema", "parse_docstring", "type_to_schema"]

_PRIMITIVES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_SEQUENCES = {
    list,
    set,
    frozenset,
    tuple,
    collections.abc.Sequence,
    collections.abc.MutableSequence,
    collections.abc.Set,
    collections.abc.MutableSet,
    collections.abc.Collection,
    collections.abc.Iterable,
}
_SETS = {set, frozenset, collections.abc.Set, collections.abc.MutableSet}
_MAPPINGS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}
# TypedDict field qualifiers that say nothing about the value's type.
_QUALIFIERS = {"Required", "NotRequired", "ReadOnly"}


class SchemaError(TypeError):
    """A parameter's annotation cannot be expressed as JSON schema."""


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def _is_union(tp: Any) -> bool:
    origin = _origin(tp)
    return origin is Union or (hasattr(types, "UnionType") and isinstance(tp, types.UnionType))


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__total__")


def type_to_schema(tp: Any) -> dict[str, Any]:
    """Return the JSON schema of a type annotation.

    Raises:
        SchemaError: The annotation has no JSON schema form.
    """
    origin = _origin(tp)
    if origin is not None and getattr(origin, "_name", getattr(origin, "__name__", "")) in _QUALIFIERS:
        return type_to_schema(typing.get_args(tp)[0])
    if tp is Any or tp is inspect.Parameter.empty or tp is object:
        return {}
    if tp is None or tp is type(None):
        return {"type": "null"}
    if isinstance(tp, type) and tp in _PRIMITIVES:
        return {"type": _PRIMITIVES[tp]}
    if origin is typing.Annotated:
        base, *extras = typing.get_args(tp)
        schema = type_to_schema(base)
        for extra in extras:
            if isinstance(extra, str):
                schema["description"] = extra
            elif isinstance(extra, Mapping):
                schema.update(extra)
        return schema
    if origin is typing.Literal:
        values = list(typing.get_args(tp))
        literal: dict[str, Any] = {"enum": values}
        kinds = {_PRIMITIVES.get(type(v)) for v in values}
        if len(kinds) == 1 and None not in kinds:
            literal["type"] = kinds.pop()
        return literal
    if _is_union(tp):
        return _union_schema(typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        members = [m.value for m in tp]
        enum_schema: dict[str, Any] = {"enum": members}
        kinds = {_PRIMITIVES.get(type(v)) for v in members}
        if len(kinds) == 1 and None not in kinds:
            enum_schema["type"] = kinds.pop()
        return enum_schema
    if tp in _SEQUENCES or origin in _SEQUENCES:
        return _sequence_schema(tp, origin)
    if tp in _MAPPINGS or origin in _MAPPINGS:
        args = typing.get_args(tp)
        mapping: dict[str, Any] = {"type": "object"}
        if len(args) == 2 and args[1] is not Any:
            mapping["additionalProperties"] = type_to_schema(args[1])
        return mapping
    if _is_typeddict(tp):
        return _typeddict_schema(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_schema(tp)
    raise SchemaError(f"cannot express {tp!r} as JSON schema")


def _union_schema(args: tuple[Any, ...]) -> dict[str, Any]:
    non_null = [a for a in args if a is not type(None)]
    nullable = len(non_null) != len(args)
    subs = [type_to_schema(a) for a in non_null]
    simple = [s.get("type") for s in subs]
    if all(isinstance(t, str) and len(s) == 1 for t, s in zip(simple, subs, strict=False)):
        names = [str(t) for t in simple] + (["null"] if nullable else [])
        return {"type": names[0] if len(names) == 1 else names}
    if nullable:
        subs.append({"type": "null"})
    return subs[0] if len(subs) == 1 else {"anyOf": subs}


def _sequence_schema(tp: Any, origin: Any) -> dict[str, Any]:
    args = typing.get_args(tp)
    schema: dict[str, Any] = {"type": "array"}
    if (origin is tuple or tp is tuple) and args and not (len(args) == 2 and args[1] is Ellipsis):
        schema["items"] = [type_to_schema(a) for a in args]  # fixed-length tuple
        schema["minItems"] = schema["maxItems"] = len(args)
        return schema
    if args:
        schema["items"] = type_to_schema(args[0])
    if origin in _SETS or tp in _SETS:
        schema["uniqueItems"] = True
    return schema


def _typeddict_schema(tp: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(tp, include_extras=True)
    required = [name for name in hints if name in getattr(tp, "__required_keys__", set(hints))]
    props = {name: type_to_schema(hint) for name, hint in hints.items()}
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _dataclass_schema(tp: type) -> dict[str, Any]:
    hints = typing.get_type_hints(tp, include_extras=True)
    props: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(tp):
        if not f.init:
            continue
        props[f.name] = type_to_schema(hints.get(f.name, Any))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters|Params)\s*:\s*$")
_SECTION_HEADER = re.compile(r"^\s*[A-Z][A-Za-z ]*:\s*$")
_ARG_LINE = re.compile(r"^\s*\*{0,2}(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {param: description})."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(lines) and not _ARGS_HEADER.match(lines[i]) and not _SECTION_HEADER.match(lines[i]):
        summary.append(lines[i])
        i += 1
    current: str | None = None
    in_args = False
    for line in lines[i:]:
        if _ARGS_HEADER.match(line):
            in_args, current = True, None
            continue
        if _SECTION_HEADER.match(line) and not line.startswith((" ", "\t")):
            in_args, current = False, None
            continue
        if not in_args:
            continue
        match = _ARG_LINE.match(line)
        indent = len(line) - len(line.lstrip())
        if match and (current is None or indent <= _indent_of(lines, current)):
            current = match.group(1)
            params[current] = match.group(3).strip()
        elif current and line.strip():
            params[current] = f"{params[current]} {line.strip()}".strip()
    description = " ".join(p.strip() for p in "\n".join(summary).strip().split("\n\n")[0].splitlines())
    return description.strip(), params


def _indent_of(lines: list[str], name: str) -> int:
    for line in lines:
        match = _ARG_LINE.match(line)
        if match and match.group(1) == name:
            return len(line) - len(line.lstrip())
    return 0


def function_schema(fn: Callable[..., Any], *, skip: Callable[[Any], bool] | None = None) -> tuple[str, dict[str, Any]]:
    """Return (description, input_schema) for ``fn``.

    Args:
        fn: The function; every parameter except ``*args`` / ``**kwargs`` becomes a property.
        skip: Predicate on a parameter's annotation; matching parameters are left out
            (used for injected context parameters).

    Raises:
        SchemaError: A parameter's annotation cannot be expressed as JSON schema.
    """
    description, docs = parse_docstring(inspect.getdoc(fn))
    hints = typing.get_type_hints(fn, include_extras=True)
    props: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        hint = hints.get(name, Any)
        if skip is not None and skip(hint):
            continue
        try:
            prop = type_to_schema(hint)
        except SchemaError as exc:
            raise SchemaError(f"parameter {name!r} of {fn.__qualname__}: {exc}") from None
        if name in docs and "description" not in prop:
            prop["description"] = docs[name]
        if param.default is inspect.Parameter.empty:
            required.append(name)
        elif param.default is not None and _jsonable(param.default):
            prop.setdefault("default", param.default)
        props[name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        schema["required"] = required
    return description, schema


def _jsonable(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or (
        isinstance(value, (list, tuple)) and all(_jsonable(v) for v in value)
    )


def coerce_arguments(fn: Callable[..., Any], args: Mapping[str, Any]) -> dict[str, Any]:
    """Convert validated JSON ``args`` to the Python types ``fn`` declares."""
    hints = typing.get_type_hints(fn, include_extras=True)
    return {name: _coerce(value, hints.get(name, Any)) for name, value in args.items()}


def _coerce(value: Any, tp: Any) -> Any:
    origin = _origin(tp)
    if origin is typing.Annotated or (
        origin is not None and getattr(origin, "_name", getattr(origin, "__name__", "")) in _QUALIFIERS
    ):
        return _coerce(value, typing.get_args(tp)[0])
    if _is_union(tp):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(tp):
            if arg is not type(None):
                try:
                    return _coerce(value, arg)
                except (TypeError, ValueError):
                    continue
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type) and isinstance(value, Mapping):
        hints = typing.get_type_hints(tp, include_extras=True)
        return tp(**{k: _coerce(v, hints.get(k, Any)) for k, v in value.items()})
    if isinstance(value, list):
        args = typing.get_args(tp)
        if origin in (tuple,) and args and not (len(args) == 2 and args[1] is Ellipsis):
            return tuple(_coerce(v, a) for v, a in zip(value, args, strict=False))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp) for v in value]
        if origin in (set, collections.abc.Set, collections.abc.MutableSet) or tp is set:
            return set(items)
        if origin is frozenset or tp is frozenset:
            return frozenset(items)
        if origin is tuple or tp is tuple:
            return tuple(items)
        return items
    if isinstance(value, Mapping) and origin in _MAPPINGS:
        args = typing.get_args(tp)
        val_tp = args[1] if len(args) == 2 else Any
        return {k: _coerce(v, val_tp) for k, v in value.items()}
    return value
