"""The file tools: confinement to the workspace, special and binary files, size bounds, edits."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from power_loop import (
    CORE_TOOL_NAMES,
    DEFAULT_TOOL_HANDLERS,
    EXPLORE_TOOL_NAMES,
    FULL_TOOL_NAMES,
    TOOL_PRESETS,
    ToolRegistry,
    WorkspaceError,
    create_default_tool_registry,
)
from power_loop.tools import files
from power_loop.tools.workspace import Workspace


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace and, next to it, a directory the agent must never reach."""
    workspace, outside = tmp_path / "ws", tmp_path / "outside"
    workspace.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET\n")
    (workspace / "notes.txt").write_text("alpha\nbeta\ngamma\n")
    return workspace, outside


@pytest.fixture
def tools(layout: tuple[Path, Path]) -> ToolRegistry:
    return create_default_tool_registry(workspace_dir=layout[0])


def call(registry: ToolRegistry, name: str, **args: Any) -> Any:
    return registry.invoke(name, args)


def test_names_and_presets() -> None:
    assert tuple(sorted(CORE_TOOL_NAMES)) == CORE_TOOL_NAMES
    assert EXPLORE_TOOL_NAMES == ("bash", "glob", "grep", "load_skill", "read_file", "request_user_input")
    assert set(CORE_TOOL_NAMES) <= set(FULL_TOOL_NAMES) and len(FULL_TOOL_NAMES) == 19
    assert TOOL_PRESETS == {"core": CORE_TOOL_NAMES, "explore": EXPLORE_TOOL_NAMES, "full": FULL_TOOL_NAMES}
    shipped = set(DEFAULT_TOOL_HANDLERS)
    assert create_default_tool_registry(preset="core").names() == [n for n in CORE_TOOL_NAMES if n in shipped]
    assert "write_file" not in create_default_tool_registry(preset="explore")
    everything = create_default_tool_registry()
    assert set(everything.names()) == shipped
    assert "current_time" in everything and "request_user_input" in everything
    assert create_default_tool_registry(include=["grep", "glob"], exclude=["glob"]).names() == ["grep"]
    assert shipped == set(FULL_TOOL_NAMES)
    assert create_default_tool_registry(include=["todo", "check_background"]).names() == ["todo", "check_background"]
    with pytest.raises(ValueError, match="unknown default tool 'todos'"):
        create_default_tool_registry(include=["todos"])
    with pytest.raises(ValueError, match="unknown preset"):
        create_default_tool_registry(preset="everything")


def test_read_write_edit(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    workspace = layout[0]
    assert call(tools, "read_file", path="notes.txt") == "alpha\nbeta\ngamma\n"
    assert call(tools, "read_file", path="notes.txt", offset=2, limit=1).startswith("beta\n[showing lines 2-2 of 3")
    assert call(tools, "write_file", path="deep/new/file.txt", content="one\ntwo\n").startswith("Created deep/new")
    assert (workspace / "deep/new/file.txt").read_text() == "one\ntwo\n"
    assert call(tools, "edit_file", path="deep/new/file.txt", old_string="two", new_string="2").startswith("Edited")
    assert (workspace / "deep/new/file.txt").read_text() == "one\n2\n"
    with pytest.raises(WorkspaceError, match="not found"):
        call(tools, "edit_file", path="notes.txt", old_string="delta", new_string="x")
    (workspace / "twice.txt").write_text("x x\n")
    with pytest.raises(WorkspaceError, match="occurs 2 times"):
        call(tools, "edit_file", path="twice.txt", old_string="x", new_string="y")
    call(tools, "edit_file", path="twice.txt", old_string="x", new_string="y", replace_all=True)
    assert (workspace / "twice.txt").read_text() == "y y\n"
    with pytest.raises(WorkspaceError, match="does not exist"):
        call(tools, "read_file", path="missing.txt")
    with pytest.raises(WorkspaceError, match="directory"):
        call(tools, "read_file", path="deep")


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../outside/secret.txt", "leaves the workspace"),
        ("deep/../../outside/secret.txt", "leaves the workspace"),
        ("..", "leaves the workspace"),
        ("OUTSIDE_ABS", "outside the workspace"),
        ("/etc/passwd", "outside the workspace"),
        ("", "empty"),
        ("a\0b", "NUL"),
    ],
)
def test_escapes_refused(tools: ToolRegistry, layout: tuple[Path, Path], path: str, why: str) -> None:
    if path == "OUTSIDE_ABS":
        path = str(layout[1] / "secret.txt")
    for name, args in (("read_file", {}), ("write_file", {"content": "pwned"})):
        with pytest.raises(WorkspaceError, match=why):
            call(tools, name, path=path, **args)
    assert (layout[1] / "secret.txt").read_text() == "TOP SECRET\n"


