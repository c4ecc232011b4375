"""The capabilities a tool call gets (``ctx.timers``, ``ctx.inbox``, ``ctx.session``,
``ctx.state``, ``ctx.background``).

Invariants:

* Each capability is bound to one session and one call when it is built; a tool cannot name
  another session through it.
* They reach the loop only through its store and its :class:`TimerSignal`, never through the
  facade, so the engine stays below ``loop.py``.
* A wake-up scheduled through :class:`StoreTimers` is keyed by the call's idempotency key, so
  a call run again by ``resume`` finds the wake-up it scheduled the first time.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypedDict

from ..errors import SessionNotFoundError
from ..messages import Message
from ..store._holder import process_start
from ..store._timer_calendar import MISFIRE_RULES, check_schedule, next_occurrence
from ..store.protocols import MAX_DELAY_S, MAX_DUE_AT_MS, SessionStoreProtocol
from ..store.rows import BackgroundTaskRow, TimerRow
from ..tools.context import ToolCapabilities
from ..tools.shell import ShellBackend, run_shell_command

__all__ = [
    "LIVE_COMMANDS",
    "TEMPORARY_LOOP",
    "LiveCommands",
    "StoreBackground",
    "StoreInbox",
    "StoreSession",
    "StoreState",
    "StoreTimers",
    "TimerArgs",
    "TimerSignal",
    "timer_args",
    "tool_capabilities",
]

log = logging.getLogger("power_loop.background")

Spawn = Callable[..., "asyncio.Task[None]"]
"""``Runtime.spawn_task``: run a coroutine as a task the loop owns (cancelled when it closes)."""


class TimerArgs(TypedDict):
    """The checked arguments of a timer, as the store's ``schedule_timer`` takes them."""

    due_at: int
    note: str
    every_ms: int | None
    count: int | None
    until_at: int | None
    cron: str | None
    tz: str | None
    misfire: str | None


class TimerSignal:
    """Tells this process's timer runners that a timer was scheduled (thread-safe).

    A listener is called in the thread that scheduled the timer; it must only hand the news
    over (e.g. ``call_soon_threadsafe``). A listener raising ``RuntimeError`` (its event loop
    is closed) is dropped.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def add(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever a timer is scheduled through this loop."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def remove(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener`` (no error when it was not added)."""
        with self._lock:
            self._listeners = [fn for fn in self._listeners if fn is not listener]

    def notify(self) -> None:
        """Tell every listener that a timer was scheduled."""
        for listener in self._listeners:  # a snapshot: add/remove replace the list
            try:
                listener()
            except RuntimeError:  # the runner's event loop is closed
                self.remove(listener)


@dataclass(frozen=True, slots=True)
class StoreTimers:
    """:class:`~power_loop.tools.context.SessionTimers` over the loop's store."""

    store: SessionStoreProtocol
    signal: TimerSignal
    session_id: str
    origin: str

    async def schedule(
        self,
        *,
        delay_s: float | None = None,
        note: str,
        max_live: int | None = None,
        cron: str | None = None,
        tz: str | None = None,
    ) -> TimerRow:
        """See :meth:`power_loop.tools.context.SessionTimers.schedule`."""
        args = timer_args(delay_s, None, note, None, None, None, cron=cron, tz=tz)
        row = await self.store.schedule_timer(self.session_id, **args, max_live=max_live, origin=self.origin)
        self.signal.notify()
        return row

    async def armed(self) -> list[TimerRow]:
        """See :meth:`power_loop.tools.context.SessionTimers.armed`."""
        return await self.store.list_timers(self.session_id)

    async def cancel(self, timer_id: int) -> bool:
        """See :meth:`power_loop.tools.context.SessionTimers.cancel`."""
        return await self.store.cancel_timer(self.session_id, int(timer_id))


@dataclass(frozen=True, slots=True)
class StoreInbox:
    """:class:`~power_loop.tools.context.SessionInbox` over the loop's store."""

    store: SessionStoreProtocol
    session_id: str

    async def enqueue(self, text: str) -> int:
        """See :meth:`power_loop.tools.context.SessionInbox.enqueue`."""
        if not isinstance(text, str) or not text:
            raise ValueError("ctx.inbox.enqueue() needs a non-empty str")
        depth = await self.store.enqueue(self.session_id, text, kind="follow_up")
        assert depth is not None  # None only with only_if_busy
        return depth


