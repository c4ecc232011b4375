"""Running shell commands for the ``bash`` tool: the backend protocol and the local backend.

A :class:`ShellBackend` says *how* a command is launched for a workspace (argv prefix,
working directory, environment); :func:`run_shell_command` launches it, bounds it and
collects its output. A host that runs commands in its own sandbox (a container, a VM, a
remote machine) implements the four methods of the protocol.

Invariants of :func:`run_shell_command`:

* The command runs in a new session (its own process group); when the time limit passes,
  when the caller is cancelled, and when the shell itself exits, the whole group is killed
  (``SIGKILL``), so no child outlives the call. A process that starts a session of its own
  (``setsid``) leaves the group and is beyond this reach.
* The output (stdout and stderr merged) is bounded while it is read: the first and the last
  ``max_output_bytes / 2`` bytes are kept, with a marker saying how much was left out.
* The environment is exactly what the backend gives: for :class:`LocalShellBackend`,
  ``PATH``, ``HOME`` (the tenant's home), ``LANG`` and whatever the host passed as ``env=``;
  nothing else of the host's environment (API keys, tokens) reaches the command.
* It is asyncio all the way: the event loop never waits on the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "DEFAULT_SHELL_BACKEND",
    "LocalShellBackend",
    "ShellBackend",
    "ShellResult",
    "run_shell_command",
]

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_OUTPUT_BYTES = 30_000
# After the shell exits and its group is killed, how long to wait for the pipe to close (a
# process that left the group may still hold it).
_DRAIN_S = 2.0


@runtime_checkable
class ShellBackend(Protocol):
    """How commands are launched for a workspace.

    The command text is appended to :meth:`launch_argv` as its last argument.
    """

    def launch_argv(self, workspace_dir: str) -> list[str]:
        """The argv prefix that runs a command string, e.g. ``["/bin/bash", "-c"]``."""
        ...

    def launch_cwd(self, workspace_dir: str) -> str | None:
        """The working directory of the launched process (None: the backend's own choice)."""
        ...

    def launch_env(self, workspace_dir: str) -> dict[str, str]:
        """The complete environment of the launched process."""
        ...

    def session_key(self, workspace_dir: str) -> str:
        """A key naming where commands for ``workspace_dir`` run (one per sandbox)."""
        ...


class LocalShellBackend:
    """Runs commands with the local ``bash`` (``sh`` when there is none), in the workspace.

    Args:
        env: Extra variables for every command (the host's choice, e.g. a proxy); nothing
            else of the host's environment is passed on.
        home_dir: ``HOME`` of the commands (None: the workspace).
        path: ``PATH`` of the commands.
        shell: The shell binary (None: ``bash`` on ``path``, else ``/bin/sh``).
    """

    def __init__(
        self,
        *,
        env: Mapping[str, str] | None = None,
        home_dir: str | os.PathLike[str] | None = None,
        path: str = DEFAULT_PATH,
        shell: str | None = None,
    ) -> None:
        self.env = dict(env or {})
        self.home_dir = None if home_dir is None else os.fspath(home_dir)
        self.path = path
        self.shell = shell or shutil.which("bash", path=path) or "/bin/sh"

    def __repr__(self) -> str:
        return f"LocalShellBackend(shell={self.shell!r}, env={sorted(self.env)!r})"

    def launch_argv(self, workspace_dir: str) -> list[str]:
        """``[shell, "-c"]``."""
        return [self.shell, "-c"]

    def launch_cwd(self, workspace_dir: str) -> str:
        """The workspace itself."""
        return os.fspath(workspace_dir)

    def launch_env(self, workspace_dir: str) -> dict[str, str]:
        """``PATH``, ``HOME``, ``LANG``, ``PWD`` and the host's ``env=`` (which wins)."""
        base = {
            "PATH": self.path,
            "HOME": self.home_dir or os.fspath(workspace_dir),
            "LANG": "C.UTF-8",
            "PWD": os.fspath(workspace_dir),
        }
        return {**base, **self.env}

    def session_key(self, workspace_dir: str) -> str:
        """``local:<workspace>``."""
        return f"local:{os.path.realpath(workspace_dir)}"

    def with_home(self, home_dir: str | os.PathLike[str] | None) -> LocalShellBackend:
        """A copy whose commands get ``HOME=home_dir``."""
        return LocalShellBackend(env=self.env, home_dir=home_dir, path=self.path, shell=self.shell)


DEFAULT_SHELL_BACKEND = LocalShellBackend()
"""The backend ``bash`` uses when the runtime environment names none."""


@dataclass(frozen=True)
class ShellResult:
    """What a command did.

    Attributes:
        output: Its stdout and stderr, merged and bounded (a marker shows what was left out).
        exit_code: Its exit status (negative: killed by that signal); None when it timed out.
        timed_out: The time limit passed and its process group was killed.
        omitted_bytes: Bytes of output left out of the middle.
    """

    output: str
    exit_code: int | None
    timed_out: bool
    omitted_bytes: int = 0

    def to_text(self, timeout_s: float) -> str:
        """The text the model reads."""
        body = self.output.rstrip("\n")
        if self.timed_out:
            status = f"[timed out after {timeout_s:g}s: the command and its children were killed]"
        else:
            status = f"[exit code: {self.exit_code}]"
        return f"{body}\n{status}" if body else status


class _BoundedOutput:
    """Keeps the first and last ``limit / 2`` bytes of a stream, counting what falls between."""

    def __init__(self, limit: int) -> None:
        self.half = max(1, limit // 2)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.half - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    def render(self) -> tuple[str, int]:
        omitted = self.total - len(self.head) - len(self.tail)
        head = self.head.decode("utf-8", errors="replace")
        tail = self.tail.decode("utf-8", errors="replace")
        if omitted <= 0:
            return head + tail, 0
        return f"{head}\n... [{omitted} bytes of output omitted] ...\n{tail}", omitted


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _pump(stream: asyncio.StreamReader, sink: _BoundedOutput) -> None:
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        sink.add(chunk)


async def run_shell_command(
    command: str,
    *,
    workspace_dir: str | os.PathLike[str],
    backend: ShellBackend | None = None,
    timeout_s: float = 120.0,
    max_output_bytes: int = MAX_OUTPUT_BYTES,
    on_start: Callable[[int], Awaitable[None]] | None = None,
) -> ShellResult:
    """Run ``command`` through ``backend`` for ``workspace_dir`` (see the module docstring).

    ``on_start`` is awaited with the process id (its process group's) once it runs.

    Raises:
        ValueError: ``timeout_s`` is not positive.
        OSError: The process could not be started (the shell is missing, the cwd is gone).
    """
    if not timeout_s > 0:
        raise ValueError("timeout_s must be > 0")
    shell = backend or DEFAULT_SHELL_BACKEND
    workspace = os.fspath(workspace_dir)
    argv = [*shell.launch_argv(workspace), command]
    # The output pipe is ours, not the subprocess transport's: asyncio's ``wait()`` would
    # otherwise also wait for the pipe to close, which a child left running keeps open.
    read_fd, write_fd = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=shell.launch_cwd(workspace),
            env=shell.launch_env(workspace),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            start_new_session=True,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    loop = asyncio.get_running_loop()
    stream = asyncio.StreamReader(limit=1 << 20)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stream), os.fdopen(read_fd, "rb", buffering=0)
    )
    sink = _BoundedOutput(max_output_bytes)
    reader = asyncio.ensure_future(_pump(stream, sink))
    timed_out = False
    try:
        try:
            if on_start is not None:
                await on_start(proc.pid)
            await asyncio.wait_for(proc.wait(), timeout_s)
        except asyncio.TimeoutError:
            timed_out = True
        finally:
            # Whatever happened (exit, time limit, cancellation), nothing of the group survives.
            _kill_group(proc.pid)
            if proc.returncode is None:
                # Not proc.kill(): its poll() could reap the child behind asyncio's watcher.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(proc.pid, signal.SIGKILL)
            # Reaped in every case, a cancelled call included: an unreaped child stays a
            # zombie, and its transport complains when it is collected. (SIGKILL was sent:
            # the wait is short.)
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(proc.wait())
        await asyncio.wait((reader,), timeout=_DRAIN_S)
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        transport.close()
    output, omitted = sink.render()
    return ShellResult(
        output=output,
        exit_code=None if timed_out else proc.returncode,
        timed_out=timed_out,
        omitted_bytes=omitted,
    )
