"""Runtime state and background commands, as a mixin of
:class:`~power_loop.store.SQLiteSessionStore`.

The blocking names are 0.11's (``get_runtime_state``, ``upsert_background_task``, ...); each
has an ``*_async`` twin that runs on the store's worker thread, declared once with
:func:`._twins.store_op`. The rules are in :mod:`._runtime_sql`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from . import _runtime_sql as _rt
from ._twins import TxFn, store_op
from .protocols import Tx
from .rows import BackgroundTaskRow, LostCommand

T = TypeVar("T")

__all__ = ["RuntimeStateMethods"]


class RuntimeStateMethods:
    """Per-session runtime state (by key, JSON values) and background commands."""

    if TYPE_CHECKING:

        def _call_sync(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

        async def _call(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

    # ------------------------------------------------------------------ runtime state

    @store_op(tx=False)
    def get_runtime_state_async(self, session_id: str, key: str, default: Any = None) -> TxFn[Any]:
        """The value stored under ``key`` for the session (decoded JSON), or ``default``.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return lambda c: _rt.get_state(c, session_id, key, default)

    get_runtime_state = get_runtime_state_async.blocking()  # 0.11 API

    @store_op()
    def set_runtime_state_async(self, session_id: str, key: str, value: Any) -> TxFn[None]:
        """Store ``value`` (anything JSON can encode) under ``key`` for the session.

        Raises:
            SessionNotFoundError: Unknown session.
            TypeError: JSON cannot encode ``value``; nothing written.
            ValueError: ``key`` is empty.
        """
        encoded = _rt.encode_value(key, value)
        return lambda c: _rt.set_state(c, session_id, key, encoded)

    set_runtime_state = set_runtime_state_async.blocking()  # 0.11 API

    @store_op()
    def delete_runtime_state_async(self, session_id: str, key: str) -> TxFn[bool]:
        """Remove ``key`` from the session's runtime state; False when it was not set.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return lambda c: _rt.delete_state(c, session_id, key)

    delete_runtime_state = delete_runtime_state_async.blocking()  # 0.11 API

    # ------------------------------------------------------------------ background commands

    @store_op()
    def upsert_background_task_async(
        self,
        session_id: str,
        *,
        task_id: str,
        command: str,
        status: str,
        return_code: int | None = None,
        output_tail: str | None = None,
        output_path: str | None = None,
        seen: bool = False,
    ) -> TxFn[BackgroundTaskRow]:
        """Create or update a background command of the session; the row as stored.

        A ``running`` row records this process as the one running it: if the process ends
        first, the command is later reported ``lost``. The change is shown to the model once
        (see ``list_unseen_background_updates``) unless ``seen``. ``output_tail`` keeps its
        last 4,000 characters.

        Raises:
            SessionNotFoundError: Unknown session.
            ValueError: An empty ``task_id``, ``command`` or ``status``.
        """
        for name, value in (("task_id", task_id), ("command", command), ("status", status)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"upsert_background_task needs a non-empty str {name}")
        return lambda c: _rt.upsert_background(
            c,
            session_id,
            task_id=task_id,
            command=command,
            status=status,
            return_code=return_code,
            output_tail=output_tail,
            output_path=output_path,
            seen=seen,
        )

    upsert_background_task = upsert_background_task_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def get_background_task_async(self, session_id: str, task_id: str) -> TxFn[BackgroundTaskRow | None]:
        """One background command of the session, or None.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return lambda c: _rt.get_background(c, session_id, task_id)

    get_background_task = get_background_task_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def list_background_tasks_async(self, session_id: str) -> TxFn[list[BackgroundTaskRow]]:
        """The session's background commands, oldest first.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return lambda c: _rt.list_background(c, session_id)

    list_background_tasks = list_background_tasks_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def list_unseen_background_updates_async(self, session_id: str) -> TxFn[list[BackgroundTaskRow]]:
        """The background commands whose latest change the model has not been shown yet,
        oldest change first.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return lambda c: _rt.list_unseen(c, session_id)

    list_unseen_background_updates = list_unseen_background_updates_async.blocking()  # 0.11 API

    @store_op()
    def mark_background_seen_async(
        self, session_id: str, task_ids: Iterable[str], *, statuses: Mapping[str, str] | None = None
    ) -> TxFn[int]:
        """Mark these commands' latest change as shown to the model; how many changed. With
        ``statuses`` (task id → the status shown), a command that changed since stays unseen.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        ids = [str(t) for t in task_ids]
        shown = dict(statuses) if statuses is not None else None
        return lambda c: _rt.mark_seen(c, session_id, ids, shown)

    mark_background_seen = mark_background_seen_async.blocking()  # 0.11 API

    @store_op()
    def start_background_task_async(
        self, session_id: str, *, task_id: str, command: str, deadline_at: int, max_running: int
    ) -> TxFn[BackgroundTaskRow | list[BackgroundTaskRow]]:
        """Record a command about to start in this process (``running``, already seen), or,
        when the session runs ``max_running`` commands already, return those and write nothing.

        Raises:
            SessionNotFoundError: Unknown session.
            ValueError: An empty ``task_id`` or ``command``.
        """
        for name, value in (("task_id", task_id), ("command", command)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"start_background_task needs a non-empty str {name}")
        return lambda c: _rt.start_background(
            c, session_id, task_id=task_id, command=command, deadline_at=deadline_at, max_running=max_running
        )

    @store_op()
    def set_background_child_async(self, session_id: str, task_id: str, pid: int, start: int | None) -> TxFn[None]:
        """Record the process a running command started (its process group leader)."""
        return lambda c: _rt.set_child(c, session_id, task_id, pid, start)

    @store_op()
    def reap_lost_background_async(
        self, session_id: str, *, alive: Collection[str] | None = None
    ) -> TxFn[list[LostCommand]]:
        """Mark ``lost`` the session's running commands no process runs any more (see
        :func:`._runtime_sql.reap_lost`; ``alive``: the commands this process runs, None when
        unknown); return them. Each becomes an unseen update.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        running_here = None if alive is None else frozenset(alive)
        return lambda c: _rt.reap_lost(c, session_id, running_here)

    reap_lost_background = reap_lost_background_async.blocking()

    @store_op()
    def background_updates_async(
        self, session_id: str, *, alive: Collection[str] | None = None
    ) -> TxFn[list[BackgroundTaskRow]]:
        """In one transaction: mark ``lost`` the commands no process runs any more, then return
        the updates the model has not been shown, oldest first (not marked seen: mark them once
        the model's answer is stored).

        Raises:
            SessionNotFoundError: Unknown session.
        """
        running_here = None if alive is None else frozenset(alive)
        return lambda c: _rt.unseen_updates(c, session_id, running_here)

    background_updates = background_updates_async.blocking()
