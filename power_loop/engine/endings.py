"""Endings a step may return when the run cannot go on: cancelled, degraded, budget exceeded.

Each function publishes the ending's event and returns the :class:`~.outcome.End` (with the
writes that commit together with the end of the run); it commits nothing itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import LLMError, LLMRetryExhausted, LLMTimeout
from ..events import AgentEventType, BudgetExceededStatusPayload, LlmDegradedPayload, LoopCancelledPayload
from ..guards import BudgetHit
from ..messages import AssistantMessage
from ..store.rows import Append, WriteOp
from .history import DEGRADED_NAME
from .outcome import End
from .state import Run, on_append

__all__ = ["FailedCall", "budget_exceeded", "cancelled", "degraded"]


async def cancelled(run: Run, ops: Sequence[WriteOp] = ()) -> End:
    """The stop signal fired: ``loop_cancelled``, then end ``cancelled`` (with ``ops``)."""
    await run.emitter.emit(
        AgentEventType.LOOP_CANCELLED,
        LoopCancelledPayload(reason=run.stop.reason, round_index=run.round_index),
        round_index=run.round_index,
    )
    return End("cancelled", "[cancelled by user]", ops=ops)


@dataclass(frozen=True)
class FailedCall:
    """What ``llm_degraded`` says about the model call that failed."""

    provider: str = ""
    request_model: str = ""
    duration_ms: int = 0


async def degraded(run: Run, error: LLMError, call: FailedCall | None = None) -> End:
    """The model could not be reached: ``llm_degraded``, a kernel note in the history, end
    ``degraded``. The session is usable again once the model is."""
    call = call or FailedCall()
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
        LlmDegradedPayload(
            reason=reason,
            attempts=attempts,
            error_type=type(inner).__name__,
            error_message=str(inner),
            provider=call.provider,
            request_model=call.request_model,
            duration_ms=call.duration_ms,
        ),
        round_index=run.round_index,
    )
    # Named, so it stays in the history for the application but out of every model request.
    note = AssistantMessage(content=text, name=DEGRADED_NAME)
    marker = await on_append(run.rt, run.session_id, run.round_index, note)
    return End("degraded", text, ops=[Append([marker], run_id=run.run_id)])


async def budget_exceeded(run: Run, hit: BudgetHit, ops: Sequence[WriteOp] = ()) -> End:
    """A budget would be crossed by the next call: a ``status_changed`` event, then end
    ``budget_exceeded`` (with ``ops``); ``StatefulResult.budget`` reports ``hit``."""
    run.budget_hit = hit
    tokens = run.config.max_tokens_per_run
    await run.emitter.emit(
        AgentEventType.STATUS_CHANGED,
        BudgetExceededStatusPayload(
            budget_tokens=int(hit.allowed) if hit.limit == "max_tokens_per_run" else (tokens or 0),
            spent_tokens=run.usage.total_tokens,
            rounds=run.rounds,
        ),
        round_index=run.round_index,
    )
    own_tokens = hit.limit == "max_tokens_per_run" and hit.session_id == run.session_id
    if own_tokens:
        text = "[budget_exceeded]"
    elif hit.session_id != run.session_id:
        text = f"[budget_exceeded: parent budget ({hit.limit})]"
    else:
        text = f"[budget_exceeded: {hit.limit}]"
    return End("budget_exceeded", text, ops=ops)
