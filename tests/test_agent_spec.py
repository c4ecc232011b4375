"""AgentSpec: strict validation naming the field, round trips through dict/JSON/YAML, the
directory loader on real files, and the spawn_agent / run_agent definitions."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import power_loop
from power_loop import (
    MAX_SPAWN_DEPTH,
    RUN_AGENT_DEFINITION,
    SPAWN_AGENT_DEFINITION,
    AgentSpec,
    AgentSpecError,
    PowerLoopError,
    SpecValidationError,
    SubagentLifecycle,
    ToolDefinition,
    load_agent_specs,
    load_agent_specs_async,
)
from power_loop.tools.registry import validation_message

BASE: dict[str, Any] = {"name": "reviewer", "system_prompt": "Review the diff."}


def spec_error(**fields: Any) -> SpecValidationError:
    with pytest.raises(SpecValidationError) as info:
        AgentSpec.from_dict({**BASE, **fields})
    return info.value


# ---------------------------------------------------------------------- the shape


def test_defaults_match_0_11() -> None:
    spec = AgentSpec("reviewer", "Review the diff.")
    assert (spec.tools, spec.max_rounds, spec.max_tokens, spec.temperature, spec.model) == (None, 8, 4000, 0.0, None)
    assert spec.lifecycle is SubagentLifecycle.EPHEMERAL and spec.lifecycle == "ephemeral"
    assert spec.metadata == {}
    assert [f.name for f in dataclasses.fields(AgentSpec)] == [
        "name", "system_prompt", "tools", "max_rounds", "max_tokens", "temperature", "model", "lifecycle",
        "metadata",
    ]  # fmt: skip
    assert AgentSpec("a", "x").metadata is not AgentSpec("b", "x").metadata


def test_the_error_classes_sit_in_the_tree_with_a_field() -> None:
    assert issubclass(SpecValidationError, AgentSpecError)
    assert issubclass(AgentSpecError, PowerLoopError)
    assert issubclass(SpecValidationError, ValueError)
    error = AgentSpecError("boom", field="max_rounds")
    assert (str(error), error.field) == ("boom", "max_rounds")
    assert SpecValidationError("boom").field is None


def test_the_vocabulary_module_keeps_its_import_path() -> None:
    from power_loop.subagents import MAX_SPAWN_DEPTH as depth
    from power_loop.subagents import SubagentLifecycle as lifecycle

    assert depth == MAX_SPAWN_DEPTH == 3
    assert lifecycle is SubagentLifecycle
    assert [m.value for m in SubagentLifecycle] == ["ephemeral", "linked", "detached"]


# ---------------------------------------------------------------------- validation, field by field


@pytest.mark.parametrize("name", ["", "1st", "has space", "dot.ted", "a" * 65, None, 7, "ümlaut", "-lead"])
def test_bad_names_are_refused(name: Any) -> None:
    assert spec_error(name=name).field == "name"


@pytest.mark.parametrize("name", ["a", "code_reviewer", "Explore-2", "a" * 64])
def test_good_names_are_kept(name: str) -> None:
    assert AgentSpec.from_dict({**BASE, "name": name}).name == name


def test_system_prompt_must_be_a_string() -> None:
    error = spec_error(system_prompt=["Review"])
    assert error.field == "system_prompt" and "'system_prompt'" in str(error)
    assert AgentSpec.from_dict({**BASE, "system_prompt": ""}).system_prompt == ""


@pytest.mark.parametrize(
    ("tools", "words"),
    [
        ("read_file", "list of tool names"),
        ({"read_file": True}, "list of tool names"),
        (["read_file", "read_file"], "twice"),
        (["read_file", ""], "item 1"),
        (["read_file", "  "], "item 1"),
        (["read_file", 3], "item 1"),
    ],
)
def test_bad_tools_are_refused(tools: Any, words: str) -> None:
    error = spec_error(tools=tools)
    assert error.field == "tools" and words in str(error)


def test_tools_none_empty_and_tuples() -> None:
    assert AgentSpec.from_dict({**BASE, "tools": None}).tools is None
    assert AgentSpec.from_dict({**BASE, "tools": []}).tools == []
    spec = AgentSpec("a", "x", tools=("glob", "grep"))  # type: ignore[arg-type]
    assert spec.tools == ["glob", "grep"]


@pytest.mark.parametrize("field", ["max_rounds", "max_tokens"])
@pytest.mark.parametrize("value", [True, False, 0, -1, 2.0, "3", None])
def test_counts_are_integers_of_at_least_one(field: str, value: Any) -> None:
    error = spec_error(**{field: value})
    assert error.field == field and f"'{field}'" in str(error)


def test_counts_keep_their_value() -> None:
    spec = AgentSpec.from_dict({**BASE, "max_rounds": 1, "max_tokens": 123456})
    assert (spec.max_rounds, spec.max_tokens) == (1, 123456)


@pytest.mark.parametrize("value", [-0.1, 2.01, float("nan"), float("inf"), True, "0.5", None])
def test_temperature_is_a_number_in_0_2(value: Any) -> None:
    assert spec_error(temperature=value).field == "temperature"


def test_temperature_accepts_ints_and_stores_a_float() -> None:
    assert AgentSpec.from_dict({**BASE, "temperature": 2}).temperature == 2.0
    assert isinstance(AgentSpec.from_dict({**BASE, "temperature": 1}).temperature, float)
    assert AgentSpec.from_dict({**BASE, "temperature": 0.7}).temperature == 0.7


@pytest.mark.parametrize("value", ["", "   ", 4, ["gpt"]])
def test_model_is_none_or_a_name(value: Any) -> None:
    assert spec_error(model=value).field == "model"
    assert AgentSpec.from_dict({**BASE, "model": "small-model"}).model == "small-model"


@pytest.mark.parametrize("value", ["EPHEMERAL", "forever", "", 1, None])
def test_lifecycle_is_one_of_the_enum_values(value: Any) -> None:
    error = spec_error(lifecycle=value)
    assert error.field == "lifecycle" and "'linked'" in str(error)


def test_lifecycle_accepts_the_enum_or_its_value() -> None:
    assert AgentSpec.from_dict({**BASE, "lifecycle": "detached"}).lifecycle is SubagentLifecycle.DETACHED
    assert AgentSpec("a", "x", lifecycle=SubagentLifecycle.LINKED).lifecycle is SubagentLifecycle.LINKED


@pytest.mark.parametrize(
    ("metadata", "field"),
    [
        (["a"], "metadata"),
        ({1: "a"}, "metadata"),
        ({"owner": {"team": object()}}, "metadata.owner.team"),
        ({"tags": ["a", {2: "b"}]}, "metadata.tags[1]"),
        ({"score": float("nan")}, "metadata.score"),
        ({"when": {1, 2}}, "metadata.when"),
    ],
)
def test_metadata_is_json_with_string_keys(metadata: Any, field: str) -> None:
    error = spec_error(metadata=metadata)
    assert error.field == field and repr(field) in str(error)


def test_metadata_is_copied_as_json() -> None:
    source = {"team": "core", "limits": (1, 2), "nested": {"ok": True, "none": None}}
    spec = AgentSpec.from_dict({**BASE, "metadata": source})
    assert spec.metadata == {"team": "core", "limits": [1, 2], "nested": {"ok": True, "none": None}}
    source["team"] = "changed"
    assert spec.metadata["team"] == "core"


def test_deeply_nested_metadata_is_refused_not_a_crash() -> None:
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    assert spec_error(metadata=deep).field.startswith("metadata.x")


def test_unknown_and_missing_keys() -> None:
    error = spec_error(max_round=3)
    assert error.field == "max_round" and "did you mean 'max_rounds'" in str(error)
    assert spec_error(colour="red").field == "colour"
    with pytest.raises(SpecValidationError) as info:
        AgentSpec.from_dict({"name": "a"})
    assert info.value.field == "system_prompt"
    with pytest.raises(SpecValidationError) as info:
        AgentSpec.from_dict({"system_prompt": "x"})
    assert info.value.field == "name"


@pytest.mark.parametrize("data", [None, [], "name: a", 3])
def test_a_spec_must_be_a_mapping(data: Any) -> None:
    with pytest.raises(SpecValidationError, match="mapping"):
        AgentSpec.from_dict(data)


def test_assignment_is_validated_too() -> None:
    spec = AgentSpec("reviewer", "x")
    with pytest.raises(SpecValidationError) as info:
        spec.max_rounds = 0
    assert info.value.field == "max_rounds" and "'reviewer'" in str(info.value)
    assert spec.max_rounds == 8
    spec.lifecycle = "linked"
    assert spec.lifecycle is SubagentLifecycle.LINKED
    with pytest.raises(SpecValidationError):
        dataclasses.replace(spec, temperature=3)


# ---------------------------------------------------------------------- text formats


FULL = AgentSpec(
    name="researcher",
    system_prompt="Find sources.\nCite them.",
    tools=["web_search", "read_file"],
    max_rounds=5,
    max_tokens=2000,
    temperature=0.3,
    model="small-model",
    lifecycle="linked",
    metadata={"team": "docs", "tags": ["a", "b"], "weight": 1.5, "flag": False, "none": None, "ü": "ß"},
)


def test_round_trips() -> None:
    assert AgentSpec.from_dict(FULL.to_dict()) == FULL
    assert AgentSpec.from_json(FULL.to_json()) == FULL
    assert AgentSpec.from_json(FULL.to_json(indent=2).encode()) == FULL
    assert AgentSpec.from_yaml(FULL.to_yaml()) == FULL
    minimal = AgentSpec("a", "x")
    assert AgentSpec.from_yaml(minimal.to_yaml()) == AgentSpec.from_json(minimal.to_json()) == minimal


def test_to_dict_is_plain_and_fresh() -> None:
    data = FULL.to_dict()
    assert data["lifecycle"] == "linked" and type(data["lifecycle"]) is str
    assert json.loads(json.dumps(data)) == data
    data["tools"].append("bash")
    data["metadata"]["tags"].append("c")
    assert FULL.tools == ["web_search", "read_file"] and FULL.metadata["tags"] == ["a", "b"]
    assert list(FULL.to_yaml().splitlines())[0] == "name: researcher"  # declaration order


def test_yaml_is_loaded_safely_and_strictly() -> None:
    with pytest.raises(SpecValidationError, match="not valid YAML"):
        AgentSpec.from_yaml("name: !!python/object/apply:os.system ['true']\nsystem_prompt: x\n")
    with pytest.raises(SpecValidationError, match="duplicate key 'max_rounds'"):
        AgentSpec.from_yaml("name: a\nsystem_prompt: x\nmax_rounds: 2\nmax_rounds: 3\n")
    with pytest.raises(SpecValidationError, match=r"line 2"):
        AgentSpec.from_yaml("name: a\nsystem_prompt: x: y\n")
    with pytest.raises(SpecValidationError, match="empty document"):
        AgentSpec.from_yaml("")
    with pytest.raises(SpecValidationError, match="not valid YAML"):
        AgentSpec.from_yaml("name: a\nsystem_prompt: x\n---\nname: b\n")
    # YAML's own types are not silently turned into what the field wants.
    with pytest.raises(SpecValidationError) as info:
        AgentSpec.from_yaml("name: a\nsystem_prompt: x\nmax_rounds: yes\n")
    assert info.value.field == "max_rounds"
    with pytest.raises(SpecValidationError) as info:
        AgentSpec.from_yaml("name: a\nsystem_prompt: x\nmetadata:\n  since: 2024-01-02\n")
    assert info.value.field == "metadata.since"


def test_yaml_merge_keys_may_be_overridden() -> None:
    text = "base: &b {max_rounds: 2}\n"
    with pytest.raises(SpecValidationError) as info:  # 'base' is not a field: proves parsing got that far
        AgentSpec.from_yaml(text + "name: a\nsystem_prompt: x\n")
    assert info.value.field == "base"
    merged = AgentSpec.from_yaml("name: a\nsystem_prompt: x\nmetadata:\n  <<: {k: 1, j: 2}\n  k: 3\n")
    assert merged.metadata == {"k": 3, "j": 2}


def test_json_is_strict() -> None:
    with pytest.raises(SpecValidationError, match="duplicate key 'name'"):
        AgentSpec.from_json('{"name": "a", "name": "b", "system_prompt": "x"}')
    with pytest.raises(SpecValidationError, match=r"not valid JSON: .* \(line 1, column"):
        AgentSpec.from_json('{"name": "a",')
    with pytest.raises(SpecValidationError, match="mapping"):
        AgentSpec.from_json('["a"]')
    with pytest.raises(SpecValidationError) as info:
        AgentSpec.from_json('{"name": "a", "system_prompt": "x", "temperature": NaN}')
    assert info.value.field == "temperature"


def test_source_prefixes_every_message() -> None:
    for call in (
        lambda: AgentSpec.from_json("{", source="specs/a.json"),
        lambda: AgentSpec.from_json('{"name": "a", "name": "a"}', source="specs/a.json"),
        lambda: AgentSpec.from_yaml("name: [", source="specs/a.json"),
        lambda: AgentSpec.from_dict({"name": "a", "system_prompt": 1}, source="specs/a.json"),
    ):
        with pytest.raises(SpecValidationError, match=r"^specs/a\.json: "):
            call()


def test_pyyaml_is_imported_only_when_yaml_is_read() -> None:
    code = (
        "import sys, power_loop\n"
        'power_loop.AgentSpec.from_json(\'{"name": "a", "system_prompt": "x"}\')\n'
        "before = 'yaml' in sys.modules\n"
        "power_loop.AgentSpec.from_yaml('name: a\\nsystem_prompt: x\\n')\n"
        "print(before, 'yaml' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True"]


# ---------------------------------------------------------------------- files and directories


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_directory_loader_reads_yaml_yml_and_json_in_name_order(tmp_path: Path) -> None:
    write(tmp_path / "b_reviewer.yaml", "name: reviewer\nsystem_prompt: Review.\ntools: [read_file]\n")
    write(tmp_path / "a_explorer.yml", "name: explorer\nsystem_prompt: Look around.\nlifecycle: detached\n")
    write(tmp_path / "c_writer.JSON", json.dumps({"name": "writer", "system_prompt": "Write.", "max_rounds": 3}))
    write(tmp_path / "README.md", "not a spec")
    write(tmp_path / ".hidden.yaml", "this: is ignored")
    (tmp_path / "nested.yaml").mkdir()
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "deep.yaml", "name: deep\nsystem_prompt: x\n")

    specs = load_agent_specs(tmp_path)
    assert list(specs) == ["explorer", "reviewer", "writer"]
    assert specs["reviewer"].tools == ["read_file"]
    assert specs["explorer"].lifecycle is SubagentLifecycle.DETACHED
    assert specs["writer"].max_rounds == 3
    assert load_agent_specs(str(tmp_path)) == specs


async def test_directory_loader_async(tmp_path: Path) -> None:
    write(tmp_path / "one.yaml", "name: one\nsystem_prompt: x\n")
    assert list(await load_agent_specs_async(tmp_path)) == ["one"]


def test_a_bad_file_is_named_with_its_field(tmp_path: Path) -> None:
    write(tmp_path / "good.yaml", "name: good\nsystem_prompt: x\n")
    bad = write(tmp_path / "bad.yaml", "name: bad\nsystem_prompt: x\nmax_rounds: 0\n")
    with pytest.raises(SpecValidationError) as info:
        load_agent_specs(tmp_path)
    assert str(bad) in str(info.value) and info.value.field == "max_rounds"


def test_unparsable_and_non_utf8_files_are_named(tmp_path: Path) -> None:
    broken = write(tmp_path / "broken.json", '{"name": ')
    with pytest.raises(SpecValidationError, match=f"^{broken}: not valid JSON"):
        load_agent_specs(tmp_path)
    broken.unlink()
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: a\nsystem_prompt: caf\xe9\n".encode("latin-1"))
    with pytest.raises(SpecValidationError, match=f"^{latin}: not UTF-8"):
        load_agent_specs(tmp_path)


def test_name_collisions_name_both_files(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", "name: twin\nsystem_prompt: x\n")
    second = write(tmp_path / "b.json", '{"name": "twin", "system_prompt": "y"}')
    with pytest.raises(AgentSpecError) as info:
        load_agent_specs(tmp_path)
    assert not isinstance(info.value, SpecValidationError)
    assert str(first) in str(info.value) and str(second) in str(info.value) and info.value.field == "name"


def test_missing_directory_and_bad_file_kinds(tmp_path: Path) -> None:
    with pytest.raises(AgentSpecError, match="does not exist"):
        load_agent_specs(tmp_path / "nope")
    file = write(tmp_path / "x.yaml", "name: x\nsystem_prompt: x\n")
    with pytest.raises(AgentSpecError, match="is not a directory"):
        load_agent_specs(file)
    assert load_agent_specs(tmp_path / ".") == {"x": AgentSpec("x", "x")}
    with pytest.raises(AgentSpecError, match="not an agent spec file"):
        AgentSpec.from_file(write(tmp_path / "x.txt", "name: x"))
    with pytest.raises(AgentSpecError, match="cannot read"):
        AgentSpec.from_file(tmp_path / "gone.yaml")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_agent_specs(empty) == {}


# ---------------------------------------------------------------------- tool definitions


def test_spawn_agent_definition() -> None:
    d = SPAWN_AGENT_DEFINITION
    assert isinstance(d, ToolDefinition) and d.name == "spawn_agent" and d.description
    props = d.parameters["properties"]
    assert list(props) == ["task", "system_prompt", "tools", "max_rounds", "background"]
    assert d.parameters["required"] == ["task"]
    assert props["background"]["type"] == "boolean" and props["background"]["default"] is False
    assert all(p.get("description") for p in props.values())
    json.dumps(d.to_openai_tool())

    assert validation_message(d, {"task": "Summarize README.md"}) is None
    full = {"task": "t", "system_prompt": "p", "tools": ["grep"], "max_rounds": 2, "background": True}
    assert validation_message(d, full) is None
    assert "missing required parameter(s): task" in (validation_message(d, {}) or "")
    for bad in (
        {"task": ""},
        {"task": "t", "max_rounds": 0},
        {"task": "t", "max_rounds": "2"},
        {"task": "t", "background": "yes"},
        {"task": "t", "tools": ["grep", "grep"]},
        {"task": "t", "tools": "grep"},
        {"task": "t", "colour": "red"},
    ):
        assert validation_message(d, bad) is not None, bad


def test_run_agent_definition() -> None:
    d = RUN_AGENT_DEFINITION
    assert isinstance(d, ToolDefinition) and d.name == "run_agent"
    assert list(d.parameters["properties"]) == ["spec", "input"]
    assert d.parameters["required"] == ["spec", "input"]
    json.dumps(d.to_openai_tool())
    assert validation_message(d, {"spec": "reviewer", "input": "the diff"}) is None
    assert validation_message(d, {"spec": "reviewer"}) is not None
    assert validation_message(d, {"spec": "", "input": "x"}) is not None
    assert validation_message(d, {"spec": "r", "input": "x", "extra": 1}) is not None


def test_the_new_names_are_exported() -> None:
    for name in (
        "AgentSpec",
        "SPAWN_AGENT_DEFINITION",
        "RUN_AGENT_DEFINITION",
        "load_agent_specs",
        "load_agent_specs_async",
        "SubagentLifecycle",
        "MAX_SPAWN_DEPTH",
    ):
        assert name in power_loop.__all__, name
