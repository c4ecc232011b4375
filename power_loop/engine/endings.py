"""Endings a step may return when the run cannot go on: cancelled, degraded, budget exceeded.

Each function publishes the ending's event and returns the :class:`~.outcome.End` (with the
writes that commit together with the end of the run); it commits nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import LLMError, LLMRetryExhausted, LLMTimeout
from ..events import AgentEventType, BudgetExceededStatusPayload, LlmDegradedPayload, LoopCancelledPayload
from ..messages import AssistantMessage
from ..store.rows import Append, WriteOp
from .history import DEGRADED_NAME
from .outcome import End
from .state import Run, on_append

__all__ = ["budget_exceeded", "cancelled", "degraded"]


async def cancelled(run: Run, ops: Sequence[WriteOp] = ()) -> End:
    """The stop signal fired: ``loop_cancelled``, then end ``cancelled`` (with ``ops``)."""
    await run.emitter.emit(
        AgentEventType.LOOP_CANCELLED,
        LoopCancelledPayload(reason=run.stop.reason, round_index=run.round_index),
        round_index=run.round_index,
    )
    return End("cancelled", "[cancelled by user]", ops=ops)


async def degraded(run: Run, error: LLMError) -> End:
    """The model could not be reached: ``llm_degraded``, a kernel note in the history, end
    ``degraded``. The session is usable again once the model is."""
    inner = error.last_error if isinstance(error, LLMRetryExhausted) else error
    reason = (
        "timeout"
        if isinstance(inner, LLMTimeout)
        else "retry_exhausted"
        if isinstance(error, LLMRetryExhausted)
        else "error"
    )
    attempts = error.attempts if isinstance(error, LLMRetryExhausted) else 1
    text = f"[degraded: LLM {reason} — {type(inner).__name__}: {str(inner)[:200]}]"
    await run.emitter.emit(
        AgentEventType.LLM_DEGRADED,
        LlmDegradedPayload(reason=reason, attempts=attempts, error_type=type(inner).__name__, error_message=str(inner)),
        round_index=run.round_index,
    )
    # Named, so it stays in the history for the application but out of every model request.
    note = AssistantMessage(content=text, name=DEGRADED_NAME)
    marker = await on_append(run.rt, run.session_id, run.round_index, note)
    return End("degraded", text, ops=[Append([marker], run_id=run.run_id)])


async def budget_exceeded(run: Run, budget: int, *, reason: str = "") -> End:
    """The token budget is spent: a ``status_changed`` event, then end ``budget_exceeded``.

    ``reason`` says why when it is not the run's own spending (``"parent budget"``: what a
    sub-agent's ancestors have left would not cover its next call)."""
    await run.emitter.emit(
        AgentEventType.STATUS_CHANGED,
        BudgetExceededStatusPayload(budget_tokens=budget, spent_tokens=run.usage.total_tokens, rounds=run.rounds),
        round_index=run.round_index,
    )
    return End("budget_exceeded", f"[budget_exceeded: {reason}]" if reason else "[budget_exceeded]")
