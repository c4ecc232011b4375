"""The rules of session leases: who holds a session, with which fencing number, until when.

The lease lives in the session's own row (``sessions.lease_owner``, ``fence``,
``lease_expires_at`` and the holder's identity); the rules address it by the session's
integer key, read earlier in the same transaction.

Like :mod:`power_loop.store._sql`, every function runs inside a transaction opened by its
caller, through a :class:`~power_loop.store.protocols.Tx`. Nothing here relies on a
database-wide write lock: taking a lease is an ``UPDATE ... WHERE fence = ?`` (or an insert
that does nothing on conflict) whose row count says whether this transaction won; checking a
run's lease is an ``UPDATE ... WHERE owner = ? AND fence = ?`` whose row count says whether
the run still holds it (and which, on a server database, locks the lease row until commit).
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import LeaseLostError
from ._holder import current_holder, holder_is_dead
from .protocols import Tx
from .rows import LeaseClaim

__all__ = [
    "acquire_lease",
    "check_lease",
    "lease_is_live",
    "release_lease",
    "release_lease_of",
    "renew_lease",
    "verify_lease",
]


def lease_is_live(tx: Tx, key: int, now: int) -> tuple[str | None, int]:
    """(owner, expires_at) of the session's live lease, or (None, 0).

    A lease is live until it expires, or until its holder is found dead on this machine.
    """
    # Every caller acts on the answer in the same transaction (queue an item only while a run
    # holds the session, refuse while one does): on a server database the row stays locked
    # until the commit, so a run cannot end in between unseen. (SQLite's write transaction
    # already excludes every other writer.)
    lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
    row = tx.execute(
        f"SELECT lease_owner, lease_expires_at, holder_host, holder_pid, holder_start FROM sessions WHERE id = ?{lock}",
        (key,),
    ).fetchone()
    return live_lease(row, now)


def live_lease(row: Any, now: int) -> tuple[str | None, int]:
    """(owner, expires_at) of a row holding the lease columns, when that lease is live."""
    if (
        row is not None
        and row["lease_owner"] is not None
        and int(row["lease_expires_at"]) > now
        and not holder_is_dead(row["holder_host"], row["holder_pid"], row["holder_start"])
    ):
        return str(row["lease_owner"]), int(row["lease_expires_at"])
    return None, 0


def check_lease(tx: Tx, key: int, session_id: str, lease: LeaseClaim, now: int, *, renew: bool = True) -> None:
    """Raise LeaseLostError unless ``lease`` still holds the session; with ``renew``, extend it.

    One conditional update does both: it matches only the run's own owner and fence.
    """
    if renew:
        sql = "UPDATE sessions SET lease_expires_at = ? WHERE id = ? AND lease_owner = ? AND fence = ?"
        params: tuple[object, ...] = (now + lease.ttl_ms, key, lease.owner, lease.fence)
    else:
        sql = "UPDATE sessions SET lease_expires_at = lease_expires_at WHERE id = ? AND lease_owner = ? AND fence = ?"
        params = (key, lease.owner, lease.fence)
    if tx.execute(sql, params).rowcount == 1:
        return
    row = tx.execute("SELECT lease_owner, fence FROM sessions WHERE id = ?", (key,)).fetchone()
    raise lease_lost(session_id, lease, row["lease_owner"] if row else None, int(row["fence"]) if row else None)


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


def acquire_lease(tx: Tx, key: int, lease: LeaseClaim, now: int, previous_fence: int) -> int | None:
    """Take the session for ``lease`` with this process as the holder; return the new fence,
    or None when another transaction took the lease since ``previous_fence`` was read."""
    fence = previous_fence + 1
    me = current_holder()  # this process: the one whose death frees the lease at once
    cursor = tx.execute(
        "UPDATE sessions SET lease_owner = ?, fence = ?, lease_expires_at = ?, holder_host = ?, holder_pid = ?, "
        "holder_start = ? WHERE id = ? AND fence = ?",
        (lease.owner, fence, now + lease.ttl_ms, me.host, me.pid, me.start, key, previous_fence),
    )
    return fence if cursor.rowcount == 1 else None


def release_lease(tx: Tx, key: int, owner: str) -> None:
    """Release a lease held by ``owner`` (a no-op when someone else holds it)."""
    tx.execute(
        "UPDATE sessions SET lease_owner = NULL, lease_expires_at = 0 WHERE id = ? AND lease_owner = ?", (key, owner)
    )


def release_lease_of(tx: Tx, session_id: str, owner: str) -> None:
    """:func:`release_lease` by the session's text id (a no-op for an unknown session)."""
    tx.execute(
        "UPDATE sessions SET lease_owner = NULL, lease_expires_at = 0 WHERE session_id = ? AND lease_owner = ?",
        (session_id, owner),
    )


def renew_lease(tx: Tx, session_id: str, lease: LeaseClaim) -> None:
    """Extend a held lease.

    Raises:
        LeaseLostError: Another run took the lease.
    """
    row = tx.execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:  # deleted meanwhile: nobody holds it
        raise lease_lost(session_id, lease, None, None)
    check_lease(tx, int(row["id"]), session_id, lease, int(time.time() * 1000))
