"""The store's rules for a session's history: appending messages (seqs from the session's
counter), the tool-call lifecycle, usage rows, pending calls and open questions, loading
(the compaction base and the messages after it) and compaction.

Functions take the session's integer key, read by their caller earlier in the same
transaction (:mod:`._sessions_sql`), and run inside that transaction through a
:class:`~power_loop.store.protocols.Tx`, in portable SQL. Runs are referenced by their
number within the session (``runs.run``); :class:`RunNumbers` maps the engine's text run
ids to it.

A tool call's name and arguments live once, in its assistant message; the ``tool_calls``
row keeps only the lifecycle (status, a finished call's result until it is appended).
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorruptRecordError, SessionNotFoundError
from ..messages import (
    MESSAGE_JSON_KEY,
    AssistantMessage,
    Message,
    ToolResultMessage,
    message_from_dict,
    message_from_json,
    message_json,
)
from ._approvals_sql import approval_state, drop_approvals
from ._budgets_sql import settle as settle_budget
from ._sessions_sql import text
from .protocols import Tx
from .rows import (
    RESOLVED_STATUSES,
    Append,
    Compact,
    LoadedHistory,
    PendingCall,
    PendingState,
    RecordLLMCall,
    StoredMessage,
    UpdateToolCall,
)

__all__ = [
    "RunNumbers",
    "allocate_seqs",
    "answer_pending",
    "append_messages",
    "apply_compaction",
    "close_interactions",
    "decode_message",
    "encode_message",
    "load_base",
    "load_history",
    "load_transcript",
    "next_seq",
    "open_interactions",
    "pending_state",
    "prune_compacted",
    "record_llm_call",
    "update_tool_call",
]


def encode_message(message: Message) -> str:
    """The stored JSON of a message (its dict view, encoded once per message object)."""
    return message_json(message)


def decode_message(session_id: str, seq: int, body: str) -> Message:
    """Decode a stored message.

    Raises:
        CorruptRecordError: The row is not valid JSON or not a valid message.
    """
    try:
        return message_from_json(body)
    except (ValueError, TypeError, AttributeError) as exc:
        raise CorruptRecordError(
            f"message seq {seq} of session {session_id!r} cannot be decoded ({exc}); the row was "
            "changed outside power_loop. Fix or delete that row, or close the session.",
            session_id=session_id,
            seq=seq,
        ) from exc


class RunNumbers:
    """Text run id → the run's number in the session, for one transaction.

    Known numbers (the run a ``begin`` inserts, the one its caller read) are given up front;
    others are looked up newest first, which finds a live run's row at once. An id without a
    run row maps to None (the rows it writes carry no run).
    """

    __slots__ = ("key", "known", "tx")

    def __init__(self, tx: Tx, key: int, known: dict[str, int | None] | None = None) -> None:
        self.tx = tx
        self.key = key
        self.known: dict[str, int | None] = known or {}

    def __call__(self, run_id: str | None) -> int | None:
        if run_id is None:
            return None
        if run_id not in self.known:
            row = self.tx.execute(
                "SELECT run FROM runs WHERE session = ? AND run_id = ? ORDER BY run DESC LIMIT 1", (self.key, run_id)
            ).fetchone()
            self.known[run_id] = None if row is None else int(row["run"])
        return self.known[run_id]


# --------------------------------------------------------------------------- loading


def load_base(tx: Tx, key: int) -> tuple[str | None, int]:
    """(summary, through_seq) of the session's latest compaction, or (None, 0)."""
    row = tx.execute(
        "SELECT summary, through_seq FROM compactions WHERE session = ? ORDER BY id DESC LIMIT 1", (key,)
    ).fetchone()
    return (str(row["summary"]), int(row["through_seq"])) if row else (None, 0)


def load_history(tx: Tx, key: int, session_id: str, *, include_compacted: bool = False) -> list[StoredMessage]:
    """The session's context (summary + later messages), or with ``include_compacted`` every
    stored message including folded ones (the audit view, without summaries)."""
    if include_compacted:
        rows = tx.execute("SELECT seq, body, compacted FROM messages WHERE session = ? ORDER BY seq", (key,)).fetchall()
        return [
            StoredMessage(r["seq"], decode_message(session_id, r["seq"], r["body"]), bool(r["compacted"])) for r in rows
        ]
    summary, through = load_base(tx, key)
    rows = tx.execute(
        "SELECT seq, body FROM messages WHERE session = ? AND seq > ? ORDER BY seq", (key, through)
    ).fetchall()
    stored = [StoredMessage(r["seq"], decode_message(session_id, r["seq"], r["body"])) for r in rows]
    if summary is not None:
        from ..compaction import summary_message

        stored.insert(0, StoredMessage(through, summary_message(summary)))
    return stored