@dataclass(frozen=True, slots=True)
class StoreSession:
    """:class:`~power_loop.tools.context.SessionReader` over the loop's store."""

    store: SessionStoreProtocol
    session_id: str

    async def messages(self) -> list[Message]:
        """See :meth:`power_loop.tools.context.SessionReader.messages`."""
        return [stored.message for stored in await self.store.load_messages(self.session_id)]

    async def metadata(self) -> Mapping[str, object]:
        """See :meth:`power_loop.tools.context.SessionReader.metadata`."""
        row = await self.store.get_session_async(self.session_id)
        if row is None:
            raise SessionNotFoundError(self.session_id)
        return row.metadata


@dataclass(frozen=True, slots=True)
class StoreState:
    """:class:`~power_loop.tools.context.SessionRuntimeState` over the loop's store."""

    store: SessionStoreProtocol
    session_id: str
    on_write: Callable[[], None] | None = None

    async def get(self, key: str, default: object = None) -> object:
        """See :meth:`power_loop.tools.context.SessionRuntimeState.get`."""
        return await self.store.get_runtime_state_async(self.session_id, key, default)

    async def set(self, key: str, value: object) -> None:
        """See :meth:`power_loop.tools.context.SessionRuntimeState.set`."""
        await self.store.set_runtime_state_async(self.session_id, key, value)
        if self.on_write is not None:
            self.on_write()

    async def delete(self, key: str) -> bool:
        """See :meth:`power_loop.tools.context.SessionRuntimeState.delete`."""
        return await self.store.delete_runtime_state_async(self.session_id, key)


def _exit_status(exit_code: int | None, timed_out: bool) -> str:
    if timed_out:
        return "timed_out"
    return "completed" if exit_code == 0 else "failed"


class LiveCommands:
    """The background commands this process runs, by session (thread-safe).

    Process-wide on purpose: a command is recorded with the identity of its process, and
    whichever loop of that process reaps the session must know the process still runs it.
    """

    def __init__(self) -> None:
        self._live: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def add(self, session_id: str, task_id: str) -> None:
        """A command started."""
        with self._lock:
            self._live.add((session_id, task_id))

    def discard(self, session_id: str, task_id: str) -> None:
        """A command ended (its end recorded, or not recordable)."""
        with self._lock:
            self._live.discard((session_id, task_id))

    def of(self, session_id: str) -> frozenset[str]:
        """The task ids this process runs for ``session_id``."""
        with self._lock:
            return frozenset(t for s, t in self._live if s == session_id)


LIVE_COMMANDS = LiveCommands()
"""The background commands of this process."""

TEMPORARY_LOOP: ContextVar[bool] = ContextVar("power_loop_temporary_loop", default=False)
"""True inside a ``*_sync`` call: its event loop ends when the call returns."""


