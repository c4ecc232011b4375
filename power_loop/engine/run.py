"""One run: load the session, go round by round, end with a result.

::

    begin (one transaction: lease, pending check, inbox, user input)
    SESSION_START
    loop:
        stop? → cancelled      budget spent? → budget_exceeded      max_rounds? → round-limit summary
        ROUND_START → LLM_BEFORE → model call (retry, streaming) → LLM_AFTER
        commit the model turn (assistant message, usage, pending tool calls)
        no tool calls → finish (the same transaction drains late follow-ups, else ends the run)
        ROUND_DECIDE → TOOLS_BATCH_BEFORE → tools → TOOLS_BATCH_AFTER
        commit the results (in call order) with any follow-ups that arrived → ROUND_END
    SESSION_END

Whatever path a run takes, every tool call of every stored assistant message ends up with
exactly one result, except when the task running ``send`` is cancelled while tools run: then
the calls that had not finished stay pending, as after a crash (their side effects are
unknown), and the next ``send`` reports them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..cancellation import StopEventLike, StopSignal
from ..errors import (
    CancellationRequested,
    HookError,
    LLMError,
    LLMRetryExhausted,
    LLMTimeout,
)
from ..events import (
    AgentErrorPayload,
    AgentEventType,
    BudgetExceededStatusPayload,
    HitRoundLimitStatusPayload,
    LlmDegradedPayload,
    LoopCancelledPayload,
    RoundCompletedPayload,
    RoundStartedPayload,
    RoundToolsPresentPayload,
    SessionEndedPayload,
    SessionStartedPayload,
)
from ..hooks import (
    HookDirective,
    HookPoint,
    LlmAfterCtx,
    LlmBeforeCtx,
    MessageAppendCtx,
    RoundDecideCtx,
    RoundEndCtx,
    RoundStartCtx,
    SessionEndCtx,
    SessionStartCtx,
    ToolsBatchAfterCtx,
    ToolsBatchBeforeCtx,
)
from ..messages import (
    AssistantMessage,
    Message,
    ToolCall,
    ToolResultMessage,
    Usage,
    UserMessage,
    message_from_dict,
    message_from_json,
    message_json,
    message_to_dict,
)
from ..providers.base import LLMRequest, LLMResponse
from ..results import StatefulResult
from ..store.rows import (
    AnswerPending,
    Append,
    BeginOutcome,
    DrainInbox,
    FinishRun,
    LeaseClaim,
    PendingCall,
    RecordLLMCall,
    RunTotals,
    SessionRow,
    WriteOp,
)
from ..tools.definition import ToolDefinition
from ..tools.registry import ToolRegistry
from .begin import begin_run, transcript_after_begin
from .emit import Emitter, report_after_commit
from .history import DEGRADED_NAME, Transcript
from .model_call import call_model
from .prepare import build_request, resolve_system_prompt, select_tools, system_text, unique_call_ids
from .runtime import Runtime
from .tool_batch import ToolOutcome, counted_calls, run_tool_batch
from .writer import RunWriter

log = logging.getLogger("power_loop.engine")

__all__ = ["Run", "RunRequest", "execute_run"]

ROUND_LIMIT_PROMPT = (
    "You have reached the maximum of {max_rounds} rounds. Summarize what you accomplished and what remains."
)


@dataclass
class RunRequest:
    """What the facade asks for.

    Attributes:
        session_id: The session.
        kind: ``send``, ``resume`` or ``submit_input``.
        message: The new user message (None for resume / submit_input).
        stop_event: Cooperative cancellation source.
        tools: Per-call tool names or registry.
        system_prompt: Per-call system prompt.
        heal_pending: Abort unanswered calls before sending.
        answers: ``submit_input`` answers: tool_call_id → result text.
        wait_foreign: Wait while another process's run holds the session (``wake`` does not:
            that run drains the inbox itself).
    """

    session_id: str
    kind: str = "send"
    message: UserMessage | None = None
    stop_event: StopEventLike | None = None
    tools: Sequence[str] | ToolRegistry | None = None
    system_prompt: str | None = None
    heal_pending: bool = False
    answers: dict[str, str] = field(default_factory=dict)
    wait_foreign: bool = True


class Run:
    """The state of one run, shared by the engine steps."""

    def __init__(
        self,
        rt: Runtime,
        req: RunRequest,
        *,
        run_id: str,
        session: SessionRow,
        transcript: Transcript,
        writer: RunWriter,
        emitter: Emitter,
        tools: ToolRegistry | None,
    ) -> None:
        self.rt = rt
        self.req = req
        self.run_id = run_id
        self.session = session
        self.session_id = req.session_id
        self.transcript = transcript
        self.writer = writer
        self.emitter = emitter
        self.tools = tools
        self.stop = StopSignal(req.stop_event)
        self.offered: tuple[ToolDefinition, ...] = tuple(tools.definitions()) if tools is not None else ()
        # Tools the model was shown in the current round (LLM_BEFORE may narrow them): only
        # these may be executed.
        self.round_offered: frozenset[str] = frozenset(t.name for t in self.offered)
        self.base_prompt = resolve_system_prompt(
            call_prompt=req.system_prompt, session_prompt=session.system_prompt, config=rt.config
        )
        self.memory_text: str | None = None
        self.started_at = int(time.time() * 1000)
        self.round_index = 0
        self.rounds = 0
        self.llm_calls = 0
        self.tool_calls = 0
        self.usage = Usage()
        self.post_commit_errors: list[str] = []
        # What the model sees when hooks replaced the history for this run: prefix + the
        # transcript from `prefix_from` on.
        self.prefix: list[Message] | None = None
        self.prefix_from = 0

    @property
    def system_prompt(self) -> str:
        """The system text sent with every model call of the run."""
        return system_text(self.base_prompt, self.offered, self.rt.config, self.memory_text)

    def view(self) -> list[Message]:
        """The messages the model sees (hook projections applied)."""
        if self.prefix is None:
            return self.transcript.messages
        return self.prefix + self.transcript.messages[self.prefix_from :]

    def finish_op(self, status: str, *, drain_inbox: bool = False, error: str | None = None) -> FinishRun:
        """The operation ending this run."""
        return FinishRun(
            self.run_id, status, self.totals(), error=error, drain_inbox=drain_inbox, started_at=self.started_at
        )

    def totals(self) -> RunTotals:
        """What the run adds to the session stats."""
        return RunTotals(
            rounds=self.rounds,
            llm_calls=self.llm_calls,
            tool_calls=self.tool_calls,
            usage=self.usage,
            count_send=self.req.kind != "wake",
        )

    def result(
        self,
        status: str,
        final_text: str,
        *,
        pending: Sequence[PendingCall] = (),
        interactions: Sequence[dict[str, Any]] = (),
    ) -> StatefulResult:
        """The :class:`StatefulResult` of the run."""
        return StatefulResult(
            session_id=self.session_id,
            status=status,
            final_text=final_text,
            rounds=self.rounds,
            pending_tool_calls=[c.to_dict() for c in pending],
            pending_interactions=list(interactions),
            usage=self.usage.to_dict(),
            tool_calls=self.tool_calls,
            run_id=self.run_id,
            post_commit_errors=list(self.post_commit_errors),
        )


def _dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [message_to_dict(m) for m in messages]


def _as_response(output: Any) -> LLMResponse:
    """A hook's ``output`` as an LLMResponse (it may give a response, a message, a string or a dict)."""
    if isinstance(output, LLMResponse):
        return output
    if isinstance(output, AssistantMessage):
        return LLMResponse(message=output, usage=Usage())
    if isinstance(output, str):
        return LLMResponse(message=AssistantMessage(content=output), usage=Usage())
    if isinstance(output, dict):
        message = message_from_dict({"role": "assistant", **output})
        assert isinstance(message, AssistantMessage)
        return LLMResponse(message=message, usage=Usage())
    raise HookError(
        f"hook output must be an LLMResponse, an AssistantMessage, a str or a message dict, not {type(output).__name__}"
    )


