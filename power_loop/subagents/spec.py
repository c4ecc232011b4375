"""Declarative sub-agents: :class:`AgentSpec` and its strict loaders.

A spec says who a child agent is (name, system prompt), what it may use (tools, model) and
how far it may go (rounds, tokens per call, temperature), plus what happens to its session
afterwards (lifecycle) and free-form metadata for the host.

Invariants:

- An ``AgentSpec`` is valid from the moment it exists: every field is checked when it is set,
  in the constructor and on later assignment, and values are normalized (the lifecycle is a
  :class:`SubagentLifecycle`, the temperature a float, ``tools`` and ``metadata`` copies).
- Loading is strict. Unknown keys, duplicate keys, missing required keys and values of the
  wrong type raise :class:`SpecValidationError` naming the field (and the file, when there
  is one); nothing is dropped or coerced (``true`` is not an integer, ``"3"`` is not 3).
- ``from_dict(spec.to_dict()) == spec``; the same holds through JSON and YAML.
- pyyaml is imported only when YAML is read or written.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AgentSpecError, SpecValidationError
from .lifecycle import SubagentLifecycle

__all__ = ["SPEC_FILE_SUFFIXES", "AgentSpec", "load_agent_specs", "load_agent_specs_async"]

SPEC_FILE_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")
"""File suffixes :func:`load_agent_specs` reads (compared case-insensitively)."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_REQUIRED = ("name", "system_prompt")
_MAX_METADATA_DEPTH = 32


