"""The store's rules for sessions, history, runs, the inbox and compaction, written once
over a :class:`~power_loop.store.protocols.Tx`: the begin-run state machine, fenced writes,
answering pending calls, draining the inbox (exactly once), the follow-up format and the
compaction base.

Every function runs inside a transaction opened by its caller (the backend adapter), on
whichever thread owns the connection. Nothing here touches the event loop. The SQL is
portable and does not rely on a database-wide write lock:

* message seqs come from the session row's ``last_seq`` counter, incremented in the same
  transaction as the insert (``UPDATE`` locks the row on a server database);
* the lease is taken with ``UPDATE ... WHERE fence = ?`` and checked with
  ``UPDATE ... WHERE owner = ? AND fence = ?``, each with a row-count check (``_leases.py``);
* inbox items are marked consumed with ``... AND consumed_at IS NULL`` and the row count
  must match what was read, so an item enters the history at most once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..errors import CorruptRecordError, SessionBusyError, SessionNotFoundError, StoreError
from ..messages import (
    MESSAGE_JSON_KEY,
    AssistantMessage,
    ImagePart,
    Message,
    RawPart,
    TextPart,
    ToolResultMessage,
    UserMessage,
    content_text,
    message_from_dict,
    message_from_json,
    message_json,
    scrub_surrogates,
)
from ._holder import holder_is_dead
from ._leases import acquire_lease, check_lease, lease_is_live, release_lease
from .protocols import Tx
from .rows import (
    RESOLVED_STATUSES,
    AnswerPending,
    Append,
    BeginOutcome,
    BeginRun,
    Compact,
    DrainInbox,
    FinishRun,
    LeaseClaim,
    LoadedHistory,
    OpenInteraction,
    PendingCall,
    PendingState,
    RecordLLMCall,
    RunTotals,
    SessionRow,
    SessionStatsRow,
    StoredMessage,
    UpdateToolCall,
    WriteOp,
    WriteOutcome,
    session_kind,
    stored_kind,
)


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds."""
    return int(time.time() * 1000)


def text(value: str | None) -> str | None:
    """Free text to store (a prompt, a note, an answer, an error): lone surrogates, which no
    UTF-8 column accepts, become U+FFFD (see :func:`~power_loop.messages.scrub_surrogates`)."""
    return None if value is None else scrub_surrogates(value)


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


# --------------------------------------------------------------------------- sessions


def _session_row(row: Any) -> SessionRow:
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


_SESSION_COLUMNS = (
    "session_id, metadata, system_prompt, parent_session_id, kind, lifecycle, depth, created_at, updated_at"
)


