"""The rules of per-session runtime state and background commands, written once over a
:class:`~power_loop.store.protocols.Tx` and run inside a transaction by the caller.

Invariants:

* A value is stored as JSON text; one that JSON cannot encode is refused before anything is
  written.
* Every write of runtime state and every new or changed command bumps
  ``sessions.runtime_rev`` in the same transaction (marking updates seen does not), so a run
  beginning on a session that never used these tables knows it without reading them.
* A background command records the identity of the process running it and its deadline
  (start + time limit). :func:`reap_lost` marks ``lost``, once, as an unseen update, a
  ``running`` command no process runs any more: its process is provably dead (same
  machine), or it is this process and no longer runs it, or its deadline passed
  :data:`LOST_GRACE_MS` ago (a process on another machine). A restart reports it, never
  forgets it; on this machine the command's process group, if still running, is killed (it
  would run on without a time limit).
* :func:`start_background` counts the running commands and inserts the new one after
  updating the session row, so two starts of one session cannot both pass the limit.
* Upserts use ``INSERT ... ON CONFLICT ... DO UPDATE`` and rows are read by column name, so
  the SQL runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from ._holder import current_holder, holder_is_dead, process_start
from ._sessions_sql import now_ms, session_ref, text
from .protocols import Tx
from .rows import BackgroundTaskRow, LostCommand

__all__ = [
    "LOST_GRACE_MS",
    "LOST_NOTE",
    "delete_state",
    "encode_value",
    "get_background",
    "get_state",
    "list_background",
    "list_unseen",
    "mark_seen",
    "reap_lost",
    "set_child",
    "set_state",
    "start_background",
    "unseen_updates",
    "upsert_background",
]

_COLUMNS = "task_id, command, status, return_code, output_tail, output_path, seen, created_at, updated_at"
MAX_TAIL_CHARS = 4000
"""The longest ``output_tail`` kept (the end of the output wins)."""
LOST_GRACE_MS = 60_000
"""How long past its time limit a command of another machine may stay ``running``."""
LOST_NOTE = "\n[lost: the process running it ended before it finished; its outcome is unknown]"
"""Appended to the output of a command marked ``lost``."""


def encode_value(key: object, value: object) -> str:
    """``value`` as JSON text; TypeError naming the key when JSON cannot encode it."""
    if not isinstance(key, str) or not key:
        raise ValueError("a runtime-state key must be a non-empty str")
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"runtime state {key!r} must be JSON-encodable: {exc}") from exc


def _bump(tx: Tx, key: int) -> None:
    tx.execute("UPDATE sessions SET runtime_rev = runtime_rev + 1 WHERE id = ?", (key,))


def get_state(tx: Tx, session_id: str, key: str, default: Any = None) -> Any:
    """The decoded value under ``key``, or ``default``."""
    ref = session_ref(tx, session_id)
    row = tx.execute("SELECT value FROM runtime_state WHERE session = ? AND key = ?", (ref.key, key)).fetchone()
    if row is None or row["value"] is None:
        return default
    return json.loads(row["value"])


def set_state(tx: Tx, session_id: str, key: str, encoded: str) -> None:
    """Store ``encoded`` (from :func:`encode_value`) under ``key``."""
    ref = session_ref(tx, session_id)
    tx.execute(
        "INSERT INTO runtime_state (session, key, value, updated_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (session, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        (ref.key, key, encoded, now_ms()),
    )
    _bump(tx, ref.key)


def delete_state(tx: Tx, session_id: str, key: str) -> bool:
    """Remove ``key``; False when it was not set."""
    ref = session_ref(tx, session_id)
    gone = tx.execute("DELETE FROM runtime_state WHERE session = ? AND key = ?", (ref.key, key)).rowcount
    if gone:
        _bump(tx, ref.key)
    return bool(gone)


def _row(session_id: str, row: Any) -> BackgroundTaskRow:
    code = row["return_code"]
    return BackgroundTaskRow(
        session_id=session_id,
        task_id=str(row["task_id"]),
        command=str(row["command"]),
        status=str(row["status"]),
        return_code=None if code is None else int(code),
        output_tail=row["output_tail"],
        output_path=row["output_path"],
        seen=bool(row["seen"]),
        created_at=int(row["created_at"]),
        updated_at=int(row["updated_at"]),
    )


def upsert_background(
    tx: Tx,
    session_id: str,
    *,
    task_id: str,
    command: str,
    status: str,
    return_code: int | None,
    output_tail: str | None,
    output_path: str | None,
    seen: bool,
) -> BackgroundTaskRow:
    """Create or update a background command (0.11's ``upsert_background_task``); the row as
    stored. A ``running`` row records this process as the one running it. An update is an
    unseen change unless ``seen``."""
    ref = session_ref(tx, session_id)
    now = now_ms()
    tail = text(output_tail[-MAX_TAIL_CHARS:]) if output_tail is not None else None
    holder = current_holder() if status == "running" else None
    tx.execute(
        "INSERT INTO background_tasks (session, task_id, command, status, return_code, output_tail, output_path, "
        "seen, holder_host, holder_pid, holder_start, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (session, task_id) DO UPDATE SET command = excluded.command, status = excluded.status, "
        "return_code = excluded.return_code, output_tail = excluded.output_tail, "
        "output_path = excluded.output_path, seen = excluded.seen, holder_host = excluded.holder_host, "
        "holder_pid = excluded.holder_pid, holder_start = excluded.holder_start, updated_at = excluded.updated_at",
        (
            ref.key,
            task_id,
            text(command),
            status,
            return_code,
            tail,
            output_path,
            1 if seen else 0,
            holder.host if holder else None,
            holder.pid if holder else None,
            holder.start if holder else None,
            now,
            now,
        ),
    )
    _bump(tx, ref.key)
    return _get(tx, ref.key, session_id, task_id)


def _get(tx: Tx, key: int, session_id: str, task_id: str) -> BackgroundTaskRow:
    row = tx.execute(f"SELECT {_COLUMNS} FROM background_tasks WHERE session = ? AND task_id = ?", (key, task_id))
    return _row(session_id, row.fetchone())


def start_background(
    tx: Tx, session_id: str, *, task_id: str, command: str, deadline_at: int, max_running: int
) -> BackgroundTaskRow | list[BackgroundTaskRow]:
    """Record a command about to start (``running``, seen: the model started it), unless the
    session already runs ``max_running``: then those, and nothing is written.

    The session row is updated first, so concurrent starts of one session queue on its row
    lock: the count and the insert cannot interleave on any backend.
    """
    ref = session_ref(tx, session_id)
    _bump(tx, ref.key)
    running = [r for r in list_background(tx, session_id) if r.status == "running"]
    if len(running) >= max_running:
        return running
    holder = current_holder()
    now = now_ms()
    tx.execute(
        "INSERT INTO background_tasks (session, task_id, command, status, seen, holder_host, holder_pid, "
        "holder_start, deadline_at, created_at, updated_at) VALUES (?, ?, ?, 'running', 1, ?, ?, ?, ?, ?, ?)",
        (ref.key, task_id, text(command), holder.host, holder.pid, holder.start, deadline_at, now, now),
    )
    return _get(tx, ref.key, session_id, task_id)


def set_child(tx: Tx, session_id: str, task_id: str, pid: int, start: int | None) -> None:
    """Record the process a running command started (so a reaper on this machine can stop it)."""
    ref = session_ref(tx, session_id)
    tx.execute(
        "UPDATE background_tasks SET child_pid = ?, child_start = ? WHERE session = ? AND task_id = ? "
        "AND status = 'running'",
        (pid, start, ref.key, task_id),
    )


def get_background(tx: Tx, session_id: str, task_id: str) -> BackgroundTaskRow | None:
    """One background command, or None."""
    ref = session_ref(tx, session_id)
    row = tx.execute(
        f"SELECT {_COLUMNS} FROM background_tasks WHERE session = ? AND task_id = ?", (ref.key, task_id)
    ).fetchone()
    return None if row is None else _row(session_id, row)


def list_background(tx: Tx, session_id: str) -> list[BackgroundTaskRow]:
    """The session's background commands, oldest first."""
    ref = session_ref(tx, session_id)
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM background_tasks WHERE session = ? ORDER BY created_at, task_id", (ref.key,)
    ).fetchall()
    return [_row(session_id, r) for r in rows]


