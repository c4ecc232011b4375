"""The checks before every round: stop signal, token budget, round limit.

Each returns the run's :class:`~.outcome.End` when it is hit, or None. The round limit still
asks the model for a summary of what was done (one call without tools); that call can itself
end the run ``cancelled`` or ``degraded``.
"""

from __future__ import annotations

from dataclasses import replace

from ..events import AgentEventType, BudgetExceededStatusPayload, HitRoundLimitStatusPayload
from ..messages import UserMessage
from ..store.rows import Append, WriteOp
from .endings import cancelled
from .model_call import ask_model, usage_op
from .outcome import End
from .prepare import build_request
from .state import Run, on_append

__all__ = ["ROUND_LIMIT_PROMPT", "check_limits"]

ROUND_LIMIT_PROMPT = (
    "You have reached the maximum of {max_rounds} rounds. Summarize what you accomplished and what remains."
)


async def check_limits(run: Run) -> End | None:
    """The ending due before the next round, if any: stop → budget → round limit."""
    config = run.rt.config
    if run.stop.is_set():
        return await cancelled(run)
    if config.max_tokens_per_run is not None and run.usage.total_tokens >= config.max_tokens_per_run:
        return await _budget_exceeded(run, config.max_tokens_per_run)
    if run.rounds >= config.max_rounds:
        return await _round_limit(run)
    return None


async def _budget_exceeded(run: Run, budget: int) -> End:
    await run.emitter.emit(
        AgentEventType.STATUS_CHANGED,
        BudgetExceededStatusPayload(budget_tokens=budget, spent_tokens=run.usage.total_tokens, rounds=run.rounds),
        round_index=run.round_index,
    )
    return End("budget_exceeded", "[budget_exceeded]")


async def _round_limit(run: Run) -> End:
    """``max_rounds`` reached: ask for a summary, end ``hit_round_limit`` with it."""
    config = run.rt.config
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
