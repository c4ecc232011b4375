"""pytest fixtures for testing agents against the scripted server.

Enable in ``conftest.py``::

    pytest_plugins = ["power_loop.testing.pytest_plugin"]

Fixtures:
    scripted_server: a started :class:`~power_loop.testing.ScriptedServer` (empty script,
        echo rule until replies are pushed), stopped after the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import ScriptedServer


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    """A scripted OpenAI/Anthropic-compatible server on 127.0.0.1 for one test."""
    server = ScriptedServer().start()
    try:
        yield server
    finally:
        server.stop()