@dataclass(frozen=True, slots=True)
class StoreBackground:
    """:class:`~power_loop.tools.context.SessionBackground` over the loop's store, its
    commands run as tasks the loop owns."""

    store: SessionStoreProtocol
    session_id: str
    spawn: Spawn
    on_write: Callable[[], None] | None = None

    async def start(
        self,
        command: str,
        *,
        workspace_dir: str,
        backend: ShellBackend | None = None,
        timeout_s: float = 1800.0,
        max_running: int = 8,
    ) -> BackgroundTaskRow | list[BackgroundTaskRow]:
        """See :meth:`power_loop.tools.context.SessionBackground.start`."""
        if not isinstance(command, str) or not command.strip():
            raise ValueError("a background command needs a non-empty command line")
        if "\x00" in command:
            raise ValueError("a command line cannot contain a NUL character")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be > 0")
        if TEMPORARY_LOOP.get():
            raise RuntimeError(
                "background commands need an event loop that outlives the call: a *_sync call runs the agent "
                "on a temporary event loop that ends when it returns (the command would be killed); use "
                "`await loop.send(...)` in a long-lived event loop"
            )
        await self._reap()  # a command no process runs must not count against the limit
        task_id = "bg_" + secrets.token_hex(8)
        deadline = int(time.time() * 1000 + timeout_s * 1000)
        # Known as live before its row exists: a concurrent reaper must never take it for lost.
        LIVE_COMMANDS.add(self.session_id, task_id)
        try:
            row = await self.store.start_background_task_async(
                self.session_id, task_id=task_id, command=command, deadline_at=deadline, max_running=max_running
            )
        except BaseException:
            LIVE_COMMANDS.discard(self.session_id, task_id)
            raise
        if isinstance(row, list):
            LIVE_COMMANDS.discard(self.session_id, task_id)
            return row
        if self.on_write is not None:
            self.on_write()
        # A clean context: the task must not keep the calling run (its tool context) alive.
        contextvars.Context().run(
            self.spawn,
            _run_command(self.store, self.session_id, row, workspace_dir, backend, timeout_s),
            name=f"power_loop-background-{task_id}",
        )
        return row

    async def tasks(self) -> list[BackgroundTaskRow]:
        """See :meth:`power_loop.tools.context.SessionBackground.tasks`."""
        await self._reap()
        return await self.store.list_background_tasks_async(self.session_id)

    async def get(self, task_id: str) -> BackgroundTaskRow | None:
        """See :meth:`power_loop.tools.context.SessionBackground.get`."""
        await self._reap()
        return await self.store.get_background_task_async(self.session_id, task_id)

    async def mark_seen(self, rows: Sequence[BackgroundTaskRow]) -> int:
        """See :meth:`power_loop.tools.context.SessionBackground.mark_seen`."""
        if not rows:
            return 0
        statuses = {r.task_id: r.status for r in rows}
        return await self.store.mark_background_seen_async(self.session_id, list(statuses), statuses=statuses)

    async def _reap(self) -> None:
        await self.store.reap_lost_background_async(self.session_id, alive=LIVE_COMMANDS.of(self.session_id))


async def _run_command(
    store: SessionStoreProtocol,
    session_id: str,
    row: BackgroundTaskRow,
    workspace: str,
    backend: ShellBackend | None,
    limit: float,
) -> None:
    """Run a background command to its end and record the end (whatever happens)."""
    status, code, tail = "failed", None, ""

    async def started(pid: int) -> None:
        with contextlib.suppress(Exception):  # the record only helps a later reaper
            await store.set_background_child_async(session_id, row.task_id, pid, process_start(pid))

    try:
        result = await run_shell_command(
            row.command, workspace_dir=workspace, backend=backend, timeout_s=limit, on_start=started
        )
        status, code, tail = _exit_status(result.exit_code, result.timed_out), result.exit_code, result.output
        if result.timed_out:
            tail = f"{tail}\n[timed out after {limit:g}s: the command and its children were killed]"
    except asyncio.CancelledError:
        # The loop is closing: the command's process group was killed; say so durably.
        status, tail = "killed", "[killed: the agent loop closed while it ran]"
        raise
    except OSError as exc:
        tail = f"[the command could not be started: {exc.strerror or exc}]"
    except Exception as exc:  # anything else: recorded as failed, never left "running"
        tail = f"[the command failed to run: {type(exc).__name__}: {exc}]"
        log.exception("background command %s of %s failed to run", row.task_id, session_id)
    finally:
        try:
            await asyncio.shield(
                store.upsert_background_task_async(
                    session_id, task_id=row.task_id, command=row.command, status=status, return_code=code,
                    output_tail=tail,
                )
            )  # fmt: skip
        except (Exception, asyncio.CancelledError):
            # The store is gone (closing, a fault): the row stays "running" until a reaper
            # finds no process runs it and marks it lost.
            log.warning("could not record the end of background command %s of %s", row.task_id, session_id)
        finally:
            LIVE_COMMANDS.discard(session_id, row.task_id)


