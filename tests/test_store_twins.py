"""Every store operation with a blocking twin offers both with the same parameters."""

from __future__ import annotations

import inspect

from power_loop.store import SQLiteSessionStore

# create_session's awaitable form also carries 0.11's keyword form; its twin takes the id form only.
NOT_PLAIN_TWINS = {"create_session"}


def _pairs() -> list[tuple[str, str]]:
    names = {n for n in dir(SQLiteSessionStore) if not n.startswith("_")}
    pairs = [(n.removesuffix("_sync"), n) for n in names if n.endswith("_sync")]
    pairs += [(n, n.removesuffix("_async")) for n in names if n.endswith("_async")]
    return sorted((a, b) for a, b in pairs if a in names and b in names and a not in NOT_PLAIN_TWINS)


def test_twins_share_their_parameters_and_differ_only_in_blocking() -> None:
    pairs = _pairs()
    assert ("get_stats", "get_stats_sync") in pairs
    assert ("get_session_async", "get_session") in pairs
    for awaitable, blocking in pairs:
        a, b = getattr(SQLiteSessionStore, awaitable), getattr(SQLiteSessionStore, blocking)
        assert inspect.iscoroutinefunction(a), awaitable
        assert not inspect.iscoroutinefunction(b), blocking
        assert inspect.signature(a) == inspect.signature(b), (awaitable, blocking)
        assert f":meth:`{awaitable}`" in (b.__doc__ or ""), blocking
