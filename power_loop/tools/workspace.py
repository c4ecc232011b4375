"""Confinement of the file tools to a workspace.

A :class:`Workspace` turns a path the model wrote into a file descriptor inside the
workspace, or refuses with a :class:`WorkspaceError` whose message the model can act on.

Invariants:

* A path is resolved (``~/`` is the tenant's home, relative paths start at the workspace,
  symlinks are followed) and the result must lie inside one of the allowed roots (the
  workspace, then the home). ``..`` that climbs out, an absolute path elsewhere and a
  symlink pointing out are refused, each with its own message.
* The check is not trusted on its own: the resolved path is then opened component by
  component from a descriptor of its root, every step with ``O_NOFOLLOW``. A symlink
  swapped in between the check and the use makes that step fail, and the call is refused.
  Nothing outside the root can be reached this way, because the walk never follows a link
  and never climbs.
* Only regular files are read or written: a fifo, a device or a socket is refused before a
  byte is read (opened non-blocking, checked with ``fstat``).
* Writes go to a temporary file in the target's directory, renamed over the target, so a
  reader never sees half a file and a symlink at the target is replaced, not followed.

Every function here does blocking file I/O: call it from a tool thread (the default tools
are sync handlers, which the kernel runs in its tool threads), never on the event loop.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ToolError
from .runtime_env import RuntimeEnv

__all__ = ["Workspace", "WorkspaceError"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class WorkspaceError(ToolError):
    """A file tool refused a path or an operation (the message is for the model)."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe (fifo)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symlink"
    return "not a regular file"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


