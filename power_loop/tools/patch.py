"""The ``apply_patch`` tool: apply a patch to files of the workspace.

Two formats are accepted:

* a unified diff (``diff -u`` / ``git diff``): per file a ``--- a/path`` and a ``+++ b/path``
  line, then ``@@ -l,n +l,n @@`` hunks; ``--- /dev/null`` creates a file, ``+++ /dev/null``
  deletes one;
* the envelope many models are trained on: ``*** Begin Patch``, then per file ``*** Add
  File: path`` (``+`` lines), ``*** Delete File: path`` or ``*** Update File: path`` (an
  optional ``*** Move to: path``, then chunks opened by ``@@`` lines of `` ``/``-``/``+``
  lines), and ``*** End Patch``.

Invariants:

* All or nothing: every hunk of every file is checked against the current content before
  anything is written; one hunk that does not apply refuses the whole patch, naming it.
* A hunk's context and removed lines must match exactly; its position may have drifted
  (it is searched for nearest to the line its header gives).
* Paths go through the workspace confinement like every file tool (``a/`` and ``b/``
  prefixes are dropped).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .files import MAX_WRITE_BYTES, current_workspace, is_binary
from .workspace import Workspace, WorkspaceError

__all__ = ["apply_patch", "parse_envelope", "parse_unified_diff"]

_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_NULL = "/dev/null"


@dataclass
class _Hunk:
    old_start: int
    lines: list[str] = field(default_factory=list)  # each starts with ' ', '-' or '+'

    def old(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in (" ", "-")]

    def new(self) -> list[str]:
        return [line[1:] for line in self.lines if line[:1] in (" ", "+")]


@dataclass
class FilePatch:
    """The hunks of one file (``old``/``new`` is None for a created/deleted file)."""

    old: str | None
    new: str | None
    hunks: list[_Hunk] = field(default_factory=list)


def _path(header: str) -> str | None:
    name = header[4:].split("\t")[0].strip()
    if name == _NULL:
        return None
    if name.startswith(("a/", "b/")):
        name = name[2:]
    return name


def parse_unified_diff(text: str) -> list[FilePatch]:
    """The file patches of a unified diff.

    Raises:
        WorkspaceError: The text is not a unified diff (the message says what was expected).
    """
    patches: list[FilePatch] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "):
            patches.append(FilePatch(old=_path(line), new=_path(lines[i + 1])))
            i += 2
            continue
        match = _HUNK.match(line)
        if match:
            if not patches:
                raise WorkspaceError("patch has a hunk before any '--- a/path' / '+++ b/path' header")
            hunk = _Hunk(old_start=int(match[1]))
            old_left = int(match[2]) if match[2] is not None else 1
            new_left = int(match[4]) if match[4] is not None else 1
            i += 1
            while i < len(lines) and (old_left > 0 or new_left > 0):
                body = lines[i]
                if body.startswith("\\"):  # "\ No newline at end of file"
                    i += 1
                    continue
                tag = body[:1] or " "
                if tag not in (" ", "-", "+"):
                    break
                hunk.lines.append(tag + body[1:])
                old_left -= tag in (" ", "-")
                new_left -= tag in (" ", "+")
                i += 1
            patches[-1].hunks.append(hunk)
            continue
        i += 1
    if not patches:
        raise WorkspaceError(
            "no file in the patch: give a unified diff with '--- a/path', '+++ b/path' and '@@ -l,n +l,n @@' hunks"
        )
    return patches


def parse_envelope(text: str) -> list[FilePatch]:
    """The file patches of a ``*** Begin Patch`` envelope (hunk positions unknown: searched).

    Raises:
        WorkspaceError: The envelope is malformed (the message names the line).
    """
    lines = text.strip().splitlines()
    if not lines or lines[0].strip() != "*** Begin Patch" or lines[-1].strip() != "*** End Patch":
        raise WorkspaceError("an envelope patch starts with '*** Begin Patch' and ends with '*** End Patch'")
    patches: list[FilePatch] = []
    for number, line in enumerate(lines[1:-1], 2):
        if line.startswith("*** Add File: "):
            patches.append(FilePatch(old=None, new=line[14:].strip(), hunks=[_Hunk(old_start=1)]))
        elif line.startswith("*** Delete File: "):
            patches.append(FilePatch(old=line[17:].strip(), new=None))
        elif line.startswith("*** Update File: "):
            name = line[17:].strip()
            patches.append(FilePatch(old=name, new=name))
        elif line.startswith("*** Move to: ") and patches and patches[-1].old is not None:
            patches[-1].new = line[13:].strip()
        elif line.startswith("@@") and patches and patches[-1].old is not None:
            patches[-1].hunks.append(_Hunk(old_start=0))
        elif line.strip() == "*** End of File":
            continue
        elif patches and line[:1] in (" ", "-", "+", ""):
            current = patches[-1]
            if current.old is not None and not current.hunks:
                current.hunks.append(_Hunk(old_start=0))
            if not current.hunks or (current.old is None and not line.startswith("+")):
                raise WorkspaceError(f"patch line {number}: lines of an added file start with '+'")
            current.hunks[-1].lines.append(line if line else " ")
        else:
            raise WorkspaceError(f"patch line {number} is not understood: {line[:80]!r}")
    if not patches:
        raise WorkspaceError("the envelope holds no '*** Add/Update/Delete File:' section")
    return patches


def _locate(content: list[str], needle: list[str], hint: int) -> int | None:
    """Index where ``needle`` occurs in ``content``, nearest to ``hint``."""
    if not needle:
        return min(max(hint, 0), len(content))
    best: int | None = None
    for start in range(len(content) - len(needle) + 1):
        if content[start : start + len(needle)] == needle and (best is None or abs(start - hint) < abs(best - hint)):
            best = start
    return best


def _apply_hunks(name: str, content: list[str], hunks: list[_Hunk]) -> list[str]:
    shift = cursor = 0
    for number, hunk in enumerate(hunks, 1):
        old = hunk.old()
        if hunk.old_start > 0:  # a unified diff's hunk: nearest to where its header says
            at = _locate(content, old, hunk.old_start - 1 + shift)
        else:  # an envelope's chunk: the first match after the previous chunk, else anywhere
            after = _locate(content[cursor:], old, 0)
            at = cursor + after if after is not None else _locate(content, old, cursor)
        if at is None:
            raise WorkspaceError(
                f"hunk {number} of {name} does not apply: its context and '-' lines are not in the file "
                "(read the file again and rebuild the patch); nothing was changed"
            )
        content[at : at + len(old)] = hunk.new()
        shift = at - (hunk.old_start - 1) + len(hunk.new()) - len(old)
        cursor = at + len(hunk.new())
    return content


def _read_text(ws: Workspace, name: str) -> str:
    data, size, _ = ws.read_bytes(name, MAX_WRITE_BYTES + 1)
    if size > MAX_WRITE_BYTES or is_binary(data):
        raise WorkspaceError(f"{name} is binary or over {MAX_WRITE_BYTES} bytes; it cannot be patched")
    return data.decode("utf-8", errors="replace")


def apply_patch(patch: str) -> str:
    """Apply a patch to files of the workspace: a unified diff or a ``*** Begin Patch`` envelope.

    Args:
        patch: A unified diff (``--- a/path``, ``+++ b/path``, ``@@`` hunks; ``/dev/null`` creates
            or deletes a file) or an envelope (``*** Begin Patch``, ``*** Add File: p``,
            ``*** Update File: p`` with ``@@`` chunks, ``*** Delete File: p``, ``*** End Patch``).
    """
    ws = current_workspace()
    planned: list[tuple[str, str | None]] = []  # (path, new text or None to delete)
    parsed = parse_envelope(patch) if patch.lstrip().startswith("*** Begin Patch") else parse_unified_diff(patch)
    for fp in parsed:
        target = fp.new if fp.new is not None else fp.old
        if target is None:
            raise WorkspaceError("a file patch has /dev/null on both sides")
        if fp.new is None:
            _read_text(ws, target)  # it must exist and be a text file of the workspace
            planned.append((target, None))
            continue
        if fp.old is None:
            old_text = ""
            ws.resolve(target)
        else:
            old_text = _read_text(ws, fp.old)
        lines = old_text.splitlines()
        trailing = old_text.endswith("\n") or not old_text
        new_lines = _apply_hunks(target, lines, fp.hunks)
        planned.append((target, "\n".join(new_lines) + ("\n" if trailing and new_lines else "")))
        if fp.old is not None and fp.old != target:  # a rename: the old name goes away
            planned.append((fp.old, None))
    done: list[str] = []
    for target, text in planned:
        if text is None:
            ws.delete_file(target)
            done.append(f"deleted {target}")
        else:
            ws.write_bytes(target, text.encode("utf-8"))
            done.append(f"patched {target}")
    return "Applied: " + ", ".join(done) + "."
