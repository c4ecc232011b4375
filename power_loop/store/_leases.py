"""The SQL of session leases: who holds a session, with which fencing number, until when.

Like :mod:`power_loop.store._sql`, every function runs inside a transaction opened by its
caller, on the thread that owns the connection.
"""

from __future__ import annotations

import sqlite3
import time

from ..errors import LeaseLostError
from ._holder import current_holder, holder_is_dead
from .rows import LeaseClaim

__all__ = ["acquire_lease", "check_lease", "lease_is_live", "release_lease", "renew_lease", "verify_lease"]


def lease_is_live(conn: sqlite3.Connection, session_id: str, now: int) -> tuple[str | None, int]:
    """(owner, expires_at) of a live lease, or (None, 0).

    A lease is live until it expires, or until its holder is found dead on this machine.
    """
    row = conn.execute(
        "SELECT owner, expires_at, holder_host, holder_pid, holder_start FROM session_leases WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if row and row[0] is not None and int(row[1]) > now and not holder_is_dead(row[2], row[3], row[4]):
        return str(row[0]), int(row[1])
    return None, 0


def check_lease(conn: sqlite3.Connection, session_id: str, lease: LeaseClaim, now: int, *, renew: bool = True) -> None:
    """Raise LeaseLostError unless ``lease`` still holds the session; with ``renew``, extend it."""
    row = conn.execute("SELECT owner, fence FROM session_leases WHERE session_id = ?", (session_id,)).fetchone()
    verify_lease(session_id, lease, row[0] if row else None, int(row[1]) if row else None)
    if renew:
        conn.execute("UPDATE session_leases SET expires_at = ? WHERE session_id = ?", (now + lease.ttl_ms, session_id))


def verify_lease(session_id: str, lease: LeaseClaim, owner: str | None, fence: int | None) -> None:
    """Raise LeaseLostError unless the stored ``owner`` and ``fence`` are ``lease``'s."""
    if owner != lease.owner or fence != lease.fence:
        holder = f"fence {fence}" if owner is not None else "nobody holds it now"
        raise LeaseLostError(
            f"this run's lease on session {session_id!r} (fence {lease.fence}) was taken over by another "
            f"run ({holder}) after it expired; the write was refused so histories do not interleave. "
            "Send again to continue on the current history.",
            session_id=session_id,
        )


def acquire_lease(conn: sqlite3.Connection, session_id: str, lease: LeaseClaim, now: int, previous_fence: int) -> int:
    """Take the session for ``lease`` with this process as the holder; return the new fence."""
    fence = previous_fence + 1
    me = current_holder()  # this process: the one whose death frees the lease at once
    conn.execute(
        "INSERT INTO session_leases (session_id, owner, fence, expires_at, holder_host, holder_pid, holder_start) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT(session_id) DO UPDATE SET owner = excluded.owner, fence = excluded.fence, "
        "expires_at = excluded.expires_at, holder_host = excluded.holder_host, holder_pid = excluded.holder_pid, "
        "holder_start = excluded.holder_start",
        (session_id, lease.owner, fence, now + lease.ttl_ms, me.host, me.pid, me.start),
    )
    return fence


def release_lease(conn: sqlite3.Connection, session_id: str, owner: str) -> None:
    """Release a lease held by ``owner`` (a no-op when someone else holds it)."""
    conn.execute(
        "UPDATE session_leases SET owner = NULL, expires_at = 0 WHERE session_id = ? AND owner = ?",
        (session_id, owner),
    )


def renew_lease(conn: sqlite3.Connection, session_id: str, lease: LeaseClaim) -> None:
    """Extend a held lease.

    Raises:
        LeaseLostError: Another run took the lease.
    """
    check_lease(conn, session_id, lease, int(time.time() * 1000))
