"""``open_store(url)``: a session store from a URL or a path.

* ``postgresql://…`` / ``postgres://…`` (or a libpq ``key=value`` string with ``host=`` or
  ``dbname=``) → :class:`~power_loop.store.postgres.PostgresSessionStore` (psycopg is imported
  when it first connects); a ``schema=`` query parameter of the URL names the PostgreSQL schema
  (``postgresql://host/db?schema=myapp``; the keyword argument wins), and is not passed on to
  the server;
* ``sqlite:///relative/path``, ``sqlite:////absolute/path`` or a plain path →
  :class:`~power_loop.store.SQLiteSessionStore`.

Nothing connects here: the store opens its connections on first use.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from .postgres import PostgresSessionStore
from .protocols import SessionStoreProtocol
from .sqlite import SQLiteSessionStore

__all__ = ["DB_URL_ENV", "open_store"]

DB_URL_ENV = "POWER_LOOP_DB_URL"
"""The environment variable ``power-loop demo`` / ``worker`` read the store's URL from."""

_PG_OPTIONS = frozenset(
    {"schema", "min_size", "max_size", "prepare_threshold", "transaction_pooler", "connect_timeout_s", "lock_timeout_s"}
)


def _is_postgres(url: str) -> bool:
    if url.startswith(("postgresql://", "postgres://")):
        return True
    return "://" not in url and ("dbname=" in url or "host=" in url) and "=" in url.split()[0]


def _take_schema(url: str) -> tuple[str, str | None]:
    """``url`` without its ``schema=`` query parameter, and that parameter's value.

    Raises:
        ValueError: The query names another of the store's options: libpq would refuse it
            only at the first connection, as an unknown parameter.
    """
    if "://" not in url:
        return url, None
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    misplaced = sorted({k for k, _ in query if k in _PG_OPTIONS and k != "schema"})
    if misplaced:
        keywords = ", ".join(f"{k}=..." for k in misplaced)
        raise ValueError(
            f"{', '.join(misplaced)} in the URL: the URL takes schema= only; pass open_store(url, {keywords})"
        )
    schemas = [v for k, v in query if k == "schema"]
    if not schemas:
        return url, None
    rest = urlencode([(k, v) for k, v in query if k != "schema"], safe="/", quote_via=quote)
    return urlunsplit(parts._replace(query=rest)), schemas[-1]


def open_store(url: str | os.PathLike[str], **options: Any) -> SessionStoreProtocol:
    """A session store for ``url`` (see the module docstring), not yet connected.

    Args:
        url: A PostgreSQL URL, an ``sqlite:///`` URL or a path to an SQLite file.
        **options: For PostgreSQL, the keyword arguments of
            :class:`~power_loop.store.postgres.PostgresSessionStore` (``schema``,
            ``min_size``, ``max_size``, ``prepare_threshold``, ``transaction_pooler``,
            ``connect_timeout_s``, ``lock_timeout_s``); for SQLite, ``busy_timeout_s``.

    Raises:
        ValueError: An empty URL, an unknown URL scheme, or an option the backend does not take.
    """
    text = os.fspath(url)
    if not text:
        raise ValueError("open_store needs a database URL or path")
    if _is_postgres(text):
        unknown = set(options) - _PG_OPTIONS
        if unknown:
            raise ValueError(f"PostgreSQL stores take no option {sorted(unknown)}; options: {sorted(_PG_OPTIONS)}")
        text, schema = _take_schema(text)
        if schema is not None:
            options.setdefault("schema", schema)
        return PostgresSessionStore(text, **options)
    if text.startswith("sqlite://"):
        if not text.startswith("sqlite:///"):
            raise ValueError(f"an SQLite URL is sqlite:///relative/path or sqlite:////absolute/path, not {text!r}")
        text = text[len("sqlite:///") :]
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(f"unknown database URL scheme {scheme!r}: use postgresql://..., sqlite:///... or a file path")
    unknown = set(options) - {"busy_timeout_s"}
    if unknown:
        raise ValueError(f"SQLite stores take no option {sorted(unknown)}; options: ['busy_timeout_s']")
    return SQLiteSessionStore(text, **options)
