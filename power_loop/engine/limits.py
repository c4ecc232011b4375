"""The checks before every round: stop signal, budgets, round limit.

Each returns the run's :class:`~.outcome.End` when it is hit, or None. The round limit still
asks the model for a summary of what was done (one call without tools); that call can itself
end the run ``cancelled`` or ``degraded``.
"""

from __future__ import annotations

from dataclasses import replace

from ..events import AgentEventType, HitRoundLimitStatusPayload, PausedStatusPayload
from ..messages import UserMessage
from ..store.rows import Append, WriteOp
from .budgets import spent_budget
from .endings import budget_exceeded, cancelled
from .model_call import ask_model, usage_op
from .outcome import End
from .prepare import build_request
from .state import Run, on_append

__all__ = ["ROUND_LIMIT_PROMPT", "check_limits"]

ROUND_LIMIT_PROMPT = (
    "You have reached the maximum of {max_rounds} rounds. Summarize what you accomplished and what remains."
)


async def check_limits(run: Run) -> End | None:
    """The ending due before the next round, if any: stop → pause → budget → round limit."""
    config = run.config
    if run.stop.is_set():
        return await cancelled(run)
    if run.writer.paused or run.rt.pauses.get(run.session_id, -1) >= run.started_at:
        return await paused(run)
    spent = spent_budget(run)
    if spent is not None:
        return await budget_exceeded(run, spent)
    if run.rounds >= config.max_rounds:
        return await _round_limit(run)
    return None


async def paused(run: Run) -> End:
    """``loop.pause``: a ``status_changed`` event, then end ``paused`` (the session stays
    paused: only ``resume`` runs it again)."""
    payload = PausedStatusPayload(rounds=run.rounds)
    await run.emitter.emit(AgentEventType.STATUS_CHANGED, payload, round_index=run.round_index)
    return End("paused", "[paused]")


async def _round_limit(run: Run) -> End:
    """``max_rounds`` reached: ask for a summary, end ``hit_round_limit`` with it."""
    config = run.config
    await run.emitter.emit(
        AgentEventType.STATUS_CHANGED,
        HitRoundLimitStatusPayload(max_rounds=config.max_rounds),
        round_index=run.round_index,
    )
    prompt = await on_append(
        run.rt,
        run.session_id,
        run.round_index,
        UserMessage(content=ROUND_LIMIT_PROMPT.format(max_rounds=config.max_rounds), name="round_limit"),
    )
    request = build_request(messages=[*run.view(), prompt], system_prompt=run.system_prompt, tools=(), config=config)
    reply = await ask_model(run, request, purpose="round_limit_summary")
    if isinstance(reply, End):
        return reply
    summary = await on_append(run.rt, run.session_id, run.round_index, replace(reply.response.message, tool_calls=()))
    ops: list[WriteOp] = [Append([prompt, summary], run_id=run.run_id), usage_op(run, reply, "round_limit_summary")]
    return End("hit_round_limit", f"[hit_round_limit]\n{summary.text}", ops=ops)