@dataclass
class AgentSpec:
    """A declarative description of a sub-agent.

    Every field is validated when set; a bad value raises :class:`SpecValidationError`
    whose ``field`` names it.

    Attributes:
        name: 1-64 characters of letters, digits, ``_`` or ``-``, starting with a letter.
        system_prompt: The child's system prompt.
        tools: Names of the tools the child may use, unique; None means "what the parent's
            call was offered", ``[]`` means no tools.
        max_rounds: Most model turns of one child run (an integer >= 1).
        max_tokens: Most completion tokens per model call (an integer >= 1).
        temperature: Sampling temperature, a number in [0, 2].
        model: Another model for the child, or None for the parent's.
        lifecycle: A :class:`SubagentLifecycle` or its value (``"ephemeral"``, ``"linked"``,
            ``"detached"``); stored as the enum member, which compares equal to its value.
        metadata: Free-form data for the host: a dict with string keys whose values are JSON
            (strings, numbers, booleans, null, lists, dicts); tuples are stored as lists.
    """

    name: str
    system_prompt: str
    tools: list[str] | None = None
    max_rounds: int = 8
    max_tokens: int = 4000
    temperature: float = 0.0
    model: str | None = None
    lifecycle: SubagentLifecycle | str = SubagentLifecycle.EPHEMERAL
    metadata: dict[str, Any] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        check = _CHECKS.get(name)
        if check is not None:
            try:
                value = check(value)
            except SpecValidationError as exc:
                known = self.__dict__.get("name")
                who = f"agent spec {known!r}" if known else "agent spec"
                raise SpecValidationError(f"{who}: {exc}", field=exc.field) from None
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ reading

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str | None = None) -> AgentSpec:
        """Build a spec from a mapping of its fields.

        Args:
            data: The fields; ``name`` and ``system_prompt`` are required.
            source: Where the data came from (a file name), prefixed to error messages.

        Raises:
            SpecValidationError: ``data`` is not a mapping, has an unknown key, lacks a
                required key, or holds a bad value. ``field`` names the key.
        """
        try:
            return cls._from_mapping(data)
        except SpecValidationError as exc:
            if source is None:
                raise
            raise SpecValidationError(f"{source}: {exc}", field=exc.field) from None

    @classmethod
    def from_json(cls, payload: str | bytes | bytearray, *, source: str | None = None) -> AgentSpec:
        """Build a spec from JSON text holding one object of its fields.

        Raises:
            SpecValidationError: The text is not JSON, repeats a key, or is not a valid spec.
        """
        try:
            data = json.loads(payload, object_pairs_hook=_unique_pairs)
        except json.JSONDecodeError as exc:
            where = f"{source}: " if source else ""
            raise SpecValidationError(
                f"{where}not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
            ) from None
        except SpecValidationError as exc:
            if source is None:
                raise
            raise SpecValidationError(f"{source}: {exc}", field=exc.field) from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_yaml(cls, text: str | bytes, *, source: str | None = None) -> AgentSpec:
        """Build a spec from YAML text holding one mapping of its fields (safe loading only).

        Raises:
            SpecValidationError: The text is not YAML, repeats a key, holds more than one
                document, or is not a valid spec.
        """
        import yaml

        try:
            # A SafeLoader subclass: plain data only, never arbitrary Python objects.
            data = yaml.load(text, Loader=_strict_yaml_loader())
        except yaml.YAMLError as exc:
            where = f"{source}: " if source else ""
            raise SpecValidationError(f"{where}not valid YAML: {_yaml_problem(exc)}") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> AgentSpec:
        """Read a spec from a ``.yaml``, ``.yml`` or ``.json`` file (UTF-8).

        This reads the file synchronously: in a coroutine, use :func:`load_agent_specs_async`
        or ``asyncio.to_thread``.

        Raises:
            AgentSpecError: The file cannot be read or its suffix is not a spec suffix.
            SpecValidationError: Its content is not a valid spec (the message names the file).
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in SPEC_FILE_SUFFIXES:
            raise AgentSpecError(f"{path}: not an agent spec file; use one of {', '.join(SPEC_FILE_SUFFIXES)}")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise AgentSpecError(f"{path}: cannot read the agent spec: {exc.strerror or exc}") from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecValidationError(f"{path}: not UTF-8 text") from None
        if suffix == ".json":
            return cls.from_json(text, source=str(path))
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def _from_mapping(cls, data: Any) -> AgentSpec:
        if not isinstance(data, Mapping):
            got = "an empty document" if data is None else type(data).__name__
            raise SpecValidationError(f"an agent spec must be a mapping of its fields, got {got}")
        for key in data:
            if not isinstance(key, str):
                raise SpecValidationError(f"agent spec keys must be strings, got {key!r}")
            if key not in _CHECKS:
                raise SpecValidationError(_unknown_key_message(key), field=key)
        for key in _REQUIRED:
            if key not in data:
                raise SpecValidationError(f"agent spec field {key!r} is required", field=key)
        return cls(**data)

    # ------------------------------------------------------------------ writing

    def to_dict(self) -> dict[str, Any]:
        """The spec as a dict of plain values (the lifecycle as its string), a fresh copy
        that :meth:`from_dict` reads back into an equal spec."""
        lifecycle = self.lifecycle.value if isinstance(self.lifecycle, SubagentLifecycle) else self.lifecycle
        return {
            "name": self.name,
            "system_prompt": self.system_prompt,
            "tools": None if self.tools is None else list(self.tools),
            "max_rounds": self.max_rounds,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "model": self.model,
            "lifecycle": lifecycle,
            "metadata": _json_value(self.metadata, "metadata", 0),
        }

    def to_json(self, *, indent: int | None = None) -> str:
        """The spec as JSON text (see :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), ensure_ascii=False, indent=indent)

    def to_yaml(self) -> str:
        """The spec as YAML text, fields in declaration order (see :meth:`to_dict`)."""
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# ---------------------------------------------------------------------- field checks


def _bad(field_name: str, problem: str) -> SpecValidationError:
    return SpecValidationError(f"field {field_name!r} {problem}", field=field_name)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_name(value: Any) -> str:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise _bad(
            "name",
            "must be 1-64 letters, digits, '_' or '-', starting with a letter (like 'code_reviewer'), "
            f"got {_shown(value)}",
        )
    return value


def _check_system_prompt(value: Any) -> str:
    if not isinstance(value, str):
        raise _bad("system_prompt", f"must be a string, got {type(value).__name__}")
    return value