# --------------------------------------------------------------------------- entry point


async def execute_run(rt: Runtime, req: RunRequest) -> StatefulResult:
    """Run ``req`` to its end (the facade's ``send`` / ``resume`` / ``submit_input``)."""
    tools = select_tools(rt.registry, req.tools)
    StopSignal(req.stop_event)  # a bad stop_event fails here, before anything is stored
    async with rt.locks.hold(req.session_id, timeout=rt.config.session_wait_s) as time_left:
        run_id = "run_" + secrets.token_hex(8)
        lease = LeaseClaim(owner=f"{rt.owner}/{run_id}", ttl_ms=int(rt.config.lease_ttl_s * 1000))
        cached = rt.histories.get(req.session_id)
        message = await _on_append(rt, req.session_id, 0, req.message) if req.message is not None else None
        begin = await begin_run(
            rt,
            session_id=req.session_id,
            kind=req.kind,
            run_id=run_id,
            lease=lease,
            cached=cached,
            message=message,
            heal_pending=req.heal_pending,
            wait_foreign=req.wait_foreign,
            time_left=time_left,
        )
        assert begin.session is not None
        # No await from here to RunLoop.main's try: a cancellation cannot land in between.
        transcript = transcript_after_begin(rt, req.session_id, cached, begin)
        seq = max(begin.event_seq, rt.event_seqs.get(req.session_id, 0))
        emitter = Emitter(rt.bus, req.session_id, seq=seq, counters=rt.event_seqs)
        writer = RunWriter(rt.store, req.session_id, replace(lease, fence=begin.fence), transcript, emitter)
        run = Run(
            rt,
            req,
            run_id=run_id,
            session=begin.session,
            transcript=transcript,
            writer=writer,
            emitter=emitter,
            tools=tools,
        )
        return await RunLoop(run, begin).main()


