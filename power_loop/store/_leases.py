"""The rules of session leases: who holds a session, with which fencing number, until when.

Like :mod:`power_loop.store._sql`, every function runs inside a transaction opened by its
caller, through a :class:`~power_loop.store.protocols.Tx`. Nothing here relies on a
database-wide write lock: taking a lease is an ``UPDATE ... WHERE fence = ?`` (or an insert
that does nothing on conflict) whose row count says whether this transaction won; checking a
run's lease is an ``UPDATE ... WHERE owner = ? AND fence = ?`` whose row count says whether
the run still holds it (and which, on a server database, locks the lease row until commit).
"""

from __future__ import annotations

import time

from ..errors import LeaseLostError
from ._holder import current_holder, holder_is_dead
from .protocols import Tx
from .rows import LeaseClaim

__all__ = ["acquire_lease", "check_lease", "lease_is_live", "release_lease", "renew_lease", "verify_lease"]


def lease_is_live(tx: Tx, session_id: str, now: int) -> tuple[str | None, int]:
    """(owner, expires_at) of a live lease, or (None, 0).

    A lease is live until it expires, or until its holder is found dead on this machine.
    """
    row = tx.execute(
        "SELECT owner, expires_at, holder_host, holder_pid, holder_start FROM session_leases WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if (
        row is not None
        and row["owner"] is not None
        and int(row["expires_at"]) > now
        and not holder_is_dead(row["holder_host"], row["holder_pid"], row["holder_start"])
    ):
        return str(row["owner"]), int(row["expires_at"])
    return None, 0


def check_lease(tx: Tx, session_id: str, lease: LeaseClaim, now: int, *, renew: bool = True) -> None:
    """Raise LeaseLostError unless ``lease`` still holds the session; with ``renew``, extend it.

    One conditional update does both: it matches only the run's own owner and fence.
    """
    if renew:
        sql = "UPDATE session_leases SET expires_at = ? WHERE session_id = ? AND owner = ? AND fence = ?"
        params: tuple[object, ...] = (now + lease.ttl_ms, session_id, lease.owner, lease.fence)
    else:
        sql = "UPDATE session_leases SET expires_at = expires_at WHERE session_id = ? AND owner = ? AND fence = ?"
        params = (session_id, lease.owner, lease.fence)
    if tx.execute(sql, params).rowcount == 1:
        return
    row = tx.execute("SELECT owner, fence FROM session_leases WHERE session_id = ?", (session_id,)).fetchone()
    raise lease_lost(session_id, lease, row["owner"] if row else None, int(row["fence"]) if row else None)


def verify_lease(session_id: str, lease: LeaseClaim, owner: str | None, fence: int | None) -> None:
    """Raise LeaseLostError unless the stored ``owner`` and ``fence`` are ``lease``'s."""
    if owner != lease.owner or fence != lease.fence:
        raise lease_lost(session_id, lease, owner, fence)


def lease_lost(session_id: str, lease: LeaseClaim, owner: str | None, fence: int | None) -> LeaseLostError:
    """The error for a write whose run no longer holds the session."""
    holder = f"fence {fence}" if owner is not None else "nobody holds it now"
    return LeaseLostError(
        f"this run's lease on session {session_id!r} (fence {lease.fence}) was taken over by another "
        f"run ({holder}) after it expired; the write was refused so histories do not interleave. "
        "Send again to continue on the current history.",
        session_id=session_id,
    )


def acquire_lease(
    tx: Tx, session_id: str, lease: LeaseClaim, now: int, previous_fence: int, *, exists: bool
) -> int | None:
    """Take the session for ``lease`` with this process as the holder; return the new fence,
    or None when another transaction took the lease since ``previous_fence`` was read.

    ``exists`` says whether the session had a lease row when it was read.
    """
    fence = previous_fence + 1
    me = current_holder()  # this process: the one whose death frees the lease at once
    if exists:
        cursor = tx.execute(
            "UPDATE session_leases SET owner = ?, fence = ?, expires_at = ?, holder_host = ?, holder_pid = ?, "
            "holder_start = ? WHERE session_id = ? AND fence = ?",
            (lease.owner, fence, now + lease.ttl_ms, me.host, me.pid, me.start, session_id, previous_fence),
        )
    else:
        cursor = tx.execute(
            "INSERT INTO session_leases (session_id, owner, fence, expires_at, holder_host, holder_pid, holder_start) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (session_id) DO NOTHING",
            (session_id, lease.owner, fence, now + lease.ttl_ms, me.host, me.pid, me.start),
        )
    return fence if cursor.rowcount == 1 else None


def release_lease(tx: Tx, session_id: str, owner: str) -> None:
    """Release a lease held by ``owner`` (a no-op when someone else holds it)."""
    tx.execute(
        "UPDATE session_leases SET owner = NULL, expires_at = 0 WHERE session_id = ? AND owner = ?",
        (session_id, owner),
    )


def renew_lease(tx: Tx, session_id: str, lease: LeaseClaim) -> None:
    """Extend a held lease.

    Raises:
        LeaseLostError: Another run took the lease.
    """
    check_lease(tx, session_id, lease, int(time.time() * 1000))
