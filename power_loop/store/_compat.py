"""The 0.11 ``SessionStore`` methods, as a mixin of :class:`~power_loop.store.SQLiteSessionStore`.

0.11's store was synchronous; so are these methods (each one transaction on a short-lived
connection, like the other ``*_sync`` conveniences: for setup and tooling, not a request's hot
path). The readers and ``append_message`` have an ``*_async`` twin that runs on the store's
worker thread; each pair is declared once (:func:`._twins.store_op`).

Writers go through the engine's own write path: the same transaction rules, the same checks
(no live run holds the session, tool calls stay paired with their results) and a version bump
so loops reload their cached history. The two 0.11 writers that only make sense inside 0.11's
pipeline (``set_pending``, ``set_round_index``) raise :class:`UnsupportedStoreCallError`
naming what to use instead.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._notes_types import NoteRow, NotesPolicy
from .._types import MAX_SPAWN_DEPTH
from ..messages import Usage
from . import _compat_sql as _c
from . import _notes_sql as _notes
from . import _sql
from . import _timers_sql as _timers
from ._compat_sql import UnsupportedStoreCallError
from ._twins import TxFn, store_op
from .protocols import Tx
from .rows import (
    CompactionRow,
    MessageRow,
    SessionRow,
    SessionStateRow,
    SessionStatsRow,
    SessionStatus,
    TimerRow,
    check_metadata,
    stored_kind,
)

__all__ = ["Store011Methods", "UnsupportedStoreCallError", "new_session_id"]

T = TypeVar("T")


def new_session_id() -> str:
    """A fresh id in 0.11's format: ``"sess_"`` + 24 hex digits."""
    return "sess_" + secrets.token_hex(12)


def _message_dict(
    role: str,
    content: Any,
    tool_calls: Sequence[Mapping[str, Any]] | None,
    tool_call_id: str | None,
    name: str | None,
) -> dict[str, Any]:
    data: dict[str, Any] = {"role": role, "content": "" if content is None else content}
    if tool_calls:
        data["tool_calls"] = [dict(c) for c in tool_calls]
    if tool_call_id is not None:
        data["tool_call_id"] = tool_call_id
    if name is not None:
        data["name"] = name
    return data


