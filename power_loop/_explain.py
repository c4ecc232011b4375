"""``loop.explain(sid)``: a plain-text report of a session's latest run.

The report is built from what the store keeps (the run row, its model calls and tool calls,
its last message, the session's pending calls and open questions) plus the run's stored
events when the event log has them, so it works in any process, after a restart. It is a
list of sections: each :data:`Section` takes the :class:`RunFacts` and returns its lines (none
to stay silent); :data:`SECTIONS` holds them in order, so a new section is one more entry.
The limits section reads :data:`LIMITS`, one entry per limit of ``AgentLoopConfig``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from .config import AgentLoopConfig
from .events import AgentEvent, AgentEventType
from .results import RUN_STATUSES, STATUS_GUIDE, RecommendedAction, StatusGuide
from .store.rows import RunRecord

__all__ = ["ACTION_CALLS", "LIMITS", "SECTIONS", "Limit", "RunFacts", "Section", "render"]


@dataclass(frozen=True)
class RunFacts:
    """What the report knows of a session's latest run.

    Attributes:
        session_id: The session.
        run: The run as the store keeps it.
        events: The run's stored events, in seq order (empty when none were stored).
        config: The config of the loop asked (its limits are the ones reported).
    """

    session_id: str
    run: RunRecord
    events: tuple[AgentEvent, ...]
    config: AgentLoopConfig

    @property
    def guide(self) -> StatusGuide:
        """The guide of the run's status; run-row statuses that are no ``RunStatus``
        (``running``, ``failed``, ``interrupted``) get one of their own."""
        if self.run.status in RUN_STATUSES:
            return STATUS_GUIDE[self.run.status]
        pending = self.run.pending is not None
        action: RecommendedAction = "heal" if pending else "send"
        meaning = _ROW_MEANINGS.get(self.run.status, "The run ended with a status this version does not know.")
        return StatusGuide(pending, action, meaning)

    def last(self, event_type: AgentEventType) -> AgentEvent | None:
        """The run's last stored event of ``event_type``, or None."""
        return next((e for e in reversed(self.events) if e.type is event_type), None)


_ROW_MEANINGS: Mapping[str, str] = {
    "running": "The run has not recorded an end: it is still running, or its process died "
    "(the next run of the session marks it interrupted).",
    "interrupted": "The process running it died; another run took the session over.",
    "failed": "The run raised an error; its unanswered calls were answered with an error.",
}

Section = Callable[[RunFacts], list[str]]
"""A section of the report: the facts in, its lines out (an empty list adds nothing)."""


@dataclass(frozen=True)
class Limit:
    """A limit the report compares the run with.

    Attributes:
        field: The ``AgentLoopConfig`` field holding it (None: unlimited). A field the
            config does not have is not reported.
        unit: What it counts (``rounds``, ``tokens``, ...).
        used: How much of it the run used, or None when the store does not tell.
    """

    field: str
    unit: str
    used: Callable[[RunFacts], float | None]


def _cost(facts: RunFacts) -> float | None:
    spent = facts.last(AgentEventType.USAGE_UPDATED)
    cost = spent.payload.get("run_usage", {}).get("cost_usd") if spent is not None else None
    return float(cost) if isinstance(cost, (int, float)) else None


def _seconds(facts: RunFacts) -> float | None:
    run = facts.run
    return None if run.ended_at is None else (run.ended_at - run.started_at) / 1000


LIMITS: list[Limit] = [
    Limit("max_rounds", "rounds", lambda f: f.run.rounds),
    Limit("max_tokens_per_run", "tokens", lambda f: f.run.usage.get("total_tokens", 0)),
    Limit("max_cost_usd_per_run", "USD", _cost),
    Limit("max_wall_s_per_run", "s (this run)", _seconds),
    Limit("max_tool_calls_per_run", "tool calls", lambda f: sum(f.run.tool_calls.values())),
]
"""The limits reported, in order; one more limit of ``AgentLoopConfig`` is one more entry."""


def _sid(facts: RunFacts) -> str:
    return repr(facts.session_id)


def _interaction_ids(facts: RunFacts) -> list[str]:
    pending = facts.run.pending
    return [str(i.get("interaction_id")) for i in pending.interactions] if pending else []


def _approve_call(facts: RunFacts) -> str:
    pending = facts.run.pending
    tokens = [a.token for a in pending.approvals] if pending is not None else []
    return " / ".join(f"await loop.approve({_sid(facts)}, {t!r})" for t in tokens or ["<token>"])


def _submit_call(facts: RunFacts) -> str:
    ids = _interaction_ids(facts) or ["<interaction_id>"]
    return " / ".join(f"await loop.submit_input({_sid(facts)}, {i!r}, value)" for i in ids)