async def _on_append(rt: Runtime, session_id: str, round_index: int, message: Message) -> Any:
    """Apply MESSAGE_APPEND to a message about to be stored."""
    if not rt.hooks.has(HookPoint.MESSAGE_APPEND):
        return message
    original = message_to_dict(message)
    ctx = MessageAppendCtx(message=dict(original), round_index=round_index, session_id=session_id)
    await rt.hooks.run(HookPoint.MESSAGE_APPEND, ctx)
    if ctx.message == original:
        return message
    try:
        rewritten = message_from_dict(ctx.message)
        # As stored and sent: lone surrogates the hook put in become U+FFFD here, so the
        # result's final_text matches the history (message_json scrubs them).
        stored = message_json(rewritten)
        if not stored.isascii():
            rewritten = message_from_json(stored)
    except ValueError as exc:
        raise HookError(f"message.append hook produced an invalid message: {exc}") from exc
    if rewritten.role != message.role:
        raise HookError(f"message.append hook changed a {message.role} message into a {rewritten.role} message")
    if (
        isinstance(message, ToolResultMessage)
        and isinstance(rewritten, ToolResultMessage)
        and rewritten.tool_call_id != message.tool_call_id
    ):
        raise HookError("message.append hook changed a tool result's tool_call_id")
    if (
        isinstance(message, AssistantMessage)
        and isinstance(rewritten, AssistantMessage)
        and [c.id for c in rewritten.tool_calls] != [c.id for c in message.tool_calls]
    ):
        raise HookError("message.append hook changed an assistant message's tool calls")
    return rewritten


# --------------------------------------------------------------------------- the loop


class _Ended(Exception):
    """Internal: the run ended with this result."""

    def __init__(self, result: StatefulResult) -> None:
        super().__init__(result.status)
        self.result = result