@dataclass(frozen=True)
class Workspace:
    """The roots one call may touch, resolved once.

    Attributes:
        root: The workspace (relative paths start here).
        home: The tenant's home (``~/`` paths start here).
        roots: Every root a path may resolve into.
    """

    root: Path
    home: Path
    roots: tuple[Path, ...]

    @classmethod
    def from_env(cls, env: RuntimeEnv) -> Workspace:
        """The workspace of ``env``.

        Raises:
            RuntimeEnvError: The workspace (or the home) is not an existing directory.
        """
        root = Path(os.path.realpath(env.require_workspace_dir()))
        home = Path(os.path.realpath(env.require_home_dir()))
        roots = tuple(dict.fromkeys(Path(os.path.realpath(r)) for r in env.home_rw_allowlist))
        return cls(root=root, home=home, roots=roots or (root,))

    # ------------------------------------------------------------------ paths

    def resolve(self, path: str) -> tuple[Path, Path]:
        """``(root, resolved path)`` for what the model wrote.

        Raises:
            WorkspaceError: Empty, a NUL byte, or outside every root (the message says why).
        """
        if not isinstance(path, str) or not path.strip():
            raise WorkspaceError("path is empty: give a path relative to the workspace")
        if "\0" in path:
            raise WorkspaceError("path contains a NUL byte")
        if path == "~" or path.startswith("~/"):
            candidate = self.home / path[2:]
        elif os.path.isabs(path):
            candidate = Path(path)
        else:
            candidate = self.root / path
        lexical = Path(os.path.normpath(candidate))
        if not any(_inside(lexical, r) for r in self.roots):
            if os.path.isabs(path):
                raise WorkspaceError(
                    f"{path!r} is outside the workspace: use a path relative to the workspace "
                    f"(absolute paths must start with {str(self.root)!r})"
                )
            raise WorkspaceError(f"{path!r} leaves the workspace ('..' cannot climb above the workspace root)")
        resolved = Path(os.path.realpath(lexical))
        for root in self.roots:
            if _inside(resolved, root):
                return root, resolved
        raise WorkspaceError(f"{path!r} is a symlink (or goes through one) that points outside the workspace: refused")

    def relative(self, path: Path) -> str:
        """``path`` as shown to the model: relative to the workspace when inside it."""
        if _inside(path, self.root):
            return path.relative_to(self.root).as_posix() or "."
        return str(path)

    # ------------------------------------------------------------------ descriptors

    @contextlib.contextmanager
    def open_dir(self, path: str, *, create: bool = False) -> Iterator[tuple[int, Path]]:
        """A descriptor of directory ``path`` reached without following links, and its path.

        Args:
            create: Create missing directories on the way.
        """
        root, resolved = self.resolve(path)
        fd = self._walk(root, resolved.relative_to(root).parts, create=create)
        try:
            yield fd, resolved
        finally:
            os.close(fd)

    def _walk(self, root: Path, parts: tuple[str, ...], *, create: bool) -> int:
        fd = os.open(root, _DIR_FLAGS)
        try:
            for part in parts:
                try:
                    step = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise WorkspaceError(f"directory {self.relative(root / part)!r} does not exist") from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    step = self._step(fd, part)
                except OSError as exc:
                    raise self._walk_error(exc, part) from None
                os.close(fd)
                fd = step
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _step(self, fd: int, part: str) -> int:
        try:
            return os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise self._walk_error(exc, part) from None

    @staticmethod
    def _walk_error(exc: OSError, part: str) -> WorkspaceError:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            return WorkspaceError(
                f"{part!r} is not a plain directory (a symlink or a file appeared on the path while it "
                "was being opened): refused"
            )
        return WorkspaceError(f"cannot open {part!r}: {exc.strerror}")

    @contextlib.contextmanager
    def open_file(self, path: str) -> Iterator[tuple[int, os.stat_result, Path]]:
        """A read descriptor of the regular file ``path``, its ``fstat`` and resolved path.

        Raises:
            WorkspaceError: Outside the workspace, missing, a directory or a special file.
        """
        root, resolved = self.resolve(path)
        if resolved == root:
            raise WorkspaceError(f"{path!r} is a directory, not a file")
        parts = resolved.relative_to(root).parts
        dir_fd = self._walk(root, parts[:-1], create=False)
        try:
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dir_fd)
            except FileNotFoundError:
                raise WorkspaceError(f"file {self.relative(resolved)!r} does not exist") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise WorkspaceError(f"{path!r} became a symlink while being opened: refused") from None
                raise WorkspaceError(f"cannot open {path!r}: {exc.strerror}") from None
        finally:
            os.close(dir_fd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise WorkspaceError(f"{path!r} is {_kind(info.st_mode)}, not a regular file: refused")
            os.set_blocking(fd, True)
            yield fd, info, resolved
        finally:
            os.close(fd)

    def read_bytes(self, path: str, limit: int) -> tuple[bytes, int, Path]:
        """Up to ``limit`` bytes of ``path``, its size and resolved path."""
        with self.open_file(path) as (fd, info, resolved):
            chunks: list[bytes] = []
            left = limit
            while left > 0:
                chunk = os.read(fd, min(left, 1 << 20))
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks), info.st_size, resolved

    def write_bytes(self, path: str, data: bytes) -> tuple[Path, bool]:
        """Replace (or create) ``path`` with ``data``; return its resolved path and whether it was new.

        Raises:
            WorkspaceError: Outside the workspace, or the target is a directory or a special file.
        """
        root, resolved = self.resolve(path)
        if resolved == root:
            raise WorkspaceError(f"{path!r} is a directory, not a file")
        parts = resolved.relative_to(root).parts
        dir_fd = self._walk(root, parts[:-1], create=True)
        name = parts[-1]
        try:
            mode = 0o644
            created = True
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                pass
            else:
                if not stat.S_ISREG(info.st_mode):
                    raise WorkspaceError(f"{path!r} is {_kind(info.st_mode)}, not a regular file: refused")
                mode, created = stat.S_IMODE(info.st_mode), False
            temp = f".{name}.{secrets.token_hex(4)}.tmp"
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
            try:
                with os.fdopen(fd, "wb", closefd=True) as handle:
                    handle.write(data)
                os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=dir_fd)
                raise
            return resolved, created
        finally:
            os.close(dir_fd)

    def delete_file(self, path: str) -> Path:
        """Remove the regular file (or symlink) ``path``."""
        root, resolved = self.resolve(path)
        parts = resolved.relative_to(root).parts
        if not parts:
            raise WorkspaceError(f"{path!r} is a directory, not a file")
        dir_fd = self._walk(root, parts[:-1], create=False)
        try:
            info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode):
                raise WorkspaceError(f"{path!r} is a directory, not a file")
            os.unlink(parts[-1], dir_fd=dir_fd)
        except FileNotFoundError:
            raise WorkspaceError(f"file {self.relative(resolved)!r} does not exist") from None
        finally:
            os.close(dir_fd)
        return resolved
