"""The file tools: ``read_file``, ``write_file``, ``edit_file``, ``glob`` and ``grep``.

Each handler reads the runtime environment bound to the call
(:func:`~power_loop.tools.runtime_env.require_runtime_env`) and goes through
:class:`~power_loop.tools.workspace.Workspace`, so every path is confined to that tenant's
workspace. They are sync functions on purpose: the kernel runs sync handlers in its tool
threads, so their file I/O never runs on the event loop.

Sizes are bounded (what is read, written, listed and matched); a binary file is reported
by its size, never dumped into the conversation. Refusals raise
:class:`~power_loop.tools.workspace.WorkspaceError`, which the model reads as ``Error: ...``.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator

from .runtime_env import require_runtime_env
from .workspace import Workspace, WorkspaceError

__all__ = [
    "MAX_READ_BYTES",
    "MAX_WRITE_BYTES",
    "edit_file",
    "glob_files",
    "grep_files",
    "read_file",
    "write_file",
]

MAX_READ_BYTES = 512_000
MAX_WRITE_BYTES = 2_000_000
MAX_GREP_FILE_BYTES = 2_000_000
MAX_LIST = 500
_SNIFF = 8192
_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "node_modules"})


def current_workspace() -> Workspace:
    """The workspace of the environment bound to this call (fails closed when none is)."""
    return Workspace.from_env(require_runtime_env())


def is_binary(data: bytes) -> bool:
    """True when ``data`` looks like a binary file: a NUL byte, or not UTF-8."""
    head = data[:_SNIFF]
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut at the end of the sniffed part is still text.
        return exc.start < len(head) - 3
    return False


def decode_text(data: bytes) -> str:
    """``data`` as text (a character cut at the end is dropped)."""
    return data.decode("utf-8", errors="replace")


def read_file(path: str, offset: int = 1, limit: int = 2000) -> str:
    """Read a text file of the workspace.

    Args:
        path: Path relative to the workspace.
        offset: First line to return (1-based).
        limit: Most lines to return.
    """
    ws = current_workspace()
    data, size, resolved = ws.read_bytes(path, MAX_READ_BYTES)
    shown = ws.relative(resolved)
    if is_binary(data):
        return f"{shown} is a binary file ({size} bytes); its content is not shown."
    lines = decode_text(data).splitlines(keepends=True)
    start = max(1, int(offset))
    count = max(1, int(limit))
    chunk = lines[start - 1 : start - 1 + count]
    text = "".join(chunk)
    notes: list[str] = []
    last = start - 1 + len(chunk)
    if last < len(lines):
        notes.append(f"[showing lines {start}-{last} of {len(lines)}; read on with offset={last + 1}]")
    if size > len(data):
        notes.append(f"[file is {size} bytes; only the first {len(data)} bytes can be read]")
    if not lines:
        return f"{shown} is empty."
    return text + ("\n" if notes and not text.endswith("\n") else "") + "\n".join(notes)


def write_file(path: str, content: str) -> str:
    """Create or overwrite a file of the workspace with ``content`` (parent directories are created).

    Args:
        path: Path relative to the workspace.
        content: The whole new content.
    """
    data = content.encode("utf-8")
    if len(data) > MAX_WRITE_BYTES:
        raise WorkspaceError(f"content is {len(data)} bytes; at most {MAX_WRITE_BYTES} can be written at once")
    ws = current_workspace()
    resolved, created = ws.write_bytes(path, data)
    return f"{'Created' if created else 'Wrote'} {ws.relative(resolved)} ({len(data)} bytes)."


def edit_file(path: str, old_string: str, new_string: str, replace_all: bool = False) -> str:
    """Replace an exact piece of text in a file of the workspace.

    Args:
        path: Path relative to the workspace.
        old_string: The exact text to replace (include enough context to make it unique).
        new_string: The text to put in its place.
        replace_all: Replace every occurrence instead of exactly one.
    """
    if old_string == "":
        raise WorkspaceError("old_string is empty: give the exact text to replace (use write_file for a new file)")
    if old_string == new_string:
        raise WorkspaceError("old_string and new_string are the same: nothing to change")
    ws = current_workspace()
    data, size, resolved = ws.read_bytes(path, MAX_WRITE_BYTES + 1)
    shown = ws.relative(resolved)
    if size > MAX_WRITE_BYTES:
        raise WorkspaceError(f"{shown} is {size} bytes; files over {MAX_WRITE_BYTES} bytes cannot be edited")
    if is_binary(data):
        raise WorkspaceError(f"{shown} is a binary file; it cannot be edited as text")
    text = data.decode("utf-8", errors="replace")
    found = text.count(old_string)
    if found == 0:
        raise WorkspaceError(
            f"old_string was not found in {shown}: read the file and copy the text exactly (spaces and line breaks too)"
        )
    if found > 1 and not replace_all:
        raise WorkspaceError(
            f"old_string occurs {found} times in {shown}: add surrounding lines to make it unique, "
            "or pass replace_all=true"
        )
    updated = text.replace(old_string, new_string) if replace_all else text.replace(old_string, new_string, 1)
    ws.write_bytes(path, updated.encode("utf-8"))
    return f"Edited {shown}: {found if replace_all else 1} replacement(s)."


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``**`` any number of directories, ``*`` within a name, ``?`` one character, ``[...]`` a set."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


def _walk_files(ws: Workspace, path: str) -> Iterator[tuple[str, str, int]]:
    """``(relative path, name, dir fd)`` of every regular file under ``path``, links not followed."""
    with ws.open_dir(path) as (fd, resolved):
        base = ws.relative(resolved)
        prefix = "" if base == "." else base + "/"
        for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=fd, follow_symlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            rel_dir = "" if dirpath == "." else dirpath[2:] + "/"
            for name in sorted(filenames):
                try:
                    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(info.st_mode):
                    yield prefix + rel_dir + name, name, dir_fd


def glob_files(pattern: str, path: str = ".") -> str:
    """List the workspace's files matching a glob pattern, e.g. ``**/*.py`` or ``src/*.md``.

    Args:
        pattern: Glob pattern relative to ``path`` (``**`` spans directories).
        path: Directory to search, relative to the workspace.
    """
    ws = current_workspace()
    matcher = _glob_regex(pattern.lstrip("/"))
    hits: list[str] = []
    with ws.open_dir(path) as (_, resolved):
        base = ws.relative(resolved)
    strip = 0 if base == "." else len(base) + 1
    for rel, _name, _fd in _walk_files(ws, path):
        if matcher.match(rel[strip:]):
            hits.append(rel)
            if len(hits) > MAX_LIST:
                break
    if not hits:
        return f"No files match {pattern!r}."
    more = f"\n[more than {MAX_LIST} matches; narrow the pattern]" if len(hits) > MAX_LIST else ""
    return "\n".join(sorted(hits)[:MAX_LIST]) + more


def _read_at(dir_fd: int, name: str) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_GREP_FILE_BYTES:
            return None
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_GREP_FILE_BYTES)
    finally:
        os.close(fd)


def grep_files(
    pattern: str, path: str = ".", glob: str | None = None, ignore_case: bool = False, max_results: int = 200
) -> str:
    """Search the workspace's text files for a regular expression; lines come back as ``file:line: text``.

    Args:
        pattern: Python regular expression.
        path: Directory (or file) to search, relative to the workspace.
        glob: Only files whose path matches this glob, e.g. ``*.py``.
        ignore_case: Match case-insensitively.
        max_results: Most matching lines to return.
    """
    try:
        regex = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as exc:
        raise WorkspaceError(f"invalid regular expression {pattern!r}: {exc}") from None
    ws = current_workspace()
    limit = max(1, min(int(max_results), MAX_LIST))
    _, resolved = ws.resolve(path)
    if resolved.is_file():
        data, _size, _ = ws.read_bytes(path, MAX_GREP_FILE_BYTES)
        files: Iterator[tuple[str, bytes | None]] = iter([(ws.relative(resolved), data)])
    else:
        matcher = _glob_regex(glob.lstrip("/")) if glob else None
        files = (
            (rel, _read_at(fd, name))
            for rel, name, fd in _walk_files(ws, path)
            if matcher is None or matcher.match(rel) or matcher.match(name)
        )
    hits: list[str] = []
    for rel, content in files:
        if content is None or is_binary(content):
            continue
        for number, line in enumerate(decode_text(content).splitlines(), 1):
            if regex.search(line):
                text = line if len(line) <= 300 else line[:300] + "..."
                hits.append(f"{rel}:{number}: {text}")
                if len(hits) > limit:
                    break
        if len(hits) > limit:
            break
    if not hits:
        return f"No matches for {pattern!r}."
    more = f"\n[more than {limit} matches; narrow the search]" if len(hits) > limit else ""
    return "\n".join(hits[:limit]) + more
