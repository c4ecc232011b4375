"""Unanswered tool calls: resuming them, and pausing a run for user input.

``resume`` and ``submit_input`` start a run that first answers the session's pending calls:
a call that finished before the interruption keeps its stored result (it is not run again);
a call that never finished, or whose outcome is unknown (``running`` at a crash), runs again
through the normal validated, hooked, evented path (a tool with side effects can dedupe with
``ToolContext.idempotency_key``). The answers are appended in call order and the run goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..messages import AssistantMessage
from ..store.rows import RESOLVED_STATUSES, OpenInteraction, PendingCall, UpdateToolCall, WriteOp
from .tool_batch import ToolOutcome, counted_calls, run_tool_batch

if TYPE_CHECKING:
    from .run import RunLoop


async def resume_calls(loop: RunLoop, calls: Sequence[PendingCall]) -> None:
    """Answer ``calls`` (stored results reused, the rest executed) and commit the answers."""
    run = loop.run
    ordered = sorted(calls, key=lambda c: c.position)
    if any(c.status == "waiting_input" for c in ordered):
        interactions = [dict(i) for i in loop.begin.pending.interactions] if loop.begin.pending else []
        await loop._finish("waiting_for_input", "", write=True, pending=ordered, interactions=interactions)
    outcomes: dict[str, ToolOutcome] = {}
    to_run = []
    for pending in ordered:
        call = loop.tool_call_of(pending)
        if pending.status in RESOLVED_STATUSES and pending.result is not None:
            outcomes[call.id] = ToolOutcome(call, pending.result, pending.is_error, pending.status)
        else:
            to_run.append(call)
    if to_run:
        ran = await run_tool_batch(run, to_run)
        for outcome in ran:
            outcomes[outcome.call.id] = outcome
        run.tool_calls += counted_calls(ran)
    merged = [outcomes[c.tool_call_id] for c in ordered]
    placeholder = AssistantMessage(content="")
    await loop._commit_tool_results(placeholder, merged, None)


async def pause_for_input(loop: RunLoop, outcomes: Sequence[ToolOutcome]) -> None:
    """A tool asked the user: store every other call's result and the question, end the run
    ``waiting_for_input``. The calls stay unanswered in the history until ``submit_input``."""
    run = loop.run
    ops: list[WriteOp] = []
    interactions = []
    for outcome in outcomes:
        if outcome.status == "waiting_input":
            assert outcome.interaction is not None
            interactions.append(outcome.interaction)
            ops.append(UpdateToolCall(outcome.call.id, "waiting_input"))
            ops.append(OpenInteraction(outcome.interaction))
        else:
            ops.append(
                UpdateToolCall(outcome.call.id, outcome.status, result=outcome.content, is_error=outcome.is_error)
            )
    ops.append(run.finish_op("waiting_for_input"))
    await run.writer.write(ops)
    pending = [
        PendingCall(tool_call_id=o.call.id, name=o.call.name, arguments=o.call.arguments, status=o.status, position=i)
        for i, o in enumerate(outcomes)
    ]
    await loop._finish("waiting_for_input", "", write=False, pending=pending, interactions=interactions)
