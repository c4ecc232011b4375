"""The compaction step of a round (see :mod:`power_loop.compaction`).

Runs before LLM_BEFORE. Estimates the request's tokens (incrementally, calibrated against the
provider's reported prompt tokens), and when the compactor says so folds the older history
into a summary. The compactor's ``fold_count`` is validated first (clamped so that the latest
message is kept, moved back so that the kept part never starts with a tool result); when it
leaves nothing new to fold, nothing happens. Otherwise: COMPACT_BEFORE (SKIP skips), the
summary call (retries, cancellation, ``usage_updated`` with purpose ``compaction``; no stream
events and no ``round_usage`` status), one transaction recording the new load base with the
summary call's usage, COMPACT_AFTER and a ``status_changed`` event of kind ``auto_compact``.

A failing summary leaves the history as it was; the run goes on and does not try to compact
again. A summary that would not make the context smaller is not applied either; the run tries
again only once more messages can be folded than in that attempt (``Run.next_fold``: the
memo lives with the run, never in this module).

A cancellation during the summary call ends the run ``cancelled``: :func:`maybe_compact`
returns that :class:`~.outcome.End` (with the usage of the summary calls made) instead of a view.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace

from ..compaction import (
    DEFAULT_CONTEXT_WINDOW,
    SUMMARY_PREFIX,
    estimate_text_tokens,
    estimate_tokens,
    is_summary,
    summary_message,
)
from ..errors import CancellationRequested, CompactionFailed, LLMError
from ..events import AgentEventType, AutoCompactStatusPayload, UsageUpdatedPayload
from ..guards import BudgetHit
from ..hooks import CompactAfterCtx, CompactBeforeCtx, HookDirective, HookPoint
from ..messages import Message, SystemMessage, ToolResultMessage, Usage, message_to_dict
from ..providers._common import dumps, memo
from ..providers.base import LLMRequest, LLMResponse, LLMService
from ..providers.retry import complete_with_retry
from ..store.rows import Compact, RecordLLMCall, WriteOp
from ..tools.definition import ToolDefinition
from .admission import metered
from .budgets import Reservation, charge, cost_nano, release, reserve, settle_unrecorded
from .endings import cancelled
from .history import without_hidden
from .model_call import model_name, provider_name, retry_notifier, retry_policy_for
from .outcome import End
from .state import Run

log = logging.getLogger("power_loop.engine")

_CALIBRATION_WEIGHT = 0.3

NEVER = 1 << 62
"""``Run.next_fold`` after a failed compaction: no new attempt (and no new cost) every round."""


def context_window(run: Run) -> int:
    """The model's context window: config, then provider, then a conservative default."""
    # getattr: a hand-written model object may implement only ``complete`` (see model_call).
    return run.config.context_window or getattr(run.llm, "context_window", None) or DEFAULT_CONTEXT_WINDOW


def request_estimate(run: Run, view: list[Message]) -> int:
    """Estimated prompt tokens of a request showing ``view`` (raw, before calibration)."""
    if view is run.transcript.messages:
        tokens = run.transcript.token_estimate()
    else:
        tokens = sum(estimate_tokens(m) for m in view)
    tokens += estimate_text_tokens(run.system_prompt)
    for tool in run.offered:
        tokens += _tool_tokens(tool)
    return tokens


def _tool_tokens(tool: ToolDefinition) -> int:
    return memo(tool, "_power_loop_tool_tokens", lambda: estimate_text_tokens(dumps(tool.to_openai_tool()).decode()))


def calibrate(run: Run, raw_estimate: int, reported_prompt_tokens: int) -> None:
    """Move the loop's estimate/actual ratio towards what the provider just reported."""
    if raw_estimate <= 0 or reported_prompt_tokens <= 0:
        return
    observed = reported_prompt_tokens / raw_estimate
    run.rt.token_ratio += _CALIBRATION_WEIGHT * (observed - run.rt.token_ratio)


