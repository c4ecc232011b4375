"""The tool half of a round: decide, run the calls, commit their results, end the round.

* ``ROUND_DECIDE`` may skip every call (``SKIP``) or answer them and end the run (``BREAK``);
  ``TOOLS_BATCH_BEFORE`` may skip them; otherwise :func:`~.tool_batch.run_tool_batch` runs them.
* A call that asked the user (``request_user_input``) or waits for a human's approval pauses
  the run: :func:`pause_for_input` returns the ``waiting_for_input`` (a question is open) or
  ``awaiting_approval`` ending holding every call's status, the questions and the approval
  requests, committed together with the end of the run.
* Otherwise the results commit in call order, with the follow-ups that arrived meanwhile, and
  the run goes on; after a ``BREAK`` or a stop the results commit with the end of the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..approvals import ApprovalRequest
from ..events import AgentEventType, RoundCompletedPayload, RoundToolsPresentPayload
from ..hooks import HookDirective, HookPoint, RoundDecideCtx, RoundEndCtx, ToolsBatchAfterCtx, ToolsBatchBeforeCtx
from ..messages import AssistantMessage, Message, ToolResultMessage
from ..results import RunStatus
from ..store.rows import Append, DrainInbox, OpenApproval, OpenInteraction, PendingCall, UpdateToolCall, WriteOp
from .endings import cancelled
from .outcome import CONTINUE, End, StepOutcome
from .progress import after_batch, before_batch
from .state import Run, dicts, on_append
from .tool_batch import ToolOutcome, counted_calls, run_tool_batch

__all__ = ["commit_results", "pause_for_input", "round_end", "run_tools", "tools_present"]


async def run_tools(run: Run, assistant: AssistantMessage) -> StepOutcome:
    """ROUND_DECIDE, TOOLS_BATCH_BEFORE, the calls, then :func:`commit_results`."""
    calls = assistant.tool_calls
    hooks = run.rt.hooks
    ending: str | None = None
    outcomes: list[ToolOutcome] | None = None
    if hooks.has(HookPoint.ROUND_DECIDE):
        ctx = RoundDecideCtx(
            messages=dicts(run.transcript.messages),
            tool_calls=[c.to_dict() for c in calls],
            assistant_text=assistant.text,
            round_index=run.round_index,
            session_id=run.session_id,
        )
        directive = await hooks.run(HookPoint.ROUND_DECIDE, ctx)
        if directive is HookDirective.SKIP:
            outcomes = [ToolOutcome(c, str(ctx.output), False, "skipped") for c in calls]
        elif directive is HookDirective.BREAK:
            outcomes = [ToolOutcome(c, "[skipped: round.decide hook ended the run]", True, "skipped") for c in calls]
            ending = "hook_break"
    if outcomes is None and hooks.has(HookPoint.TOOLS_BATCH_BEFORE):
        ctx2 = ToolsBatchBeforeCtx(
            messages=dicts(run.transcript.messages),
            tool_calls=[c.to_dict() for c in calls],
            round_index=run.round_index,
            session_id=run.session_id,
        )
        if await hooks.run(HookPoint.TOOLS_BATCH_BEFORE, ctx2) is HookDirective.SKIP:
            outcomes = [ToolOutcome(c, str(ctx2.output), False, "skipped") for c in calls]
    status: RunStatus = "completed"
    if outcomes is None:
        answered, stop = await before_batch(run, calls)
        rest = [c for c in calls if c.id not in answered]
        ran = iter(await run_tool_batch(run, rest) if rest else ())
        outcomes = [answered[c.id] if c.id in answered else next(ran) for c in calls]
        if stop or await after_batch(run, outcomes):
            ending, status = "no_progress", "no_progress"
    run.tool_calls += counted_calls(outcomes)
    return await commit_results(run, assistant, outcomes, ending, status=status)


async def commit_results(
    run: Run,
    assistant: AssistantMessage,
    outcomes: Sequence[ToolOutcome],
    ending: str | None,
    *,
    status: RunStatus = "completed",
) -> StepOutcome:
    """TOOLS_BATCH_AFTER, then the results transaction (or the run's end holding them, with
    ``status`` when ``ending`` is set)."""
    if run.rt.hooks.has(HookPoint.TOOLS_BATCH_AFTER):
        ctx = ToolsBatchAfterCtx(
            messages=dicts(run.transcript.messages), round_index=run.round_index, session_id=run.session_id
        )
        await run.rt.hooks.run(HookPoint.TOOLS_BATCH_AFTER, ctx)
    if any(o.status in ("waiting_input", "awaiting_approval") for o in outcomes):
        return pause_for_input(run, outcomes)
    results: list[Message] = []
    statuses: dict[str, str] = {}
    for o in outcomes:
        result = ToolResultMessage(tool_call_id=o.call.id, name=o.call.name, content=o.content, is_error=o.is_error)
        results.append(await on_append(run.rt, run.session_id, run.round_index, result))
        statuses[o.call.id] = o.status
    ops: list[WriteOp] = [Append(results, statuses, run.run_id)]
    stopped = run.stop.is_set() and any(o.status == "cancelled" for o in outcomes)
    if ending is None and not stopped:
        ops.append(DrainInbox(run.run_id))
        await run.writer.write(ops)
        await round_end(run, has_tools=True, text=assistant.text)
        return CONTINUE
    await round_end(run, has_tools=True, text=assistant.text)
    if stopped:
        return await cancelled(run, ops)
    text = assistant.text if status == "completed" else f"[{status}]"
    return End(status, text, reason=ending, ops=ops)


def pause_for_input(run: Run, outcomes: Sequence[ToolOutcome]) -> End:
    """A tool asked the user, or a call waits for approval: the run ends ``waiting_for_input``
    (when a question is open) or ``awaiting_approval``, storing every other call's result, the
    questions and the approval requests with the end. The calls stay unanswered in the
    history until ``submit_input`` / ``approve``."""
    ops: list[WriteOp] = []
    interactions: list[dict[str, Any]] = []
    approvals: list[ApprovalRequest] = []
    for outcome in outcomes:
        if outcome.status == "waiting_input":
            assert outcome.interaction is not None
            interactions.append(outcome.interaction)
            ops.append(UpdateToolCall(outcome.call.id, "waiting_input"))
            ops.append(OpenInteraction(outcome.interaction))
        elif outcome.status == "awaiting_approval":
            assert outcome.approval is not None
            approvals.append(outcome.approval)
            ops.append(UpdateToolCall(outcome.call.id, "awaiting_approval"))
            ops.append(OpenApproval(outcome.approval))
        else:
            ops.append(
                UpdateToolCall(outcome.call.id, outcome.status, result=outcome.content, is_error=outcome.is_error)
            )
    pending = [
        PendingCall(tool_call_id=o.call.id, name=o.call.name, arguments=o.call.arguments, status=o.status, position=i)
        for i, o in enumerate(outcomes)
    ]
    status: RunStatus = "waiting_for_input" if interactions else "awaiting_approval"
    return End(status, "", ops=ops, pending=pending, interactions=interactions, approvals=approvals)


async def tools_present(run: Run, count: int) -> None:
    """``round_tools_present``: whether (and how many) tool calls the model made."""
    await run.emitter.emit(
        AgentEventType.ROUND_TOOLS_PRESENT,
        RoundToolsPresentPayload(has_tools=count > 0, count=count),
        round_index=run.round_index,
    )


async def round_end(run: Run, *, has_tools: bool, text: str) -> None:
    """ROUND_END and ``round_completed``."""
    if run.rt.hooks.has(HookPoint.ROUND_END):
        ctx = RoundEndCtx(
            messages=dicts(run.transcript.messages),
            has_tools=has_tools,
            response_text=text,
            round_index=run.round_index,
            session_id=run.session_id,
        )
        await run.rt.hooks.run(HookPoint.ROUND_END, ctx)
    await run.emitter.emit(
        AgentEventType.ROUND_COMPLETED,
        RoundCompletedPayload(round_index=run.round_index, has_tools=has_tools),
        round_index=run.round_index,
    )