class Store011Methods:
    """The 0.11 ``SessionStore`` methods (see the module docstring for the rules)."""

    if TYPE_CHECKING:

        def _call_sync(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

        async def _call(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

    # ------------------------------------------------------------------ sessions

    def _create_session_011(
        self,
        *,
        system_prompt: str | None,
        model: str | None,
        config: Mapping[str, Any] | None,
        parent_session_id: str | None,
        spawn_tool_call_id: str | None,
        kind: str,
        lifecycle: str | None,
        metadata: Mapping[str, Any] | None,
        session_id: str | None,
    ) -> str:
        """0.11's ``create_session``: sync, returns the (new) id; the depth follows the parent."""
        meta = check_metadata(metadata)
        try:
            config_json = json.dumps(dict(config)) if config else None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config must be a JSON-serialisable dict: {exc}") from exc
        sid = session_id if session_id is not None else new_session_id()
        is_sub = parent_session_id is not None or stored_kind(kind) == "subagent"
        life = getattr(lifecycle, "value", lifecycle)
        extra = {"model": model, "config_json": config_json, "spawn_tool_call_id": spawn_tool_call_id}

        def create(conn: Tx) -> None:
            depth = 0
            if parent_session_id is not None:
                parent = _sql.get_session(conn, parent_session_id)
                depth = (parent.depth if parent is not None else 0) + 1
                if depth > MAX_SPAWN_DEPTH:
                    raise ValueError(
                        f"sub-agent depth {depth} exceeds {MAX_SPAWN_DEPTH} (parent {parent_session_id!r}); "
                        "spawn from a shallower session"
                    )
            _sql.create_session(
                conn,
                sid,
                metadata=meta,
                system_prompt=system_prompt,
                parent_session_id=parent_session_id,
                kind="subagent" if is_sub else stored_kind(kind),
                lifecycle=(str(life) if life is not None else "ephemeral") if is_sub else None,
                depth=depth,
            )
            if any(v is not None for v in extra.values()):
                _c.set_compat_fields(conn, sid, **extra)

        self._call_sync(create)
        return sid

    @store_op(tx=False)
    def list_children_async(self, parent_session_id: str) -> TxFn[list[SessionRow]]:
        """Direct sub-agent sessions of a session, oldest first."""
        return lambda c: _c.list_children(c, parent_session_id)

    list_children = list_children_async.blocking()  # 0.11 API

    def archive_session(self, session_id: str) -> None:
        """Mark a session :attr:`SessionStatus.ARCHIVED` (a label: it keeps working).

        Raises:
            SessionNotFoundError: Unknown session.
        """

        def archive(conn: Tx) -> None:
            _c.require_session(conn, session_id)
            _c.set_compat_fields(conn, session_id, status=SessionStatus.ARCHIVED.value)

        self._call_sync(archive)

    def close_session(self, session_id: str, *, cascade: bool = True) -> int:
        """Delete a session's rows (with its sub-agent sessions when ``cascade``); return how
        many sessions were removed (0 for an unknown id). Same as ``loop.close_session``."""
        return self._call_sync(lambda c: _sql.delete_session(c, session_id, cascade=cascade))

    def update_session_prompt(self, session_id: str, system_prompt: str | None) -> None:
        """Set (or with None clear) the per-session system prompt; the next run uses it.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        self._call_sync(lambda c: _c.update_prompt(c, session_id, system_prompt))

    # ------------------------------------------------------------------ messages

    @store_op()
    def append_message_async(
        self,
        session_id: str,
        *,
        role: str,
        content: Any = None,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        name: str | None = None,
        round_index: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> TxFn[int]:
        """Append one message through the engine's write path and return its seq.

        ``round_index`` and ``meta`` are accepted for 0.11 compatibility and not kept. An
        assistant message with ``tool_calls`` leaves them unanswered (``loop.resume`` runs
        them); a ``tool`` message answers one of them.

        Raises:
            SessionNotFoundError: Unknown session.
            SessionBusyError: A run holds the session; use ``loop.follow_up`` instead.
            SessionPendingError: The session has unanswered tool calls and this is not one
                of their results; use ``loop.resume`` or ``loop.abort_pending`` first.
            ValueError: Not a valid message, or a tool result no unanswered call expects.
        """
        data = _message_dict(role, content, tool_calls, tool_call_id, name)
        return lambda c: _c.append_message(c, session_id, data)

    append_message = append_message_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def get_message_async(self, session_id: str, seq: int) -> TxFn[MessageRow | None]:
        """One stored message as a :class:`MessageRow`, or None."""
        return lambda c: _c.get_message(c, session_id, seq)

    get_message = get_message_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def load_all_messages_async(self, session_id: str) -> TxFn[list[MessageRow]]:
        """Every stored message of a session, folded ones included (``state`` says which), by seq.
        Compaction summaries are not message rows here; see :meth:`list_compactions`."""
        return lambda c: _c.load_all_messages(c, session_id)

    load_all_messages = load_all_messages_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def load_active_messages_async(self, session_id: str) -> TxFn[list[MessageRow]]:
        """The context the next run loads: the latest compaction summary (a ``system`` row
        named ``compact_note``), then every message not folded, by seq."""
        return lambda c: _c.load_active_messages(c, session_id)

    load_active_messages = load_active_messages_async.blocking()  # 0.11 API

    # ------------------------------------------------------------------ compaction and state

    def record_compaction(
        self,
        session_id: str,
        *,
        from_seq: int,
        to_seq: int,
        note_content: str,
        before_tokens: int | None,
        after_tokens: int | None,
        round_index: int | None,
        note_meta: dict[str, Any] | None = None,
    ) -> tuple[int, int]:
        """Fold the messages up to ``to_seq`` into the summary ``note_content`` (the engine's
        compaction write); return ``(compact_seq, note_seq)``.

        The range must start at or before the first unfolded message (this version folds a
        prefix) and must not separate tool calls from their results. ``note_content``
        replaces the previous summary in the context, so include what it said.
        ``round_index`` and ``note_meta`` are not kept.

        Raises:
            SessionBusyError: A run holds the session.
            ValueError: The range is not a foldable prefix.
        """
        return self._call_sync(
            lambda c: _c.record_compaction(
                c,
                session_id,
                from_seq=from_seq,
                to_seq=to_seq,
                summary=note_content,
                before_tokens=before_tokens,
                after_tokens=after_tokens,
            )
        )

    @store_op(tx=False)
    def list_compactions_async(self, session_id: str) -> TxFn[list[CompactionRow]]:
        """The session's compactions, oldest first."""
        return lambda c: _c.list_compactions(c, session_id)

    list_compactions = list_compactions_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def get_state_async(self, session_id: str) -> TxFn[SessionStateRow | None]:
        """The session's run state (next seq, last round, compactions, unanswered calls), or
        None for an unknown session."""
        return lambda c: _c.get_state(c, session_id)

    get_state = get_state_async.blocking()  # 0.11 API

    def set_pending(self, session_id: str, pending: dict[str, Any] | None) -> None:
        """Not supported: unanswered calls are derived from the stored messages.

        Raises:
            UnsupportedStoreCallError: Always; nothing is written.
        """
        raise UnsupportedStoreCallError(
            f"store.set_pending is not supported: session {session_id!r}'s unanswered tool calls are the calls of "
            "its latest assistant message that have no tool result yet, so they cannot be set or cleared apart "
            "from the history. Append an assistant message with tool_calls (store.append_message) to leave calls "
            "pending; to clear them use `loop.abort_pending(session_id, reason)` (answers them with an aborted "
            "result) or `await loop.resume(session_id)` (runs them).",
            session_id=session_id,
        )

    def set_round_index(self, session_id: str, round_index: int) -> None:
        """Not supported: rounds are counted per run by the engine.

        Raises:
            UnsupportedStoreCallError: Always; nothing is written.
        """
        raise UnsupportedStoreCallError(
            f"store.set_round_index is not supported (session {session_id!r}): the engine counts rounds per run "
            "and records each model call's round with its usage; there is no session round counter to set. "
            "Read it with store.get_state(session_id).round_index; limit rounds with AgentLoopConfig(max_rounds=...).",
            session_id=session_id,
        )

    # ------------------------------------------------------------------ usage and stats

    def record_usage(
        self,
        session_id: str,
        *,
        round_index: int,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        total_tokens: int | None,
        model: str | None = None,
    ) -> None:
        """Record the usage of a model call made outside a run (one usage row; the session
        stats are not changed, as in 0.11: see :meth:`bump_session_stats`)."""
        self._call_sync(
            lambda c: _c.record_usage(
                c,
                session_id,
                round_index=round_index,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=total_tokens,
                model=model,
            )
        )

    def bump_session_stats(
        self, session_id: str, usage: Mapping[str, Any] | Usage, *, rounds: int = 0, tool_calls: int = 0
    ) -> None:
        """Count one send in the session's stats, with the usage (``prompt_tokens``,
        ``completion_tokens``, ``total_tokens``, ...), ``rounds`` and ``tool_calls``. The same
        update a finished run makes, in one transaction.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        self._call_sync(lambda c: _c.bump_stats(c, session_id, usage, rounds=rounds, tool_calls=tool_calls))

    def get_session_stats(self, session_id: str) -> SessionStatsRow | None:
        """Stats of a session, or None before its first finished send (0.11 API; blocking)."""
        return self._call_sync(lambda c: _sql.get_stats(c, session_id), tx=False)

    def list_session_stats(self) -> list[SessionStatsRow]:
        """Stats of every session, most recently active first (0.11 API; blocking)."""
        return self._call_sync(_sql.list_stats, tx=False)

    # ------------------------------------------------------------------ timers

    def create_timer(self, session_id: str, *, due_at: int, note: str) -> TimerRow:
        """Arm a one-shot timer due at ``due_at`` (epoch ms); same as ``loop.schedule_timer``
        without its checks of the delay and the per-session limit.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return self._call_sync(
            lambda c: _timers.schedule_timer(
                c, session_id, due_at=int(due_at), note=note, every_ms=None, count=None, until_at=None
            )
        )

    @store_op(tx=False)
    def get_timer_async(self, session_id: str, timer_id: int) -> TxFn[TimerRow | None]:
        """One timer of a session, or None."""
        return lambda c: _c.get_timer(c, session_id, timer_id)

    get_timer = get_timer_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def due_timers_async(self, *, now: int | None = None, limit: int = 50) -> TxFn[list[TimerRow]]:
        """Armed timers of every session due by ``now`` (epoch ms, default the current time),
        oldest first, at most ``limit``. Reading only: the timer runner delivers them."""
        return lambda c: _c.due_timers(c, now=now, limit=limit)

    due_timers = due_timers_async.blocking()  # 0.11 API

    def transition_timer(
        self, session_id: str, timer_id: int, *, from_status: str, to_status: str, due_at: int | None = None
    ) -> bool:
        """Compare-and-set a timer's status; False when it is not in ``from_status`` (any more).

        Supported: cancelling (``armed`` or ``firing`` → ``cancelled``, as
        ``loop.cancel_timer``) and postponing (``armed`` → ``armed`` with a new ``due_at``).
        0.11's ``firing`` is this version's ``claimed``.

        Raises:
            UnsupportedStoreCallError: Any other transition (claiming or firing by hand is
                the timer runner's job); nothing is written.
        """
        return self._call_sync(
            lambda c: _c.transition_timer(
                c, session_id, timer_id, from_status=from_status, to_status=to_status, due_at=due_at
            )
        )

    def recover_stale_firing_timers(self, *, older_than_ms: int) -> int:
        """Re-arm timers whose runner died while delivering them (their claim expired) and
        that were last touched more than ``older_than_ms`` ago; return how many. Claims of a
        live runner are never taken (runners also take over expired claims by themselves)."""
        return self._call_sync(lambda c: _c.recover_stale_claims(c, older_than_ms=older_than_ms))

    # ------------------------------------------------------------------ notes

    @store_op()
    def add_note_async(
        self, session_id: str, content: str, *, pinned: bool = False, policy: NotesPolicy | None = None
    ) -> TxFn[NoteRow]:
        """Add a note to a session and return it (its ``note_id`` numbers it in the session).

        Without ``policy`` (0.11's store call) only empty content is refused; with one, its
        length and count limits hold after the commit (``fifo`` drops the oldest unpinned
        notes in the same transaction).

        Raises:
            SessionNotFoundError: Unknown session.
            NotesFullError: The session is full and the policy refuses; nothing written.
            ValueError: Empty (or, under ``policy``, too long) content.
        """
        _notes.check_content(content, policy)
        return lambda c: _notes.add_note(c, session_id, content, pinned=pinned, policy=policy)

    add_note = add_note_async.blocking()  # 0.11 API

    @store_op()
    def update_note_async(
        self,
        session_id: str,
        note_id: int,
        *,
        content: str | None = None,
        pinned: bool | None = None,
        policy: NotesPolicy | None = None,
    ) -> TxFn[NoteRow | None]:
        """Change a note's text and/or pin; the note as stored, or None for an unknown note.

        Raises:
            SessionNotFoundError: Unknown session.
            ValueError: Empty (or, under ``policy``, too long) content.
        """
        if content is not None:
            _notes.check_content(content, policy)
        return lambda c: _notes.update_note(c, session_id, note_id, content=content, pinned=pinned, policy=policy)

    update_note = update_note_async.blocking()  # 0.11 API

    @store_op()
    def delete_note_async(self, session_id: str, note_id: int) -> TxFn[bool]:
        """Delete a note; False when the session has no such note.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        return lambda c: _notes.delete_note(c, session_id, note_id)

    delete_note = delete_note_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def list_notes_async(self, session_id: str) -> TxFn[list[NoteRow]]:
        """A session's notes, pinned first, then oldest first ([] for an unknown session)."""
        return lambda c: _notes.list_notes(c, session_id)

    list_notes = list_notes_async.blocking()  # 0.11 API

    @store_op(tx=False)
    def count_notes_async(self, session_id: str) -> TxFn[int]:
        """How many notes a session holds (0 for an unknown session)."""
        return lambda c: _notes.count_notes(c, session_id)

    count_notes = count_notes_async.blocking()  # 0.11 API
