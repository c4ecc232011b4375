"""Test doubles for power_loop agents, public so users test their agents the same way.

* :class:`ScriptedLLM`: an in-process scripted model (no HTTP).
* :class:`ScriptedServer`: a loopback HTTP server speaking Chat Completions and Messages, for
  end-to-end tests through the real ``openai`` and ``anthropic`` SDKs.
* Reply helpers: :func:`text_reply`, :func:`tool_reply`, :func:`error_reply`,
  :func:`hang_reply`.
* A pytest plugin with a ``scripted_server`` fixture: add
  ``pytest_plugins = ["power_loop.testing.pytest_plugin"]`` to your ``conftest.py``.
* :class:`TemporaryPostgres`: a throwaway PostgreSQL server on a Unix socket, with a fresh
  schema per test (:class:`PostgresSchema`); the schema helpers need the ``postgres`` extra.
"""

from .postgres import PostgresSchema, PostgresUnavailable, TemporaryPostgres
from .script import (
    Rule,
    ScriptedReply,
    ScriptedRequest,
    ScriptExhausted,
    error_reply,
    hang_reply,
    text_reply,
    tool_reply,
)
from .scripted_llm import ScriptedLLM
from .server import ScriptedServer, echo_rule, tool_round_trip_rule

__all__ = [
    "PostgresSchema",
    "PostgresUnavailable",
    "Rule",
    "ScriptExhausted",
    "ScriptedLLM",
    "ScriptedReply",
    "ScriptedRequest",
    "ScriptedServer",
    "TemporaryPostgres",
    "echo_rule",
    "error_reply",
    "hang_reply",
    "text_reply",
    "tool_reply",
    "tool_round_trip_rule",
]
