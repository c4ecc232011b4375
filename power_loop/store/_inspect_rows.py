"""Rows of the inspection read layer (:class:`~power_loop.store.protocols.InspectStore`):
what ``power-loop sessions``, ``show``, ``timers``, ``doctor`` and ``prune`` print, and what
a viewer reads. Times are epoch milliseconds.

Nothing here touches a database; every row is a frozen dataclass with a ``to_dict()`` giving
its JSON-ready view (the ``--json`` output of the commands).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # rows.py re-exports this module's names
    from .rows import TimerRow

__all__ = [
    "EXPORT_FORMAT",
    "HealthFinding",
    "HealthReport",
    "PruneReport",
    "RunOverview",
    "SessionOverview",
    "TimersReport",
    "TranscriptEntry",
]

EXPORT_FORMAT = 1
"""The version of the session export format (``{"type": "session", "format": 1, ...}``)."""


class _AsDict:
    def to_dict(self) -> dict[str, Any]:
        """The row as a JSON-ready dict."""
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]


@dataclass(frozen=True)
class SessionOverview(_AsDict):
    """One session as listed by :meth:`~power_loop.store.protocols.InspectStore.list_sessions`.

    Attributes:
        session_id: The session's id.
        kind: ``main`` for a top-level session, ``subagent`` for a child.
        parent_session_id: The parent of a sub-agent session, else None.
        created_at: When it was created.
        last_active_at: When a run or a message last changed it; None if nothing ever did.
        messages: Live (not folded by compaction) message rows.
        runs: Runs it has had.
        last_status: Status of its latest run (``running`` while one goes on or after a
            crash), None before its first run.
        pending_calls: Tool calls without a result.
        armed_timers: Timers armed for it.
        input_tokens: Prompt tokens of all its model calls.
        output_tokens: Completion tokens of all its model calls.
        metadata: Its metadata.
        lifecycle: A sub-agent's lifecycle (``ephemeral``, ``linked``, ``detached``), else None.
        paused: Whether it is paused (``loop.pause``).
    """

    session_id: str
    kind: str
    parent_session_id: str | None
    created_at: int
    last_active_at: int | None
    messages: int
    runs: int
    last_status: str | None
    pending_calls: int
    armed_timers: int
    input_tokens: int
    output_tokens: int
    metadata: dict[str, Any] = field(default_factory=dict)
    lifecycle: str | None = None
    paused: bool = False


@dataclass(frozen=True)
class RunOverview(_AsDict):
    """One run of a session (:meth:`~power_loop.store.protocols.InspectStore.list_runs`).

    Attributes:
        run_id: The run's id.
        number: Its number in the session (1 for the first).
        kind: What started it (``send``, ``resume``, ``submit_input``, ``wake``).
        status: How it ended, or ``running`` (going on, or its process died).
        started_at: When it started.
        ended_at: When it ended, or None.
        rounds: Rounds it ran (recorded when it ended).
        llm_calls: Model calls it made.
        input_tokens: Prompt tokens of those calls.
        output_tokens: Completion tokens of those calls.
        error: The error of a failed or cancelled run, else None.
    """

    run_id: str
    number: int
    kind: str
    status: str
    started_at: int
    ended_at: int | None
    rounds: int
    llm_calls: int
    input_tokens: int
    output_tokens: int
    error: str | None = None


@dataclass(frozen=True)
class TranscriptEntry(_AsDict):
    """One entry of a transcript (:meth:`~power_loop.store.protocols.InspectStore.read_transcript`).

    Attributes:
        seq: The message's seq; a compaction summary carries the seq of the last message it
            folds (it follows that message).
        role: ``system``, ``user``, ``assistant`` or ``tool``.
        content: The text of the message, or None when it has none (an assistant turn that
            only calls tools).
        tool_calls: The calls an assistant message makes: ``{"id", "name", "arguments"}``
            with the arguments as the JSON text the model sent.
        tool_call_id: The call a tool result answers, else None.
        name: The tool's (or the author's) name, else None.
        is_error: A tool result reporting a failure.
        compacted: The row is folded into a compaction summary.
        is_summary: The entry is a compaction summary (not a message row).
        run_id: The run that wrote it, or None.
        created_at: When it was stored.
        message: The stored dict of the message (the summary's dict for a summary).
    """

    seq: int
    role: str
    content: str | None
    tool_calls: list[dict[str, str]]
    tool_call_id: str | None
    name: str | None
    compacted: bool
    is_summary: bool
    run_id: str | None
    created_at: int
    message: dict[str, Any]
    is_error: bool = False


@dataclass(frozen=True)
class TimersReport:
    """Timers across sessions (:meth:`~power_loop.store.protocols.InspectStore.list_all_timers`).

    Attributes:
        active: Armed and in-flight timers, soonest first.
        recent: Timers that fired (recurring ones included) or were cancelled, latest change
            first.
    """

    active: list[TimerRow]
    recent: list[TimerRow]

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict."""
        return {
            "active": [dataclasses.asdict(t) for t in self.active],
            "recent": [dataclasses.asdict(t) for t in self.recent],
        }


@dataclass(frozen=True)
class HealthFinding(_AsDict):
    """A problem found by :meth:`~power_loop.store.protocols.InspectStore.health_report`.

    Attributes:
        kind: ``dead_lease``, ``stuck_run``, ``pending_calls``, ``expired_timer_claim``,
            ``overdue_timer`` or ``undelivered_wakeup``.
        session_id: The session concerned, or None.
        detail: What is wrong, in one sentence.
        fix: The exact command or Python call that fixes it.
    """

    kind: str
    session_id: str | None
    detail: str
    fix: str


@dataclass(frozen=True)
class HealthReport:
    """What ``power-loop doctor`` prints.

    Attributes:
        backend: ``sqlite`` or ``postgresql``.
        schema_version: The store's schema version.
        integrity: ``ok``, or what the database's own check reported.
        sessions: How many sessions the store holds.
        findings: The problems found, each with its fix.
    """

    backend: str
    schema_version: int
    integrity: str
    sessions: int
    findings: list[HealthFinding]

    @property
    def healthy(self) -> bool:
        """True when the integrity check passed and nothing was found."""
        return self.integrity == "ok" and not self.findings

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-ready dict (with ``healthy``)."""
        return {
            "backend": self.backend,
            "schema_version": self.schema_version,
            "integrity": self.integrity,
            "sessions": self.sessions,
            "healthy": self.healthy,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass(frozen=True)
class PruneReport(_AsDict):
    """What :meth:`~power_loop.store.protocols.InspectStore.prune` removed (or, with
    ``dry_run``, would remove).

    Attributes:
        dry_run: Nothing was changed.
        folded_messages: Folded (compacted) message rows.
        sessions: Ended ephemeral sub-agent sessions, by id.
    """

    dry_run: bool
    folded_messages: int
    sessions: list[str]