def test_absolute_path_inside_the_workspace_is_fine(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    assert call(tools, "read_file", path=str(layout[0] / "notes.txt")).startswith("alpha")


def test_symlinks(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    workspace, outside = layout
    (workspace / "to_secret").symlink_to(outside / "secret.txt")
    (workspace / "to_outside_dir").symlink_to(outside)
    (workspace / "inner_link").symlink_to("notes.txt")  # stays inside: allowed
    for path in ("to_secret", "to_outside_dir/secret.txt"):
        with pytest.raises(WorkspaceError, match="symlink"):
            call(tools, "read_file", path=path)
        with pytest.raises(WorkspaceError, match="symlink"):
            call(tools, "write_file", path=path, content="pwned")
    assert call(tools, "read_file", path="inner_link").startswith("alpha")
    assert (outside / "secret.txt").read_text() == "TOP SECRET\n"
    # Listing and searching do not follow links out of the workspace.
    assert "secret" not in call(tools, "glob", pattern="**/*")
    assert call(tools, "grep", pattern="SECRET").startswith("No matches")


def _swap_after_check(monkeypatch: pytest.MonkeyPatch, swap: Callable[[], None]) -> None:
    """Run ``swap`` right after the path check, before the file is opened: the race window."""
    check = Workspace.resolve

    def checked_then_swapped(self: Workspace, path: str) -> tuple[Path, Path]:
        result = check(self, path)
        swap()
        return result

    monkeypatch.setattr(Workspace, "resolve", checked_then_swapped)


def test_symlink_swapped_in_after_the_check(
    tools: ToolRegistry, layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace, outside = layout
    (workspace / "dir").mkdir()
    (workspace / "dir" / "secret.txt").write_text("harmless\n")

    def swap_dir() -> None:  # the directory on the path becomes a link out
        shutil.rmtree(workspace / "dir")
        (workspace / "dir").symlink_to(outside)

    _swap_after_check(monkeypatch, swap_dir)
    with pytest.raises(WorkspaceError, match="symlink"):
        call(tools, "read_file", path="dir/secret.txt")
    monkeypatch.undo()

    def swap_file() -> None:  # the file itself becomes a link out
        (workspace / "notes.txt").unlink()
        (workspace / "notes.txt").symlink_to(outside / "secret.txt")

    _swap_after_check(monkeypatch, swap_file)
    with pytest.raises(WorkspaceError, match="symlink"):
        call(tools, "read_file", path="notes.txt")
    monkeypatch.undo()

    (workspace / "target.txt").write_text("mine\n")

    def swap_target() -> None:
        (workspace / "target.txt").unlink()
        (workspace / "target.txt").symlink_to(outside / "secret.txt")

    _swap_after_check(monkeypatch, swap_target)
    with pytest.raises(WorkspaceError, match="symlink"):  # seen at the last step, never followed
        call(tools, "write_file", path="target.txt", content="written\n")
    monkeypatch.undo()
    assert (outside / "secret.txt").read_text() == "TOP SECRET\n"


def test_special_files_refused(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    workspace = layout[0]
    os.mkfifo(workspace / "pipe")
    with pytest.raises(WorkspaceError, match="fifo"):  # refused at once, never blocks on the pipe
        call(tools, "read_file", path="pipe")
    with pytest.raises(WorkspaceError, match="fifo"):
        call(tools, "write_file", path="pipe", content="x")
    if os.path.exists("/dev/null"):
        (workspace / "null").symlink_to("/dev/null")
        with pytest.raises(WorkspaceError):
            call(tools, "read_file", path="null")


def test_binary_file_reported_not_dumped(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    (layout[0] / "image.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)) * 4)
    result = call(tools, "read_file", path="image.bin")
    assert result == "image.bin is a binary file (1034 bytes); its content is not shown."
    with pytest.raises(WorkspaceError, match="binary"):
        call(tools, "edit_file", path="image.bin", old_string="PNG", new_string="JPG")
    assert call(tools, "grep", pattern="PNG").startswith("No matches")


def test_size_bounds(tools: ToolRegistry, layout: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "MAX_READ_BYTES", 1000)
    monkeypatch.setattr(files, "MAX_WRITE_BYTES", 2000)
    (layout[0] / "big.txt").write_text("x" * 5000)
    text = call(tools, "read_file", path="big.txt")
    assert text.startswith("x" * 1000) and "[file is 5000 bytes; only the first 1000 bytes can be read]" in text
    assert len(text) < 1200
    with pytest.raises(WorkspaceError, match="at most 2000"):
        call(tools, "write_file", path="huge.txt", content="y" * 2001)
    assert not (layout[0] / "huge.txt").exists()


def test_glob_and_grep(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    workspace = layout[0]
    (workspace / "src/pkg").mkdir(parents=True)
    (workspace / "src/pkg/mod.py").write_text("def alpha():\n    return 1\n")
    (workspace / "src/top.py").write_text("ALPHA = 2\n")
    (workspace / ".git").mkdir()
    (workspace / ".git/config").write_text("alpha\n")
    assert call(tools, "glob", pattern="**/*.py") == "src/pkg/mod.py\nsrc/top.py"
    assert call(tools, "glob", pattern="*.py", path="src") == "src/top.py"
    assert call(tools, "glob", pattern="*.rs").startswith("No files")
    assert call(tools, "grep", pattern="alpha") == "notes.txt:1: alpha\nsrc/pkg/mod.py:1: def alpha():"
    assert call(tools, "grep", pattern="alpha", ignore_case=True, glob="*.py").count("\n") == 1
    assert call(tools, "grep", pattern="beta", path="notes.txt") == "notes.txt:2: beta"
    with pytest.raises(WorkspaceError, match="invalid regular expression"):
        call(tools, "grep", pattern="(")


def test_apply_patch(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    workspace = layout[0]
    (workspace / "gone.txt").write_text("bye\n")
    patch = """\
--- a/notes.txt
+++ b/notes.txt
@@ -1,3 +1,3 @@
 alpha
-beta
+BETA
 gamma
--- /dev/null
+++ b/new/created.txt
@@ -0,0 +1,2 @@
+hello
+world
--- a/gone.txt
+++ /dev/null
@@ -1 +0,0 @@
-bye
"""
    assert call(tools, "apply_patch", patch=patch).startswith("Applied")
    assert (workspace / "notes.txt").read_text() == "alpha\nBETA\ngamma\n"
    assert (workspace / "new/created.txt").read_text() == "hello\nworld\n"
    assert not (workspace / "gone.txt").exists()
    stale = "--- a/notes.txt\n+++ b/notes.txt\n@@ -1,2 +1,2 @@\n alpha\n-beta\n+again\n"
    with pytest.raises(WorkspaceError, match="hunk 1 of notes.txt does not apply"):
        call(tools, "apply_patch", patch=stale)
    escape = "--- a/../outside/secret.txt\n+++ b/../outside/secret.txt\n@@ -1 +1 @@\n-TOP SECRET\n+pwned\n"
    with pytest.raises(WorkspaceError, match="leaves the workspace"):
        call(tools, "apply_patch", patch=escape)
    assert (layout[1] / "secret.txt").read_text() == "TOP SECRET\n"
    with pytest.raises(WorkspaceError, match="unified diff"):
        call(tools, "apply_patch", patch="just words")


def test_patch_is_all_or_nothing(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    workspace = layout[0]
    patch = (
        "--- a/notes.txt\n+++ b/notes.txt\n@@ -1 +1 @@\n-alpha\n+ALPHA\n"
        "--- a/other.txt\n+++ b/other.txt\n@@ -1 +1 @@\n-nope\n+x\n"
    )
    with pytest.raises(WorkspaceError):
        call(tools, "apply_patch", patch=patch)
    assert (workspace / "notes.txt").read_text() == "alpha\nbeta\ngamma\n"


def test_home_paths(tmp_path: Path) -> None:
    workspace, home = tmp_path / "ws", tmp_path / "home"
    workspace.mkdir()
    home.mkdir()
    registry = create_default_tool_registry(workspace_dir=workspace, home_dir=home)
    call(registry, "write_file", path="~/profile.txt", content="me")
    assert (home / "profile.txt").read_text() == "me"
    assert call(registry, "read_file", path=str(home / "profile.txt")) == "me"


def test_apply_patch_envelope(tools: ToolRegistry, layout: tuple[Path, Path]) -> None:
    workspace = layout[0]
    (workspace / "old_name.txt").write_text("one\ntwo\nthree\ntwo\n")
    (workspace / "gone.txt").write_text("bye\n")
    patch = """\
*** Begin Patch
*** Add File: made/new.txt
+first
+second
*** Update File: notes.txt
@@
 alpha
-beta
+BETA
*** Update File: old_name.txt
*** Move to: new_name.txt
@@
 three
-two
+2
*** Delete File: gone.txt
*** End Patch
"""
    assert call(tools, "apply_patch", patch=patch).startswith("Applied")
    assert (workspace / "made/new.txt").read_text() == "first\nsecond\n"
    assert (workspace / "notes.txt").read_text() == "alpha\nBETA\ngamma\n"
    assert (workspace / "new_name.txt").read_text() == "one\ntwo\nthree\n2\n"  # the later "two"
    assert not (workspace / "old_name.txt").exists() and not (workspace / "gone.txt").exists()
    with pytest.raises(WorkspaceError, match="End Patch"):
        call(tools, "apply_patch", patch="*** Begin Patch\n*** Add File: x\n+y\n")
    with pytest.raises(WorkspaceError, match="does not apply"):
        call(tools, "apply_patch", patch="*** Begin Patch\n*** Update File: notes.txt\n@@\n-nope\n+x\n*** End Patch")
    with pytest.raises(WorkspaceError, match="leaves the workspace"):
        call(tools, "apply_patch", patch="*** Begin Patch\n*** Add File: ../evil.txt\n+x\n*** End Patch")
