"""``TemporaryPostgres``: a throwaway PostgreSQL server for tests.

::

    with TemporaryPostgres() as server:
        with server.fresh_schema() as scope:
            ...  # psycopg.connect(scope.scoped_url): tables land in a new, empty schema

Invariants and guarantees:

* The server is private to its owner: it listens on a Unix socket in its own temporary
  directory (``listen_addresses = ''``, no TCP) and trusts every connection to that socket.
  Never point it at data you care about: by default it runs with ``fsync``,
  ``synchronous_commit`` and ``full_page_writes`` off (``durable=True`` keeps them on).
* It never runs as root. Under uid 0, ``initdb``, ``pg_ctl`` and the server run as the
  ``postgres`` system user (``nobody`` when there is none), and the temporary directory is
  handed to that user; otherwise they run as the current user.
* What ``start()`` creates, ``stop()`` removes: the server is stopped (``pg_ctl stop -m
  immediate``) and its directory deleted. ``stop()`` is idempotent; it also runs when the
  object is garbage-collected and at interpreter exit. A guard process, started with the
  server, does the same when its owner dies without exiting cleanly (SIGKILL, ``os._exit``),
  so a crashed test run leaves no server behind. A forked child never stops its parent's
  server.
* Importing this module imports no database driver. Starting a server needs only the server
  binaries (``initdb``, ``pg_ctl``, ``postgres``, ``createdb``): users of any driver can use
  it. The schema helpers use psycopg (``pip install "power-loop[postgres]"``), imported when
  first called.
* Unix only (Unix sockets, uids).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlencode

from ..errors import ConfigurationError, PowerLoopError

__all__ = ["PostgresSchema", "PostgresUnavailable", "TemporaryPostgres"]

BIN_DIR_ENV = "POWER_LOOP_PG_BIN"
DEBIAN_ROOT = "/usr/lib/postgresql"
REQUIRED_BINARIES = ("initdb", "pg_ctl", "postgres", "createdb")
INSTALL_HINT = (
    "Install the PostgreSQL server (Debian/Ubuntu: `apt-get install postgresql`; macOS: "
    f"`brew install postgresql`), or set {BIN_DIR_ENV} to the directory holding initdb and pg_ctl."
)
# sun_path holds 108 bytes with the terminating NUL; the server names its socket ".s.PGSQL.<port>".
_MAX_SOCKET_PATH = 107
_COMMAND_TIMEOUT_S = 120.0
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# The guard process: it blocks until its stdin reaches EOF, which happens when its owner dies
# in any way, then stops the server and removes its directory (stop() does both itself and
# ends the guard). Standard library only, run with ``python -I``. It runs as the owner (the
# server's user may not reach this interpreter) and drops to the server's user for pg_ctl.
_GUARD = """\
import os, shutil, subprocess, sys
sys.stdin.buffer.read()
pg_ctl, data_dir, base_dir, uid, gid = sys.argv[1:6]
drop = {} if uid == "-" else {"user": int(uid), "group": int(gid), "extra_groups": []}
if os.path.exists(os.path.join(data_dir, "postmaster.pid")):
    argv = [pg_ctl, "stop", "-D", data_dir, "-m", "immediate", "-w"]
    subprocess.run(argv, cwd=base_dir, capture_output=True, **drop)
shutil.rmtree(base_dir, ignore_errors=True)
"""


class PostgresUnavailable(PowerLoopError, RuntimeError):
    """A temporary PostgreSQL server cannot be found, started or used.

    The message says what was tried and what to do (install the server, set
    ``POWER_LOOP_PG_BIN``, install psycopg, start the server first).
    """


@dataclass(frozen=True)
class PostgresSchema:
    """A schema of a temporary server, and how to reach it.

    Attributes:
        url: The server's libpq URL (connections start in the default ``public`` schema).
        schema: The schema's name: lowercase letters, digits and underscores.
    """

    url: str
    schema: str

    @property
    def scoped_url(self) -> str:
        """``url`` with ``search_path`` set to the schema: unqualified names resolve there."""
        return f"{self.url}&{urlencode({'options': f'-c search_path={self.schema}'}, quote_via=quote)}"


@dataclass(frozen=True)
class _OsUser:
    name: str
    uid: int
    gid: int


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/9.6/bin`` -> ``(9, 6)``, so 15 sorts above 9.6."""
    return tuple(int(part) for part in re.findall(r"\d+", bin_dir.parent.name)) or (0,)