def load_transcript(tx: Tx, key: int, session_id: str) -> LoadedHistory:
    """The loadable history as parallel lists, decoded in one JSON parse.

    Loading a long history is the kernel's biggest per-message cost; parsing every body in a
    single ``json.loads`` of a JSON array roughly halves it. A row that does not decode is
    found by decoding row by row, to name it in the error.
    """
    summary, through = load_base(tx, key)
    rows = tx.execute(
        "SELECT seq, body FROM messages WHERE session = ? AND seq > ? ORDER BY seq", (key, through)
    ).fetchall()
    seqs: list[int] = [r["seq"] for r in rows]
    bodies: list[str] = [r["body"] for r in rows]
    try:
        datas = json.loads("[" + ",".join(bodies) + "]")
        messages = [message_from_dict(d) for d in datas]
    except (ValueError, TypeError, AttributeError):
        messages = [decode_message(session_id, seq, body) for seq, body in zip(seqs, bodies, strict=True)]
    for message, body in zip(messages, bodies, strict=True):
        message.__dict__[MESSAGE_JSON_KEY] = body
    if summary is not None:
        from ..compaction import summary_message

        seqs.insert(0, through)
        messages.insert(0, summary_message(summary))
    return LoadedHistory(seqs=seqs, messages=messages)


# --------------------------------------------------------------------------- pending calls


def _calls_of(tx: Tx, key: int, session_id: str, seq: int) -> tuple[dict[str, tuple[str, str]], int | None]:
    """The calls (id → (name, arguments)) of the assistant message at ``seq``, and its run."""
    row = tx.execute("SELECT body, run FROM messages WHERE session = ? AND seq = ?", (key, seq)).fetchone()
    if row is None:
        raise CorruptRecordError(
            f"session {session_id!r} has unanswered tool calls of assistant message seq {seq}, but that message "
            "is gone (deleted outside power_loop); delete its rows in the tool_calls table",
            session_id=session_id,
            seq=seq,
        )
    message = decode_message(session_id, seq, row["body"])
    calls = message.tool_calls if isinstance(message, AssistantMessage) else ()
    return {c.id: (c.name, c.arguments) for c in calls}, row["run"]


def pending_state(tx: Tx, key: int, session_id: str) -> PendingState | None:
    """Unanswered calls of the session, or None."""
    rows = tx.execute(
        "SELECT tool_call_id, status, result, is_error, position, assistant_seq "
        "FROM tool_calls WHERE session = ? AND result_seq IS NULL ORDER BY assistant_seq, position",
        (key,),
    ).fetchall()
    if not rows:
        return None
    assistant_seq = int(rows[0]["assistant_seq"])
    named: dict[int, dict[str, tuple[str, str]]] = {}
    run: int | None = None
    for seq in dict.fromkeys(int(r["assistant_seq"]) for r in rows):
        named[seq], found_run = _calls_of(tx, key, session_id, seq)
        if seq == assistant_seq:
            run = found_run
    calls = tuple(
        PendingCall(
            tool_call_id=r["tool_call_id"],
            name=named[int(r["assistant_seq"])].get(r["tool_call_id"], ("", "{}"))[0],
            arguments=named[int(r["assistant_seq"])].get(r["tool_call_id"], ("", "{}"))[1],
            status=r["status"],
            result=r["result"],
            is_error=bool(r["is_error"]),
            position=r["position"],
        )
        for r in rows
    )
    # The round of the model call that made these calls: its usage row was written with the
    # assistant message (newest first; the session's index makes this a short backward scan).
    found = None
    if run is not None:
        found = tx.execute(
            "SELECT round_index FROM llm_calls WHERE session = ? AND run = ? AND purpose = 'round' "
            "ORDER BY id DESC LIMIT 1",
            (key, run),
        ).fetchone()
    undecided, approved, expired = approval_state(tx, key, (c.tool_call_id for c in calls))
    return PendingState(
        assistant_seq=assistant_seq,
        calls=calls,
        interactions=tuple(open_interactions(tx, key, session_id)),
        round_index=int(found["round_index"]) if found else 0,
        approvals=undecided,
        approved=approved,
        expired=expired,
    )


