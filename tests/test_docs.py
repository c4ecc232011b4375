"""Every ```python block in README.md and docs/*.md runs as shown, offline.

A block whose first line is ``# fragment: <what it assumes>`` is an excerpt (a signature, a
shape, a few lines that assume a ``loop`` from elsewhere): it is only parsed. Every other
block is written to a file in an empty temporary directory and run in a fresh interpreter
with the provider variables cleared and proxies pointing at a closed port, so a block that
would reach a real provider fails instead of going online. A block that defines ``test_``
functions is run by pytest, with the ``power_loop.testing`` plugin, as a user would.
The blocks run four at a time so the whole file takes seconds, not minutes.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FRAGMENT = "# fragment:"
_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_PROVIDER_PREFIXES = ("POWER_LOOP_", "OPENAI_", "ANTHROPIC_", "OPENAI_COMPAT_")
_KEPT = ("POWER_LOOP_PG_BIN",)  # where PostgreSQL's binaries are: the machine, not a provider
# Generous: a hang guard, not a speed bound. Every block stops by itself in about a second.
_HANG_GUARD_S = 120.0


@dataclass(frozen=True)
class Block:
    """One fenced Python block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    source: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def is_fragment(self) -> bool:
        return self.source.lstrip().startswith(FRAGMENT)

    @property
    def is_pytest_module(self) -> bool:
        return re.search(r"^(async )?def test_", self.source, re.MULTILINE) is not None


def python_blocks(page: Path) -> list[Block]:
    """The ```python blocks of ``page`` (the info string's first word is the language)."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").split("\n")
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, info = opening["fence"], opening["info"].strip()
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end])
            end += 1
        words = info.split()
        if words and words[0].lower() in ("python", "py", "python3"):
            blocks.append(Block(page, index + 1, "\n".join(body) + "\n"))
        index = end + 1
    return blocks


BLOCKS = [block for page in PAGES for block in python_blocks(page)]
RUNNABLE = [block for block in BLOCKS if not block.is_fragment]
FRAGMENTS = [block for block in BLOCKS if block.is_fragment]


def _offline_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PROVIDER_PREFIXES) or k in _KEPT}
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        env[name] = "http://127.0.0.1:9"  # the discard port: nothing listens, a request fails at once
    env.pop("no_proxy", None)
    env["NO_PROXY"] = "127.0.0.1,localhost"  # the scripted servers of the testing docs stay reachable
    env["HOME"] = home
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _run(block: Block) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="power_loop_doc_") as workdir:
        script = Path(workdir) / "doc_block_test.py"
        script.write_text(block.source, encoding="utf-8")
        if block.is_pytest_module:
            argv = [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-p",
                "power_loop.testing.pytest_plugin",
                "-o",
                "asyncio_default_fixture_loop_scope=function",  # newer pytest-asyncio warns when unset
                "-W",
                "error",
                script.name,
            ]
        else:
            argv = [sys.executable, script.name]
        return subprocess.run(
            argv, cwd=workdir, env=_offline_env(workdir), capture_output=True, text=True, timeout=_HANG_GUARD_S
        )


@pytest.fixture(scope="module")
def runs() -> dict[str, Future[subprocess.CompletedProcess[str]]]:
    """Start every runnable block at once (four interpreters at a time); tests wait for theirs."""
    pool = ThreadPoolExecutor(max_workers=4)
    futures = {block.id: pool.submit(_run, block) for block in RUNNABLE}
    yield futures  # type: ignore[misc]
    pool.shutdown(wait=True)


@pytest.mark.parametrize("block", RUNNABLE, ids=[block.id for block in RUNNABLE])
def test_python_block_runs_offline(block: Block, runs: dict[str, Future[subprocess.CompletedProcess[str]]]) -> None:
    done = runs[block.id].result()
    assert done.returncode == 0, (
        f"{block.id} failed:\n{block.source}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    assert "Traceback" not in done.stderr, f"{block.id} printed a traceback:\n{done.stderr}"


@pytest.mark.parametrize("block", FRAGMENTS, ids=[block.id for block in FRAGMENTS])
def test_fragment_parses_and_says_what_it_assumes(block: Block) -> None:
    first = block.source.lstrip().split("\n", 1)[0]
    assert len(first) > len(FRAGMENT) + 3, f"{block.id}: say what the fragment assumes after '{FRAGMENT}'"
    compile(block.source, block.id, "exec", flags=ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_the_pages_have_python_blocks_and_fragments_stay_rare() -> None:
    assert len(RUNNABLE) >= 30, [block.id for block in RUNNABLE]
    assert len(FRAGMENTS) * 3 <= len(BLOCKS), [block.id for block in FRAGMENTS]
