"""Message sinks: where a pipeline reports each state change (0.11's ``MessageSink`` protocol).

``StatefulAgentLoop`` does not use sinks: its engine writes every step itself, in
transactions. Sinks serve code that drives a pipeline of its own (``AgentPipeline``):
:class:`NullSink` keeps nothing, :class:`SQLiteSink` stores each message in a session through
the store's checked write path (``store.append_message``, ``store.record_compaction``).

A sink never raises on a normal path: a write the store refuses (a run holds the session,
a message that would break the tool-call pairing) is logged on the ``power_loop.store``
logger and the pipeline carries on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import PowerLoopError
from ..messages import message_to_dict

if TYPE_CHECKING:
    from .sqlite import SQLiteSessionStore

__all__ = ["MessageSink", "NullSink", "SQLiteSink"]

log = logging.getLogger("power_loop.store")


@runtime_checkable
class MessageSink(Protocol):
    """Callbacks a pipeline makes as its history changes. Each must be safe to call more than
    once and must not raise on normal paths."""

    def on_round_started(self, round_index: int) -> None:
        """A round begins."""

    def on_message_appended(self, message: Any, *, round_index: int | None) -> None:
        """A message (a dict view or a message object) joined the history."""

    def on_assistant_tool_calls(
        self, *, assistant_seq: int, tool_calls: list[dict[str, Any]], round_index: int
    ) -> None:
        """The assistant message at ``assistant_seq`` asked for ``tool_calls``."""

    def on_compaction(
        self,
        *,
        fold_start_idx: int,
        fold_end_idx: int,
        summary_text: str,
        before_tokens: int,
        after_tokens: int,
        round_index: int,
    ) -> None:
        """History entries ``fold_start_idx..fold_end_idx`` (inclusive) were folded into ``summary_text``."""

    def on_round_ended(self, round_index: int, *, usage: dict[str, Any] | None = None) -> None:
        """A round ended, with the usage of its model call when known."""


class NullSink:
    """A sink that keeps nothing (a pipeline run without persistence)."""

    def on_round_started(self, round_index: int) -> None:
        """Nothing to do."""

    def on_message_appended(self, message: Any, *, round_index: int | None) -> None:
        """Nothing to do."""

    def on_assistant_tool_calls(
        self, *, assistant_seq: int, tool_calls: list[dict[str, Any]], round_index: int
    ) -> None:
        """Nothing to do."""

    def on_compaction(
        self,
        *,
        fold_start_idx: int,
        fold_end_idx: int,
        summary_text: str,
        before_tokens: int,
        after_tokens: int,
        round_index: int,
    ) -> None:
        """Nothing to do."""

    def on_round_ended(self, round_index: int, *, usage: dict[str, Any] | None = None) -> None:
        """Nothing to do."""


class SQLiteSink:
    """Stores a pipeline's messages in one session of a :class:`SQLiteSessionStore`.

    Each message goes through ``store.append_message`` (one transaction, refused while a
    run of a loop holds the session); an assistant message with tool calls leaves them
    unanswered until their tool messages arrive, so a crash in between leaves the session
    pending, as after a crash of a loop's run. The store calls are synchronous.

    Args:
        store: The store.
        session_id: An existing session.
    """

    def __init__(self, store: SQLiteSessionStore, session_id: str) -> None:
        self.store = store
        self.session_id = session_id
        self._history_seqs: list[int] = []

    def init_history_seqs(self, seqs: list[int]) -> None:
        """The store seqs of the history the pipeline starts from, in its order."""
        self._history_seqs = list(seqs)

    def _refused(self, what: str, exc: Exception) -> None:
        log.warning("SQLiteSink(%r): %s was not stored: %s", self.session_id, what, exc)

    def on_round_started(self, round_index: int) -> None:
        """Nothing to store: rounds are recorded with their usage."""

    def on_message_appended(self, message: Any, *, round_index: int | None) -> None:
        """Append the message to the session (its seq joins the history index)."""
        try:
            data = dict(message) if isinstance(message, Mapping) else message_to_dict(message)
            seq = self.store.append_message(
                self.session_id,
                role=str(data.get("role")),
                content=data.get("content"),
                tool_calls=data.get("tool_calls"),
                tool_call_id=data.get("tool_call_id"),
                name=data.get("name"),
                round_index=round_index,
            )
        except (PowerLoopError, ValueError, TypeError, AttributeError) as exc:
            self._refused("a message", exc)
            return
        self._history_seqs.append(seq)

    def on_assistant_tool_calls(
        self, *, assistant_seq: int, tool_calls: list[dict[str, Any]], round_index: int
    ) -> None:
        """Nothing to store: the calls were stored with their assistant message and stay
        unanswered until their results are appended."""

    def on_compaction(
        self,
        *,
        fold_start_idx: int,
        fold_end_idx: int,
        summary_text: str,
        before_tokens: int,
        after_tokens: int,
        round_index: int,
    ) -> None:
        """Fold the stored messages behind history entries ``fold_start_idx..fold_end_idx``
        into the summary, and index the summary in their place."""
        seqs = self._history_seqs
        if not 0 <= fold_start_idx <= fold_end_idx < len(seqs):
            self._refused("a compaction", IndexError(f"entries {fold_start_idx}..{fold_end_idx} of {len(seqs)}"))
            return
        try:
            _, note_seq = self.store.record_compaction(
                self.session_id,
                from_seq=seqs[fold_start_idx],
                to_seq=seqs[fold_end_idx],
                note_content=summary_text,
                before_tokens=before_tokens,
                after_tokens=after_tokens,
                round_index=round_index,
            )
        except (PowerLoopError, ValueError) as exc:
            self._refused("a compaction", exc)
            return
        self._history_seqs = [*seqs[:fold_start_idx], note_seq, *seqs[fold_end_idx + 1 :]]

    def on_round_ended(self, round_index: int, *, usage: dict[str, Any] | None = None) -> None:
        """Record the round's usage (a usage row; the session stats are not changed)."""
        if not usage:
            return
        try:
            self.store.record_usage(
                self.session_id,
                round_index=round_index,
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
                total_tokens=usage.get("total_tokens"),
                model=usage.get("model"),
            )
        except (PowerLoopError, ValueError, TypeError) as exc:
            self._refused("the round's usage", exc)