def timer_args(
    delay_s: float | None,
    due_at_ms: int | None,
    note: str,
    every_s: float | None,
    count: int | None,
    until_ms: int | None,
    *,
    cron: str | None = None,
    tz: str | None = None,
    misfire: str = "once",
) -> TimerArgs:
    """Check the arguments of ``schedule_timer`` and return the store's keyword arguments.

    Raises:
        ValueError: Both or neither of ``delay_s`` / ``due_at_ms`` (or ``cron`` with either,
            or with ``every_s``), an empty note, an out-of-range time, a bad recurrence, or a
            calendar schedule that is not valid (the message names the field).
    """

    def seconds(value: object) -> bool:
        return (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and math.isfinite(value)
            and 0 <= value <= MAX_DELAY_S
        )

    def epoch_ms(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= MAX_DUE_AT_MS

    if cron is not None:
        return _calendar_args(delay_s, due_at_ms, note, every_s, count, until_ms, cron, tz, misfire)
    if tz is not None:
        raise ValueError("tz applies to calendar timers: pass cron as well")
    if misfire != "once":
        raise ValueError("misfire applies to calendar timers: pass cron as well")
    if (delay_s is None) == (due_at_ms is None):
        raise ValueError("provide exactly one of delay_s / due_at_ms")
    if not isinstance(note, str) or not note.strip():
        raise ValueError("note is required — the agent needs to know why it woke up")
    if delay_s is not None:
        if not seconds(delay_s):
            raise ValueError(f"delay_s must be a number of seconds from 0 to 100 years, not {delay_s!r}")
        due_at = int(time.time() * 1000 + delay_s * 1000)
    else:
        if not epoch_ms(due_at_ms):
            raise ValueError(f"due_at_ms must be epoch milliseconds (an int up to year 9999), not {due_at_ms!r}")
        assert due_at_ms is not None
        due_at = due_at_ms
    every_ms = None
    if every_s is not None:
        if not seconds(every_s) or every_s <= 0:
            raise ValueError(f"every_s must be a positive number of seconds up to 100 years, not {every_s!r}")
        every_ms = max(1, int(every_s * 1000))
    elif count is not None or until_ms is not None:
        raise ValueError("count and until_ms apply to recurring timers: pass every_s (or cron) as well")
    _check_series(count, until_ms, due_at)
    return {
        "due_at": due_at,
        "note": note,
        "every_ms": every_ms,
        "count": count,
        "until_at": until_ms,
        "cron": None,
        "tz": None,
        "misfire": None,
    }


def _check_series(count: int | None, until_ms: int | None, due_at: int) -> None:
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"count must be an int >= 1, not {count!r}")
    if until_ms is not None and (
        isinstance(until_ms, bool) or not isinstance(until_ms, int) or not 0 <= until_ms <= MAX_DUE_AT_MS
    ):
        raise ValueError(f"until_ms must be epoch milliseconds (an int up to year 9999), not {until_ms!r}")
    if until_ms is not None and until_ms < due_at:
        raise ValueError("until_ms must be epoch milliseconds no earlier than the first due time")


def _calendar_args(
    delay_s: float | None,
    due_at_ms: int | None,
    note: str,
    every_s: float | None,
    count: int | None,
    until_ms: int | None,
    cron: str,
    tz: str | None,
    misfire: str,
) -> TimerArgs:
    """:func:`timer_args` of a calendar timer: the first due time is the schedule's next
    occurrence."""
    if delay_s is not None or due_at_ms is not None or every_s is not None:
        raise ValueError(
            "cron cannot be combined with delay_s, due_at_ms or every_s: a calendar timer is due at its "
            "schedule's occurrences"
        )
    if not isinstance(note, str) or not note.strip():
        raise ValueError("note is required — the agent needs to know why it woke up")
    now = int(time.time() * 1000)
    cron, zone = check_schedule(cron, "UTC" if tz is None else tz, now_ms=now)
    if misfire not in MISFIRE_RULES:
        raise ValueError(f"misfire must be 'once' or 'skip', not {misfire!r}")
    due_at = next_occurrence(cron, zone, now)
    assert due_at is not None  # check_schedule refuses a schedule that never comes due
    _check_series(count, until_ms, due_at)
    return {
        "due_at": due_at,
        "note": note,
        "every_ms": None,
        "count": count,
        "until_at": until_ms,
        "cron": cron,
        "tz": zone,
        "misfire": misfire,
    }


def tool_capabilities(
    store: SessionStoreProtocol,
    signal: TimerSignal,
    spawn: Spawn,
    session_id: str,
    tool_call_id: str,
    *,
    on_runtime_write: Callable[[], None] | None = None,
) -> ToolCapabilities:
    """The capabilities of call ``tool_call_id`` in ``session_id``; ``on_runtime_write`` is
    told when the call writes runtime state or starts a background command."""
    return ToolCapabilities(
        timers=StoreTimers(store, signal, session_id, origin=f"tool:{session_id}:{tool_call_id}"),
        inbox=StoreInbox(store, session_id),
        session=StoreSession(store, session_id),
        state=StoreState(store, session_id, on_runtime_write),
        background=StoreBackground(store, session_id, spawn, on_runtime_write),
    )