def has_open_calls(tx: Tx, key: int) -> bool:
    """Whether the session has a tool call without a result message."""
    row = tx.execute("SELECT 1 AS x FROM tool_calls WHERE session = ? AND result_seq IS NULL LIMIT 1", (key,))
    return row.fetchone() is not None


def open_interactions(tx: Tx, key: int, session_id: str) -> list[dict[str, Any]]:
    """Open ``request_user_input`` questions of a session, oldest first."""
    rows = tx.execute(
        # Questions opened together belong to one assistant message: its call order breaks ties.
        "SELECT i.body FROM interactions i LEFT JOIN tool_calls t ON t.session = i.session "
        "AND t.tool_call_id = i.tool_call_id AND t.result_seq IS NULL "
        "WHERE i.session = ? AND i.status = 'open' ORDER BY i.created_at, t.assistant_seq, t.position",
        (key,),
    ).fetchall()
    try:
        return [json.loads(r["body"]) for r in rows]
    except ValueError as exc:
        raise CorruptRecordError(
            f"an open question of session {session_id!r} is not valid JSON ({exc}); delete or repair the row in "
            "the interactions table",
            session_id=session_id,
        ) from exc


def close_interactions(tx: Tx, key: int, now: int) -> None:
    """Mark open questions superseded (their tool calls were answered another way)."""
    tx.execute(
        "UPDATE interactions SET status = 'superseded', answered_at = ? WHERE session = ? AND status = 'open'",
        (now, key),
    )


def answer_pending(
    tx: Tx,
    key: int,
    session_id: str,
    text: str,
    *,
    run: int | None,
    now: int,
    pending: PendingState | None = None,
) -> list[StoredMessage]:
    """Answer every unresolved call: a call that finished gets its stored result, the others
    ``text`` (status ``aborted``). Open questions and approval requests on them are closed."""
    pending = pending if pending is not None else pending_state(tx, key, session_id)
    if pending is None:
        return []
    results = []
    statuses = {}
    for c in pending.calls:
        finished = c.status in RESOLVED_STATUSES and c.result is not None
        results.append(
            ToolResultMessage(
                tool_call_id=c.tool_call_id,
                name=c.name,
                content=c.result if finished and c.result is not None else text,
                is_error=c.is_error if finished else True,
            )
        )
        statuses[c.tool_call_id] = c.status if finished else "aborted"
    stored = append_messages(tx, key, Append(results, statuses), now, run=run)
    close_interactions(tx, key, now)
    if pending.approvals or pending.approved:
        drop_approvals(tx, key, statuses, now)
    return stored


# --------------------------------------------------------------------------- appending


def next_seq(tx: Tx, key: int) -> int:
    """The seq the session's next message gets (read only)."""
    row = tx.execute("SELECT last_seq FROM sessions WHERE id = ?", (key,)).fetchone()
    return int(row["last_seq"] if row else 0) + 1


def allocate_seqs(tx: Tx, key: int, count: int) -> int:
    """Reserve ``count`` seqs from the session's counter; return the first.

    The increment and the read are one statement in the caller's transaction, and the
    ``UPDATE`` holds the session row until it ends, so two writers never get the same seq.
    """
    row = tx.execute(
        "UPDATE sessions SET last_seq = last_seq + ? WHERE id = ? RETURNING last_seq", (count, key)
    ).fetchone()
    if row is None:
        raise SessionNotFoundError(str(key))
    return int(row["last_seq"]) - count + 1


def append_messages(
    tx: Tx, key: int, op: Append, now: int, *, run: int | None, first_seq: int | None = None
) -> list[StoredMessage]:
    """Apply an :class:`Append` (written by run number ``run``); return the stored messages
    with their seqs. ``first_seq``: the seqs were allocated already by the caller, from this
    one on (in the statement that checked the run's fence)."""
    if not op.messages:
        return []
    seq = allocate_seqs(tx, key, len(op.messages)) if first_seq is None else first_seq
    stored: list[StoredMessage] = []
    for message in op.messages:
        tx.execute(
            "INSERT INTO messages (session, seq, body, run, created_at) VALUES (?, ?, ?, ?, ?)",
            (key, seq, encode_message(message), run, now),
        )
        if isinstance(message, AssistantMessage) and message.tool_calls:
            for i, c in enumerate(message.tool_calls):
                tx.execute(
                    "INSERT INTO tool_calls (session, assistant_seq, tool_call_id, position, status, updated_at) "
                    "VALUES (?, ?, ?, ?, 'pending', ?)",
                    (key, seq, c.id, i, now),
                )
        elif isinstance(message, ToolResultMessage):
            status = op.statuses.get(message.tool_call_id) or ("failed" if message.is_error else "done")
            tx.execute(
                "UPDATE tool_calls SET result_seq = ?, status = ?, result = NULL, is_error = ?, updated_at = ? "
                "WHERE session = ? AND tool_call_id = ? AND result_seq IS NULL",
                (seq, status, int(message.is_error), now, key, message.tool_call_id),
            )
        stored.append(StoredMessage(seq, message))
        seq += 1
    return stored


