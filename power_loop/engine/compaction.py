"""The compaction step of a round (see :mod:`power_loop.compaction`).

Runs before LLM_BEFORE. Estimates the request's tokens (incrementally, calibrated against the
provider's reported prompt tokens), and when the compactor says so folds the older history
into a summary: COMPACT_BEFORE (SKIP skips), the summary call through the normal model path,
one transaction recording the new load base with the summary call's usage, COMPACT_AFTER and a
``status_changed`` event of kind ``auto_compact``. A failing summary leaves the history as it
was and the run goes on.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..compaction import (
    DEFAULT_CONTEXT_WINDOW,
    SUMMARY_PREFIX,
    estimate_text_tokens,
    estimate_tokens,
    is_summary,
    summary_message,
)
from ..errors import CancellationRequested, CompactionFailed, LLMError
from ..events import AgentEventType, AutoCompactStatusPayload
from ..hooks import CompactAfterCtx, CompactBeforeCtx, HookDirective, HookPoint
from ..messages import Message, SystemMessage, message_to_dict
from ..providers._common import dumps, memo
from ..providers.base import LLMRequest, LLMResponse
from ..store.rows import Compact, RecordLLMCall, WriteOp
from ..tools.definition import ToolDefinition
from .model_call import call_model

if TYPE_CHECKING:
    from .run import Run, RunLoop

log = logging.getLogger("power_loop.engine")

_CALIBRATION_WEIGHT = 0.3


def context_window(run: Run) -> int:
    """The model's context window: config, then provider, then a conservative default."""
    return run.rt.config.context_window or getattr(run.rt.llm, "context_window", None) or DEFAULT_CONTEXT_WINDOW


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


async def maybe_compact(loop: RunLoop, view: list[Message]) -> list[Message]:
    """Compact the session's context when the compactor says so; return the view the round's
    model call should use."""
    run = loop.run
    compactor = run.rt.compactor
    if compactor is None or run.prefix is not None or view is not run.transcript.messages:
        return view  # off, or hooks are showing the model a projection of their own
    raw = request_estimate(run, view)
    overhead = raw - run.transcript.token_estimate()  # system prompt and tool schemas
    before = int(raw * run.rt.token_ratio)
    if not compactor.should_compact(estimated_tokens=before, context_window=context_window(run)):
        return view
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
    messages = run.transcript.messages
    fold = compactor.fold_count(messages)
    if fold <= 0:
        return view
    first = messages[0]
    previous = first.content[len(SUMMARY_PREFIX) :] if isinstance(first, SystemMessage) and is_summary(first) else None
    to_fold = messages[1:fold] if previous is not None else messages[:fold]
    usage_ops: list[WriteOp] = []

    async def complete(request: LLMRequest) -> LLMResponse:
        llm = getattr(compactor, "summary_llm", None) or run.rt.llm
        result = await call_model(
            llm=llm,
            request=request,
            config=run.rt.config,
            emitter=run.emitter,
            stop=run.stop,
            round_index=run.round_index,
            run_usage_before=run.usage,
            purpose="compaction",
        )
        run.usage = run.usage + result.response.usage
        run.llm_calls += 1
        usage_ops.append(
            RecordLLMCall(
                run.run_id,
                run.round_index,
                result.response.usage,
                model=result.response.model,
                purpose="compaction",
                duration_ms=result.duration_ms,
            )
        )
        return result.response

    try:
        summary = await compactor.summarize(messages=to_fold, previous_summary=previous, complete=complete)
        if not summary:
            raise CompactionFailed("the summary model returned an empty summary")
    except CancellationRequested:
        await loop._end_cancelled(usage_ops)
        raise AssertionError("unreachable") from None
    except (LLMError, CompactionFailed) as exc:
        log.warning("compaction of session %s failed; continuing uncompacted: %s", run.session_id, exc)
        if usage_ops:
            await run.writer.write(usage_ops)
        await _status(run, "failed", before, before)
        return view
    through_seq = run.transcript.seqs[fold - 1]
    count_before = len(messages)
    head = summary_message(summary)
    tail_messages = messages[fold:]
    tail_seqs = run.transcript.seqs[fold:]
    after_raw = estimate_tokens(head) + sum(estimate_tokens(m) for m in tail_messages) + overhead
    after = int(after_raw * run.rt.token_ratio)
    await run.writer.write([Compact(through_seq, summary, before, after, run.run_id), *usage_ops])
    run.transcript.replace([head, *tail_messages], [through_seq, *tail_seqs])
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


async def _status(run: Run, phase: str, before: int, after: int) -> None:
    await run.emitter.emit(
        AgentEventType.STATUS_CHANGED,
        AutoCompactStatusPayload(
            phase=phase, round_index=run.round_index, trigger="context_window", before_tokens=before, after_tokens=after
        ),
        round_index=run.round_index,
    )
