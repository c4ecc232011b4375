"""TemporaryPostgres: a real server starts, answers through its URL, never runs as root, and
leaves nothing behind however its owner ends. One extra server and two owner processes are
started here; everything else uses the session's server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from power_loop.errors import ConfigurationError
from power_loop.testing import PostgresSchema, PostgresUnavailable, TemporaryPostgres
from power_loop.testing.postgres import REQUIRED_BINARIES, _find_bin_dir

ROOT = Path(__file__).resolve().parent.parent

OWNER = """
import os, signal, sys
from power_loop.testing import TemporaryPostgres

server = TemporaryPostgres().start()
print(server.socket_dir, server.pid, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
# "exit": the interpreter ends without stop()
"""


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie has exited: its parent (here, often PID 1) reaps it later."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return state.split()[1] != "Z"


def fetch_one(url: str, query: str, params: tuple[object, ...] = ()) -> tuple[object, ...]:
    with psycopg.connect(url) as conn:
        row = conn.execute(query, params).fetchone()
    assert row is not None
    return tuple(row)


def fake_bin_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in REQUIRED_BINARIES:
        (path / name).write_text("#!/bin/sh\nexit 1\n")
        (path / name).chmod(0o755)
    return path


# --------------------------------------------------------------------------- a running server


def test_the_session_server_answers_through_its_url_and_dsn(pg_server: TemporaryPostgres) -> None:
    assert pg_server.url == f"postgresql://power_loop@/power_loop?host={pg_server.socket_dir}&port={pg_server.port}"
    for target in (pg_server.url, pg_server.dsn):
        assert fetch_one(target, "SELECT current_user, current_database()") == ("power_loop", "power_loop")
    settings = (
        "SELECT current_setting('listen_addresses'), current_setting('fsync'), current_setting('max_connections')"
    )
    assert fetch_one(pg_server.url, settings) == ("", "off", "200")
    assert (pg_server.socket_dir / f".s.PGSQL.{pg_server.port}").is_socket()


def test_the_server_never_runs_as_root(pg_server: TemporaryPostgres) -> None:
    with psycopg.connect(pg_server.url) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        backend_uid = os.stat(f"/proc/{row[0]}").st_uid  # while the connection keeps the backend alive
    owners = {backend_uid, os.stat(f"/proc/{pg_server.pid}").st_uid, pg_server.data_dir.stat().st_uid}
    if os.geteuid() == 0:
        assert len(owners) == 1 and 0 not in owners, owners
    else:
        assert owners == {os.getuid()}


def test_pg_schema_is_new_empty_and_scoped_url_resolves_names_there(pg_schema: PostgresSchema) -> None:
    count = "SELECT count(*) FROM pg_tables WHERE schemaname = %s"
    assert fetch_one(pg_schema.url, count, (pg_schema.schema,)) == (0,)
    with psycopg.connect(pg_schema.scoped_url) as conn:
        conn.execute("CREATE TABLE notes (body text)")
        conn.execute("INSERT INTO notes VALUES ('kept apart')")
    assert fetch_one(pg_schema.url, f"SELECT body FROM {pg_schema.schema}.notes") == ("kept apart",)
    assert fetch_one(pg_schema.url, "SELECT to_regclass('public.notes')") == (None,)


def test_fresh_schema_drops_its_schema_and_contents(pg_server: TemporaryPostgres) -> None:
    with pg_server.fresh_schema() as first, pg_server.fresh_schema() as second:
        assert first.schema != second.schema
        with psycopg.connect(first.scoped_url) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (1)")
    exists = "SELECT count(*) FROM pg_namespace WHERE nspname IN (%s, %s)"
    assert fetch_one(pg_server.url, exists, (first.schema, second.schema)) == (0,)
    with pytest.raises(ConfigurationError, match="lowercase"):
        pg_server.create_schema('Robert"; DROP')


def test_a_second_server_runs_beside_the_first_and_stop_leaves_nothing(pg_server: TemporaryPostgres) -> None:
    with TemporaryPostgres(database="other", durable=True, settings={"work_mem": "7MB"}) as second:
        assert second.url != pg_server.url and second.socket_dir != pg_server.socket_dir
        assert fetch_one(second.url, "SELECT current_database(), current_setting('fsync')") == ("other", "on")
        assert fetch_one(second.url, "SHOW work_mem") == ("7MB",)
        with psycopg.connect(second.url) as conn:
            conn.execute("CREATE TABLE only_here (x int)")
        assert fetch_one(pg_server.url, "SELECT to_regclass('only_here')") == (None,)
        pid, base, data_dir = second.pid, second.socket_dir, second.data_dir
        assert process_alive(pid)

    assert not second.running
    assert not data_dir.exists() and not base.exists()
    assert not process_alive(pid)
    second.stop()  # idempotent
    with pytest.raises(PostgresUnavailable, match="not running"):
        _ = second.url
    assert fetch_one(pg_server.url, "SELECT 1") == (1,)  # the first one is untouched


@pytest.mark.parametrize("end", ["exit", "kill"])
def test_an_owner_that_ends_without_stop_leaves_no_server(pg_server: TemporaryPostgres, end: str) -> None:
    """At exit the finalizer stops the server; after SIGKILL the guard process does."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    owner = subprocess.run(
        [sys.executable, "-c", OWNER, end], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert owner.returncode == (0 if end == "exit" else -9), owner.stderr
    base_text, pid_text = owner.stdout.split()
    base, pid = Path(base_text), int(pid_text)
    if end == "kill":
        # Nothing to await: the guard is not our child. The deadline only guards against a hang.
        deadline = time.monotonic() + 60
        while (base.exists() or process_alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert not base.exists()
    assert not process_alive(pid)


# --------------------------------------------------------------------------- finding the binaries


def test_a_missing_bin_dir_is_a_clear_error_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir"
    server = TemporaryPostgres(bin_dir=missing, base_dir=tmp_path / "base")
    (tmp_path / "base").mkdir()
    with pytest.raises(PostgresUnavailable) as caught:
        server.start()
    message = str(caught.value)
    assert str(missing) in message and "initdb" in message and "apt-get install postgresql" in message
    assert isinstance(caught.value, RuntimeError)
    assert list((tmp_path / "base").iterdir()) == []
    assert not server.running
    server.stop()


def test_the_bin_dir_variable_is_used_or_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWER_LOOP_PG_BIN", str(tmp_path))
    with pytest.raises(PostgresUnavailable, match="POWER_LOOP_PG_BIN") as caught:
        TemporaryPostgres().start()
    assert "initdb, pg_ctl, postgres, createdb" in str(caught.value)
    fake = fake_bin_dir(tmp_path / "pg" / "bin")
    assert _find_bin_dir(environ={"POWER_LOOP_PG_BIN": str(fake)}) == fake


def test_without_binaries_the_error_names_every_place_searched(tmp_path: Path) -> None:
    with pytest.raises(PostgresUnavailable) as caught:
        _find_bin_dir(environ={"PATH": str(tmp_path)}, debian_root=tmp_path / "lib")
    message = str(caught.value)
    for searched in ("POWER_LOOP_PG_BIN", f"{tmp_path / 'lib'}/*/bin/initdb", "PATH", "apt-get install postgresql"):
        assert searched in message


def test_the_newest_debian_version_wins_then_initdb_on_path(tmp_path: Path) -> None:
    root = tmp_path / "lib"
    for version in ("9.6", "15", "13"):
        fake_bin_dir(root / version / "bin")
    assert _find_bin_dir(environ={}, debian_root=root) == root / "15" / "bin"

    real = fake_bin_dir(tmp_path / "opt" / "pg" / "bin")
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "initdb").symlink_to(real / "initdb")
    assert _find_bin_dir(environ={"PATH": str(on_path)}, debian_root=tmp_path / "none") == real
