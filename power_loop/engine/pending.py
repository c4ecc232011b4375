"""Unanswered tool calls: answering them when a run resumes.

``resume`` and ``submit_input`` start a run that first answers the session's pending calls:
a call that finished before the interruption keeps its stored result (it is not run again);
a call that never finished, or whose outcome is unknown (``running`` at a crash), runs again
through the normal validated, hooked, evented path (a tool with side effects can dedupe with
``ToolContext.idempotency_key``). The answers are appended in call order and the run goes on.
A question still open ends the run ``waiting_for_input`` again, running nothing; an approval
request still undecided ends it ``awaiting_approval`` again, running nothing. Approved calls
run without asking again (after their tool's ``precheck``); denied and expired ones have their
stored answer. When a late approval answered a call as expired, the answers are committed and
the run ends ``approval_expired`` instead of calling the model: the host decides whether the
model should react (``resume``).
"""

from __future__ import annotations

from typing import cast

from .._types import ToolCallStatus
from ..messages import AssistantMessage, ToolCall
from ..store.rows import RESOLVED_STATUSES, PendingCall, PendingState
from .outcome import Continue, End, StepOutcome
from .state import Run
from .tool_batch import ToolOutcome, counted_calls, run_tool_batch
from .tool_round import commit_results

__all__ = ["resume_calls"]


def tool_call_of(pending: PendingCall) -> ToolCall:
    """The ToolCall of a pending call."""
    return ToolCall(id=pending.tool_call_id, name=pending.name, arguments=pending.arguments)


async def resume_calls(run: Run, state: PendingState) -> StepOutcome:
    """Answer the pending calls (stored results reused, the rest executed) and commit the answers."""
    ordered = sorted(state.calls, key=lambda c: c.position)
    if any(c.status == "waiting_input" for c in ordered):
        interactions = [dict(i) for i in state.interactions]
        return End("waiting_for_input", "", pending=ordered, interactions=interactions, approvals=state.approvals)
    if state.approvals:
        return End("awaiting_approval", "", pending=ordered, approvals=state.approvals)
    outcomes: dict[str, ToolOutcome] = {}
    to_run = []
    for pending in ordered:
        call = tool_call_of(pending)
        if pending.status in RESOLVED_STATUSES and pending.result is not None:
            status = cast(ToolCallStatus, pending.status)  # as stored: one of RESOLVED_STATUSES
            outcomes[call.id] = ToolOutcome(call, pending.result, pending.is_error, status)
        else:
            to_run.append(call)
    if to_run:
        ran = await run_tool_batch(run, to_run, state.approved)
        for outcome in ran:
            outcomes[outcome.call.id] = outcome
        run.tool_calls += counted_calls(ran)
    merged = [outcomes[c.tool_call_id] for c in ordered]
    step = await commit_results(run, AssistantMessage(content=""), merged, None)
    if isinstance(step, Continue) and state.expired:
        names = ", ".join(c.name for c in ordered if c.tool_call_id in state.expired)
        return End("approval_expired", f"[approval_expired: {names}]")
    return step
