"""The store's rules for sub-agents started in the background.

A background child is a session of its own with a ``subagent_tasks`` row naming its parent.
Its life, in transactions:

1. :func:`start_background` creates the child session, its task row (``running``) and its
   task as the first item of its inbox, in one transaction. Run again with the same child id
   (a spawn repeated by ``resume``), it changes nothing and says so.
2. A run of the child drains the task from its inbox. The transaction that ends one of its
   runs also calls :func:`deliver`: the child's answer goes into the parent's inbox and the
   row becomes ``delivered``, guarded by ``status = 'running'``, so the answer enters the
   parent's inbox exactly once, whichever process ran the child.
3. When a process dies mid-child, nothing is lost: the task row stays ``running``.
   :func:`orphan_children` finds such children (no live lease, no task waiting in their
   inbox) so a timer runner of any process resumes them.

Functions run inside the caller's transaction through a
:class:`~power_loop.store.protocols.Tx`; the SQL is portable (no rowid, rows read by name).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._inbox_sql import inbox_body
from ._leases import live_lease
from ._sessions_sql import create_session, now_ms, session_ref
from .protocols import Tx
from .rows import BackgroundChild

__all__ = [
    "RESULT_SOURCE",
    "TASK_SOURCE",
    "deliver",
    "list_background",
    "orphan_children",
    "result_message",
    "start_background",
    "stop_background",
]

TASK_SOURCE = "task"
"""Inbox source of a background child's task (drained as its first user message)."""
RESULT_SOURCE = "subagent"
"""Inbox source of a background child's answer in its parent's inbox."""

_TOKEN_COLUMNS = ("prompt_tokens", "completion_tokens", "total_tokens", "cache_read_tokens", "reasoning_tokens")


def result_message(child_session_id: str, status: str, final_text: str) -> str:
    """The message a parent reads when a background child ends."""
    return f'<subagent session="{child_session_id}" status="{status}">\n{final_text}\n</subagent>'


def start_background(
    tx: Tx,
    child_session_id: str,
    *,
    parent_session_id: str,
    task: str,
    metadata: Mapping[str, Any],
    system_prompt: str | None,
    lifecycle: str,
    depth: int,
) -> bool:
    """Create a background child with its task waiting in its inbox; False when the child
    exists already (nothing is changed then).

    Raises:
        SessionNotFoundError: The parent does not exist.
    """
    exists = tx.execute("SELECT id FROM sessions WHERE session_id = ?", (child_session_id,)).fetchone()
    if exists is not None:
        return False
    parent = session_ref(tx, parent_session_id).key
    create_session(
        tx,
        child_session_id,
        metadata=metadata,
        system_prompt=system_prompt,
        parent_session_id=parent_session_id,
        kind="subagent",
        lifecycle=lifecycle,
        depth=depth,
    )
    child = session_ref(tx, child_session_id).key
    now = now_ms()
    tx.execute(
        "INSERT INTO subagent_tasks (session, parent, status, created_at) VALUES (?, ?, 'running', ?)",
        (child, parent, now),
    )
    tx.execute(
        "INSERT INTO inbox (session, source, body, ref, created_at) VALUES (?, ?, ?, ?, ?)",
        (child, TASK_SOURCE, inbox_body(TASK_SOURCE, task), parent_session_id, now),
    )
    return True


def deliver(tx: Tx, key: int, session_id: str, *, status: str, final_text: str, now: int) -> str | None:
    """Put a background child's answer into its parent's inbox, once; the parent's session id,
    or None when ``key`` is no running background child (a foreground child, a main session,
    or a child delivered or stopped already)."""
    row = tx.execute(
        "SELECT p.session_id AS parent, p.id AS parent_key FROM subagent_tasks t JOIN sessions p ON p.id = t.parent "
        "WHERE t.session = ? AND t.status = 'running'",
        (key,),
    ).fetchone()
    if row is None:
        return None
    marked = tx.execute(
        "UPDATE subagent_tasks SET status = 'delivered', ended_at = ? WHERE session = ? AND status = 'running'",
        (now, key),
    ).rowcount
    if marked != 1:
        return None
    body = inbox_body(RESULT_SOURCE, result_message(session_id, status, final_text))
    tx.execute(
        "INSERT INTO inbox (session, source, body, ref, created_at) VALUES (?, ?, ?, ?, ?)",
        (int(row["parent_key"]), RESULT_SOURCE, body, session_id, now),
    )
    # The child's tokens count in its parent's stats, as a foreground child's do.
    sums = ", ".join(f"{c} = {c} + (SELECT c.{c} FROM sessions c WHERE c.id = ?)" for c in _TOKEN_COLUMNS)
    tx.execute(f"UPDATE sessions SET {sums} WHERE id = ?", (*[key] * len(_TOKEN_COLUMNS), int(row["parent_key"])))
    return str(row["parent"])


def orphan_children(tx: Tx, *, limit: int) -> list[str]:
    """Background children still ``running`` that nothing is running: no live lease, no task
    waiting in their inbox (a waiting task is an orphan inbox, woken as such), not paused
    (only an explicit ``resume`` lifts a pause)."""
    now = now_ms()
    rows = tx.execute(
        "SELECT s.session_id, s.lease_owner, s.lease_expires_at, s.holder_host, s.holder_pid, s.holder_start "
        "FROM subagent_tasks t JOIN sessions s ON s.id = t.session WHERE t.status = 'running' "
        "AND s.paused_at IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM inbox i WHERE i.session = t.session AND i.consumed_at IS NULL) "
        "ORDER BY t.created_at LIMIT ?",
        (limit,),
    ).fetchall()
    # A lease is live until it expires or its holder is found dead on this machine.
    return [r["session_id"] for r in rows if live_lease(r, now)[0] is None]


def list_background(tx: Tx, parent_session_id: str) -> list[BackgroundChild]:
    """The background children of a session, oldest first."""
    rows = tx.execute(
        "SELECT s.session_id, s.metadata, t.status, t.created_at, t.ended_at FROM subagent_tasks t "
        "JOIN sessions s ON s.id = t.session JOIN sessions p ON p.id = t.parent "
        "WHERE p.session_id = ? ORDER BY t.created_at, s.id",
        (parent_session_id,),
    ).fetchall()
    out = []
    for r in rows:
        metadata = json.loads(r["metadata"] or "{}")
        out.append(
            BackgroundChild(
                session_id=r["session_id"],
                name=str((metadata.get("subagent") or {}).get("name", "subagent")),
                status=r["status"],
                created_at=int(r["created_at"]),
                ended_at=None if r["ended_at"] is None else int(r["ended_at"]),
            )
        )
    return out


def stop_background(tx: Tx, parent_session_id: str, child_session_id: str) -> bool:
    """Mark a running background child of ``parent_session_id`` stopped (it is not resumed and
    its answer is not delivered); False when it is not a running child of that session.

    Raises:
        SessionNotFoundError: Unknown parent session.
    """
    parent = session_ref(tx, parent_session_id).key
    row = tx.execute("SELECT id FROM sessions WHERE session_id = ?", (child_session_id,)).fetchone()
    if row is None:
        return False
    marked = tx.execute(
        "UPDATE subagent_tasks SET status = 'stopped', ended_at = ? WHERE session = ? AND parent = ? "
        "AND status = 'running'",
        (now_ms(), int(row["id"]), parent),
    ).rowcount
    if marked:
        tx.execute(
            "UPDATE inbox SET consumed_at = ? WHERE session = ? AND source = ? AND consumed_at IS NULL",
            (now_ms(), int(row["id"]), TASK_SOURCE),
        )
    return marked == 1
