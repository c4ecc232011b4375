"""Where the default tools act: the runtime environment of a tool call, per tenant.

A :class:`RuntimeEnv` names a workspace (the only place the file tools and ``bash`` may
touch), a home directory, a skills directory and the shell backend. A host binds one to
whatever runs next with :func:`runtime_env_context`; the default tools read it when they are
called.

Invariants:

* The environment travels in a ``contextvars.ContextVar``: a task inherits the environment
  bound when it was created, and the kernel runs sync handlers in its tool threads inside a
  copy of the calling task's context. Two tenants running at once on one registry therefore
  each see only their own environment, in tasks and threads alike.
* Nothing falls back to the process: a tool called with no environment bound (a registry
  created with ``bind=False`` and no :func:`runtime_env_context`) fails with
  :class:`RuntimeEnvError`, whose message the model reads.
* Paths are made absolute when an environment is built; their existence is checked when a
  tool needs them (``require_*``), so an environment can be built before its directories.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from .context import current_tool_context
from .shell import DEFAULT_SHELL_BACKEND, ShellBackend

if TYPE_CHECKING:
    from ..config import AgentLoopConfig
    from ..store.protocols import SessionStoreProtocol
    from .context import AgentLoopHandle

__all__ = [
    "RuntimeEnv",
    "RuntimeEnvError",
    "ToolRuntimeContext",
    "current_runtime_env",
    "get_tool_runtime_context",
    "require_runtime_env",
    "runtime_env_context",
    "shell_target",
]

ENV_WORKSPACE = "POWER_LOOP_WORKSPACE"
ENV_HOME = "POWER_LOOP_HOME"
ENV_SKILLS_DIR = "POWER_LOOP_SKILLS_DIR"


class RuntimeEnvError(ConfigurationError):
    """No usable runtime environment: none is bound, or a directory it names is missing."""


def _absolute(value: str | os.PathLike[str] | None) -> Path | None:
    if value is None or value == "":
        return None
    return Path(os.path.abspath(os.path.expanduser(os.fspath(value))))


@dataclass(frozen=True)
class RuntimeEnv:
    """The directories and shell backend one tenant's tool calls use.

    Attributes:
        workspace_dir: The root the file tools and ``bash`` are confined to.
        home_dir: The tenant's home (``HOME`` of ``bash``; ``~/`` paths of the file tools).
            None: the workspace.
        skills_dir: Where skills are loaded from (None: no skills).
        shell_backend: Runs ``bash`` commands (None: :data:`DEFAULT_SHELL_BACKEND`, local).
    """

    workspace_dir: Path | None = None
    home_dir: Path | None = None
    skills_dir: Path | None = None
    shell_backend: ShellBackend | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name in ("workspace_dir", "home_dir", "skills_dir"):
            object.__setattr__(self, name, _absolute(getattr(self, name)))

    @classmethod
    def from_env(
        cls,
        *,
        workspace_dir: str | os.PathLike[str] | None = None,
        home_dir: str | os.PathLike[str] | None = None,
        skills_dir: str | os.PathLike[str] | None = None,
    ) -> RuntimeEnv:
        """An environment from the arguments, else ``POWER_LOOP_WORKSPACE``,
        ``POWER_LOOP_HOME`` and ``POWER_LOOP_SKILLS_DIR`` (unset ones stay None)."""
        return cls(
            workspace_dir=_absolute(workspace_dir) or _absolute(os.environ.get(ENV_WORKSPACE)),
            home_dir=_absolute(home_dir) or _absolute(os.environ.get(ENV_HOME)),
            skills_dir=_absolute(skills_dir) or _absolute(os.environ.get(ENV_SKILLS_DIR)),
        )

    @property
    def home_rw_allowlist(self) -> tuple[Path, ...]:
        """The roots the file tools may read and write: the workspace, then the home directory."""
        roots: list[Path] = []
        for root in (self.workspace_dir, self.home_dir):
            if root is not None and root not in roots:
                roots.append(root)
        return tuple(roots)

    def require_workspace_dir(self) -> Path:
        """The workspace, which must be an existing directory.

        Raises:
            RuntimeEnvError: It is not set or not a directory.
        """
        return _require(self.workspace_dir, "workspace_dir", ENV_WORKSPACE)

    def require_home_dir(self) -> Path:
        """The home directory (the workspace when unset), which must exist.

        Raises:
            RuntimeEnvError: Neither is set, or it is not a directory.
        """
        if self.home_dir is None:
            return self.require_workspace_dir()
        return _require(self.home_dir, "home_dir", ENV_HOME)

    def require_skills_dir(self) -> Path:
        """The skills directory, which must exist.

        Raises:
            RuntimeEnvError: It is not set or not a directory.
        """
        return _require(self.skills_dir, "skills_dir", ENV_SKILLS_DIR)


def shell_target() -> tuple[Path, ShellBackend]:
    """Where the shell tools of this call run: the bound environment's workspace and shell
    backend (:data:`~power_loop.tools.shell.DEFAULT_SHELL_BACKEND` with the environment's
    home when it names none). No file I/O: a missing directory fails when the command starts.

    Raises:
        RuntimeEnvError: No environment is bound, or it names no workspace.
    """
    env = require_runtime_env()
    workspace = env.workspace_dir
    if workspace is None:
        workspace = env.require_workspace_dir()  # raises, saying what is missing
    backend = env.shell_backend
    if backend is None:
        backend = DEFAULT_SHELL_BACKEND.with_home(env.home_dir) if env.home_dir else DEFAULT_SHELL_BACKEND
    return workspace, backend


def _require(path: Path | None, name: str, variable: str) -> Path:
    if path is None:
        raise RuntimeEnvError(f"no {name} is configured (set RuntimeEnv({name}=...) or {variable})")
    if not path.is_dir():
        raise RuntimeEnvError(f"{name} {str(path)!r} is not an existing directory")
    return path


_ENV: ContextVar[RuntimeEnv | None] = ContextVar("power_loop_runtime_env", default=None)


@contextmanager
def runtime_env_context(env: RuntimeEnv) -> Iterator[RuntimeEnv]:
    """Bind ``env`` for the code inside the ``with`` block (and the tasks and tool threads it starts).

    Example::

        with runtime_env_context(RuntimeEnv(workspace_dir=tenant_dir)):
            await loop.send("list the files", session_id=sid)
    """
    if not isinstance(env, RuntimeEnv):
        raise TypeError(f"runtime_env_context needs a RuntimeEnv, got {type(env).__name__}")
    token = _ENV.set(env)
    try:
        yield env
    finally:
        _ENV.reset(token)


def current_runtime_env() -> RuntimeEnv | None:
    """The environment bound in this task or thread, or None."""
    return _ENV.get()


def require_runtime_env() -> RuntimeEnv:
    """The bound environment.

    Raises:
        RuntimeEnvError: None is bound (the message is written for the model and the host).
    """
    env = _ENV.get()
    if env is None:
        raise RuntimeEnvError(
            "no workspace is bound to this call, so file and shell tools are disabled. The host "
            "must run the agent inside runtime_env_context(RuntimeEnv(workspace_dir=...)) or "
            "create the registry with bind=True"
        )
    return env


@dataclass(frozen=True)
class ToolRuntimeContext:
    """The session-level view of the call running now (0.11's tool runtime context).

    Attributes:
        session_id: The calling session.
        store: The loop's session store (None outside a loop).
        loop: The ``StatefulAgentLoop`` running the call (None outside a loop).
        config: The loop's ``AgentLoopConfig`` (None outside a loop).
    """

    session_id: str
    store: SessionStoreProtocol | None
    loop: AgentLoopHandle | None
    config: AgentLoopConfig | None

    @property
    def has_session_store(self) -> bool:
        """True when a session store is reachable from the call."""
        return self.store is not None


def get_tool_runtime_context(*, required: bool = False) -> ToolRuntimeContext | None:
    """The runtime context of the tool call running in this task or thread.

    Args:
        required: Raise instead of returning None outside a tool call.

    Raises:
        RuntimeEnvError: ``required`` and no tool call is running here.
    """
    ctx = current_tool_context()
    if ctx is None:
        if required:
            raise RuntimeEnvError("no tool call is running here: get_tool_runtime_context() works inside a tool")
        return None
    loop = ctx.loop
    return ToolRuntimeContext(
        session_id=ctx.session_id,
        store=getattr(loop, "store", None),
        loop=loop,
        config=getattr(loop, "config", None),
    )
