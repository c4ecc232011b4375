"""The checks before every round: stop signal, token budget, round limit.

Each returns the run's :class:`~.outcome.End` when it is hit, or None. The round limit still
asks the model for a summary of what was done (one call without tools); that call can itself
end the run ``cancelled`` or ``degraded``.
"""

from __future__ import annotations

from dataclasses import replace

from ..events import AgentEventType, HitRoundLimitStatusPayload
from ..messages import UserMessage
from ..store.rows import Append, WriteOp
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
    """The ending due before the next round, if any: stop → budget → round limit."""
    config = run.config
    if run.stop.is_set():
        return await cancelled(run)
    if config.max_tokens_per_run is not None and run.usage.total_tokens >= config.max_tokens_per_run:
        return await budget_exceeded(run, config.max_tokens_per_run)
    left = run.tokens_left() if run.parent is not None else None
    if left is not None and left <= 0:
        return await budget_exceeded(run, config.max_tokens_per_run or 0, reason="parent budget")
    if run.rounds >= config.max_rounds:
        return await _round_limit(run)
    return None


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