def update_tool_call(tx: Tx, key: int, op: UpdateToolCall, now: int) -> None:
    """Apply an :class:`UpdateToolCall` to the call's open row."""
    tx.execute(
        "UPDATE tool_calls SET status = ?, result = COALESCE(?, result), is_error = ?, updated_at = ? "
        "WHERE session = ? AND tool_call_id = ? AND result_seq IS NULL",
        (op.status, text(op.result), int(op.is_error), now, key, op.tool_call_id),
    )


def record_llm_call(tx: Tx, key: int, op: RecordLLMCall, now: int, *, run: int | None) -> None:
    """Apply a :class:`RecordLLMCall`."""
    u = op.usage
    tx.execute(
        "INSERT INTO llm_calls (session, run, round_index, purpose, model, prompt_tokens, completion_tokens, "
        "cache_read_tokens, reasoning_tokens, total_tokens, duration_ms, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            key,
            run,
            op.round_index,
            op.purpose,
            op.model,
            u.prompt_tokens,
            u.completion_tokens,
            u.cache_read_tokens,
            u.reasoning_tokens,
            u.total_tokens,
            op.duration_ms,
            now,
        ),
    )
    if op.holds:  # the shared budgets' holds of this call, settled with its record
        settle_budget(tx, op.holds, u.total_tokens, op.cost_nano, now)


# --------------------------------------------------------------------------- compaction


def apply_compaction(tx: Tx, key: int, op: Compact, now: int, *, run: int | None) -> None:
    """Record a new load base and mark the rows it folds (one transaction with the caller)."""
    tx.execute(
        "UPDATE messages SET compacted = 1 WHERE session = ? AND seq <= ? AND compacted = 0", (key, op.through_seq)
    )
    tx.execute(
        "INSERT INTO compactions (session, through_seq, summary, before_tokens, after_tokens, run, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (key, op.through_seq, op.summary, op.before_tokens, op.after_tokens, run, now),
    )


def prune_compacted(tx: Tx, session_id: str | None, *, older_than_ms: int | None, keep_last: int | None) -> int:
    """Delete folded message rows (all sessions when ``session_id`` is None) that are older than
    ``older_than_ms`` and (when given) not among the ``keep_last`` most recent folded rows of
    their session; summaries older than each session's latest go too. Returns the number of
    messages deleted."""
    if session_id is not None:
        row = tx.execute("SELECT id FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
        keys = [int(row["id"])] if row else []
    else:
        folded = tx.execute("SELECT DISTINCT session FROM messages WHERE compacted = 1").fetchall()
        keys = [int(r["session"]) for r in folded]
    deleted = 0
    for key in keys:
        limits = ["compacted = 1"]
        params: list[Any] = [key]
        if older_than_ms is not None:
            limits.append("created_at < ?")
            params.append(older_than_ms)
        beyond_kept = True
        if keep_last is not None:
            cutoff = tx.execute(
                "SELECT seq FROM messages WHERE session = ? AND compacted = 1 ORDER BY seq DESC LIMIT 1 OFFSET ?",
                (key, keep_last),
            ).fetchone()
            beyond_kept = cutoff is not None
            if cutoff is not None:
                limits.append("seq <= ?")
                params.append(int(cutoff["seq"]))
        if beyond_kept:
            cursor = tx.execute(f"DELETE FROM messages WHERE session = ? AND {' AND '.join(limits)}", params)
            deleted += cursor.rowcount
        tx.execute(
            "DELETE FROM tool_calls WHERE session = ? AND result_seq IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session = tool_calls.session AND m.seq = tool_calls.assistant_seq)",
            (key,),
        )
        tx.execute(
            "DELETE FROM compactions WHERE session = ? AND id < (SELECT MAX(id) FROM compactions WHERE session = ?)",
            (key, key),
        )
    return deleted