ACTION_CALLS: dict[RecommendedAction, Callable[[RunFacts], str]] = {
    "none": lambda f: f"nothing to do; the next message is `await loop.send(text, {_sid(f)})`",
    "resume": lambda f: f"`await loop.resume({_sid(f)})`",
    "submit_input": lambda f: f"`{_submit_call(f)}`",
    "approve": lambda f: f"`{_approve_call(f)}` (approved=False, note=... denies); the run then goes on",
    "raise_budget": lambda f: (
        f"raise the budget that stopped it (AgentLoopConfig.max_tokens_per_run, max_cost_usd_per_run, ... or a "
        f"Budget), or wait for its window to renew, then `await loop.resume({_sid(f)})`"
    ),
    "heal": lambda f: (
        f"`await loop.send(text, {_sid(f)}, heal_pending=True)` (answers the unanswered calls as "
        f"aborted) or `await loop.resume({_sid(f)})` (runs them again)"
    ),
    "retry": lambda f: f"once the cause is fixed (the model reachable), `await loop.resume({_sid(f)})`",
    "send": lambda f: f"`await loop.send(text, {_sid(f)})` continues the conversation",
}
"""How each :data:`~power_loop.results.RecommendedAction` is spelled as a call in the report."""


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _short(text: str, limit: int = 200) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _ending(facts: RunFacts) -> list[str]:
    run = facts.run
    lines = [f"Session {_sid(facts)}: last run {run.run_id} (#{run.number}, {run.kind}) ended {run.status}."]
    lines.append(f"  meaning: {facts.guide.meaning}")
    span = f"  started {_when(run.started_at)}"
    if run.ended_at is not None:
        span += f", took {(run.ended_at - run.started_at) / 1000:.2f}s"
    lines.append(span)
    return lines


def _why(facts: RunFacts) -> list[str]:
    run, lines = facts.run, []
    if run.error:
        lines.append(f"  error: {_short(run.error)}")
    degraded = facts.last(AgentEventType.LLM_DEGRADED)
    if degraded is not None:
        p = degraded.payload
        lines.append(
            f"  model: {p.get('reason')} after {p.get('attempts')} attempt(s): "
            f"{p.get('error_type')}: {_short(str(p.get('error_message', '')))}"
        )
    status = facts.last(AgentEventType.STATUS_CHANGED)
    if status is not None and status.payload.get("kind") == "budget_exceeded":
        p = status.payload
        lines.append(
            f"  budget: {p.get('spent_tokens')} tokens spent of {p.get('budget_tokens')} "
            f"after {p.get('rounds')} round(s)"
        )
    cancelled = facts.last(AgentEventType.LOOP_CANCELLED)
    if cancelled is not None:
        lines.append(f"  stopped by: {cancelled.payload.get('reason')} (round {cancelled.payload.get('round_index')})")
    if run.last_message:
        lines.append(f"  last message: {_short(run.last_message)}")
    heading = "Answer:" if run.status == "completed" else "Why:"
    return [heading, *lines] if lines else []


def _work(facts: RunFacts) -> list[str]:
    run, usage = facts.run, facts.run.usage
    lines = [
        "Work:",
        f"  rounds: {run.rounds}; model calls: {usage.get('calls', 0)}",
        f"  tokens: {usage.get('total_tokens', 0)} (prompt {usage.get('prompt_tokens', 0)}, completion "
        f"{usage.get('completion_tokens', 0)}, cache read {usage.get('cache_read_tokens', 0)}, reasoning "
        f"{usage.get('reasoning_tokens', 0)})",
    ]
    cost = _cost(facts)
    if cost is not None:
        lines.append(f"  cost: {cost:g} USD")
    if run.tool_calls:
        lines.append("  tool calls: " + ", ".join(f"{n} {status}" for status, n in sorted(run.tool_calls.items())))
    else:
        lines.append("  tool calls: none")
    return lines


def _limits(facts: RunFacts) -> list[str]:
    lines = ["Limits (this loop's config):"]
    for limit in LIMITS:
        if not hasattr(facts.config, limit.field):
            continue
        bound = getattr(facts.config, limit.field)
        used = limit.used(facts)
        spent = "unknown" if used is None else f"{used:g}"
        if bound is None:
            lines.append(f"  {limit.field}: {spent} {limit.unit}, unlimited")
        else:
            reached = " (reached)" if used is not None and used >= bound else ""
            lines.append(f"  {limit.field}: {spent} of {bound:g} {limit.unit}{reached}")
    return lines


def _pending(facts: RunFacts) -> list[str]:
    pending = facts.run.pending
    if pending is None:
        return []
    lines = ["Pending:"]
    for call in pending.calls:
        lines.append(f"  call {call.tool_call_id} {call.name}: {call.status}")
    for question in pending.interactions:
        lines.append(f"  question {question.get('interaction_id')}: {_short(str(question.get('prompt', '')))}")
    for request in pending.approvals:
        state = "expired" if request.expired else f"expires {_when(request.expires_at)}"
        lines.append(f"  approval {request.token} for {request.tool_name} ({request.tool_call_id}): {state}")
    return lines


def _event_log(facts: RunFacts) -> list[str]:
    stored = facts.run.events_stored
    if not stored:
        return ["Events: none stored for this run (AgentLoopConfig.persist_events is off)."]
    first = facts.events[0].seq if facts.events else 0
    return [f"Events: {stored} stored; replay with `loop.iter_events({_sid(facts)}, after_seq={max(first - 1, 0)})`."]


def _next(facts: RunFacts) -> list[str]:
    guide = facts.guide
    action = ACTION_CALLS[guide.recommended_action](facts)
    resumable = "resumable" if guide.resumable else "not resumable"
    return [f"Next ({guide.recommended_action}, {resumable}): {action}"]


SECTIONS: list[Section] = [_ending, _why, _work, _limits, _pending, _event_log, _next]
"""The report's sections, in order."""


def render(facts: RunFacts) -> str:
    """The report: every section's lines, in order."""
    return "\n".join(line for section in SECTIONS for line in section(facts))


def no_run(session_id: str) -> str:
    """The report of a session that has had no run yet."""
    return (
        f"Session {session_id!r} has no run yet: nothing was sent to it.\n"
        f"Next (send): `await loop.send(text, {session_id!r})` starts its first run."
    )
