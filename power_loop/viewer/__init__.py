"""``power-loop serve``: a read-only session viewer in the browser.

The viewer is a small Starlette application over a session store (SQLite file or PostgreSQL
URL): a sessions list with search and filters, a session's transcript with its tool calls,
its runs with their status and usage (and a chart of tokens per run), its timers, and a live
view that pushes new messages and runs as they land (server-sent events; the server polls the
store from an async task).

Guarantees:

* Read-only: the application answers ``GET`` and ``HEAD`` only and calls the store's read
  methods only.
* Nothing from the store is ever written into HTML by the server: pages are static files and
  the browser code puts transcripts into the page as text (``textContent``), so a message
  holding markup is shown, never run. Every response carries a Content-Security-Policy of
  ``default-src 'self'`` without inline scripts.
* It binds 127.0.0.1 by default and refuses any other address unless remote access is asked
  for (``--allow-remote``) *and* a token is set; with a token every request must carry it.

Starlette and uvicorn are optional: ``pip install "power-loop[web]"``. Importing this package
does not import them; :func:`create_app` and :class:`ViewerServer` do.
"""

from __future__ import annotations

from ._serve import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    TOKEN_ENV,
    ViewerConfigError,
    ViewerServer,
    add_serve_parser,
    create_app,
    run_serve,
)

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
