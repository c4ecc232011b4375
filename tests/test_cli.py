"""The power-loop command."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from power_loop import __version__
from power_loop.cli import calculate, main, run_demo


async def test_demo_runs_offline_and_stores_the_session(tmp_path: Path) -> None:
    out = io.StringIO()
    db = tmp_path / "demo.db"
    assert await run_demo(str(db), out=out) == 0
    text = out.getvalue()
    assert "built-in offline model" in text
    assert "calculate returned: 395." in text
    assert "Your favorite color is teal." in text
    assert str(db.resolve()) in text
    assert db.exists()


def test_demo_command_in_a_fresh_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "power_loop.cli", "demo", "--db", str(tmp_path / "d.db")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    assert "Transcript as stored" in done.stdout


def test_version(capsys: object) -> None:
    assert main(["version"]) == 0
    assert __version__ in capsys.readouterr().out  # type: ignore[attr-defined]


def test_calculator_is_safe() -> None:
    assert calculate("17 * 23 + 4") == "395"
    assert calculate("7 / 2") == "3.5"
    for bad in ("__import__('os')", "open('x')", "2 if 1 else 3"):
        try:
            calculate(bad)
        except (ValueError, SyntaxError):
            continue
        raise AssertionError(f"{bad!r} was evaluated")
