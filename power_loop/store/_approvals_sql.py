"""The store's rules for approval requests: open, decide once, list, drop with their calls.

An approval request is a row of ``approvals`` keyed by its token, written in the transaction
that ends the run ``awaiting_approval`` (:class:`~.rows.OpenApproval`), with the call's
``tool_calls`` row marked ``awaiting_approval``. Its status moves once:

* ``pending`` → ``approved``: the call goes back to ``pending`` and the next run of the
  session runs it without asking again;
* ``pending`` → ``denied`` or ``expired`` (approving after ``expires_at``): the call gets its
  answer (status ``skipped``, the denial or the expiry as its result) in the same statement
  group, so the history stays valid whatever runs next;
* ``pending`` / ``approved`` → ``superseded``: a fresh request replaced it (the tool's
  ``precheck`` found the world changed), or ``aborted``: its call was answered another way
  (``abort_pending``, ``send(heal_pending=True)``, a failed run).

The decision is ``UPDATE ... WHERE token = ? AND status = 'pending'`` with a row-count check,
so of two processes deciding one token at the same moment exactly one wins; the other gets
:class:`~power_loop.errors.ApprovalError`. Deciding refuses a session a run holds
(:class:`~power_loop.errors.SessionBusyError`: the caller waits and retries).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from ..approvals import ApprovalRequest
from ..errors import ApprovalError, CorruptRecordError, SessionBusyError
from ._leases import lease_is_live
from ._sessions_sql import now_ms, refuse_if_paused, session_ref, text
from .protocols import Tx
from .rows import ApprovalDecision

__all__ = [
    "approval_state",
    "decide",
    "denied_text",
    "drop_approvals",
    "expired_text",
    "list_pending",
    "open_approval",
]

_COLUMNS = (
    "a.token, a.tool_call_id, a.tool_name, a.arguments, a.expires_at, a.reason, a.created_at, a.status, s.session_id"
)
# Requests issued together belong to one model turn: its call order breaks ties.
_FROM = (
    "approvals a JOIN sessions s ON s.id = a.session LEFT JOIN tool_calls t ON t.session = a.session "
    "AND t.tool_call_id = a.tool_call_id AND t.result_seq IS NULL"
)
_ORDER = "ORDER BY a.created_at, a.session, t.assistant_seq, t.position, a.token"


def denied_text(tool_name: str, note: str | None) -> str:
    """The result the model sees for a call a human denied."""
    base = f"[denied: a human did not approve this call to {tool_name}; it did not run]"
    return f"{base} Note from the reviewer: {note}" if note else base


def expired_text(tool_name: str) -> str:
    """The result the model sees for a call whose approval came after its expiry."""
    return f"[approval expired: the approval of this call to {tool_name} came after its expiry; it did not run]"


def _request(row: Mapping[str, Any]) -> ApprovalRequest:
    try:
        arguments = json.loads(row["arguments"])
    except ValueError as exc:
        raise CorruptRecordError(
            f"the arguments of approval request {row['token']!r} are not valid JSON ({exc}); delete or repair "
            "the row in the approvals table",
            session_id=str(row["session_id"]),
        ) from exc
    return ApprovalRequest(
        token=str(row["token"]),
        session_id=str(row["session_id"]),
        tool_call_id=str(row["tool_call_id"]),
        tool_name=str(row["tool_name"]),
        arguments=arguments if isinstance(arguments, dict) else {},
        expires_at=int(row["expires_at"]),
        reason=row["reason"],
        created_at=int(row["created_at"]),
    )


def open_approval(tx: Tx, key: int, request: ApprovalRequest, now: int) -> None:
    """Insert ``request``; an undecided or approved earlier request of the same call is
    superseded (its token stops working)."""
    tx.execute(
        "UPDATE approvals SET status = 'superseded', decided_at = ? "
        "WHERE session = ? AND tool_call_id = ? AND status IN ('pending', 'approved')",
        (now, key, request.tool_call_id),
    )
    tx.execute(
        "INSERT INTO approvals (token, session, tool_call_id, tool_name, arguments, status, reason, created_at, "
        "expires_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?)",
        (
            request.token,
            key,
            request.tool_call_id,
            request.tool_name,
            json.dumps(dict(request.arguments), ensure_ascii=False, default=str),
            text(request.reason),
            request.created_at or now,
            request.expires_at,
        ),
    )


def approval_state(
    tx: Tx, key: int, call_ids: Iterable[str]
) -> tuple[tuple[ApprovalRequest, ...], frozenset[str], frozenset[str]]:
    """Of the session's open calls ``call_ids``: the undecided requests (oldest first), the
    ids of approved calls, and the ids of calls answered as expired."""
    ids = list(call_ids)
    if not ids:
        return (), frozenset(), frozenset()
    marks = ", ".join("?" for _ in ids)
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM {_FROM} "
        f"WHERE a.session = ? AND a.tool_call_id IN ({marks}) AND a.status IN ('pending', 'approved', 'expired') "
        f"{_ORDER}",
        (key, *ids),
    ).fetchall()
    undecided = tuple(_request(r) for r in rows if r["status"] == "pending")
    approved = frozenset(str(r["tool_call_id"]) for r in rows if r["status"] == "approved")
    expired = frozenset(str(r["tool_call_id"]) for r in rows if r["status"] == "expired")
    return undecided, approved, expired


def list_pending(tx: Tx, session_id: str | None) -> list[ApprovalRequest]:
    """Undecided requests (expired ones included), oldest first (a model turn's in call
    order); of one session or all."""
    where = "a.status = 'pending'"
    params: tuple[str, ...] = ()
    if session_id is not None:
        where, params = "a.status = 'pending' AND s.session_id = ?", (session_id,)
    rows = tx.execute(
        f"SELECT {_COLUMNS} FROM {_FROM} WHERE {where} {_ORDER}",
        params,
    ).fetchall()
    return [_request(r) for r in rows]


def drop_approvals(tx: Tx, key: int, call_ids: Iterable[str], now: int) -> None:
    """Mark the undecided or approved requests of ``call_ids`` aborted: their calls were
    answered another way."""
    ids = list(call_ids)
    if not ids:
        return
    marks = ", ".join("?" for _ in ids)
    tx.execute(
        f"UPDATE approvals SET status = 'aborted', decided_at = ? WHERE session = ? AND tool_call_id IN ({marks}) "
        "AND status IN ('pending', 'approved')",
        (now, key, *ids),
    )


def decide(tx: Tx, session_id: str, token: str, *, approved: bool, note: str | None) -> ApprovalDecision:
    """Decide the request ``token`` of ``session_id`` (see the module docstring).

    Raises:
        SessionNotFoundError: Unknown session.
        ApprovalError: No request has that token in this session, or it was decided already.
        SessionBusyError: A run holds the session.
        SessionPausedError: The session is paused (nothing is decided).
    """
    key = session_ref(tx, session_id).key
    row = tx.execute(
        f"SELECT {_COLUMNS}, a.session FROM approvals a JOIN sessions s ON s.id = a.session WHERE a.token = ?",
        (token,),
    ).fetchone()
    if row is None or int(row["session"]) != key:
        raise ApprovalError(
            f"session {session_id!r} has no approval request with this token; use a token from "
            "result.approvals or loop.list_approvals() of that session",
            token=token,
            session_id=session_id,
        )
    status = str(row["status"])
    if status != "pending":
        raise ApprovalError(_decided_message(session_id, status), token=token, session_id=session_id)
    refuse_if_paused(tx, key, session_id)  # nothing decided: the token stays usable after resume
    now = now_ms()
    owner = lease_is_live(tx, key, now)[0]
    if owner is not None:
        raise SessionBusyError(
            f"session {session_id!r} has a run in progress ({owner}); decide its approvals once that run has ended",
            session_id=session_id,
        )
    request = _request(row)
    outcome: Literal["approved", "denied", "expired"] = (
        "expired" if now > request.expires_at else ("approved" if approved else "denied")
    )
    changed = tx.execute(
        "UPDATE approvals SET status = ?, note = ?, decided_at = ? WHERE token = ? AND status = 'pending'",
        (outcome, text(note), now, token),
    ).rowcount
    if changed != 1:  # another transaction decided it between the read and this update
        raise ApprovalError(_decided_message(session_id, "decided"), token=token, session_id=session_id)
    if outcome == "approved":
        tx.execute(
            "UPDATE tool_calls SET status = 'pending', updated_at = ? "
            "WHERE session = ? AND tool_call_id = ? AND result_seq IS NULL",
            (now, key, request.tool_call_id),
        )
    else:
        answer = expired_text(request.tool_name) if outcome == "expired" else denied_text(request.tool_name, note)
        tx.execute(
            "UPDATE tool_calls SET status = 'skipped', result = ?, is_error = 1, updated_at = ? "
            "WHERE session = ? AND tool_call_id = ? AND result_seq IS NULL",
            (text(answer), now, key, request.tool_call_id),
        )
    return ApprovalDecision(outcome=outcome, request=request, remaining=tuple(list_pending(tx, session_id)))


def _decided_message(session_id: str, status: str) -> str:
    if status == "superseded":
        return (
            f"this approval token of session {session_id!r} was replaced by a fresh request (the tool's precheck "
            "found that something changed); decide the new one from loop.list_approvals()"
        )
    if status == "aborted":
        return f"this approval token of session {session_id!r} no longer applies: its call was answered another way"
    return f"this approval token of session {session_id!r} was used already ({status}); a token decides once"
