"""The shell backend and the bash tool: process-group kill, bounded output, a minimal environment.

No wall-clock bounds: a killed child is checked by its pid, and the polling below is a hang
guard, not a speed assertion.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from power_loop import (
    DEFAULT_SHELL_BACKEND,
    LocalShellBackend,
    RuntimeEnv,
    ShellBackend,
    create_default_tool_registry,
    runtime_env_context,
)
from power_loop.tools.shell import run_shell_command

_HANG_GUARD_S = 60.0


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for its reaper counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")


async def _gone(pid: int) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _HANG_GUARD_S
    while _alive(pid):
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def test_timeout_kills_the_command_and_its_children(tmp_path: Path) -> None:
    result = await run_shell_command("sleep 1000 & echo child=$!; sleep 1000", workspace_dir=tmp_path, timeout_s=1.0)
    assert result.timed_out and result.exit_code is None
    child = int(result.output.split("child=")[1].split()[0])
    assert await _gone(child)
    assert "timed out after 1s" in result.to_text(1.0)


async def test_children_left_behind_are_killed_when_the_shell_exits(tmp_path: Path) -> None:
    result = await run_shell_command("sleep 1000 & echo child=$!", workspace_dir=tmp_path, timeout_s=60)
    assert result.exit_code == 0 and not result.timed_out
    assert await _gone(int(result.output.split("child=")[1].split()[0]))


async def test_cancelling_the_call_kills_the_group(tmp_path: Path) -> None:
    task = asyncio.ensure_future(
        run_shell_command("sleep 1000 & echo $! > child.pid; wait", workspace_dir=tmp_path, timeout_s=600)
    )
    pid_file = tmp_path / "child.pid"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _HANG_GUARD_S
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert loop.time() < deadline, "the command never started"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await _gone(int(pid_file.read_text()))


async def test_output_is_bounded_head_and_tail_kept(tmp_path: Path) -> None:
    command = "echo START; head -c 200000 /dev/zero | tr '\\0' x; echo; echo END"
    result = await run_shell_command(command, workspace_dir=tmp_path, timeout_s=60, max_output_bytes=1000)
    assert result.output.startswith("START\nxxx")
    assert result.output.rstrip().endswith("END")
    assert result.omitted_bytes > 198_000
    assert f"[{result.omitted_bytes} bytes of output omitted]" in result.output
    assert len(result.output) < 1200


async def test_environment_is_minimal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-host-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-host-secret")
    result = await run_shell_command("env; pwd", workspace_dir=tmp_path, timeout_s=60)
    assert "host-secret" not in result.output
    names = {line.split("=", 1)[0] for line in result.output.splitlines() if "=" in line}
    assert names <= {"PATH", "HOME", "LANG", "PWD", "SHLVL", "_", "OLDPWD"}
    assert f"HOME={tmp_path}" in result.output
    assert result.output.splitlines()[-1] == os.path.realpath(tmp_path)  # the cwd is the workspace
    passed = LocalShellBackend(env={"API_TOKEN": "given-by-host"})
    result = await run_shell_command("echo $API_TOKEN", workspace_dir=tmp_path, backend=passed, timeout_s=60)
    assert result.output.strip() == "given-by-host"


async def test_exit_code_and_stderr(tmp_path: Path) -> None:
    result = await run_shell_command("echo out; echo err >&2; exit 3", workspace_dir=tmp_path, timeout_s=60)
    assert result.exit_code == 3
    assert result.output.split() == ["out", "err"]
    assert result.to_text(60).endswith("[exit code: 3]")


async def test_bash_tool_uses_the_tenant_backend_and_home(tmp_path: Path) -> None:
    class Marked:
        """A host backend: the local shell with a marker in the environment."""

        def launch_argv(self, workspace_dir: str) -> list[str]:
            return ["/bin/sh", "-c"]

        def launch_cwd(self, workspace_dir: str) -> str:
            return workspace_dir

        def launch_env(self, workspace_dir: str) -> dict[str, str]:
            return {"PATH": "/usr/bin:/bin", "SANDBOX": "marked"}

        def session_key(self, workspace_dir: str) -> str:
            return f"marked:{workspace_dir}"

    assert isinstance(Marked(), ShellBackend) and isinstance(DEFAULT_SHELL_BACKEND, ShellBackend)
    workspace, home = tmp_path / "ws", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    registry = create_default_tool_registry(bind=False, include=["bash"])
    with runtime_env_context(RuntimeEnv(workspace_dir=workspace, shell_backend=Marked())):
        assert "marked" in await registry.invoke_async("bash", {"command": "echo $SANDBOX"})
    with runtime_env_context(RuntimeEnv(workspace_dir=workspace, home_dir=home)):
        text = await registry.invoke_async("bash", {"command": "echo $HOME; exit 2", "timeout": 30})
    assert text == f"{home}\n[exit code: 2]"


async def test_bash_tool_missing_workspace_is_reported(tmp_path: Path) -> None:
    registry = create_default_tool_registry(bind=False, include=["bash"])
    env = RuntimeEnv(workspace_dir=tmp_path / "missing")
    with runtime_env_context(env), pytest.raises(RuntimeError, match="could not be started"):
        await registry.invoke_async("bash", {"command": "true"})