def _checked_bin_dir(bin_dir: Path, origin: str) -> Path:
    missing = [name for name in REQUIRED_BINARIES if not (bin_dir / name).is_file()]
    if missing:
        raise PostgresUnavailable(f"{origin} ({bin_dir}) has no {', '.join(missing)}. {INSTALL_HINT}")
    return bin_dir


def _find_bin_dir(
    bin_dir: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] = os.environ,
    debian_root: str | os.PathLike[str] = DEBIAN_ROOT,
) -> Path:
    """The directory of the server binaries: ``bin_dir``, ``$POWER_LOOP_PG_BIN``, the newest
    Debian installation, then ``initdb`` on ``PATH``, in this order. A directory that is named
    explicitly is used or refused, never skipped."""
    if bin_dir is not None:
        return _checked_bin_dir(Path(bin_dir), "bin_dir")
    if environ.get(BIN_DIR_ENV):
        return _checked_bin_dir(Path(environ[BIN_DIR_ENV]), BIN_DIR_ENV)
    installed = sorted((p.parent for p in Path(debian_root).glob("*/bin/initdb")), key=_version_key)
    if installed:
        return _checked_bin_dir(installed[-1], f"the newest of {debian_root}/*/bin")
    on_path = shutil.which("initdb", path=environ.get("PATH", ""))
    if on_path is not None:
        return _checked_bin_dir(Path(on_path).resolve().parent, "the directory of initdb on PATH")
    raise PostgresUnavailable(
        f"No PostgreSQL server binaries found: {BIN_DIR_ENV} is not set, there is no "
        f"{debian_root}/*/bin/initdb and no initdb on PATH. {INSTALL_HINT}"
    )


def _server_user() -> _OsUser | None:
    """The unprivileged user to run the server as, or None to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    import pwd

    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _OsUser(name, entry.pw_uid, entry.pw_gid)
    raise PostgresUnavailable("PostgreSQL refuses to run as root, and there is no `postgres` or `nobody` user.")


def _free_port() -> int:
    """A port number no TCP listener holds now; it names the socket file (the server has no TCP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _conf_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        value = "on" if value else "off"
    return "'" + str(value).replace("'", "''") + "'"


class _Cluster:
    """The files and processes of one started server; ``close()`` removes them (once, by its owner)."""

    def __init__(self, bin_dir: Path, base_dir: Path, os_user: _OsUser | None) -> None:
        self.bin_dir = bin_dir
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.log_file = base_dir / "server.log"
        self.os_user = os_user
        self.owner_pid = os.getpid()
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self.env["LC_ALL"] = "C"
        self.guard: subprocess.Popen[bytes] | None = None
        # Under root, children drop to the server's user (and to no supplementary groups).
        self.uid = None if os_user is None else os_user.uid
        self.gid = None if os_user is None else os_user.gid
        self.extra_groups: list[int] | None = None if os_user is None else []

    def start_guard(self) -> None:
        argv = [
            sys.executable,
            "-I",
            "-c",
            _GUARD,
            str(self.bin_dir / "pg_ctl"),
            str(self.data_dir),
            str(self.base_dir),
            "-" if self.uid is None else str(self.uid),
            "-" if self.gid is None else str(self.gid),
        ]
        try:
            self.guard = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,  # a Ctrl-C meant for the test run must not fire it early
            )
        except OSError as exc:
            raise PostgresUnavailable(f"The guard process could not start: {exc}") from exc

    def run(self, program: str, *args: str) -> str:
        """Run a server binary as the server's user; its output, or PostgresUnavailable."""
        argv = [str(self.bin_dir / program), *args]
        try:
            done = subprocess.run(
                argv,
                cwd=self.base_dir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=_COMMAND_TIMEOUT_S,
                user=self.uid,
                group=self.gid,
                extra_groups=self.extra_groups,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{program} could not run: {exc}") from exc
        if done.returncode != 0:
            raise PostgresUnavailable(f"`{' '.join(argv)}` failed (exit {done.returncode}):\n{self.describe(done)}")
        return done.stdout

    def describe(self, done: subprocess.CompletedProcess[str]) -> str:
        parts = [done.stdout.strip(), done.stderr.strip()]
        if self.log_file.exists():
            parts.append(
                "server log (tail):\n" + "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
            )
        if self.os_user is not None:
            parts.append(f"(ran as the {self.os_user.name} user, which must be able to reach {self.base_dir})")
        return "\n".join(part for part in parts if part)

    def close(self) -> None:
        """Stop the server, delete its directory, release the guard. Only in the owning process."""
        if os.getpid() != self.owner_pid:
            return
        try:
            if (self.data_dir / "postmaster.pid").exists():
                self.run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "immediate", "-w", "-s")
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            if self.guard is not None:
                # Nothing is left for the guard to do. It is ended rather than left to see EOF: a
                # child forked meanwhile may hold the pipe open.
                assert self.guard.stdin is not None
                self.guard.stdin.close()
                self.guard.terminate()
                self.guard.wait(timeout=_COMMAND_TIMEOUT_S)


