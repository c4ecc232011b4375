"""Tenancy: one unbound registry serving many workspaces at once, each call seeing only its own.

Concurrency is proven by barriers (both tenants are inside their calls at the same time),
never by timing.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from power_loop import (
    RuntimeEnv,
    RuntimeEnvError,
    StatefulAgentLoop,
    ToolRegistry,
    create_default_tool_registry,
    get_tool_runtime_context,
    runtime_env_context,
    tool,
)
from power_loop.testing import ScriptedLLM, ScriptedRequest, text_reply, tool_reply
from power_loop.tools.runtime_env import current_runtime_env


def _tenant(tmp_path: Path, name: str) -> RuntimeEnv:
    workspace = tmp_path / name
    workspace.mkdir()
    (workspace / "secret.txt").write_text(f"secret of {name}\n")
    return RuntimeEnv(workspace_dir=workspace)


def test_runtime_env_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWER_LOOP_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setenv("POWER_LOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POWER_LOOP_SKILLS_DIR", str(tmp_path / "skills"))
    env = RuntimeEnv.from_env()
    assert (env.workspace_dir, env.home_dir, env.skills_dir) == (
        tmp_path / "ws",
        tmp_path / "home",
        tmp_path / "skills",
    )
    assert RuntimeEnv.from_env(workspace_dir=tmp_path).workspace_dir == tmp_path  # arguments win
    with pytest.raises(RuntimeEnvError, match="not an existing directory"):
        env.require_workspace_dir()
    (tmp_path / "ws").mkdir()
    assert env.require_workspace_dir() == tmp_path / "ws"
    assert env.home_rw_allowlist == (tmp_path / "ws", tmp_path / "home")
    with pytest.raises(RuntimeEnvError, match="no skills_dir"):
        RuntimeEnv(workspace_dir=tmp_path).require_skills_dir()
    assert RuntimeEnv(workspace_dir=tmp_path).require_home_dir() == tmp_path  # no home: the workspace


def test_context_is_scoped_and_nests(tmp_path: Path) -> None:
    outer, inner = RuntimeEnv(workspace_dir=tmp_path / "a"), RuntimeEnv(workspace_dir=tmp_path / "b")
    assert current_runtime_env() is None
    with runtime_env_context(outer):
        with runtime_env_context(inner):
            assert current_runtime_env() is inner
        assert current_runtime_env() is outer
    assert current_runtime_env() is None
    with pytest.raises(TypeError), runtime_env_context(str(tmp_path)):  # type: ignore[arg-type]
        pass


async def test_unbound_registry_fails_closed(tmp_path: Path) -> None:
    registry = create_default_tool_registry(bind=False)
    for name, args in (("read_file", {"path": "x"}), ("bash", {"command": "echo hi"}), ("glob", {"pattern": "*"})):
        with pytest.raises(RuntimeEnvError, match="no workspace is bound"):
            await registry.invoke_async(name, args)


async def test_two_tenants_concurrently_in_tasks(tmp_path: Path) -> None:
    registry = create_default_tool_registry(bind=False)
    tenants = [_tenant(tmp_path, "alice"), _tenant(tmp_path, "bob")]
    barrier = asyncio.Barrier(2)

    async def work(env: RuntimeEnv) -> tuple[str, str, str]:
        with runtime_env_context(env):
            await barrier.wait()  # both tenants are bound at the same moment
            read = await registry.invoke_async("read_file", {"path": "secret.txt"})  # in a thread
            await barrier.wait()
            shell = await registry.invoke_async("bash", {"command": "cat secret.txt; pwd"})  # on the loop
            listed = await registry.invoke_async("glob", {"pattern": "*"})
        return read, shell, listed

    (a_read, a_shell, a_list), (b_read, b_shell, b_list) = await asyncio.gather(*(work(t) for t in tenants))
    assert a_read == "secret of alice\n" and b_read == "secret of bob\n"
    assert "secret of alice" in a_shell and "bob" not in a_shell and str(tmp_path / "alice") in a_shell
    assert "secret of bob" in b_shell and "alice" not in b_shell
    assert a_list == b_list == "secret.txt"


def test_two_tenants_concurrently_in_threads(tmp_path: Path) -> None:
    registry = create_default_tool_registry(bind=False)
    tenants = {"alice": _tenant(tmp_path, "alice"), "bob": _tenant(tmp_path, "bob")}
    barrier = threading.Barrier(2, timeout=60)
    seen: dict[str, str] = {}

    def work(name: str) -> None:
        with runtime_env_context(tenants[name]):
            barrier.wait()
            registry.invoke("write_file", {"path": "mine.txt", "content": name})
            barrier.wait()
            seen[name] = registry.invoke("read_file", {"path": "mine.txt"})

    threads = [threading.Thread(target=work, args=(name,)) for name in tenants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert seen == {"alice": "alice", "bob": "bob"}


async def test_two_tenants_through_one_loop(tmp_path: Path, db_path: str) -> None:
    """Two sessions of one loop, one unbound registry, run at the same time for two tenants."""
    barrier = asyncio.Barrier(2)

    @tool
    async def rendezvous() -> str:
        """Wait until the other tenant's run is here too."""
        await barrier.wait()
        return "met"

    registry = create_default_tool_registry(bind=False, include=["read_file", "bash"])
    registry.register(rendezvous)

    def rule(request: ScriptedRequest) -> object:
        if request.tool_results:
            return text_reply(" | ".join(r.text for r in request.tool_results))
        return tool_reply(("rendezvous", {}), ("read_file", {"path": "secret.txt"}), ("bash", {"command": "pwd"}))

    tenants = {"alice": _tenant(tmp_path, "alice"), "bob": _tenant(tmp_path, "bob")}
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db_path, tool_registry=registry) as loop:  # type: ignore[arg-type]

        async def run(name: str) -> str:
            sid = await loop.new_session_async()
            with runtime_env_context(tenants[name]):
                result = await loop.send("go", session_id=sid)
            return result.final_text

        alice, bob = await asyncio.gather(run("alice"), run("bob"))
    assert "met" in alice and "secret of alice" in alice and str(tmp_path / "alice") in alice
    assert "bob" not in alice
    assert "met" in bob and "secret of bob" in bob and "alice" not in bob


