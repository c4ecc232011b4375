"""The model's turn of a round: ROUND_START, the model call, committing the answer.

* :func:`round_start` runs ``ROUND_START`` (``SKIP`` skips the round, ``BREAK`` ends the run)
  and publishes ``round_started``; it returns the messages the model will see.
* :func:`call_for_round` projects the session's runtime state into the system prompt, runs
  ``LLM_BEFORE`` (which may narrow the tools, replace the view or short-circuit the call) and
  calls the model.
* :func:`commit_turn` runs ``LLM_AFTER`` and commits the assistant message with its usage and
  its pending tool calls in one transaction. An answer without tool calls ends the run in
  that same transaction, unless follow-ups arrived meanwhile: then the run goes on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import cast

from ..events import AgentEventType, RoundStartedPayload
from ..hooks import HookDirective, HookPoint, LlmAfterCtx, LlmBeforeCtx, RoundStartCtx
from ..messages import AssistantMessage, Message, message_from_dict
from ..store.rows import Append, WriteOp
from ..tools.definition import ToolDefinition
from .compaction import calibrate, request_estimate
from .model_call import ModelCallResult, ask_model, usage_op
from .outcome import CONTINUE, End, StepOutcome
from .prepare import build_request, unique_call_ids
from .projection import acknowledge_runtime, project_runtime
from .state import Run, as_response, dicts, on_append
from .structured import check_final_answer
from .tool_round import round_end, tools_present

__all__ = ["call_for_round", "commit_turn", "round_start"]


async def round_start(run: Run) -> list[Message] | StepOutcome:
    """ROUND_START and ``round_started``; the view the round's model call should use."""
    run.round_index = run.rounds
    view = run.view()
    hooks = run.rt.hooks
    if hooks.has(HookPoint.ROUND_START):
        original = dicts(view)
        ctx = RoundStartCtx(
            messages=list(original),
            stop_event=run.req.stop_event,
            round_index=run.round_index,
            session_id=run.session_id,
        )
        directive = await hooks.run(HookPoint.ROUND_START, ctx)
        if directive is HookDirective.BREAK:
            return End("completed", "", reason="hook_break")
        if directive is HookDirective.SKIP:
            run.rounds += 1
            return CONTINUE
        if ctx.messages != original:
            view = [message_from_dict(m) for m in ctx.messages]
    await run.emitter.emit(
        AgentEventType.ROUND_STARTED, RoundStartedPayload(round_index=run.round_index), round_index=run.round_index
    )
    return view


async def call_for_round(run: Run, view: list[Message]) -> ModelCallResult | End:
    """The runtime projection, LLM_BEFORE, then the model call (unless a hook short-circuited it)."""
    await project_runtime(run)
    config = run.config
    hooks = run.rt.hooks
    system_prompt = run.system_prompt
    tools: Sequence[ToolDefinition] = run.offered
    max_tokens, temperature = config.max_tokens, config.temperature
    if hooks.has(HookPoint.LLM_BEFORE):
        original = dicts(view)
        ctx = LlmBeforeCtx(
            messages=list(original),
            system_prompt=system_prompt,
            tools=list(tools),
            max_tokens=max_tokens,
            temperature=temperature,
            round_index=run.round_index,
            session_id=run.session_id,
        )
        directive = await hooks.run(HookPoint.LLM_BEFORE, ctx)
        if directive is HookDirective.BREAK:
            return End("completed", "", reason="hook_break")
        if directive is HookDirective.SHORT_CIRCUIT:
            return ModelCallResult(response=as_response(ctx.output), duration_ms=0)
        if ctx.messages != original:
            view = [message_from_dict(m) for m in ctx.messages]
        system_prompt = ctx.system_prompt or ""
        tools = [t for t in ctx.tools if isinstance(t, ToolDefinition) and t.name in run.round_offered]
        max_tokens, temperature = ctx.max_tokens, ctx.temperature
    run.round_offered = frozenset(t.name for t in tools)
    request = build_request(
        messages=view,
        transcript=run.transcript,
        system_prompt=system_prompt,
        tools=tools,
        config=config,
        max_tokens=max_tokens,
        temperature=temperature,
        response_format=run.response_format.wire() if run.response_format is not None else None,
    )
    reply = await ask_model(run, request)
    if isinstance(reply, ModelCallResult) and run.rt.compactor is not None and view is run.transcript.messages:
        calibrate(run, request_estimate(run, view), reply.response.usage.prompt_tokens)
    return reply


async def commit_turn(run: Run, reply: ModelCallResult) -> AssistantMessage | StepOutcome:
    """LLM_AFTER and the model-turn transaction. Returns the committed assistant message when
    it has tool calls to run; else the run's end (committed with the answer), or
    :data:`~.outcome.CONTINUE` when follow-ups arrived before the end could commit."""
    model_response = reply.response  # usage is the model's, whatever a hook makes of the output
    response = model_response
    stop_after = False
    hooks = run.rt.hooks
    if hooks.has(HookPoint.LLM_AFTER):
        ctx = LlmAfterCtx(
            messages=dicts(run.view()), output=response, round_index=run.round_index, session_id=run.session_id
        )
        stop_after = await hooks.run(HookPoint.LLM_AFTER, ctx) is HookDirective.BREAK
        response = as_response(ctx.output)
    assistant = unique_call_ids(response.message, run.run_id[-8:] + str(run.round_index))
    if stop_after and assistant.tool_calls:
        assistant = replace(assistant, tool_calls=())
    assistant = cast(AssistantMessage, await on_append(run.rt, run.session_id, run.round_index, assistant))
    ops: list[WriteOp] = [Append([assistant], run_id=run.run_id)]
    if model_response.usage.calls:
        ops.append(usage_op(run, reply))
    if assistant.tool_calls:
        await run.writer.write(ops)
        await run.after_commit(acknowledge_runtime(run), "runtime projection acknowledgment")
        await tools_present(run, len(assistant.tool_calls))
        return assistant
    if run.response_format is not None and not stop_after:
        rejected = await check_final_answer(run, assistant, ops)
        if rejected is not None:
            return rejected  # a corrective round follows, or the run ended degraded
    finish = run.finish_op("completed", drain_inbox=not stop_after, final_text=assistant.text)
    written = await run.writer.write([*ops, finish])
    await run.after_commit(acknowledge_runtime(run), "runtime projection acknowledgment")
    if not written.finished:  # follow-ups arrived: go on with another round
        await tools_present(run, 0)
        await round_end(run, has_tools=False, text=assistant.text)
        return CONTINUE
    await run.after_commit(tools_present(run, 0), "round_tools_present event")
    await run.after_commit(round_end(run, has_tools=False, text=assistant.text), "round end")
    reason = "hook_break" if stop_after else "completed"
    return End("completed", assistant.text, reason=reason, committed=True)