def safe_fold(messages: Sequence[Message], fold: int) -> int:
    """``fold`` made safe for ``messages``: within ``[0, len(messages) - 1]`` (the latest
    message is always kept), and moved back until the kept part does not start with a tool
    result (a tool call is never separated from its results)."""
    fold = min(max(int(fold), 0), len(messages) - 1)
    while fold > 0 and isinstance(messages[fold], ToolResultMessage):
        fold -= 1
    return fold


async def maybe_compact(run: Run, view: list[Message]) -> list[Message] | End:
    """Compact the session's context when the compactor says so; return the view the round's
    model call should use (or the run's end, when it was cancelled during the summary)."""
    compactor = run.rt.compactor
    if compactor is None or run.prefix is not None or view is not run.transcript.messages:
        return view  # off, or hooks are showing the model a projection of their own
    if run.next_fold == NEVER:
        return view  # a compaction of this run failed: no new attempt (and cost) every round
    raw = request_estimate(run, view)
    overhead = raw - run.transcript.token_estimate()  # system prompt and tool schemas
    before = int(raw * run.rt.token_ratio)
    if not compactor.should_compact(estimated_tokens=before, context_window=context_window(run)):
        return view
    messages = run.transcript.messages
    fold = safe_fold(messages, compactor.fold_count(messages))
    first = messages[0] if messages else None
    previous = first.content[len(SUMMARY_PREFIX) :] if isinstance(first, SystemMessage) and is_summary(first) else None
    if fold <= (1 if previous is not None else 0) or fold < run.next_fold:
        return view  # nothing (new) to fold: no hook, no summary call, no event
    to_fold = messages[1:fold] if previous is not None else messages[:fold]
    if run.rt.hooks.has(HookPoint.COMPACT_BEFORE):
        ctx = CompactBeforeCtx(
            messages=[message_to_dict(m) for m in view],
            before_tokens=before,
            round_index=run.round_index,
            session_id=run.session_id,
        )
        if await run.rt.hooks.run(HookPoint.COMPACT_BEFORE, ctx) is HookDirective.SKIP:
            await _status(run, "skipped", before, before)
            return view
    usage_ops: list[WriteOp] = []

    async def complete(request: LLMRequest) -> LLMResponse:
        # Not a member of the Compactor protocol: DefaultCompactor's optional summary model.
        llm = getattr(compactor, "summary_llm", None) or run.llm
        response, duration_ms, held = await _summary_call(run, llm, request)
        model = (held.model if held is not None else None) or response.model
        usage_ops.append(
            RecordLLMCall(
                run.run_id,
                run.round_index,
                response.usage,
                model=response.model,
                purpose="compaction",
                duration_ms=duration_ms,
                holds=held.holds if held is not None else (),
                cost_nano=cost_nano(run, response.usage, model) if held is not None and held.holds else 0,
            )
        )
        return response

    try:
        # Kernel markers (a degraded run's note) are not the model's words: keep them out of the summary.
        summary = await compactor.summarize(
            messages=without_hidden(to_fold), previous_summary=previous, complete=complete
        )
        if not summary:
            raise CompactionFailed("the summary model returned an empty summary")
        head = summary_message(summary)
        tail_messages = messages[fold:]
        after_raw = estimate_tokens(head) + sum(estimate_tokens(m) for m in tail_messages) + overhead
    except CancellationRequested:
        return await cancelled(run, usage_ops)
    except (LLMError, CompactionFailed) as exc:
        log.warning(
            "compaction of session %s failed; continuing uncompacted for the rest of the run: %s", run.session_id, exc
        )
        run.next_fold = NEVER
        return await _not_applied(run, usage_ops, before)
    if after_raw >= raw:
        log.info(
            "compaction of session %s skipped: the summary would not make the context smaller (~%d >= ~%d tokens)",
            run.session_id,
            after_raw,
            raw,
        )
        run.next_fold = fold + 1  # try again once there is more to fold
        return await _not_applied(run, usage_ops, before)
    run.next_fold = 0
    through_seq = run.transcript.seqs[fold - 1]
    count_before = len(messages)
    tail_seqs = run.transcript.seqs[fold:]
    after = int(after_raw * run.rt.token_ratio)
    await run.writer.write([Compact(through_seq, summary, before, after, run.run_id), *usage_ops])
    run.transcript.replace([head, *tail_messages], [through_seq, *tail_seqs])
    run.last_prompt_tokens = 0  # the next prompt is the compacted one: no floor from before
    if run.rt.hooks.has(HookPoint.COMPACT_AFTER):
        ctx_after = CompactAfterCtx(
            messages=[message_to_dict(m) for m in run.transcript.messages],
            messages_before_count=count_before,
            messages_after_count=len(run.transcript),
            before_tokens=before,
            after_tokens=after,
            summary=summary,
            round_index=run.round_index,
            session_id=run.session_id,
        )
        await run.rt.hooks.run(HookPoint.COMPACT_AFTER, ctx_after)
    await _status(run, "done", before, after)
    return run.transcript.messages


