"""Helpers shared by the loop tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from power_loop import AgentEvent, AgentEventBus, StatefulAgentLoop, ToolRegistry, tool
from power_loop.messages import AssistantMessage, Message, ToolResultMessage, message_from_dict


def is_valid_history(messages: Sequence[Message]) -> bool:
    """True when every tool call has exactly one result and no result is orphaned."""
    open_calls: set[str] = set()
    for message in messages:
        if isinstance(message, AssistantMessage):
            if open_calls:
                return False
            open_calls = {c.id for c in message.tool_calls}
        elif isinstance(message, ToolResultMessage):
            if message.tool_call_id not in open_calls:
                return False
            open_calls.discard(message.tool_call_id)
        elif open_calls:
            return False
    return not open_calls


def history_is_valid(messages: Sequence[dict[str, Any]]) -> bool:
    """Every tool call has exactly one result, right after its assistant message."""
    return is_valid_history([message_from_dict(m) for m in messages])


class EventLog:
    """Collects every event of a bus."""

    def __init__(self, bus: AgentEventBus) -> None:
        self.events: list[AgentEvent] = []
        bus.subscribe(None, self.events.append)

    @property
    def types(self) -> list[str]:
        return [e.type.value for e in self.events]

    def of(self, kind: str) -> list[AgentEvent]:
        return [e for e in self.events if e.type.value == kind]


class Ticker:
    """A 1 ms ticker measuring how late the event loop wakes it (event-loop stalls)."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.lateness: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lateness.append(time.perf_counter() - started - self.interval)

    def __enter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    @property
    def worst(self) -> float:
        return max(self.lateness, default=0.0)


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First addend.
        b: Second addend.
    """
    return a + b


@tool
def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: What to shout.
    """
    return text.upper()


def registry(*extra: Any) -> ToolRegistry:
    """``add`` and ``shout``, plus ``extra`` tools."""
    reg = ToolRegistry()
    for t in (add, shout, *extra):
        reg.register(t)
    return reg


async def messages_of(loop: StatefulAgentLoop, sid: str) -> list[dict[str, Any]]:
    return await loop.get_messages_async(sid)


class RawDatabase:
    """A plain connection to a store's database, for checks below the store's API: sqlite3
    for a file, psycopg (with the store's schema on the search path) for a PostgreSQL URL.
    ``execute`` takes ``?`` placeholders on both."""

    def __init__(self, db: str) -> None:
        self.postgres = db.startswith("postgresql://")
        if self.postgres:
            import psycopg

            from power_loop.store.factory import _take_schema

            url, schema = _take_schema(db)
            self.conn: Any = psycopg.connect(url, autocommit=True)
            self.conn.execute(f'SET search_path TO "{schema or "power_loop"}"')
        else:
            import sqlite3

            self.conn = sqlite3.connect(db)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            from power_loop.store._pg_tx import to_pg

            return self.conn.execute(to_pg(sql), list(params)) if params else self.conn.execute(sql)
        return self.conn.execute(sql, params)

    def close(self) -> None:
        self.conn.close()
