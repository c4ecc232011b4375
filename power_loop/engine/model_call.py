"""One model call of a run, through the single retry layer, with its events.

Events of a call, in order: ``stream_started``, ``stream_delta``/``stream_think_delta``...,
``stream_completed``, ``status_changed`` (kind ``round_usage``), ``usage_updated`` (once per
call). Retries publish ``llm_retry_attempted``. The stream deltas concatenate to the final
text.

:func:`ask_model` is the step a run takes: it returns the response, or the run's ending when
the stop signal fired (``cancelled``) or the model could not be reached (``degraded``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from ..cancellation import StopSignal
from ..config import AgentLoopConfig
from ..errors import CancellationRequested, LLMError, LLMResponseError, LLMRetryExhausted
from ..events import (
    AgentEventType,
    LlmRetryAttemptedPayload,
    RoundUsageStatusPayload,
    StreamCompletedPayload,
    StreamDeltaPayload,
    StreamStartedPayload,
    UsageUpdatedPayload,
)
from ..guards import BudgetHit
from ..messages import Usage
from ..providers.base import LLMRequest, LLMResponse, LLMService, StreamCallbacks
from ..providers.retry import LLMRetryPolicy, RetryNotice, complete_with_retry
from ..store.rows import HeldBudget, RecordLLMCall
from .admission import RateLimiter, metered
from .budgets import charge, cost_nano, release, reserve, settle_unrecorded
from .emit import Emitter
from .endings import FailedCall, budget_exceeded, cancelled, degraded
from .outcome import End
from .state import Run

__all__ = ["ModelCallResult", "ask_model", "call_model", "model_name", "provider_name", "usage_op"]

log = logging.getLogger("power_loop.engine")


@dataclass(frozen=True)
class ModelCallResult:
    """A response and how long it took (with the shared-budget holds its record settles)."""

    response: LLMResponse
    duration_ms: int
    holds: tuple[HeldBudget, ...] = ()
    cost_nano: int = 0


def retry_policy_for(llm: LLMService, config: AgentLoopConfig) -> LLMRetryPolicy:
    """The loop's retry policy, or one from the provider's ``max_retries``."""
    # A hand-written model object may implement only ``complete`` (as 0.11 allowed): the
    # protocol's attributes are read with the defaults the built-in providers use.
    return config.retry_policy or LLMRetryPolicy.from_max_retries(getattr(llm, "max_retries", DEFAULT_MAX_RETRIES))


DEFAULT_MAX_RETRIES = 3
"""Retries after the first try for a model object that does not say (the providers' default)."""


async def ask_model(run: Run, request: LLMRequest, *, purpose: str = "round") -> ModelCallResult | End:
    """One model call of ``run``, counted in its usage; or the run's ending (``cancelled`` when
    the stop signal fired, ``degraded`` when the call failed for good, ``budget_exceeded``
    when the call could not fit in a budget of the run or of a run above it: see
    :mod:`~.budgets`, which also clamps the call's completion cap)."""
    reserved = await reserve(run, request)
    if isinstance(reserved, BudgetHit):
        return await budget_exceeded(run, reserved)
    request, held = reserved
    model = held.model if held is not None else None
    billed: Usage | None = None  # usage of a failed call the provider still billed
    reply: ModelCallResult | None = None
    started = time.monotonic()
    try:
        await run.rt.gate.turn()  # encoding and sending the request is the heaviest step of a round
        try:
            reply = await call_model(
                llm=run.llm,
                request=request,
                config=run.config,
                emitter=run.emitter,
                stop=run.stop,
                round_index=run.round_index,
                run_usage_before=run.usage,
                purpose=purpose,
                limiter=run.rt.admission.limiter,
            )
        except CancellationRequested:
            return await cancelled(run)
        except LLMError as error:
            inner = error.last_error if isinstance(error, LLMRetryExhausted) else error
            if isinstance(inner, LLMResponseError) and inner.usage is not None:
                billed = inner.usage  # a malformed answer the provider still billed
                run.add_usage(billed)
                charge(run, billed, model)
            failed_call = FailedCall(
                provider=provider_name(run.llm),
                request_model=request.model or model_name(run.llm),
                duration_ms=int((time.monotonic() - started) * 1000),
            )
            return await degraded(run, error, failed_call)
    finally:
        release(held)
        if reply is None and held is not None and held.holds:
            await settle_unrecorded(run, held, billed or Usage(), model)
    usage = reply.response.usage
    run.add_usage(usage)
    charge(run, usage, model or reply.response.model)
    run.llm_calls += 1
    await run.rt.gate.turn()  # then folding the response in and committing it
    if held is not None and held.holds:  # settled with the call's record (usage_op)
        reply = replace(reply, holds=held.holds, cost_nano=cost_nano(run, usage, model or reply.response.model))
    return reply


def usage_op(run: Run, reply: ModelCallResult, purpose: str = "round") -> RecordLLMCall:
    """The write recording a model call's usage."""
    response = reply.response
    return RecordLLMCall(
        run.run_id,
        run.round_index,
        response.usage,
        model=response.model,
        purpose=purpose,
        duration_ms=reply.duration_ms,
        holds=reply.holds,
        cost_nano=reply.cost_nano,
    )


def provider_name(llm: LLMService) -> str:
    """The service's provider name ("" for a hand-written model object that has none)."""
    return str(getattr(llm, "provider", "") or "")


def model_name(llm: LLMService) -> str:
    """The service's default model ("" when it has none)."""
    return str(getattr(llm, "model", "") or "")


def retry_notifier(emitter: Emitter, round_index: int) -> Callable[[RetryNotice], Awaitable[None]]:
    """The retry hook publishing ``llm_retry_attempted`` for a call of round ``round_index``."""

    async def on_retry(notice: RetryNotice) -> None:
        await emitter.emit(
            AgentEventType.LLM_RETRY_ATTEMPTED,
            LlmRetryAttemptedPayload(
                attempt=notice.attempt,
                max_attempts=notice.max_attempts,
                error_type=type(notice.error).__name__,
                error_message=str(notice.error),
                next_sleep_seconds=round(notice.delay_s, 3),
            ),
            round_index=round_index,
        )

    return on_retry


async def call_model(
    *,
    llm: LLMService,
    request: LLMRequest,
    config: AgentLoopConfig,
    emitter: Emitter,
    stop: StopSignal,
    round_index: int,
    run_usage_before: Usage,
    purpose: str = "round",
    limiter: RateLimiter | None = None,
) -> ModelCallResult:
    """Make one logical model call (retries included) and publish its events.

    Raises:
        LLMError: The call failed for good (after retries).
        CancellationRequested: The stop signal fired during the call, a backoff sleep or the
            wait for ``limiter`` (the loop's rate limit, which every request passes).
    """
    provider, default_model = provider_name(llm), model_name(llm)  # of the service, not its limiter wrapper
    if limiter is not None:
        llm = await metered(limiter, llm, request, stop)
    policy = retry_policy_for(llm, config)
    callbacks = _stream_callbacks(emitter, round_index)
    on_retry = retry_notifier(emitter, round_index)
    started = time.monotonic()
    response = await complete_with_retry(llm, request, policy=policy, callbacks=callbacks, stop=stop, on_retry=on_retry)
    await emitter.bus.drain()
    duration_ms = int((time.monotonic() - started) * 1000)
    usage = response.usage
    if emitter.wants(AgentEventType.STATUS_CHANGED):
        await emitter.emit(
            AgentEventType.STATUS_CHANGED,
            RoundUsageStatusPayload(
                time_iso=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                round_index=round_index,
                round_number=round_index + 1,
                max_rounds=config.max_rounds,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                reasoning_tokens=usage.reasoning_tokens,
            ),
            round_index=round_index,
        )
    if emitter.wants(AgentEventType.USAGE_UPDATED):
        await emitter.emit(
            AgentEventType.USAGE_UPDATED,
            UsageUpdatedPayload(
                usage=usage.to_dict(),
                run_usage=(run_usage_before + usage).to_dict(),
                purpose=purpose,
                provider=provider,
                request_model=request.model or default_model,
                response_model=response.model or "",
                duration_ms=duration_ms,
            ),
            round_index=round_index,
        )
    return ModelCallResult(response=response, duration_ms=duration_ms)


def _stream_callbacks(emitter: Emitter, round_index: int) -> StreamCallbacks | None:
    bus = emitter.bus
    wants_start = bus.wants(AgentEventType.STREAM_STARTED)
    wants_text = bus.wants(AgentEventType.STREAM_DELTA)
    wants_think = bus.wants(AgentEventType.STREAM_THINK_DELTA)
    wants_end = bus.wants(AgentEventType.STREAM_COMPLETED)
    if not (wants_start or wants_text or wants_think or wants_end):
        return None

    def start() -> None:
        emitter.emit_nowait(
            AgentEventType.STREAM_STARTED, StreamStartedPayload(), round_index=round_index, stream_id="main"
        )

    def text(delta: str) -> None:
        emitter.emit_nowait(
            AgentEventType.STREAM_DELTA, StreamDeltaPayload(text=delta), round_index=round_index, stream_id="main"
        )

    def think(delta: str) -> None:
        emitter.emit_nowait(
            AgentEventType.STREAM_THINK_DELTA,
            StreamDeltaPayload(text=delta, is_think=True),
            round_index=round_index,
            stream_id="main",
        )

    def end() -> None:
        emitter.emit_nowait(
            AgentEventType.STREAM_COMPLETED, StreamCompletedPayload(), round_index=round_index, stream_id="main"
        )

    return StreamCallbacks(
        on_stream_start=start if wants_start else None,
        on_text_delta=text if wants_text else None,
        on_reasoning_delta=think if wants_think else None,
        on_stream_end=end if wants_end else None,
    )