def _check_tools(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise _bad("tools", f"must be a list of tool names or null, got {_shown(value)}")
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _bad("tools", f"item {index} must be a non-empty tool name, got {_shown(item)}")
        if item in seen:
            raise _bad("tools", f"lists {item!r} twice")
        seen.add(item)
    return list(value)


def _positive_int(field_name: str) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        # bool is an int subclass: `max_rounds: true` in YAML must not become 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _bad(field_name, f"must be an integer >= 1, got {_shown(value)}")
        return int(value)

    return check


def _check_temperature(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 2.0:
        raise _bad("temperature", f"must be a number between 0 and 2, got {_shown(value)}")
    return float(value)


def _check_model(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _bad("model", f"must be a non-empty model name or null, got {_shown(value)}")
    return value


def _check_lifecycle(value: Any) -> SubagentLifecycle:
    if isinstance(value, SubagentLifecycle):
        return value
    if isinstance(value, str):
        try:
            return SubagentLifecycle(value)
        except ValueError:
            pass
    choices = ", ".join(repr(m.value) for m in SubagentLifecycle)
    raise _bad("lifecycle", f"must be one of {choices}, got {_shown(value)}")


def _check_metadata(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad("metadata", f"must be a mapping with string keys, got {type(value).__name__}")
    checked = _json_value(value, "metadata", 0)
    assert isinstance(checked, dict)  # a Mapping is copied as a dict
    return checked


def _json_value(value: Any, path: str, depth: int) -> Any:
    """A copy of ``value`` made of JSON types only; raises naming ``path`` otherwise."""
    if depth > _MAX_METADATA_DEPTH:
        raise _bad(path, f"is nested more than {_MAX_METADATA_DEPTH} levels deep")
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _bad(path, f"must be a finite number (JSON has no {value!r})")
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _bad(path, f"must have string keys, got {_shown(key)}")
            out[key] = _json_value(item, f"{path}.{key}", depth + 1)
        return out
    raise _bad(path, f"must hold JSON values (str, number, bool, null, list, dict), got {type(value).__name__}")


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "name": _check_name,
    "system_prompt": _check_system_prompt,
    "tools": _check_tools,
    "max_rounds": _positive_int("max_rounds"),
    "max_tokens": _positive_int("max_tokens"),
    "temperature": _check_temperature,
    "model": _check_model,
    "lifecycle": _check_lifecycle,
    "metadata": _check_metadata,
}


def _unknown_key_message(key: str) -> str:
    import difflib  # only on the error path

    close = difflib.get_close_matches(key, list(_CHECKS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown agent spec field {key!r}{hint}; the fields are: {', '.join(_CHECKS)}"


# ---------------------------------------------------------------------- parsing helpers


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise SpecValidationError(f"duplicate key {key!r}: each key may appear once")
        out[key] = value
    return out


@functools.cache
def _strict_yaml_loader() -> type[Any]:
    """A ``yaml.SafeLoader`` that refuses a key repeated in one mapping (built on first use)."""
    import yaml

    class StrictSafeLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            if isinstance(node, yaml.MappingNode):
                seen: set[Any] = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue  # `<<:` merges are allowed to be overridden
                    key = self.construct_object(key_node, deep=deep)
                    try:
                        repeated = key in seen
                    except TypeError:
                        continue  # unhashable: the base constructor reports it
                    if repeated:
                        raise yaml.constructor.ConstructorError(
                            "while reading a mapping",
                            node.start_mark,
                            f"found duplicate key {key!r}",
                            key_node.start_mark,
                        )
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return StrictSafeLoader


def _yaml_problem(exc: Exception) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None:
        return str(exc).strip()
    if mark is None:
        return str(problem)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


# ---------------------------------------------------------------------- directories


def load_agent_specs(directory: str | Path) -> dict[str, AgentSpec]:
    """Read every spec file of a directory: ``*.yaml``, ``*.yml`` and ``*.json``.

    Files are read in name order; sub-directories, hidden files and other suffixes are
    skipped. This reads files synchronously: in a coroutine, use
    :func:`load_agent_specs_async`.

    Args:
        directory: The folder, e.g. ``"specs"``.

    Returns:
        The specs by agent name, in file name order (empty when the folder has no spec file).

    Raises:
        AgentSpecError: The folder does not exist, a file cannot be read, or two files
            declare the same agent name (both files are named).
        SpecValidationError: A file is not a valid spec (the message names the file and
            the field).
    """
    folder = Path(directory)
    if not folder.is_dir():
        state = "is not a directory" if folder.exists() else "does not exist"
        raise AgentSpecError(f"agent spec directory {str(folder)!r} {state}")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in SPEC_FILE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
    specs: dict[str, AgentSpec] = {}
    origin: dict[str, Path] = {}
    for path in files:
        spec = AgentSpec.from_file(path)
        if spec.name in specs:
            raise AgentSpecError(
                f"{path}: agent name {spec.name!r} is already declared in {origin[spec.name]}; "
                "agent names must be unique within a directory",
                field="name",
            )
        specs[spec.name] = spec
        origin[spec.name] = path
    return specs


async def load_agent_specs_async(directory: str | Path) -> dict[str, AgentSpec]:
    """:func:`load_agent_specs` in a worker thread, so the event loop never waits on files."""
    return await asyncio.to_thread(load_agent_specs, directory)
