"""Shared fixtures: real SQLite files in tmp_path, the scripted server on 127.0.0.1, and one
throwaway PostgreSQL server for the session with a fresh schema per test (``pg_schema``).

PostgreSQL tests fail, never skip, when the server cannot start: the message says what to
install. ``POWER_LOOP_TEST_PG=0`` turns them into skips.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from power_loop.providers.anthropic import AnthropicMessagesService
from power_loop.providers.openai import OpenAIChatService
from power_loop.testing import PostgresSchema, PostgresUnavailable, ScriptedServer, TemporaryPostgres

pytest_plugins = ["power_loop.testing.pytest_plugin"]

PROTOCOLS = ("openai", "anthropic")
# They describe the test machine, not a configuration of the code under test: tests see them.
TEST_MACHINE_VARIABLES = ("POWER_LOOP_TEST_PG", "POWER_LOOP_PG_BIN", "POWER_LOOP_TEST_BROWSER")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]) -> Iterator[None]:
    """No test sees the developer's provider configuration or a stray .env file."""
    for name in list(os.environ):
        if name.startswith(("POWER_LOOP_", "OPENAI_COMPAT_")) and name not in TEST_MACHINE_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture(autouse=True)
def _watchdog() -> Iterator[None]:
    """A test that hangs dumps every thread's stack and ends the run instead of blocking CI."""
    faulthandler.dump_traceback_later(180, exit=True, file=sys.stderr)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture
def db_path(tmp_path: os.PathLike[str]) -> str:
    """A fresh SQLite file path."""
    return os.path.join(tmp_path, "sessions.db")


ServiceFactory = Callable[..., OpenAIChatService | AnthropicMessagesService]


def make_service(
    protocol: str, server: ScriptedServer, **options: object
) -> OpenAIChatService | AnthropicMessagesService:
    """A real-SDK provider pointed at ``server``."""
    options.setdefault("timeout_s", 10.0)
    if protocol == "anthropic":
        return AnthropicMessagesService(
            model="test-model", base_url=server.anthropic_base_url, api_key="test-key", **options
        )  # type: ignore[arg-type]
    return OpenAIChatService(model="test-model", base_url=server.openai_base_url, api_key="test-key", **options)  # type: ignore[arg-type]


@pytest.fixture
async def llm_factory() -> AsyncIterator[ServiceFactory]:
    """``llm_factory(protocol, server, **options)`` builds real-SDK providers, closed after the test."""
    made: list[OpenAIChatService | AnthropicMessagesService] = []

    def factory(
        protocol: str, server: ScriptedServer, **options: object
    ) -> OpenAIChatService | AnthropicMessagesService:
        service = make_service(protocol, server, **options)
        made.append(service)
        return service

    yield factory
    for service in made:
        await service.aclose()


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    """Each wire protocol in turn."""
    return str(request.param)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TemporaryPostgres]:
    """One throwaway PostgreSQL server for the whole session, stopped (and deleted) at its end."""
    if os.environ.get("POWER_LOOP_TEST_PG") == "0":
        pytest.skip("PostgreSQL tests are off (POWER_LOOP_TEST_PG=0); unset it to run them on a throwaway server")
    problem = ""
    try:
        import psycopg  # noqa: F401 - the tests talk to the server through it
    except ImportError:
        problem = 'PostgreSQL tests need psycopg: pip install -e ".[dev]"'
    server = TemporaryPostgres()
    if not problem:
        try:
            server.start()
        except PostgresUnavailable as exc:
            problem = str(exc)
    if problem:  # failed outside the except blocks: the message alone, no chained traceback
        pytest.fail(f"{problem}\n(POWER_LOOP_TEST_PG=0 skips the PostgreSQL tests)", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_schema(pg_server: TemporaryPostgres) -> Iterator[PostgresSchema]:
    """A new, empty schema on the session's server (``url``, ``schema``, ``scoped_url``),
    dropped with everything in it after the test."""
    with pg_server.fresh_schema() as schema:
        yield schema


@pytest.fixture(params=["sqlite", "postgres"])
def shared_db(request: pytest.FixtureRequest, tmp_path: os.PathLike[str]) -> str:
    """Where several processes keep one store, for each backend: an SQLite file, or a URL
    naming a fresh schema of the session's throwaway PostgreSQL server (``?schema=``)."""
    if request.param == "sqlite":
        return os.path.join(tmp_path, "shared.db")
    target: PostgresSchema = request.getfixturevalue("pg_schema")
    separator = "&" if "?" in target.url else "?"
    return f"{target.url}{separator}schema={target.schema}"
