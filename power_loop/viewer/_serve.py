"""The ``serve`` command, the application factory and a background-thread server.

Nothing here imports Starlette or uvicorn at module level: ``power-loop --help`` works without
the ``web`` extra, and the first use of the viewer says which extra to install.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import socket
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._inspect_open import InspectError, check_postgres, check_sqlite
from ..store.factory import DB_URL_ENV
from ._net import is_loopback

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "TOKEN_ENV",
    "ViewerConfigError",
    "ViewerServer",
    "add_serve_parser",
    "create_app",
    "run_serve",
]

DEFAULT_HOST = "127.0.0.1"
"""The only address ``power-loop serve`` binds without ``--allow-remote`` and a token."""

DEFAULT_PORT = 8765
"""The port ``power-loop serve`` listens on unless told otherwise."""

TOKEN_ENV = "POWER_LOOP_VIEWER_TOKEN"
"""The environment variable holding the viewer's access token (``--token`` wins)."""

_PROG = "power-loop"
_USAGE_ERROR = 2
_WEB_EXTRA_HINT = 'the session viewer needs Starlette and uvicorn: pip install "power-loop[web]"'


class ViewerConfigError(ValueError):
    """A viewer setting that cannot be served (a missing database file, a refused address)."""


def _require_web() -> None:
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ImportError(_WEB_EXTRA_HINT) from exc


def _is_postgres_url(url: str) -> bool:
    if url.startswith(("postgresql://", "postgres://")):
        return True
    return "://" not in url and ("dbname=" in url or "host=" in url)


def check_database(url: str) -> str:
    """``url`` when it names a store the viewer can read; an SQLite file must already exist
    (the viewer never creates an empty database).

    Raises:
        ViewerConfigError: No URL, or an SQLite path naming no file.
    """
    if not url:
        raise ViewerConfigError(f"no database given: pass --db PATH|URL or set {DB_URL_ENV}")
    if _is_postgres_url(url):
        return url
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    if not os.path.isfile(path):
        raise ViewerConfigError(f"no database file at {path!r} (the viewer does not create one)")
    return url


def check_bind(host: str, *, allow_remote: bool, token: str | None) -> None:
    """Refuse a non-loopback address unless remote access is asked for and a token is set.

    Raises:
        ViewerConfigError: ``host`` is not a loopback address and ``allow_remote`` is false or
            no token is set.
    """
    if is_loopback(host):
        return
    missing = [
        what
        for what, ok in (("--allow-remote", allow_remote), (f"a token (--token or {TOKEN_ENV})", bool(token)))
        if not ok
    ]
    if missing:
        raise ViewerConfigError(
            f"refusing to listen on {host}: the viewer shows every transcript; "
            f"serving other machines needs {' and '.join(missing)}"
        )


def create_app(
    db: str | os.PathLike[str],
    *,
    token: str | None = None,
    poll_interval_s: float = 0.5,
    allowed_hosts: Sequence[str] | None = None,
) -> Starlette:
    """The viewer's ASGI application over the store at ``db``.

    The application opens the store when it starts (its lifespan) and closes it when it stops.

    Args:
        db: An SQLite file (it must exist) or a PostgreSQL URL, as for
            :func:`power_loop.store.open_store`.
        token: When set, every request must carry it: ``Authorization: Bearer <token>``, the
            cookie set by a first visit with ``?token=<token>``, or that query parameter.
        poll_interval_s: How often a live view polls the store for new messages and runs.
        allowed_hosts: Host names (without port) the ``Host`` header may carry, which guards
            a loopback server against DNS rebinding. None: loopback names only when no token is
            set, any host when one is.

    Raises:
        ImportError: Starlette or uvicorn is not installed (``pip install "power-loop[web]"``).
        ViewerConfigError: ``db`` names no store the viewer can read.
    """
    _require_web()
    from ._app import build_app

    url = check_database(os.fspath(db))
    if not 0 < poll_interval_s < math.inf:  # NaN fails too: a live view would spin or never poll
        raise ValueError(f"poll_interval_s must be a positive number of seconds, not {poll_interval_s!r}")
    return build_app(url, token=token, poll_interval_s=poll_interval_s, allowed_hosts=allowed_hosts)