async def _not_applied(run: Run, usage_ops: list[WriteOp], before: int) -> list[Message]:
    """Record the summary calls' usage and publish ``auto_compact`` phase ``failed``."""
    if usage_ops:
        await run.writer.write(usage_ops)
    await _status(run, "failed", before, before)
    return run.transcript.messages


async def _summary_call(run: Run, llm: LLMService, request: LLMRequest) -> tuple[LLMResponse, int, Reservation | None]:
    """One summary model call through the retry layer, counted in the run's usage and, like
    a round's call, reserved in its budgets first (:mod:`~.budgets`; one that does not fit
    fails the compaction, and the round's own call then meets the budget).

    Unlike a round's call it installs no stream callbacks (the summary is not the answer:
    nothing reaches ``stream_*`` subscribers) and publishes no ``round_usage`` status, only
    ``llm_retry_attempted`` for retries and ``usage_updated`` with purpose ``compaction``. The
    request streams only when both it and ``AgentLoopConfig.stream`` say so.
    """
    config = run.config
    emitter = run.emitter
    policy = retry_policy_for(llm, config)
    request = replace(request, stream=request.stream and config.stream)
    on_retry = retry_notifier(emitter, run.round_index)
    reserved = await reserve(run, request)
    if isinstance(reserved, BudgetHit):
        raise CompactionFailed(f"the summary call does not fit the budget: {reserved.describe()}")
    request, held = reserved
    provider, default_model = provider_name(llm), model_name(llm)  # of the service, not its limiter wrapper
    response: LLMResponse | None = None
    try:
        limiter = run.rt.admission.limiter
        if limiter is not None:  # the loop's rate limit covers summary calls too
            llm = await metered(limiter, llm, request, run.stop)
        started = time.monotonic()
        response = await complete_with_retry(
            llm, request, policy=policy, callbacks=None, stop=run.stop, on_retry=on_retry
        )
    finally:
        release(held)
        if response is None and held is not None:
            await settle_unrecorded(run, held, Usage(), held.model)
    duration_ms = int((time.monotonic() - started) * 1000)
    usage_before = run.usage
    run.add_usage(response.usage)
    charge(run, response.usage, (held.model if held is not None else None) or response.model)
    run.llm_calls += 1
    if emitter.wants(AgentEventType.USAGE_UPDATED):
        await emitter.emit(
            AgentEventType.USAGE_UPDATED,
            UsageUpdatedPayload(
                usage=response.usage.to_dict(),
                run_usage=(usage_before + response.usage).to_dict(),
                purpose="compaction",
                provider=provider,
                request_model=request.model or default_model,
                response_model=response.model or "",
                duration_ms=duration_ms,
            ),
            round_index=run.round_index,
        )
    return response, duration_ms, held


async def _status(run: Run, phase: str, before: int, after: int) -> None:
    await run.emitter.emit(
        AgentEventType.STATUS_CHANGED,
        AutoCompactStatusPayload(
            phase=phase, round_index=run.round_index, trigger="context_window", before_tokens=before, after_tokens=after
        ),
        round_index=run.round_index,
    )
