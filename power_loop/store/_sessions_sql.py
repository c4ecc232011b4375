"""The store's rules for session rows: create, read, delete, the per-transaction session
reference (integer key, version, event seq), the version bump, and the stats columns.

Inside the store a session is its integer key ``sessions.id``; the text ``session_id`` is
what the API speaks. Every rule turns the text id into the key with the first statement it
runs anyway (the read of the session's version, or its state), never from a cache, so a
key always belongs to the session named in this transaction. Keys are ``AUTOINCREMENT``:
a deleted session's key is never handed to a new one.

Every function runs inside a transaction opened by its caller, through a
:class:`~power_loop.store.protocols.Tx`, in portable SQL (see :mod:`._sql`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

from ..errors import SessionNotFoundError, SessionPausedError
from ..messages import scrub_surrogates
from ._holder import holder_is_dead
from .protocols import Tx
from .rows import RunTotals, SessionRow, SessionStatsRow, session_kind, stored_kind

__all__ = [
    "SESSION_COLUMNS",
    "pause_session",
    "refuse_if_paused",
    "SessionRef",
    "SessionState",
    "add_stats",
    "create_session",
    "delete_session",
    "get_session",
    "get_stats",
    "list_stats",
    "now_ms",
    "session_ref",
    "session_row",
    "session_state",
    "text",
    "touch",
]


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def text(value: str | None) -> str | None:
    """Free text to store (a prompt, a note, an answer, an error): lone surrogates, which no
    UTF-8 column accepts, and NUL characters, which PostgreSQL's text refuses, become U+FFFD
    (on every backend, so both keep the same text; see
    :func:`~power_loop.messages.scrub_surrogates`)."""
    if value is None:
        return None
    scrubbed = scrub_surrogates(value)
    return scrubbed.replace("\x00", "\ufffd") if "\x00" in scrubbed else scrubbed


SESSION_COLUMNS = (
    "session_id, metadata, system_prompt, parent_session_id, kind, lifecycle, depth, created_at, updated_at"
)


def session_row(row: Any) -> SessionRow:
    """A :class:`SessionRow` from a row holding :data:`SESSION_COLUMNS`."""
    raw = row["metadata"]
    try:
        metadata = json.loads(raw) if raw else {}
    except ValueError:
        metadata = {"_corrupt_metadata": raw}
    return SessionRow(
        session_id=row["session_id"],
        metadata=metadata,
        system_prompt=row["system_prompt"],
        parent_session_id=row["parent_session_id"],
        kind=session_kind(row["kind"]),
        lifecycle=row["lifecycle"],
        depth=row["depth"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def get_session(tx: Tx, session_id: str) -> SessionRow | None:
    """The session row, or None."""
    row = tx.execute(f"SELECT {SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return session_row(row) if row else None


def create_session(
    tx: Tx,
    session_id: str,
    *,
    metadata: Mapping[str, Any],
    system_prompt: str | None,
    parent_session_id: str | None,
    kind: str,
    lifecycle: str | None,
    depth: int,
) -> None:
    """Insert a session row.

    Raises:
        ValueError: The id exists already, or holds a NUL character (which no backend's text
            keeps alike).
        SessionNotFoundError: The parent does not exist.
    """
    if "\x00" in session_id:
        raise ValueError(f"session id {session_id!r} holds a NUL character; use an id made of printable text")
    if parent_session_id is not None and get_session(tx, parent_session_id) is None:
        raise SessionNotFoundError(parent_session_id)
    now = now_ms()
    cursor = tx.execute(
        "INSERT INTO sessions (session_id, created_at, updated_at, metadata, system_prompt, "
        "parent_session_id, kind, lifecycle, depth) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (session_id) DO NOTHING",
        (
            session_id,
            now,
            now,
            json.dumps(dict(metadata)),
            text(system_prompt),
            parent_session_id,
            text(stored_kind(kind)),
            text(lifecycle),
            depth,
        ),
    )
    if cursor.rowcount != 1:
        raise ValueError(f"session id {session_id!r} already exists")


def delete_session(tx: Tx, session_id: str, *, cascade: bool) -> int:
    """Delete a session (and, with ``cascade``, its sub-agent sessions); return the count.

    A ``detached`` sub-agent outlives its parent: it is unlinked (its parent set to NULL)
    instead of deleted, and keeps its own children.
    """
    if get_session(tx, session_id) is None:
        return 0
    ids = [session_id]
    if cascade:
        frontier = [session_id]
        while frontier:
            marks = ",".join("?" * len(frontier))
            rows = tx.execute(
                f"SELECT session_id, lifecycle FROM sessions WHERE parent_session_id IN ({marks})", frontier
            ).fetchall()
            kept = [r["session_id"] for r in rows if r["lifecycle"] == "detached"]
            if kept:
                tx.execute(
                    f"UPDATE sessions SET parent_session_id = NULL WHERE session_id IN ({','.join('?' * len(kept))})",
                    kept,
                )
            frontier = [r["session_id"] for r in rows if r["lifecycle"] != "detached"]
            ids += frontier
    else:
        tx.execute("UPDATE sessions SET parent_session_id = NULL WHERE parent_session_id = ?", (session_id,))
    tx.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))  # children cascade
    return len(ids)


class SessionRef(NamedTuple):
    """A session as one transaction sees it: its key, text id, version and event seq."""

    key: int
    session_id: str
    version: int
    event_seq: int


def session_ref(tx: Tx, session_id: str) -> SessionRef:
    """The session's key, version and event seq.

    Raises:
        SessionNotFoundError: Unknown session.
    """
    row = tx.execute("SELECT id, version, event_seq FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:
        raise SessionNotFoundError(session_id)
    return SessionRef(int(row["id"]), session_id, int(row["version"]), int(row["event_seq"]))


class SessionState:
    """A session's row with its lease and counters, read once per transaction."""

    __slots__ = ("event_seq", "expires_at", "fence", "key", "last_run", "owner", "row", "version")

    def __init__(self, row: Any) -> None:
        self.row = row
        self.key = int(row["id"])
        self.version = int(row["version"])
        self.event_seq = int(row["event_seq"])
        self.last_run = int(row["last_run"])
        self.owner: str | None = row["lease_owner"]
        self.fence = int(row["fence"])
        self.expires_at = int(row["lease_expires_at"])

    def session(self) -> SessionRow:
        """The session's public row."""
        return session_row(self.row)

    def live_owner(self, now: int) -> str | None:
        """The owner of an unexpired lease whose holder is not provably dead, else None."""
        if self.owner is None or self.expires_at <= now:
            return None
        dead = holder_is_dead(self.row["holder_host"], self.row["holder_pid"], self.row["holder_start"])
        return None if dead else self.owner