def _make_uvicorn_server(app: Starlette, *, log_level: str, ready: threading.Event | None = None) -> Any:
    import uvicorn

    from ._app import close_streams

    class _Server(uvicorn.Server):
        """Ends the live views first, so a shutdown does not wait on open event streams."""

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if ready is not None:
                ready.set()

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            close_streams(app)
            await super().shutdown(sockets=sockets)

    config = uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5)
    return _Server(config)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class ViewerServer:
    """The viewer served by uvicorn on a thread of its own (tests, examples, tools).

    ``with ViewerServer(db) as server:`` binds ``host`` (a free port by default), starts the
    server and waits until it accepts requests; leaving the block stops it. ``server.url`` is
    the base URL.

    Args:
        db: An SQLite file or a PostgreSQL URL (see :func:`create_app`).
        host: Address to bind; other than loopback only with ``allow_remote`` and ``token``.
        port: Port to bind; 0 picks a free one.
        token: Access token (see :func:`create_app`).
        allow_remote: Allow a non-loopback ``host`` (a token is still required).
        poll_interval_s: How often live views poll the store.
    """

    def __init__(
        self,
        db: str | os.PathLike[str],
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        token: str | None = None,
        allow_remote: bool = False,
        poll_interval_s: float = 0.5,
    ) -> None:
        check_bind(host, allow_remote=allow_remote, token=token)
        self._app = create_app(db, token=token, poll_interval_s=poll_interval_s)
        self._host = host
        self._port = port
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (after :meth:`start`)."""
        host = f"[{self._host.strip('[]')}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    def start(self) -> None:
        """Bind, start the server thread and wait until it serves.

        Raises:
            RuntimeError: The server did not start (the store could not be opened, ...).
        """
        sock = _bind(self._host, self._port)
        self._port = sock.getsockname()[1]
        ready = threading.Event()
        self._server = _make_uvicorn_server(self._app, log_level="warning", ready=ready)

        def serve() -> None:
            try:
                asyncio.run(self._server.serve(sockets=[sock]))
            except BaseException as exc:  # SystemExit from a failed startup included
                self._error = exc
            finally:
                sock.close()
                ready.set()

        self._thread = threading.Thread(target=serve, name="power-loop-viewer", daemon=True)
        self._thread.start()
        ready.wait()
        if not self._server.started:
            self._thread.join()
            raise RuntimeError(f"the session viewer did not start: {self._error!r}")

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        if self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join()
        self._thread = None

    def __enter__(self) -> ViewerServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def add_serve_parser(subparsers: Any) -> None:
    """Register ``serve`` on the ``power-loop`` command's subparsers."""
    serve = subparsers.add_parser(
        "serve",
        help="serve a read-only session viewer in the browser (needs power-loop[web])",
        description="Serve a read-only view of the sessions in a store: list, transcripts, runs, "
        "timers and a live view. Binds 127.0.0.1 unless --allow-remote and a token are given.",
    )
    serve.add_argument("--db", default=None, help=f"SQLite file or database URL (default: ${DB_URL_ENV})")
    serve.add_argument("--host", default=DEFAULT_HOST, metavar="H", help=f"address to bind (default {DEFAULT_HOST})")
    serve.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        metavar="N",
        help=f"port to bind (default {DEFAULT_PORT}; 0: a free one)",
    )
    serve.add_argument(
        "--token",
        default=None,
        metavar="T",
        help=f"require this token on every request (default: ${TOKEN_ENV}; the variable keeps it out of ps)",
    )
    serve.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow an address other than loopback (a token is required too)",
    )
    serve.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        metavar="S",
        help="seconds between a live view's store polls (default 0.5)",
    )


def _error(text: str) -> int:
    print(f"{_PROG}: error: {text}", file=sys.stderr)
    return _USAGE_ERROR


def run_serve(args: argparse.Namespace) -> int:
    """Run ``power-loop serve`` until SIGINT / SIGTERM; return the exit status.

    A refused address, a missing database file or a missing ``web`` extra print one line,
    ``power-loop: error: ...``, and return 2.
    """
    token = args.token or os.environ.get(TOKEN_ENV) or None
    db = args.db or os.environ.get(DB_URL_ENV) or ""
    try:
        check_bind(args.host, allow_remote=args.allow_remote, token=token)
        if not 0 <= args.port <= 65535:
            raise ViewerConfigError(f"--port must be between 0 and 65535, not {args.port}")
        if not 0 < args.poll_interval < math.inf:
            raise ViewerConfigError(f"--poll-interval must be a positive number of seconds, not {args.poll_interval}")
        app = create_app(db, token=token, poll_interval_s=args.poll_interval)
    except (ViewerConfigError, ImportError) as exc:
        return _error(str(exc))
    try:
        asyncio.run(_probe(db))
    except InspectError as exc:  # missing, not a store, another schema version, locked
        return _error(str(exc))
    except Exception as exc:  # the store cannot be opened: one line, as the other commands do
        print(f"{_PROG}: error: {' '.join(str(exc).split()) or type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"{_PROG}: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    host = f"[{args.host.strip('[]')}]" if ":" in args.host else args.host
    where = f"http://{host}:{sock.getsockname()[1]}/"
    print(f"Serving the sessions of {db} at {where} (read-only; Ctrl-C stops)", flush=True)
    if token:
        print("Every request needs the token: open the page once with ?token=<token>", flush=True)
    server = _make_uvicorn_server(app, log_level="warning")
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except SystemExit:  # uvicorn's answer to a failed startup (it logged why)
        return 1
    finally:
        sock.close()
    # A started server ends only on a signal. uvicorn re-raises it once shut down, which
    # normally surfaces as KeyboardInterrupt (130, from the caller); when the signal lands as
    # the serving task returns, asyncio.run returns normally instead: still an interruption.
    return 130 if server.started else 1


async def _probe(db: str) -> None:
    """Check the store as the inspector commands do (it exists, at this power_loop's schema
    version, so that serving never creates or migrates it), then open and close it, so that
    one that cannot be opened is reported before serving."""
    from ..store.factory import open_store
    from ..store.postgres import PostgresSessionStore

    store = open_store(db)
    if isinstance(store, PostgresSessionStore):
        await asyncio.to_thread(check_postgres, store)
    else:
        await asyncio.to_thread(check_sqlite, store.path, False)
    try:
        await store.open()
    finally:
        await store.close()