class TemporaryPostgres:
    """A throwaway PostgreSQL server on a Unix socket, for tests.

    Use it as a context manager or through ``start()`` and ``stop()``. The connection
    properties (``url``, ``dsn``, ``port``, ...) are valid while it runs.

    Args:
        database: Database created at start (the ``postgres`` database always exists too).
        user: Superuser role of the cluster; every connection through the socket is trusted.
        durable: Keep ``fsync``, ``synchronous_commit`` and ``full_page_writes`` on. Off by
            default: a throwaway server needs no crash safety and runs faster without it.
        bin_dir: Directory of ``initdb``/``pg_ctl``/``postgres``/``createdb``. Default:
            ``$POWER_LOOP_PG_BIN``, else the newest ``/usr/lib/postgresql/*/bin``, else the
            directory of ``initdb`` on ``PATH``.
        base_dir: Where the temporary directory is created (default: the system's temporary
            directory). Under root it must be reachable by the ``postgres`` user.
        port: Port number, which names the socket file. Default: one no TCP listener holds.
        settings: More ``postgresql.conf`` settings, e.g. ``{"log_statement": "all"}``.

    Raises:
        PostgresUnavailable: from ``start()``, when the binaries are missing or the server
            cannot be set up; the message says what was searched and how to install them.
    """

    def __init__(
        self,
        *,
        database: str = "power_loop",
        user: str = "power_loop",
        durable: bool = False,
        bin_dir: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        port: int | None = None,
        settings: Mapping[str, str | int | float | bool] | None = None,
    ) -> None:
        self.database = database
        self.user = user
        self.durable = durable
        self._bin_dir = bin_dir
        self._base_dir = base_dir
        self._port = port
        self._settings = dict(settings or {})
        self._cluster: _Cluster | None = None
        self._finalizer: weakref.finalize[[], TemporaryPostgres] | None = None
        self._running_port = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> TemporaryPostgres:
        """Create a cluster, start the server and create ``database``; no-op when running.

        Returns:
            ``self``, started.

        Raises:
            PostgresUnavailable: the binaries are missing or a step failed (the message
                carries the step's output and the server log).
        """
        if self.running:
            return self
        bin_dir = _find_bin_dir(self._bin_dir)
        os_user = _server_user()
        base = Path(tempfile.mkdtemp(prefix="power_loop_pg_", dir=self._base_dir))
        cluster = _Cluster(bin_dir, base, os_user)
        self._finalizer = weakref.finalize(self, cluster.close)
        port = self._port or _free_port()
        try:
            if len(str(base / f".s.PGSQL.{port}")) > _MAX_SOCKET_PATH:
                raise PostgresUnavailable(f"The socket path under {base} is too long: pass a shorter base_dir.")
            if os_user is not None:
                os.chown(base, os_user.uid, os_user.gid)
            cluster.start_guard()
            self._init_cluster(cluster, port)
            cluster.run(
                "pg_ctl", "start", "-D", str(cluster.data_dir), "-l", str(cluster.log_file), "-w", "-s", "-t", "60"
            )
            if self.database != "postgres":
                cluster.run("createdb", "-h", str(base), "-p", str(port), "-U", self.user, "-w", self.database)
        except BaseException:
            self.stop()
            raise
        self._cluster, self._running_port = cluster, port
        return self

    def _init_cluster(self, cluster: _Cluster, port: int) -> None:
        sync = [] if self.durable else ["--no-sync"]
        args = ["-D", str(cluster.data_dir), "--auth=trust", "-U", self.user, "-E", "UTF8", "--no-locale", *sync]
        cluster.run("initdb", *args)
        settings: dict[str, str | int | float | bool] = {
            "listen_addresses": "",
            "unix_socket_directories": str(cluster.base_dir),
            "port": port,
            "max_connections": 200,
        }
        if not self.durable:
            settings.update(fsync=False, synchronous_commit=False, full_page_writes=False)
        settings.update(self._settings)
        lines = [f"{name} = {_conf_value(value)}" for name, value in settings.items()]
        with (cluster.data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write("\n# TemporaryPostgres\n" + "\n".join(lines) + "\n")

    def stop(self) -> None:
        """Stop the server at once and delete its files. Idempotent; safe if never started."""
        finalizer, self._finalizer, self._cluster = self._finalizer, None, None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ connection facts

    @property
    def running(self) -> bool:
        """Whether ``start()`` succeeded and ``stop()`` has not run since."""
        return self._cluster is not None

    def _started(self) -> _Cluster:
        if self._cluster is None:
            raise PostgresUnavailable("The temporary PostgreSQL server is not running: call start() or use `with`.")
        return self._cluster

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix socket (the libpq ``host``)."""
        return self._started().base_dir

    @property
    def port(self) -> int:
        """The port number of the socket file (``.s.PGSQL.<port>``)."""
        self._started()
        return self._running_port

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (inside the temporary directory ``stop()`` deletes)."""
        return self._started().data_dir

    @property
    def bin_dir(self) -> Path:
        """The directory of the server binaries in use."""
        return self._started().bin_dir

    @property
    def pid(self) -> int:
        """The postmaster's process id."""
        return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])

    @property
    def url(self) -> str:
        """A libpq URL, e.g. ``postgresql://power_loop@/power_loop?host=/tmp/power_loop_pg_x&port=5432``."""
        query = urlencode({"host": str(self.socket_dir), "port": self.port}, quote_via=quote, safe="/")
        return f"postgresql://{quote(self.user)}@/{quote(self.database)}?{query}"

    @property
    def dsn(self) -> str:
        """The same connection as a libpq key/value string (``host=... port=... user=... dbname=...``)."""
        return f"host={self.socket_dir} port={self.port} user={self.user} dbname={self.database}"

    # ------------------------------------------------------------------ schemas (psycopg)

    def create_schema(self, name: str | None = None) -> PostgresSchema:
        """Create an empty schema (a fresh ``test_<hex>`` name by default).

        Raises:
            ConfigurationError: ``name`` is not a plain lowercase identifier.
            PostgresUnavailable: psycopg is not installed or the server is not running.
        """
        name = name or f"test_{uuid.uuid4().hex[:12]}"
        if not _SCHEMA_NAME.fullmatch(name):
            raise ConfigurationError(f"Schema name {name!r}: use lowercase letters, digits and underscores.")
        self._execute("CREATE SCHEMA {}", name)
        return PostgresSchema(self.url, name)

    def drop_schema(self, name: str) -> None:
        """Drop a schema and everything in it (``CASCADE``); a missing schema is fine.

        Raises:
            PostgresUnavailable: a connection still holds a lock in the schema after 10 s
                (close your stores and connections first), or psycopg is missing.
        """
        self._execute("DROP SCHEMA IF EXISTS {} CASCADE", name)

    @contextmanager
    def fresh_schema(self) -> Iterator[PostgresSchema]:
        """A new empty schema for the ``with`` block, dropped with its contents afterwards."""
        schema = self.create_schema()
        try:
            yield schema
        finally:
            self.drop_schema(schema.schema)

    def _execute(self, template: str, *names: str) -> None:
        try:
            import psycopg
            from psycopg import sql
        except ImportError as exc:
            raise PostgresUnavailable('The schema helpers need psycopg: pip install "power-loop[postgres]"') from exc
        statement = sql.SQL(template).format(*(sql.Identifier(name) for name in names))
        try:
            # lock_timeout: a connection the caller left open in the schema fails the drop, not hangs it.
            with psycopg.connect(self.url, autocommit=True, options="-c lock_timeout=10s") as conn:
                conn.execute(statement)
        except psycopg.Error as exc:
            raise PostgresUnavailable(f"{statement.as_string()} failed: {exc}") from exc
