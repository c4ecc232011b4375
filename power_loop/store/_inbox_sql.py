"""The store's rules for the inbox: queueing follow-ups (only while a run holds the session,
when asked), draining waiting items into the history exactly once, and the follow-up format.

Items are marked consumed with ``... AND consumed_at IS NULL`` and the row count must match
what was read, so an item enters the history at most once even without a database-wide
write lock. Functions run inside the caller's transaction through a
:class:`~power_loop.store.protocols.Tx`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ..errors import CorruptRecordError, StoreError
from ..messages import ImagePart, Message, RawPart, TextPart, UserMessage, content_text, message_from_dict
from ._history_sql import append_messages, next_seq
from ._leases import lease_is_live
from ._sessions_sql import now_ms, session_ref
from .protocols import Tx
from .rows import Append, StoredMessage

__all__ = ["drain_inbox", "enqueue", "inbox_body", "inbox_depth", "merge_follow_ups"]


def inbox_body(kind: str, content: Any) -> str:
    """The stored JSON of an inbox item."""
    return json.dumps({"kind": kind, "content": content}, ensure_ascii=False)


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


def drain_inbox(tx: Tx, key: int, session_id: str, now: int, *, run: int | None) -> list[StoredMessage]:
    """Move waiting inbox items into the history (consecutive follow-ups merged)."""
    rows = tx.execute(
        "SELECT id, body FROM inbox WHERE session = ? AND consumed_at IS NULL ORDER BY id", (key,)
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
        # A sub-agent's task is its first user message as given; other items keep their kind.
        name = None if kind == "task" else kind
        messages.append(UserMessage(content=content if isinstance(content, str) else str(content), name=name))
    if group:
        merged = merge_follow_ups(group)
        if merged is not None:
            messages.append(merged)
    last_seq = next_seq(tx, key) + len(messages) - 1 if messages else None
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
    return append_messages(tx, key, Append(messages=messages), now, run=run)


def enqueue(tx: Tx, session_id: str, *, kind: str, content: Any, ref: str | None, only_if_busy: bool) -> int | None:
    """Put an item in the session's inbox; return the queue depth.

    With ``only_if_busy``, nothing is written and None is returned when no live run holds the
    session (the caller then starts a run itself). The check and the insert are one
    transaction, serialized with the run's end-of-run inbox check: an item queued for a run
    that completes normally is always seen by it; a run that ends any other way leaves the
    item for the session's next run.
    """
    key = session_ref(tx, session_id).key  # raises SessionNotFoundError
    now = now_ms()
    if only_if_busy and lease_is_live(tx, key, now)[0] is None:
        return None
    tx.execute(
        "INSERT INTO inbox (session, source, body, ref, created_at) VALUES (?, ?, ?, ?, ?)",
        (key, kind, inbox_body(kind, content), ref, now),
    )
    return _depth(tx, key)


def _depth(tx: Tx, key: int) -> int:
    row = tx.execute("SELECT COUNT(*) AS n FROM inbox WHERE session = ? AND consumed_at IS NULL", (key,)).fetchone()
    return int(row["n"])


def inbox_depth(tx: Tx, session_id: str) -> int:
    """Items waiting in the session's inbox (0 for an unknown session)."""
    row = tx.execute(
        "SELECT COUNT(*) AS n FROM inbox WHERE session = (SELECT id FROM sessions WHERE session_id = ?) "
        "AND consumed_at IS NULL",
        (session_id,),
    ).fetchone()
    return int(row["n"])
