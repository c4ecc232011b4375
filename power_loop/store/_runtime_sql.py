"""The rules of per-session runtime state and background commands, written once over a
:class:`~power_loop.store.protocols.Tx` and run inside a transaction by the caller.

Invariants:

* A value is stored as JSON text; one that JSON cannot encode is refused before anything is
  written.
* Every write bumps ``sessions.runtime_rev`` in the same transaction, so a run beginning on a
  session that never used these tables knows it without reading them.
* A background command records the identity of the process running it. A ``running``
  command whose process is provably dead (same machine, pid gone or reused) is marked
  ``lost`` by :func:`reap_lost`, once, as an unseen update: a restart reports it, never
  forgets it. A command of another machine stays ``running``: its liveness cannot be proved.
* Upserts use ``INSERT ... ON CONFLICT ... DO UPDATE`` and rows are read by column name, so
  the SQL runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ._holder import current_holder, holder_is_dead
from ._sessions_sql import now_ms, session_ref, text
from .protocols import Tx
from .rows import BackgroundTaskRow

__all__ = [
    "delete_state",
    "encode_value",
    "get_background",
    "get_state",
    "list_background",
    "list_unseen",
    "mark_seen",
    "reap_lost",
    "set_state",
    "take_unseen",
    "upsert_background",
]

_COLUMNS = "task_id, command, status, return_code, output_tail, output_path, seen, created_at, updated_at"
MAX_TAIL_CHARS = 4000
"""The longest ``output_tail`` kept (the end of the output wins)."""


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
    """Create or update a background command; the row as stored.

    A ``running`` row records this process as the one running it. An update is an unseen
    change unless ``seen``.
    """
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
    row = tx.execute(
        f"SELECT {_COLUMNS} FROM background_tasks WHERE session = ? AND task_id = ?", (ref.key, task_id)
    ).fetchone()
    return _row(session_id, row)


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


def mark_seen(tx: Tx, session_id: str, task_ids: Iterable[str]) -> int:
    """Mark these commands' latest change shown; how many rows changed."""
    ref = session_ref(tx, session_id)
    changed = 0
    for task_id in dict.fromkeys(task_ids):
        changed += tx.execute(
            "UPDATE background_tasks SET seen = 1 WHERE session = ? AND task_id = ? AND seen = 0",
            (ref.key, str(task_id)),
        ).rowcount
    return changed


def reap_lost(tx: Tx, session_id: str) -> int:
    """Mark ``lost`` the session's running commands whose process is provably dead."""
    ref = session_ref(tx, session_id)
    rows = tx.execute(
        "SELECT task_id, holder_host, holder_pid, holder_start FROM background_tasks "
        "WHERE session = ? AND status = 'running'",
        (ref.key,),
    ).fetchall()
    lost = [r["task_id"] for r in rows if holder_is_dead(r["holder_host"], r["holder_pid"], r["holder_start"])]
    now = now_ms()
    for task_id in lost:
        tx.execute(
            "UPDATE background_tasks SET status = 'lost', seen = 0, updated_at = ?, output_tail = "
            "COALESCE(output_tail, '') || ? WHERE session = ? AND task_id = ? AND status = 'running'",
            (now, "\n[lost: the process running it ended before it finished]", ref.key, task_id),
        )
    if lost:
        _bump(tx, ref.key)
    return len(lost)


def take_unseen(tx: Tx, session_id: str, *, mark: bool) -> list[BackgroundTaskRow]:
    """Reap lost commands, then return the unseen updates (marking them seen with ``mark``):
    what a runtime projector shows in a round, in one transaction."""
    reap_lost(tx, session_id)
    updates = list_unseen(tx, session_id)
    if mark and updates:
        mark_seen(tx, session_id, [u.task_id for u in updates])
    return updates