def session_state(tx: Tx, session_id: str) -> SessionState:
    """The session's row, lease and counters.

    Raises:
        SessionNotFoundError: Unknown session.
    """
    row = tx.execute(
        f"SELECT id, {SESSION_COLUMNS}, version, event_seq, last_run, lease_owner, fence, lease_expires_at, "
        "holder_host, holder_pid, holder_start, runtime_rev, paused_at, chain_wall_ms "
        "FROM sessions WHERE session_id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        raise SessionNotFoundError(session_id)
    return SessionState(row)


def touch(
    tx: Tx,
    key: int,
    *,
    bump: bool,
    event_seq: int | None,
    now: int,
    last_run: int | None = None,
    unpause: bool = False,
    reset_wall: bool = False,
) -> None:
    """Mark the session written: ``version`` + 1 when its history changed, ``updated_at``,
    the event seq high-water mark, and (a run beginning) the run counter; ``unpause`` clears
    a pause, ``reset_wall`` the wall-clock a continued run carries (a new run starts)."""
    seq = event_seq or 0
    runs = "" if last_run is None else ", last_run = ?"
    runs += ", paused_at = NULL" if unpause else ""
    runs += ", chain_wall_ms = 0" if reset_wall else ""
    tx.execute(
        "UPDATE sessions SET version = version + ?, updated_at = ?, "
        f"event_seq = CASE WHEN event_seq < ? THEN ? ELSE event_seq END{runs} WHERE id = ?",
        (1 if bump else 0, now, seq, seq, *(() if last_run is None else (last_run,)), key),
    )


# --------------------------------------------------------------------------- stats


def add_stats(
    tx: Tx,
    key: int,
    totals: RunTotals,
    *,
    started: int,
    now: int,
    release_owner: str | None = None,
    touched: tuple[bool, int | None] | None = None,
) -> None:
    """Add a run's totals to the session's stats columns (and its time to the wall-clock a
    continued run carries), in one statement with the rest of the row's end-of-run changes:
    the lease released when ``release_owner`` still holds it,
    and, with ``touched=(bump, event_seq)``, what :func:`touch` would write."""
    u = totals.usage
    params: list[object] = [
        int(totals.count_send),
        totals.rounds,
        totals.llm_calls,
        totals.tool_calls,
        u.prompt_tokens,
        u.completion_tokens,
        u.total_tokens,
        u.cache_read_tokens,
        u.reasoning_tokens,
        started,
        started,
        now,
    ]
    extra = ""
    if release_owner is not None:
        # Both CASEs read the row as it was: the lease is released only if still this owner's.
        extra += (
            ", lease_owner = CASE WHEN lease_owner = ? THEN NULL ELSE lease_owner END"
            ", lease_expires_at = CASE WHEN lease_owner = ? THEN 0 ELSE lease_expires_at END"
        )
        params += [release_owner, release_owner]
    if touched is not None:
        bump, event_seq = touched
        seq = event_seq or 0
        extra += (
            ", version = version + ?, updated_at = ?, event_seq = CASE WHEN event_seq < ? THEN ? ELSE event_seq END"
        )
        params += [1 if bump else 0, now, seq, seq]
    # `activity` is a store-wide counter: ties of the millisecond clock cannot reorder sessions.
    tx.execute(
        "UPDATE sessions SET sends = sends + ?, rounds = rounds + ?, llm_calls = llm_calls + ?, "
        "tool_calls = tool_calls + ?, prompt_tokens = prompt_tokens + ?, completion_tokens = completion_tokens + ?, "
        "total_tokens = total_tokens + ?, cache_read_tokens = cache_read_tokens + ?, "
        "reasoning_tokens = reasoning_tokens + ?, first_send_at = COALESCE(first_send_at, ?), last_send_at = ?, "
        "stats_at = ?, activity = (SELECT COALESCE(MAX(activity), 0) + 1 FROM sessions), "
        f"chain_wall_ms = chain_wall_ms + ?{extra} WHERE id = ?",
        (*params[:12], max(0, now - started), *params[12:], key),
    )


_STATS_COLUMNS = (
    "session_id, sends, rounds, llm_calls, tool_calls, prompt_tokens, completion_tokens, total_tokens, "
    "first_send_at, last_send_at, stats_at, cache_read_tokens, reasoning_tokens"
)


def _stats_row(r: Any) -> SessionStatsRow:
    return SessionStatsRow(
        session_id=r["session_id"],
        sends=r["sends"],
        rounds=r["rounds"],
        llm_calls=r["llm_calls"],
        tool_calls=r["tool_calls"],
        prompt_tokens=r["prompt_tokens"],
        completion_tokens=r["completion_tokens"],
        total_tokens=r["total_tokens"],
        first_send_at=r["first_send_at"],
        last_send_at=r["last_send_at"],
        updated_at=r["stats_at"],
        cache_read_tokens=r["cache_read_tokens"],
        reasoning_tokens=r["reasoning_tokens"],
    )


def get_stats(tx: Tx, session_id: str) -> SessionStatsRow | None:
    """Stats of one session, or None before its first finished run."""
    row = tx.execute(
        f"SELECT {_STATS_COLUMNS} FROM sessions WHERE session_id = ? AND stats_at IS NOT NULL", (session_id,)
    ).fetchone()
    return _stats_row(row) if row else None


def list_stats(tx: Tx) -> list[SessionStatsRow]:
    """Stats of every session with a finished run, most recently active first."""
    rows = tx.execute(
        f"SELECT {_STATS_COLUMNS} FROM sessions WHERE stats_at IS NOT NULL ORDER BY activity DESC"
    ).fetchall()
    return [_stats_row(r) for r in rows]


def pause_session(tx: Tx, session_id: str, now: int) -> bool:
    """Mark the session paused (kept when it already is); whether a run holds it now (that
    run stops at its next round boundary).

    Raises:
        SessionNotFoundError: Unknown session.
    """
    row = tx.execute(
        "UPDATE sessions SET paused_at = COALESCE(paused_at, ?) WHERE session_id = ? "
        "RETURNING lease_owner, lease_expires_at, holder_host, holder_pid, holder_start",
        (now, session_id),
    ).fetchone()
    if row is None:
        raise SessionNotFoundError(session_id)
    return (
        row["lease_owner"] is not None
        and int(row["lease_expires_at"]) > now
        and not holder_is_dead(row["holder_host"], row["holder_pid"], row["holder_start"])
    )


def refuse_if_paused(tx: Tx, key: int, session_id: str) -> None:
    """Raise :class:`~power_loop.errors.SessionPausedError` when the session is paused
    (before anything is written: only ``resume`` goes on with a paused session)."""
    row = tx.execute("SELECT paused_at FROM sessions WHERE id = ?", (key,)).fetchone()
    if row is not None and row["paused_at"] is not None:
        raise SessionPausedError(session_id, paused_at=int(row["paused_at"]))