async def test_loop_without_environment_tells_the_model(tmp_path: Path, db_path: str) -> None:
    registry = create_default_tool_registry(bind=False, include=["read_file"])
    llm = ScriptedLLM([tool_reply(("read_file", {"path": "secret.txt"})), text_reply("ok")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
    assert result.status == "completed"
    seen = llm.requests[1].messages[-1]
    assert "no workspace is bound" in seen.text  # type: ignore[union-attr]


async def test_tool_runtime_context(db_path: str) -> None:
    seen: list[object] = []

    def where() -> str:
        """Report the runtime context."""
        ctx = get_tool_runtime_context(required=True)
        assert ctx is not None
        seen.append(ctx)
        return ctx.session_id

    assert get_tool_runtime_context() is None
    with pytest.raises(RuntimeEnvError):
        get_tool_runtime_context(required=True)
    registry = ToolRegistry()
    registry.register(where)
    llm = ScriptedLLM([tool_reply(("where", {})), text_reply("ok")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        await loop.send("go", session_id=sid)
        ctx = seen[0]
        assert ctx.session_id == sid  # type: ignore[attr-defined]
        assert ctx.loop is loop and ctx.store is loop.store and ctx.config is loop.config  # type: ignore[attr-defined]
        assert ctx.has_session_store  # type: ignore[attr-defined]


async def test_bound_registry_uses_its_own_workspace(tmp_path: Path) -> None:
    env = _tenant(tmp_path, "bound")
    other = _tenant(tmp_path, "other")
    registry = create_default_tool_registry(workspace_dir=env.workspace_dir)
    with runtime_env_context(other):  # a bound registry keeps its own environment
        assert await registry.invoke_async("read_file", {"path": "secret.txt"}) == "secret of bound\n"
