"""The power-loop command."""

from __future__ import annotations

import io
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from power_loop import __version__
from power_loop.cli import calculate, main, run_demo
from power_loop.testing import PostgresSchema


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
    # The demo ends with the commands that look inside; they work as printed.
    hint = done.stdout.strip().splitlines()[-1]
    assert hint.startswith("Look inside: power-loop sessions --db ")
    show = shlex.split(hint.split("·")[1])
    assert show[:2] == ["power-loop", "show"]
    shown = subprocess.run(
        [sys.executable, "-m", "power_loop", *show[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and "calculate" in shown.stdout, shown.stderr


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


# --- failures: one line on stderr, exit 2 for a usage error and 1 for anything else -----------


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": os.pathsep.join([str(cwd), str(ROOT)])}
    return subprocess.run(
        [sys.executable, "-m", "power_loop", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,  # a hang guard: each run ends in about a second
        env={**base, **env},
    )


def _assert_one_line_error(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    lines = done.stderr.splitlines()
    assert done.returncode == code, (done.returncode, done.stderr)
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("power-loop: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


ROOT = Path(__file__).resolve().parent.parent


def test_demo_with_a_file_where_its_directory_should_be(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file, not a directory\n")
    done = _cli(["demo", "--db", "taken/x.db"], tmp_path)
    _assert_one_line_error(done, 1, str(tmp_path / "taken" / "x.db"), "could not be opened")


def test_demo_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_bytes(b"these are my notes, not an SQLite database\n" * 100)
    done = _cli(["demo", "--db", "notes.db"], tmp_path)
    _assert_one_line_error(done, 1, str(tmp_path / "notes.db"), "is not a usable session store")
    assert (tmp_path / "notes.db").read_bytes().startswith(b"these are my notes")  # left as it was


def test_demo_on_a_directory_path(tmp_path: Path) -> None:
    (tmp_path / "adir").mkdir()
    done = _cli(["demo", "--db", "adir"], tmp_path)
    _assert_one_line_error(done, 1, str(tmp_path / "adir"))


def test_demo_in_a_directory_it_cannot_write(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the directory immutable instead
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(locked)]).returncode != 0:
            pytest.skip("running as root on a file system without chattr +i: cannot make a directory unwritable")
    else:
        locked.chmod(0o555)
    try:
        done = _cli(["demo", "--db", "locked/x.db"], tmp_path)
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        else:
            locked.chmod(0o755)
    _assert_one_line_error(done, 1, str(locked / "x.db"))


def test_demo_with_a_bad_provider_configuration(tmp_path: Path) -> None:
    done = _cli(["demo", "--db", "d.db"], tmp_path, POWER_LOOP_MODEL="m", POWER_LOOP_PROVIDER="carrier-pigeon")
    _assert_one_line_error(done, 1, "POWER_LOOP_PROVIDER", "carrier-pigeon")
    done = _cli(["demo", "--db", "d.db"], tmp_path, POWER_LOOP_MODEL="m")
    _assert_one_line_error(done, 1, "POWER_LOOP_BASE_URL is not set")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["demo", "--dbb", "x.db"], "unrecognized arguments: --dbb"),
        (["worker"], "worker: the following arguments are required: APP"),
        (["worker", "no_colon"], "must look like 'module:attribute'"),
        (["worker", "app:loop", "--concurrency", "0"], "--concurrency: expected a number >= 1, not '0'"),
        (["worker", "app:loop", "--scan-interval", "nan"], "--scan-interval: expected a number > 0"),
        (["worker", "app:loop", "--log-level", "chatty"], "unknown level 'chatty'"),
    ],
    ids=["no-command", "bad-command", "bad-option", "no-app", "bad-app", "concurrency", "scan-interval", "log-level"],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    _assert_one_line_error(_cli(args, tmp_path), 2, fragment)


def test_worker_apps_that_cannot_be_loaded_exit_1_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "not_a_loop.py").write_text("loop = 42\n")
    _assert_one_line_error(_cli(["worker", "missing_mod:loop"], tmp_path), 1, "could not import module 'missing_mod'")
    _assert_one_line_error(_cli(["worker", "not_a_loop:loop"], tmp_path), 1, "is a int, not a StatefulAgentLoop")
    _assert_one_line_error(_cli(["worker", "not_a_loop:nothing"], tmp_path), 1, "has no attribute 'nothing'")


def test_worker_on_a_store_that_is_not_a_database_exits_1_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_bytes(b"not a database\n" * 100)
    (tmp_path / "junk_app.py").write_text(
        "from power_loop import OfflineLLM, StatefulAgentLoop\n"
        "loop = StatefulAgentLoop(llm=OfflineLLM(), db_path='junk.db')\n"
    )
    done = _cli(["worker", "junk_app:loop", "--log-level", "ERROR"], tmp_path)
    _assert_one_line_error(done, 1, "is not a usable session store")


def test_traceback_option_prints_the_whole_story(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_bytes(b"not a database\n" * 100)
    done = _cli(["--traceback", "demo", "--db", "notes.db"], tmp_path)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "StoreCorruptError" in done.stderr


def test_demo_on_postgresql_by_flag_and_by_environment(tmp_path: Path, pg_schema: PostgresSchema) -> None:
    shared_db = f"{pg_schema.url}{'&' if '?' in pg_schema.url else '?'}schema={pg_schema.schema}"
    by_flag = _cli(["demo", "--db", shared_db], tmp_path)
    assert by_flag.returncode == 0, by_flag.stderr
    assert "Sessions are stored in postgresql://" in by_flag.stdout and "(schema " in by_flag.stdout
    by_env = _cli(["demo"], tmp_path, POWER_LOOP_DB_URL=shared_db)
    assert by_env.returncode == 0, by_env.stderr
    assert "Sessions are stored in postgresql://" in by_env.stdout
    assert not (tmp_path / "power_loop_demo.db").exists()


def test_worker_db_option_points_the_app_at_the_store(tmp_path: Path) -> None:
    (tmp_path / "plain_app.py").write_text(
        "from power_loop import OfflineLLM, StatefulAgentLoop\nloop = StatefulAgentLoop(llm=OfflineLLM())\n"
    )
    (tmp_path / "junk.db").write_bytes(b"not a database\n" * 100)
    done = _cli(["worker", "plain_app:loop", "--db", "junk.db", "--log-level", "ERROR"], tmp_path)
    # The app's loop opened the store --db named (and found it unusable): not its default file.
    _assert_one_line_error(done, 1, "is not a usable session store", "junk.db")
    assert not (tmp_path / "power_loop_sessions.db").exists()


def test_unreachable_postgresql_is_one_clear_line(tmp_path: Path) -> None:
    url = f"postgresql://nobody@/nothing?host={tmp_path}&port=1"
    done = _cli(["demo", "--db", url], tmp_path)
    _assert_one_line_error(done, 1, "cannot connect to PostgreSQL at postgresql://nobody@/nothing")