def list_unseen(tx: Tx, session_id: str) -> list[BackgroundTaskRow]:
    """The background commands whose latest change the model has not been shown, oldest first."""
    ref = session_ref(tx, session_id)
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM background_tasks WHERE session = ? AND seen = 0 ORDER BY updated_at, task_id",
        (ref.key,),
    ).fetchall()
    return [_row(session_id, r) for r in rows]


def mark_seen(tx: Tx, session_id: str, task_ids: Iterable[str], statuses: Mapping[str, str] | None = None) -> int:
    """Mark these commands' latest change shown; how many rows changed. With ``statuses``
    (task id → the status shown), a command whose status changed since is left unseen."""
    ref = session_ref(tx, session_id)
    changed = 0
    for task_id in dict.fromkeys(task_ids):
        shown = None if statuses is None else statuses.get(task_id)
        condition, extra = ("", ()) if shown is None else (" AND status = ?", (shown,))
        changed += tx.execute(
            f"UPDATE background_tasks SET seen = 1 WHERE session = ? AND task_id = ? AND seen = 0{condition}",
            (ref.key, str(task_id), *extra),
        ).rowcount
    return changed


def reap_lost(tx: Tx, session_id: str, alive: Collection[str] | None = None) -> list[LostCommand]:
    """Mark ``lost`` the session's running commands that no process runs any more: the process
    that started them is provably dead; or it is this process and the command is not among
    ``alive`` (the commands this process runs; None: unknown, this process's are kept); or
    their time limit passed more than :data:`LOST_GRACE_MS` ago without an end being recorded
    (a process on another machine)."""
    ref = session_ref(tx, session_id)
    me = current_holder()
    now = now_ms()
    rows = tx.execute(
        "SELECT task_id, holder_host, holder_pid, holder_start, deadline_at, child_pid, child_start "
        "FROM background_tasks WHERE session = ? AND status = 'running'",
        (ref.key,),
    ).fetchall()
    lost: list[LostCommand] = []
    for r in rows:
        host, pid, start, deadline = r["holder_host"], r["holder_pid"], r["holder_start"], r["deadline_at"]
        mine = me.host is not None and host == me.host and pid == me.pid and start == me.start
        if (
            (mine and alive is not None and r["task_id"] not in alive)
            or (not mine and holder_is_dead(host, pid, start))
            or (deadline is not None and int(deadline) + LOST_GRACE_MS < now)
        ):
            lost.append(LostCommand(str(r["task_id"]), host, r["child_pid"], r["child_start"]))
    for item in lost:
        tx.execute(
            "UPDATE background_tasks SET status = 'lost', seen = 0, updated_at = ?, output_tail = "
            "COALESCE(output_tail, '') || ? WHERE session = ? AND task_id = ? AND status = 'running'",
            (now, LOST_NOTE, ref.key, item.task_id),
        )
    if lost:
        _bump(tx, ref.key)
        _stop(lost, me.host)
    return lost


def _stop(lost: list[LostCommand], host: str | None) -> None:
    """Kill the process group of each lost command still running on this machine (its pid
    not reused: the same start time). Idempotent: were the transaction rolled back, the next
    reaper finds the command lost again."""
    for item in lost:
        if item.child_pid is None or host is None or item.host != host:
            continue
        if process_start(int(item.child_pid)) == item.child_start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(item.child_pid), signal.SIGKILL)


def unseen_updates(tx: Tx, session_id: str, alive: Collection[str] | None = None) -> list[BackgroundTaskRow]:
    """Reap lost commands, then the updates the model has not been shown (not marked: the
    caller marks them once the model's answer to them is committed)."""
    reap_lost(tx, session_id, alive)
    return list_unseen(tx, session_id)