def get_session(tx: Tx, session_id: str) -> SessionRow | None:
    """The session row, or None."""
    row = tx.execute(f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return _session_row(row) if row else None


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
        ValueError: The id exists already.
        SessionNotFoundError: The parent does not exist.
    """
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
    """Delete a session (and, with ``cascade``, its sub-agent sessions); return the count."""
    if get_session(tx, session_id) is None:
        return 0
    ids = [session_id]
    if cascade:
        frontier = [session_id]
        while frontier:
            rows = tx.execute(
                f"SELECT session_id FROM sessions WHERE parent_session_id IN ({','.join('?' * len(frontier))})",
                frontier,
            ).fetchall()
            frontier = [r["session_id"] for r in rows]
            ids += frontier
    else:
        tx.execute("UPDATE sessions SET parent_session_id = NULL WHERE parent_session_id = ?", (session_id,))
    tx.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))  # children cascade
    return len(ids)


class _State:
    """A session's row joined with its lease, read once per transaction."""

    __slots__ = ("event_seq", "expires_at", "fence", "has_lease", "owner", "row", "version")

    def __init__(self, row: Any) -> None:
        self.row = row
        self.version = int(row["version"])
        self.event_seq = int(row["event_seq"])
        self.owner: str | None = row["owner"]
        self.fence = int(row["fence"] or 0)
        self.expires_at = int(row["expires_at"] or 0)
        self.has_lease = row["lease_session"] is not None

    def session(self) -> SessionRow:
        return _session_row(self.row)

    def live_owner(self, now: int) -> str | None:
        """The owner of an unexpired lease whose holder is not provably dead, else None."""
        if self.owner is None or self.expires_at <= now:
            return None
        dead = holder_is_dead(self.row["holder_host"], self.row["holder_pid"], self.row["holder_start"])
        return None if dead else self.owner


def _state(tx: Tx, session_id: str) -> _State:
    row = tx.execute(
        f"SELECT s.{_SESSION_COLUMNS.replace(', ', ', s.')}, s.version, s.event_seq, l.owner, l.fence, l.expires_at, "
        "l.holder_host, l.holder_pid, l.holder_start, l.session_id AS lease_session "
        "FROM sessions s LEFT JOIN session_leases l ON l.session_id = s.session_id WHERE s.session_id = ?",
        (session_id,),
    ).fetchone()
    if row is None:
        raise SessionNotFoundError(session_id)
    return _State(row)


def _version(tx: Tx, session_id: str) -> tuple[int, int]:
    row = tx.execute("SELECT version, event_seq FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:
        raise SessionNotFoundError(session_id)
    return int(row["version"]), int(row["event_seq"])


def _touch(tx: Tx, session_id: str, *, bump: bool, event_seq: int | None, now: int) -> None:
    seq = event_seq or 0
    tx.execute(
        "UPDATE sessions SET version = version + ?, updated_at = ?, "
        "event_seq = CASE WHEN event_seq < ? THEN ? ELSE event_seq END WHERE session_id = ?",
        (1 if bump else 0, now, seq, seq, session_id),
    )


# --------------------------------------------------------------------------- history


def load_base(tx: Tx, session_id: str) -> tuple[str | None, int]:
    """(summary, through_seq) of the session's latest compaction, or (None, 0)."""
    row = tx.execute(
        "SELECT summary, through_seq FROM compactions WHERE session_id = ? ORDER BY id DESC LIMIT 1", (session_id,)
    ).fetchone()
    return (str(row["summary"]), int(row["through_seq"])) if row else (None, 0)


def load_history(tx: Tx, session_id: str, *, include_compacted: bool = False) -> list[StoredMessage]:
    """The session's context (summary + later messages), or with ``include_compacted`` every
    stored message including folded ones (the audit view, without summaries)."""
    if include_compacted:
        rows = tx.execute(
            "SELECT seq, body, compacted FROM messages WHERE session_id = ? ORDER BY seq", (session_id,)
        ).fetchall()
        return [
            StoredMessage(r["seq"], decode_message(session_id, r["seq"], r["body"]), bool(r["compacted"])) for r in rows
        ]
    summary, through = load_base(tx, session_id)
    rows = tx.execute(
        "SELECT seq, body FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq", (session_id, through)
    ).fetchall()
    stored = [StoredMessage(r["seq"], decode_message(session_id, r["seq"], r["body"])) for r in rows]
    if summary is not None:
        from ..compaction import summary_message

        stored.insert(0, StoredMessage(through, summary_message(summary)))
    return stored


def load_transcript(tx: Tx, session_id: str) -> LoadedHistory:
    """The loadable history as parallel lists, decoded in one JSON parse.

    Loading a long history is the kernel's biggest per-message cost; parsing every body in a
    single ``json.loads`` of a JSON array roughly halves it. A row that does not decode is
    found by decoding row by row, to name it in the error.
    """
    summary, through = load_base(tx, session_id)
    rows = tx.execute(
        "SELECT seq, body FROM messages WHERE session_id = ? AND seq > ? ORDER BY seq", (session_id, through)
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


def pending_state(tx: Tx, session_id: str) -> PendingState | None:
    """Unanswered calls of the session, or None."""
    rows = tx.execute(
        "SELECT tool_call_id, name, arguments, status, result, is_error, position, assistant_seq "
        "FROM tool_calls WHERE session_id = ? AND result_seq IS NULL ORDER BY assistant_seq, position",
        (session_id,),
    ).fetchall()
    if not rows:
        return None
    calls = tuple(
        PendingCall(
            tool_call_id=r["tool_call_id"],
            name=r["name"],
            arguments=r["arguments"],
            status=r["status"],
            result=r["result"],
            is_error=bool(r["is_error"]),
            position=r["position"],
        )
        for r in rows
    )
    assistant_seq = int(rows[0]["assistant_seq"])
    # The round of the model call that made these calls: its usage row was written with the
    # assistant message (newest first; the session's index makes this a short backward scan).
    found = tx.execute(
        "SELECT round_index FROM llm_calls WHERE session_id = ? AND purpose = 'round' AND run_id = "
        "(SELECT run_id FROM messages WHERE session_id = ? AND seq = ?) ORDER BY id DESC LIMIT 1",
        (session_id, session_id, assistant_seq),
    ).fetchone()
    return PendingState(
        assistant_seq=assistant_seq,
        calls=calls,
        interactions=tuple(open_interactions(tx, session_id)),
        round_index=int(found["round_index"]) if found else 0,
    )


def open_interactions(tx: Tx, session_id: str) -> list[dict[str, Any]]:
    """Open ``request_user_input`` questions of a session, oldest first."""
    rows = tx.execute(
        # Questions opened together belong to one assistant message: its call order breaks ties.
        "SELECT i.body FROM interactions i LEFT JOIN tool_calls t ON t.session_id = i.session_id "
        "AND t.tool_call_id = i.tool_call_id AND t.result_seq IS NULL "
        "WHERE i.session_id = ? AND i.status = 'open' ORDER BY i.created_at, t.assistant_seq, t.position",
        (session_id,),
    ).fetchall()
    try:
        return [json.loads(r["body"]) for r in rows]
    except ValueError as exc:
        raise CorruptRecordError(
            f"an open question of session {session_id!r} is not valid JSON ({exc}); delete or repair the row in "
            "the interactions table",
            session_id=session_id,
        ) from exc


def answer_interaction(tx: Tx, session_id: str, interaction_id: str, value: str) -> list[dict[str, Any]]:
    """Store ``value`` as the result of the interaction's tool call; return the interactions
    still open.

    Raises:
        ValueError: No open interaction has that id in this session.
    """
    _version(tx, session_id)
    owner = lease_is_live(tx, session_id, now_ms())[0]
    if owner is not None:
        raise SessionBusyError(
            f"session {session_id!r} has a run in progress ({owner}); answer its question once that run has "
            "ended (it ends with status waiting_for_input)",
            session_id=session_id,
        )
    row = tx.execute(
        "SELECT tool_call_id FROM interactions WHERE interaction_id = ? AND session_id = ? AND status = 'open'",
        (interaction_id, session_id),
    ).fetchone()
    if row is None:
        raise ValueError(f"pending interaction not found: {interaction_id}")
    now = now_ms()
    tx.execute(
        "UPDATE tool_calls SET status = 'done', result = ?, is_error = 0, updated_at = ? "
        "WHERE session_id = ? AND tool_call_id = ? AND result_seq IS NULL",
        (text(value), now, session_id, row["tool_call_id"]),
    )
    tx.execute(
        "UPDATE interactions SET status = 'answered', answered_at = ? WHERE interaction_id = ?", (now, interaction_id)
    )
    return open_interactions(tx, session_id)


def _next_seq(tx: Tx, session_id: str) -> int:
    """The seq the session's next message gets (read only)."""
    row = tx.execute("SELECT last_seq FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    return int(row["last_seq"] if row else 0) + 1


def allocate_seqs(tx: Tx, session_id: str, count: int) -> int:
    """Reserve ``count`` seqs from the session's counter; return the first.

    The increment and the read are in the caller's transaction, and the ``UPDATE`` holds the
    session row until it ends, so two writers never get the same seq.
    """
    tx.execute("UPDATE sessions SET last_seq = last_seq + ? WHERE session_id = ?", (count, session_id))
    row = tx.execute("SELECT last_seq FROM sessions WHERE session_id = ?", (session_id,)).fetchone()
    if row is None:
        raise SessionNotFoundError(session_id)
    return int(row["last_seq"]) - count + 1


def append_messages(tx: Tx, session_id: str, op: Append, now: int) -> list[StoredMessage]:
    """Apply an :class:`Append`; return the stored messages with their seqs."""
    if not op.messages:
        return []
    seq = allocate_seqs(tx, session_id, len(op.messages))
    stored: list[StoredMessage] = []
    for message in op.messages:
        tx.execute(
            "INSERT INTO messages (session_id, seq, role, body, run_id, created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (session_id, seq, message.role, encode_message(message), op.run_id, now),
        )
        if isinstance(message, AssistantMessage) and message.tool_calls:
            for i, c in enumerate(message.tool_calls):
                tx.execute(
                    "INSERT INTO tool_calls (session_id, tool_call_id, assistant_seq, position, name, arguments, "
                    "status, run_id, updated_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
                    (session_id, c.id, seq, i, c.name, c.arguments, op.run_id, now),
                )
        elif isinstance(message, ToolResultMessage):
            status = op.statuses.get(message.tool_call_id) or ("failed" if message.is_error else "done")
            tx.execute(
                "UPDATE tool_calls SET result_seq = ?, status = ?, result = NULL, is_error = ?, updated_at = ? "
                "WHERE session_id = ? AND tool_call_id = ? AND result_seq IS NULL",
                (seq, status, int(message.is_error), now, session_id, message.tool_call_id),
            )
        stored.append(StoredMessage(seq, message))
        seq += 1
    return stored


def update_tool_call(tx: Tx, session_id: str, op: UpdateToolCall, now: int) -> None:
    """Apply an :class:`UpdateToolCall` to the call's open row."""
    tx.execute(
        "UPDATE tool_calls SET status = ?, result = COALESCE(?, result), is_error = ?, updated_at = ? "
        "WHERE session_id = ? AND tool_call_id = ? AND result_seq IS NULL",
        (op.status, text(op.result), int(op.is_error), now, session_id, op.tool_call_id),
    )


def record_llm_call(tx: Tx, session_id: str, op: RecordLLMCall, now: int) -> None:
    """Apply a :class:`RecordLLMCall`."""
    u = op.usage
    tx.execute(
        "INSERT INTO llm_calls (session_id, run_id, round_index, purpose, model, prompt_tokens, completion_tokens, "
        "cache_read_tokens, reasoning_tokens, total_tokens, duration_ms, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            session_id,
            op.run_id,
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


# --------------------------------------------------------------------------- inbox


def _inbox_content(body: str, session_id: str) -> tuple[str, Any]:
    try:
        data = json.loads(body)
        return str(data.get("kind", "follow_up")), data.get("content", "")
    except (ValueError, AttributeError) as exc:
        raise CorruptRecordError(
            f"inbox item of session {session_id!r} is not valid JSON ({exc}); delete or repair the row in the "
            "inbox table",
            session_id=session_id,
        ) from exc


def merge_follow_ups(contents: Iterable[Any]) -> UserMessage | None:
    """Merge follow-up contents into one ``<follow_up>`` user message (0.11 format)."""
    texts: list[str] = []
    images: list[ImagePart | RawPart] = []
    for content in contents:
        if isinstance(content, str):
            text = content.strip()
        else:
            parts = message_from_dict({"role": "user", "content": content}).content
            text = content_text(parts).strip()
            images += [p for p in parts if not isinstance(p, (str, TextPart))]
        if text:
            texts.append(text)
    if not texts and not images:
        return None
    body = "\n\n".join(texts).strip()
    text = f"<follow_up>\n{body}\n</follow_up>"
    if images:
        return UserMessage(content=(TextPart(text=text), *images), name="follow_up")
    return UserMessage(content=text, name="follow_up")


def drain_inbox(tx: Tx, session_id: str, op: DrainInbox, now: int) -> list[StoredMessage]:
    """Move waiting inbox items into the history (consecutive follow-ups merged)."""
    rows = tx.execute(
        "SELECT id, body FROM inbox WHERE session_id = ? AND consumed_at IS NULL ORDER BY id", (session_id,)
    ).fetchall()
    if not rows:
        return []
    messages: list[Message] = []
    group: list[Any] = []
    for row in rows:
        kind, content = _inbox_content(row["body"], session_id)
        if kind == "follow_up":
            group.append(content)
            continue
        if group:
            merged = merge_follow_ups(group)
            if merged is not None:
                messages.append(merged)
            group = []
        messages.append(UserMessage(content=content if isinstance(content, str) else str(content), name=kind))
    if group:
        merged = merge_follow_ups(group)
        if merged is not None:
            messages.append(merged)
    last_seq = _next_seq(tx, session_id) + len(messages) - 1 if messages else None
    marked = tx.execute(
        f"UPDATE inbox SET consumed_at = ?, consumed_seq = ? WHERE id IN ({','.join('?' * len(rows))}) "
        "AND consumed_at IS NULL",
        (now, last_seq, *[r["id"] for r in rows]),
    ).rowcount
    if marked != len(rows):
        # Only the lease holder drains; a mismatch means another transaction drained too.
        raise StoreError(
            f"inbox items of session {session_id!r} were drained by another transaction at the same time; "
            "nothing was written. Retry."
        )
    return append_messages(tx, session_id, Append(messages=messages, run_id=op.run_id), now)


def enqueue(tx: Tx, session_id: str, *, kind: str, content: Any, ref: str | None, only_if_busy: bool) -> int | None:
    """Put an item in the session's inbox; return the queue depth.

    With ``only_if_busy``, nothing is written and None is returned when no live run holds the
    session (the caller then starts a run itself). The check and the insert are one
    transaction, serialized with the run's end-of-run inbox check: an item queued for a run
    that completes normally is always seen by it; a run that ends any other way leaves the
    item for the session's next run.
    """
    _version(tx, session_id)  # raises SessionNotFoundError
    now = now_ms()
    if only_if_busy and lease_is_live(tx, session_id, now)[0] is None:
        return None
    tx.execute(
        "INSERT INTO inbox (session_id, source, body, ref, created_at) VALUES (?, ?, ?, ?, ?)",
        (session_id, kind, json.dumps({"kind": kind, "content": content}, ensure_ascii=False), ref, now),
    )
    row = tx.execute(
        "SELECT COUNT(*) AS n FROM inbox WHERE session_id = ? AND consumed_at IS NULL", (session_id,)
    ).fetchone()
    return int(row["n"])


def inbox_depth(tx: Tx, session_id: str) -> int:
    """Items waiting in the session's inbox."""
    row = tx.execute(
        "SELECT COUNT(*) AS n FROM inbox WHERE session_id = ? AND consumed_at IS NULL", (session_id,)
    ).fetchone()
    return int(row["n"])


# --------------------------------------------------------------------------- runs


def add_stats(tx: Tx, session_id: str, totals: RunTotals, *, started: int, now: int) -> None:
    """Add a run's totals to the session's stats row (created on first use)."""
    u = totals.usage
    tx.execute(
        "INSERT INTO session_stats (session_id, sends, rounds, llm_calls, tool_calls, prompt_tokens, "
        "completion_tokens, total_tokens, cache_read_tokens, reasoning_tokens, first_send_at, last_send_at, "
        "updated_at, activity) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
        "(SELECT COALESCE(MAX(activity), 0) + 1 FROM session_stats)) "
        "ON CONFLICT(session_id) DO UPDATE SET sends = sends + excluded.sends, rounds = rounds + excluded.rounds, "
        "llm_calls = llm_calls + excluded.llm_calls, tool_calls = tool_calls + excluded.tool_calls, "
        "prompt_tokens = prompt_tokens + excluded.prompt_tokens, "
        "completion_tokens = completion_tokens + excluded.completion_tokens, "
        "total_tokens = total_tokens + excluded.total_tokens, "
        "cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens, "
        "reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens, "
        "first_send_at = COALESCE(first_send_at, excluded.first_send_at), "
        "last_send_at = excluded.last_send_at, updated_at = excluded.updated_at, activity = excluded.activity",
        (
            session_id,
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
        ),
    )


def _finish_run(tx: Tx, session_id: str, op: FinishRun, lease: LeaseClaim | None, now: int) -> None:
    totals = op.totals
    tx.execute(
        "UPDATE runs SET status = ?, rounds = ?, ended_at = ?, error = ? WHERE run_id = ?",
        (op.status, totals.rounds, now, text(op.error), op.run_id),
    )
    started = op.started_at
    if started is None:
        row = tx.execute("SELECT started_at FROM runs WHERE run_id = ?", (op.run_id,)).fetchone()
        started = int(row["started_at"]) if row else now
    add_stats(tx, session_id, totals, started=started, now=now)
    if op.release_lease and lease is not None:
        release_lease(tx, session_id, lease.owner)


def write(
    tx: Tx,
    session_id: str,
    ops: Sequence[WriteOp],
    *,
    lease: LeaseClaim | None,
    event_seq: int | None,
) -> WriteOutcome:
    """Apply ``ops`` for a run (call inside :func:`transaction`)."""
    now = now_ms()
    version = _version(tx, session_id)[0]
    if lease is not None:
        releasing = any(isinstance(op, FinishRun) and op.release_lease for op in ops)
        check_lease(tx, session_id, lease, now, renew=not releasing)
    seqs: list[int] = []
    drained: list[StoredMessage] = []
    finished = False
    compacted = False
    for op in ops:
        if isinstance(op, Append):
            seqs += [s.seq for s in append_messages(tx, session_id, op, now)]
        elif isinstance(op, UpdateToolCall):
            update_tool_call(tx, session_id, op, now)
        elif isinstance(op, RecordLLMCall):
            record_llm_call(tx, session_id, op, now)
        elif isinstance(op, DrainInbox):
            drained += drain_inbox(tx, session_id, op, now)
        elif isinstance(op, Compact):
            apply_compaction(tx, session_id, op, now)
            compacted = True
        elif isinstance(op, AnswerPending):
            drained += answer_pending(tx, session_id, op.text, run_id=op.run_id, now=now)
        elif isinstance(op, OpenInteraction):
            tx.execute(
                "INSERT INTO interactions (interaction_id, session_id, tool_call_id, body, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (op.body["interaction_id"], session_id, op.body["tool_call_id"], json.dumps(dict(op.body)), now),
            )
        elif isinstance(op, FinishRun):
            more = drain_inbox(tx, session_id, DrainInbox(op.run_id), now) if op.drain_inbox else []
            if more:
                drained += more
            else:
                _finish_run(tx, session_id, op, lease, now)
                finished = True
        else:  # pragma: no cover - guarded by the WriteOp union
            raise TypeError(f"unknown write operation {op!r}")
    bump = bool(seqs or drained or compacted)
    _touch(tx, session_id, bump=bump, event_seq=event_seq, now=now)
    return WriteOutcome(version=version + bump, seqs=tuple(seqs), drained=tuple(drained), finished=finished)


def begin_run(tx: Tx, b: BeginRun) -> BeginOutcome:
    """Start a run (call inside :func:`transaction`); see :class:`BeginRun`."""
    now = now_ms()
    try:
        state = _state(tx, b.session_id)
    except SessionNotFoundError:
        return BeginOutcome(status="not_found")
    session = state.session()
    owner = state.live_owner(now)
    if owner is not None and owner != b.lease.owner:
        return BeginOutcome(status="busy", session=session, lease_owner=owner, lease_expires_at=state.expires_at)
    version_before, event_seq = state.version, state.event_seq
    pending = pending_state(tx, b.session_id)
    if pending is not None and not (b.heal_pending or b.allow_pending):
        return BeginOutcome(status="pending", session=session, pending=pending, version=version_before)
    fence = acquire_lease(tx, b.session_id, b.lease, now, state.fence, exists=state.has_lease)
    if fence is None:
        # Another transaction took the lease since it was read (only possible without a
        # database-wide write lock): busy, the caller retries.
        owner, expires_at = lease_is_live(tx, b.session_id, now)
        return BeginOutcome(status="busy", session=session, lease_owner=owner, lease_expires_at=expires_at)
    appended: list[StoredMessage] = []
    if pending is not None and b.heal_pending:
        appended += answer_pending(tx, b.session_id, b.heal_text, run_id=b.run_id, now=now, pending=pending)
        pending = None
    if pending is None:
        appended += drain_inbox(tx, b.session_id, DrainInbox(b.run_id), now)
        if b.messages:
            appended += append_messages(tx, b.session_id, Append(b.messages, run_id=b.run_id), now)
    if state.owner is not None and state.owner != b.lease.owner:
        # The previous holder's lease expired (or its process was found dead) without a
        # release: its process died or hung.
        # Its run cannot write any more (fencing); record it as interrupted for the audit trail.
        tx.execute(
            "UPDATE runs SET status = 'interrupted', ended_at = ? WHERE session_id = ? AND ended_at IS NULL",
            (now, b.session_id),
        )
    tx.execute(
        "INSERT INTO runs (run_id, session_id, kind, status, started_at) VALUES (?, ?, ?, 'running', ?)",
        (b.run_id, b.session_id, b.kind, now),
    )
    _touch(tx, b.session_id, bump=bool(appended), event_seq=None, now=now)
    version = version_before + bool(appended)
    history = None
    if b.cached_version is None or b.cached_version != version_before:
        history = load_transcript(tx, b.session_id)
    return BeginOutcome(
        status="ok",
        session=session,
        fence=fence,
        version=version,
        history=history,
        appended=tuple(appended),
        pending=pending,
        event_seq=event_seq,
    )


# --------------------------------------------------------------------------- stats


_STATS_COLUMNS = (
    "session_id, sends, rounds, llm_calls, tool_calls, prompt_tokens, completion_tokens, total_tokens, "
    "first_send_at, last_send_at, updated_at, cache_read_tokens, reasoning_tokens"
)


def get_stats(tx: Tx, session_id: str) -> SessionStatsRow | None:
    """Stats of one session, or None before its first finished run."""
    row = tx.execute(f"SELECT {_STATS_COLUMNS} FROM session_stats WHERE session_id = ?", (session_id,)).fetchone()
    return SessionStatsRow(*row) if row else None


def list_stats(tx: Tx) -> list[SessionStatsRow]:
    """Stats of every session, most recently active first."""
    # `activity` is a store-wide counter: ties of the millisecond clock cannot reorder sessions.
    rows = tx.execute(f"SELECT {_STATS_COLUMNS} FROM session_stats ORDER BY activity DESC").fetchall()
    return [SessionStatsRow(*r) for r in rows]


def apply_compaction(tx: Tx, session_id: str, op: Compact, now: int) -> None:
    """Record a new load base and mark the rows it folds (one transaction with the caller)."""
    tx.execute(
        "UPDATE messages SET compacted = 1 WHERE session_id = ? AND seq <= ? AND compacted = 0",
        (session_id, op.through_seq),
    )
    tx.execute(
        "INSERT INTO compactions (session_id, through_seq, summary, before_tokens, after_tokens, run_id, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (session_id, op.through_seq, op.summary, op.before_tokens, op.after_tokens, op.run_id, now),
    )


def prune_compacted(tx: Tx, session_id: str | None, *, older_than_ms: int | None, keep_last: int | None) -> int:
    """Delete folded message rows (all sessions when ``session_id`` is None) that are older than
    ``older_than_ms`` and (when given) not among the ``keep_last`` most recent folded rows of
    their session; summaries older than each session's latest go too. Returns the number of
    messages deleted."""
    sessions = (
        [session_id]
        if session_id is not None
        else [
            r["session_id"]
            for r in tx.execute("SELECT DISTINCT session_id FROM messages WHERE compacted = 1").fetchall()
        ]
    )
    deleted = 0
    for sid in sessions:
        limits = ["compacted = 1"]
        params: list[Any] = [sid]
        if older_than_ms is not None:
            limits.append("created_at < ?")
            params.append(older_than_ms)
        beyond_kept = True
        if keep_last is not None:
            cutoff = tx.execute(
                "SELECT seq FROM messages WHERE session_id = ? AND compacted = 1 ORDER BY seq DESC LIMIT 1 OFFSET ?",
                (sid, keep_last),
            ).fetchone()
            beyond_kept = cutoff is not None
            if cutoff is not None:
                limits.append("seq <= ?")
                params.append(int(cutoff["seq"]))
        if beyond_kept:
            cursor = tx.execute(f"DELETE FROM messages WHERE session_id = ? AND {' AND '.join(limits)}", params)
            deleted += cursor.rowcount
        tx.execute(
            "DELETE FROM tool_calls WHERE session_id = ? AND result_seq IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM messages m WHERE m.session_id = tool_calls.session_id "
            "AND m.seq = tool_calls.assistant_seq)",
            (sid,),
        )
        tx.execute(
            "DELETE FROM compactions WHERE session_id = ? "
            "AND id < (SELECT MAX(id) FROM compactions WHERE session_id = ?)",
            (sid, sid),
        )
    return deleted


def answer_pending(
    tx: Tx,
    session_id: str,
    text: str,
    *,
    run_id: str | None,
    now: int,
    pending: PendingState | None = None,
) -> list[StoredMessage]:
    """Answer every unresolved call: a call that finished gets its stored result, the others
    ``text`` (status ``aborted``). Open questions on them are closed."""
    pending = pending if pending is not None else pending_state(tx, session_id)
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
    stored = append_messages(tx, session_id, Append(results, statuses, run_id), now)
    close_interactions(tx, session_id, now)
    return stored


def abort_pending(tx: Tx, session_id: str, reason: str) -> int:
    """Answer every unresolved call (stored results where a call finished); return how many.

    Raises:
        SessionBusyError: A run holds the session (its calls may still be running).
    """
    _version(tx, session_id)
    now = now_ms()
    owner, expires_at = lease_is_live(tx, session_id, now)
    if owner is not None:
        raise SessionBusyError(
            f"session {session_id!r} is held by a run ({owner}) for another {(expires_at - now) / 1000:.1f}s at "
            "least; abort_pending would answer calls that may still be running. Stop that run first "
            "(stop_event); if its process died, the hold ends when its lease expires",
            session_id=session_id,
        )
    answered = answer_pending(tx, session_id, f"<aborted: {reason}>", run_id=None, now=now)
    if answered:
        _touch(tx, session_id, bump=True, event_seq=None, now=now)
    return len(answered)


def close_interactions(tx: Tx, session_id: str, now: int) -> None:
    """Mark open questions superseded (their tool calls were answered another way)."""
    tx.execute(
        "UPDATE interactions SET status = 'superseded', answered_at = ? WHERE session_id = ? AND status = 'open'",
        (now, session_id),
    )