class RunLoop:
    """Drives one :class:`Run` through its rounds."""

    def __init__(self, run: Run, begin: BeginOutcome) -> None:
        self.run = run
        self.rt = run.rt
        self.hooks = run.rt.hooks
        self.emit = run.emitter.emit
        self.begin = begin
        self.ended_published = False
        self.end_hook_started = False

    async def main(self) -> StatefulResult:
        run = self.run
        run.writer.start_renewal()
        try:
            if run.req.kind == "wake" and not self.begin.appended:
                # Another run already took the wake-up from the inbox: nothing to do.
                await run.writer.write([run.finish_op("completed")])
                raise _Ended(run.result("completed", ""))
            await self._session_start()
            if self.begin.pending is not None:
                await self._resume_pending(self.begin.pending.calls)
            while True:
                await self._round()
        except _Ended as ended:
            return ended.result
        except asyncio.CancelledError:
            await self._on_task_cancelled()
            raise
        except BaseException as exc:
            await self._on_error(exc)
            raise
        finally:
            await run.writer.stop_renewal()

    # ------------------------------------------------------------------ start and end

    async def _session_start(self) -> None:
        run = self.run
        # The event comes first: whatever happens next, session_ended will close it.
        await self.emit(AgentEventType.SESSION_STARTED, SessionStartedPayload(run_id=run.run_id))
        if self.hooks.has(HookPoint.SESSION_START):
            original = _dicts(run.transcript.messages)
            ctx = SessionStartCtx(messages=list(original), stop_event=run.req.stop_event, session_id=run.session_id)
            await self.hooks.run(HookPoint.SESSION_START, ctx)
            if ctx.messages != original:
                run.prefix = [message_from_dict(m) for m in ctx.messages]
                run.prefix_from = len(run.transcript)
        from .memory import recall_memory

        await recall_memory(run)

    async def _finish(
        self,
        status: str,
        final_text: str,
        *,
        reason: str | None = None,
        ops: Sequence[WriteOp] = (),
        write: bool = True,
        pending: Sequence[PendingCall] = (),
        interactions: Sequence[dict[str, Any]] = (),
    ) -> None:
        """Commit the end of the run (with ``ops``), run SESSION_END, publish session_ended."""
        run = self.run
        if write:
            await run.writer.write([*ops, run.finish_op(status)])
        await self._session_end(status, final_text, reason or status)
        raise _Ended(run.result(status, final_text, pending=pending, interactions=interactions))

    async def _session_end(self, status: str, final_text: str, reason: str) -> None:
        """SESSION_END, memory, session_ended. The run's end is committed by now."""
        run = self.run
        self.end_hook_started = True
        if self.hooks.has(HookPoint.SESSION_END):
            ctx = SessionEndCtx(
                reason=reason,
                status=status,
                final_text=final_text,
                messages=_dicts(run.transcript.messages),
                round_index=run.round_index,
                session_id=run.session_id,
            )
            await self._after_commit(self.hooks.run(HookPoint.SESSION_END, ctx), "session.end hook")
        from .memory import remember_run

        await self._after_commit(remember_run(run, final_text), "memory remember")
        self.ended_published = True
        await self._after_commit(
            self.emit(
                AgentEventType.SESSION_ENDED,
                SessionEndedPayload(reason=reason, status=status, final_text=final_text, run_id=run.run_id),
            ),
            "session_ended event",
        )

    async def _after_commit(self, step: Awaitable[Any], where: str) -> None:
        """Run a step that follows the committed end of the run. Its failure is reported (log,
        ``system_log`` event, ``StatefulResult.post_commit_errors``), not raised: an error from
        ``send`` would tell the caller nothing happened, and a retry would store the message twice."""
        try:
            await step
        except Exception as exc:
            await report_after_commit(self.run.emitter, self.run.post_commit_errors, self.run.run_id, where, exc)

    async def _on_task_cancelled(self) -> None:
        """The task awaiting send() was cancelled: record the run's end, leave unfinished
        tool calls pending (their side effects are unknown), re-raise."""
        run = self.run
        if not run.writer.finished:
            try:
                await asyncio.shield(run.writer.write([run.finish_op("cancelled", error="task cancelled")]))
            except Exception as exc:
                log.warning("could not record the end of cancelled run %s: %s", run.run_id, exc)
                self.rt.histories.drop(run.session_id)
                await self._release_quietly()
        # The end may have been committed just before the cancellation landed: report that status.
        status = run.writer.end_status or "cancelled"
        await self._quietly_session_end("cancelled", status)
        if not self.ended_published:
            self.ended_published = True
            await self._quietly(
                AgentEventType.SESSION_ENDED,
                SessionEndedPayload(reason="cancelled", status=status, run_id=run.run_id),
            )

    async def _on_error(self, exc: BaseException) -> None:
        """A run failed: record its end (unless already committed), report, close the session."""
        run = self.run
        self.rt.histories.drop(run.session_id)
        if not run.writer.finished:
            # Calls of this run that never got an answer are answered now (finished calls keep
            # their stored result), so the failure leaves a history the next send can use.
            answer = AnswerPending(
                f"[skipped: the run failed before this call completed ({type(exc).__name__})]", run.run_id
            )
            try:
                await run.writer.write([answer, run.finish_op("failed", error=f"{type(exc).__name__}: {exc}")])
            except Exception:
                await self._release_quietly()
        await self._quietly_session_end("error", "failed")
        await self._quietly(
            AgentEventType.AGENT_ERROR,
            AgentErrorPayload(
                error=str(exc),
                error_type=type(exc).__name__,
                details={"run_id": run.run_id, "round_index": run.round_index},
            ),
        )
        if not self.ended_published:
            await self._quietly(
                AgentEventType.SESSION_ENDED, SessionEndedPayload(reason="error", status="failed", run_id=run.run_id)
            )

    async def _quietly_session_end(self, reason: str, status: str) -> None:
        """Run SESSION_END on a failure path; a failing handler is logged, not raised."""
        if not self.hooks.has(HookPoint.SESSION_END) or self.end_hook_started:
            return
        self.end_hook_started = True
        run = self.run
        ctx = SessionEndCtx(
            reason=reason, status=status, final_text=None, round_index=run.round_index, session_id=run.session_id
        )
        try:
            await self.hooks.run(HookPoint.SESSION_END, ctx)
        except Exception:
            log.error("session.end hook failed while ending run %s", run.run_id, exc_info=True)

    async def _release_quietly(self) -> None:
        run = self.run
        try:
            await self.rt.store.release_lease(run.session_id, run.writer.lease.owner)
        except Exception:
            log.warning("could not release the lease of session %s", run.session_id, exc_info=True)

    async def _quietly(self, event_type: AgentEventType, data: Any) -> None:
        """Publish during error handling: a failing subscriber must not mask the real error."""
        try:
            await self.emit(event_type, data)
        except Exception:
            log.error("event subscriber failed while reporting a run error", exc_info=True)

    async def _end_cancelled(self, ops: Sequence[WriteOp] = ()) -> None:
        run = self.run
        await self.emit(
            AgentEventType.LOOP_CANCELLED,
            LoopCancelledPayload(reason=run.stop.reason, round_index=run.round_index),
            round_index=run.round_index,
        )
        await self._finish("cancelled", "[cancelled by user]", ops=ops)

    async def _end_degraded(self, error: LLMError) -> None:
        run = self.run
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
        await self.emit(
            AgentEventType.LLM_DEGRADED,
            LlmDegradedPayload(
                reason=reason, attempts=attempts, error_type=type(inner).__name__, error_message=str(inner)
            ),
            round_index=run.round_index,
        )
        # Named, so it stays in the history for the application but out of every model request.
        note = AssistantMessage(content=text, name=DEGRADED_NAME)
        marker = await _on_append(self.rt, run.session_id, run.round_index, note)
        await self._finish("degraded", text, ops=[Append([marker], run_id=run.run_id)])

    async def _end_budget(self) -> None:
        run = self.run
        budget = self.rt.config.max_tokens_per_run or 0
        await self.emit(
            AgentEventType.STATUS_CHANGED,
            BudgetExceededStatusPayload(budget_tokens=budget, spent_tokens=run.usage.total_tokens, rounds=run.rounds),
            round_index=run.round_index,
        )
        await self._finish("budget_exceeded", "[budget_exceeded]")

    async def _end_round_limit(self) -> None:
        run = self.run
        config = self.rt.config
        await self.emit(
            AgentEventType.STATUS_CHANGED,
            HitRoundLimitStatusPayload(max_rounds=config.max_rounds),
            round_index=run.round_index,
        )
        prompt = await _on_append(
            self.rt,
            run.session_id,
            run.round_index,
            UserMessage(content=ROUND_LIMIT_PROMPT.format(max_rounds=config.max_rounds), name="round_limit"),
        )
        request = build_request(
            messages=[*run.view(), prompt], system_prompt=run.system_prompt, tools=(), config=config
        )
        response, duration = await self._model(request, purpose="round_limit_summary")
        summary = await _on_append(self.rt, run.session_id, run.round_index, replace(response.message, tool_calls=()))
        ops: list[WriteOp] = [
            Append([prompt, summary], run_id=run.run_id),
            self._usage_op(response, duration, "round_limit_summary"),
        ]
        await self._finish("hit_round_limit", f"[hit_round_limit]\n{summary.text}", ops=ops)

    # ------------------------------------------------------------------ rounds

    def _usage_op(self, response: LLMResponse, duration_ms: int, purpose: str = "round") -> RecordLLMCall:
        return RecordLLMCall(
            self.run.run_id,
            self.run.round_index,
            response.usage,
            model=response.model,
            purpose=purpose,
            duration_ms=duration_ms,
        )

    async def _model(self, request: LLMRequest, *, purpose: str = "round") -> tuple[LLMResponse, int]:
        """Call the model; end the run on cancellation (cancelled) or failure (degraded)."""
        run = self.run
        await self.rt.gate.turn()  # encoding and sending the request is the heaviest step of a round
        try:
            outcome = await call_model(
                llm=self.rt.llm,
                request=request,
                config=self.rt.config,
                emitter=run.emitter,
                stop=run.stop,
                round_index=run.round_index,
                run_usage_before=run.usage,
                purpose=purpose,
            )
        except CancellationRequested:
            await self._end_cancelled()
            raise AssertionError("unreachable") from None
        except LLMError as error:
            inner = error.last_error if isinstance(error, LLMRetryExhausted) else error
            billed = getattr(inner, "usage", None)  # a malformed answer the provider still counted
            if billed is not None:
                run.usage = run.usage + billed
            await self._end_degraded(error)
            raise AssertionError("unreachable") from None
        run.usage = run.usage + outcome.response.usage
        run.llm_calls += 1
        await self.rt.gate.turn()  # then folding the response in and committing it
        return outcome.response, outcome.duration_ms

    async def _round(self) -> None:
        run = self.run
        config = self.rt.config
        if run.stop.is_set():
            await self._end_cancelled()
        if config.max_tokens_per_run is not None and run.usage.total_tokens >= config.max_tokens_per_run:
            await self._end_budget()
        if run.rounds >= config.max_rounds:
            await self._end_round_limit()
        run.round_index = run.rounds
        view = run.view()
        if self.hooks.has(HookPoint.ROUND_START):
            original = _dicts(view)
            ctx = RoundStartCtx(
                messages=list(original),
                stop_event=run.req.stop_event,
                round_index=run.round_index,
                session_id=run.session_id,
            )
            directive = await self.hooks.run(HookPoint.ROUND_START, ctx)
            if directive is HookDirective.BREAK:
                await self._finish("completed", "", reason="hook_break")
            if directive is HookDirective.SKIP:
                run.rounds += 1
                return
            if ctx.messages != original:
                view = [message_from_dict(m) for m in ctx.messages]
        await self.emit(
            AgentEventType.ROUND_STARTED, RoundStartedPayload(round_index=run.round_index), round_index=run.round_index
        )
        from .compaction import maybe_compact

        view = await maybe_compact(self, view)
        response, duration = await self._call_for_round(view)
        run.rounds += 1
        await self._after_model(response, duration)

    async def _call_for_round(self, view: list[Message]) -> tuple[LLMResponse | None, int]:
        """LLM_BEFORE, the model call (unless short-circuited)."""
        run = self.run
        config = self.rt.config
        system_prompt = run.system_prompt
        tools: Sequence[ToolDefinition] = run.offered
        max_tokens, temperature = config.max_tokens, config.temperature
        if self.hooks.has(HookPoint.LLM_BEFORE):
            original = _dicts(view)
            ctx = LlmBeforeCtx(
                messages=list(original),
                system_prompt=system_prompt,
                tools=list(tools),
                max_tokens=max_tokens,
                temperature=temperature,
                round_index=run.round_index,
                session_id=run.session_id,
            )
            directive = await self.hooks.run(HookPoint.LLM_BEFORE, ctx)
            if directive is HookDirective.BREAK:
                await self._finish("completed", "", reason="hook_break")
            if directive is HookDirective.SHORT_CIRCUIT:
                return _as_response(ctx.output), 0
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
        )
        response, duration = await self._model(request)
        if self.rt.compactor is not None and view is run.transcript.messages:
            from .compaction import calibrate, request_estimate

            calibrate(run, request_estimate(run, view), response.usage.prompt_tokens)
        return response, duration

    async def _after_model(self, response: LLMResponse | None, duration_ms: int) -> None:
        run = self.run
        assert response is not None
        model_response = response  # usage is the model's, whatever a hook makes of the output
        stop_after = False
        if self.hooks.has(HookPoint.LLM_AFTER):
            ctx = LlmAfterCtx(
                messages=_dicts(run.view()), output=response, round_index=run.round_index, session_id=run.session_id
            )
            stop_after = await self.hooks.run(HookPoint.LLM_AFTER, ctx) is HookDirective.BREAK
            response = _as_response(ctx.output)
        assistant = unique_call_ids(response.message, run.run_id[-8:] + str(run.round_index))
        if stop_after and assistant.tool_calls:
            assistant = replace(assistant, tool_calls=())
        assistant = await _on_append(self.rt, run.session_id, run.round_index, assistant)
        ops: list[WriteOp] = [Append([assistant], run_id=run.run_id)]
        if model_response.usage.calls:
            ops.append(self._usage_op(model_response, duration_ms))
        if not assistant.tool_calls:
            finish = run.finish_op("completed", drain_inbox=not stop_after)
            outcome = await run.writer.write([*ops, finish])
            if not outcome.finished:  # follow-ups arrived: go on with another round
                await self._tools_present(0)
                await self._round_end(has_tools=False, text=assistant.text)
                return
            await self._after_commit(self._tools_present(0), "round_tools_present event")
            await self._after_commit(self._round_end(has_tools=False, text=assistant.text), "round end")
            await self._session_end("completed", assistant.text, "hook_break" if stop_after else "completed")
            raise _Ended(run.result("completed", assistant.text))
        await run.writer.write(ops)
        await self._tools_present(len(assistant.tool_calls))
        await self._run_tools(assistant)

    async def _tools_present(self, count: int) -> None:
        await self.emit(
            AgentEventType.ROUND_TOOLS_PRESENT,
            RoundToolsPresentPayload(has_tools=count > 0, count=count),
            round_index=self.run.round_index,
        )

    async def _round_end(self, *, has_tools: bool, text: str) -> None:
        run = self.run
        if self.hooks.has(HookPoint.ROUND_END):
            ctx = RoundEndCtx(
                messages=_dicts(run.transcript.messages),
                has_tools=has_tools,
                response_text=text,
                round_index=run.round_index,
                session_id=run.session_id,
            )
            await self.hooks.run(HookPoint.ROUND_END, ctx)
        await self.emit(
            AgentEventType.ROUND_COMPLETED,
            RoundCompletedPayload(round_index=run.round_index, has_tools=has_tools),
            round_index=run.round_index,
        )

    # ------------------------------------------------------------------ tools

    async def _run_tools(self, assistant: AssistantMessage) -> None:
        run = self.run
        calls = assistant.tool_calls
        ending: str | None = None
        outcomes: list[ToolOutcome] | None = None
        if self.hooks.has(HookPoint.ROUND_DECIDE):
            ctx = RoundDecideCtx(
                messages=_dicts(run.transcript.messages),
                tool_calls=[c.to_dict() for c in calls],
                assistant_text=assistant.text,
                round_index=run.round_index,
                session_id=run.session_id,
            )
            directive = await self.hooks.run(HookPoint.ROUND_DECIDE, ctx)
            if directive is HookDirective.SKIP:
                outcomes = [ToolOutcome(c, str(ctx.output), False, "skipped") for c in calls]
            elif directive is HookDirective.BREAK:
                outcomes = [
                    ToolOutcome(c, "[skipped: round.decide hook ended the run]", True, "skipped") for c in calls
                ]
                ending = "hook_break"
        if outcomes is None and self.hooks.has(HookPoint.TOOLS_BATCH_BEFORE):
            ctx2 = ToolsBatchBeforeCtx(
                messages=_dicts(run.transcript.messages),
                tool_calls=[c.to_dict() for c in calls],
                round_index=run.round_index,
                session_id=run.session_id,
            )
            if await self.hooks.run(HookPoint.TOOLS_BATCH_BEFORE, ctx2) is HookDirective.SKIP:
                outcomes = [ToolOutcome(c, str(ctx2.output), False, "skipped") for c in calls]
        if outcomes is None:
            outcomes = await run_tool_batch(run, calls)
        run.tool_calls += counted_calls(outcomes)
        await self._commit_tool_results(assistant, outcomes, ending)

    async def _commit_tool_results(
        self, assistant: AssistantMessage, outcomes: list[ToolOutcome], ending: str | None
    ) -> None:
        run = self.run
        if self.hooks.has(HookPoint.TOOLS_BATCH_AFTER):
            ctx = ToolsBatchAfterCtx(
                messages=_dicts(run.transcript.messages), round_index=run.round_index, session_id=run.session_id
            )
            await self.hooks.run(HookPoint.TOOLS_BATCH_AFTER, ctx)
        waiting = [o for o in outcomes if o.status == "waiting_input"]
        if waiting:
            from .pending import pause_for_input

            await pause_for_input(self, outcomes)
        results: list[Message] = []
        statuses: dict[str, str] = {}
        for o in outcomes:
            result = ToolResultMessage(tool_call_id=o.call.id, name=o.call.name, content=o.content, is_error=o.is_error)
            results.append(await _on_append(self.rt, run.session_id, run.round_index, result))
            statuses[o.call.id] = o.status
        ops: list[WriteOp] = [Append(results, statuses, run.run_id)]
        cancelled = run.stop.is_set() and any(o.status == "cancelled" for o in outcomes)
        if ending is None and not cancelled:
            ops.append(DrainInbox(run.run_id))
            await run.writer.write(ops)
            await self._round_end(has_tools=True, text=assistant.text)
            return
        await self._round_end(has_tools=True, text=assistant.text)
        if cancelled:
            await self._end_cancelled(ops)
        await self._finish("completed", assistant.text, reason=ending, ops=ops)

    async def _resume_pending(self, calls: Sequence[PendingCall]) -> None:
        """``resume``/``submit_input``: finish the unanswered calls, then continue."""
        from .pending import resume_calls

        await resume_calls(self, calls)

    def tool_call_of(self, pending: PendingCall) -> ToolCall:
        """The ToolCall of a pending call."""
        return ToolCall(id=pending.tool_call_id, name=pending.name, arguments=pending.arguments)
