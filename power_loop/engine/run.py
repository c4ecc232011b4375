"""One run: load the session, go round by round, end with a result.

::

    admission (AgentLoopConfig.max_concurrent_runs): wait for a run slot, holding no lease
    begin (one transaction: lease, pending check, inbox, user input)
    SESSION_START, memory recall, the skills section
    resume / submit_input: answer the pending calls first
    loop:
        stop? → cancelled      budget spent? → budget_exceeded      max_rounds? → round-limit summary
        ROUND_START → compaction? → runtime projection → LLM_BEFORE → model call → LLM_AFTER
        commit the model turn (assistant message, usage, pending tool calls)
        no tool calls → finish (the same transaction drains late follow-ups, else ends the run)
        ROUND_DECIDE → TOOLS_BATCH_BEFORE → tools → TOOLS_BATCH_AFTER
        commit the results (in call order) with any follow-ups that arrived → ROUND_END
    finish: commit the end, SESSION_END, memory, session_ended

Every step returns :data:`~.outcome.CONTINUE` or an :class:`~.outcome.End`; :func:`drive`
hands the first ``End`` to :func:`~.finish.finish`, the one place that ends a run. Only real
errors raise (the run then ends ``failed``) and the cancellation of the caller's task.

Whatever path a run takes, every tool call of every stored assistant message ends up with
exactly one result, except when the task running ``send`` is cancelled while tools run: then
the calls that had not finished stay pending, as after a crash (their side effects are
unknown), and the next ``send`` reports them.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace

from ..cancellation import StopSignal
from ..events import AgentEventType, SessionStartedPayload
from ..hooks import HookPoint, SessionStartCtx
from ..messages import AssistantMessage, message_from_dict
from ..results import StatefulResult
from ..store.rows import BeginOutcome, LeaseClaim
from ..tools.registry import ToolRegistry
from .begin import begin_run, transcript_after_begin
from .compaction import maybe_compact
from .emit import Emitter
from .finish import finish, on_error, on_task_cancelled
from .limits import check_limits
from .memory import recall_memory
from .model_turn import call_for_round, commit_turn, round_start
from .outcome import End, StepOutcome
from .pending import resume_calls
from .prepare import select_tools
from .projection import load_skills
from .runtime import Runtime
from .state import Run, RunRequest, dicts, on_append
from .subagents import stored_child
from .tool_round import run_tools
from .writer import RunWriter

__all__ = ["Run", "RunRequest", "execute_run"]


async def execute_run(rt: Runtime, req: RunRequest) -> StatefulResult:
    """Run ``req`` to its end (the facade's ``send`` / ``resume`` / ``submit_input``)."""
    tools = select_tools(rt.registry, req.tools)
    StopSignal(req.stop_event)  # a bad stop_event fails here, before anything is stored
    with rt.running():
        return await _execute(rt, req, tools)


async def _execute(rt: Runtime, req: RunRequest, tools: ToolRegistry | None) -> StatefulResult:
    async with rt.locks.hold(req.session_id, timeout=rt.config.session_wait_s) as time_left:
        admission = rt.admission
        if admission.slots is None or admission.shares_slot(req.kind):
            return await _begin_and_drive(rt, req, tools, time_left)
        # Admission comes before the begin transaction: a waiting run holds no lease.
        async with admission.slot(req.session_id, StopSignal(req.stop_event), rt.store):
            return await _begin_and_drive(rt, req, tools, time_left)


async def _begin_and_drive(
    rt: Runtime, req: RunRequest, tools: ToolRegistry | None, time_left: float
) -> StatefulResult:
    """The begin transaction, then the run to its end."""
    run_id = "run_" + secrets.token_hex(8)
    lease = LeaseClaim(owner=f"{rt.owner}/{run_id}", ttl_ms=int(rt.config.lease_ttl_s * 1000))
    cached = await rt.histories.take(req.session_id)
    message = await on_append(rt, req.session_id, 0, req.message) if req.message is not None else None
    begin = await begin_run(
        rt,
        session_id=req.session_id,
        kind=req.kind,
        run_id=run_id,
        lease=lease,
        cached=cached,
        message=message,
        heal_pending=req.heal_pending,
        lift_pause=req.lift_pause,
        wait_foreign=req.wait_foreign,
        time_left=time_left,
    )
    assert begin.session is not None
    # No await from here to drive()'s try: a cancellation cannot land in between.
    if req.child is None:
        # A sub-agent run no parent started (a background child, or one resumed after a
        # crash) takes the settings it was started with; its tools are never widened.
        stored = stored_child(rt, begin.session)
        if stored is not None:
            link, allowed = stored
            req = replace(req, child=link)
            if allowed is not None and tools is not None and not isinstance(req.tools, ToolRegistry):
                tools = tools.subset(allowed)
    transcript = transcript_after_begin(rt, req.session_id, cached, begin)
    seq = max(begin.event_seq, rt.event_seqs.get(req.session_id, 0))
    emitter = Emitter(rt.bus, req.session_id, seq=seq, counters=rt.event_seqs, log=rt.event_log, run_id=run_id)
    writer = RunWriter(rt.store, req.session_id, replace(lease, fence=begin.fence), transcript, emitter)
    run = Run(
        rt,
        req,
        run_id=run_id,
        begin=begin,
        session=begin.session,
        transcript=transcript,
        writer=writer,
        emitter=emitter,
        tools=tools,
        execute=execute_run,
    )
    return await drive(run)


async def drive(run: Run) -> StatefulResult:
    """Take ``run`` from its start to its end; the first step that returns an ``End`` ends it."""
    run.writer.start_renewal()
    try:
        return await finish(run, await _steps(run, run.begin))
    except asyncio.CancelledError:
        await on_task_cancelled(run)
        raise
    except BaseException as exc:
        await on_error(run, exc)
        raise
    finally:
        await run.writer.stop_renewal()
        run.emitter.detach()  # the event log stores what no write of the run took along


async def _steps(run: Run, begin: BeginOutcome) -> End:
    """Session start, pending answers, rounds: until a step returns an ending."""
    if run.req.kind == "wake" and not begin.appended:
        # Another run already took the wake-up from the inbox: nothing to do, nothing to announce
        # (not even if the task is cancelled while this non-run is recorded).
        run.end_hook_started = run.ended_published = True
        return End("completed", "", announced=False)
    await session_start(run)
    if begin.pending is not None:
        outcome = await resume_calls(run, begin.pending)
        if isinstance(outcome, End):
            return outcome
    while True:
        outcome = await run_round(run)
        if isinstance(outcome, End):
            return outcome


async def session_start(run: Run) -> None:
    """``session_started``, SESSION_START (which may project the history), memory recall,
    the skills section."""
    # The event comes first: whatever happens next, session_ended will close it.
    await run.emitter.emit(
        AgentEventType.SESSION_STARTED,
        SessionStartedPayload(
            scope=run.scope,
            run_id=run.run_id,
            run_kind=run.req.kind,
            parent_session_id=run.session.parent_session_id or "",
            spawn_tool_call_id=(run.req.child.spawn_tool_call_id if run.req.child is not None else "")
            or run.session.spawn_tool_call_id
            or "",
            parent_run_id=run.parent.run_id if run.parent is not None else "",
        ),
    )
    hooks = run.rt.hooks
    if hooks.has(HookPoint.SESSION_START):
        original = dicts(run.transcript.messages)
        ctx = SessionStartCtx(
            messages=list(original), stop_event=run.req.stop_event, session_id=run.session_id, scope=run.scope
        )
        await hooks.run(HookPoint.SESSION_START, ctx)
        if ctx.messages != original:
            run.prefix = [message_from_dict(m) for m in ctx.messages]
            run.prefix_from = len(run.transcript)
    await recall_memory(run)
    await load_skills(run)


async def run_round(run: Run) -> StepOutcome:
    """One round: limits → ROUND_START → compaction → model → commit → tools."""
    ending = await check_limits(run)
    if ending is not None:
        return ending
    view = await round_start(run)
    if not isinstance(view, list):
        return view  # ROUND_START skipped the round or ended the run
    compacted = await maybe_compact(run, view)
    if isinstance(compacted, End):
        return compacted
    reply = await call_for_round(run, compacted)
    if isinstance(reply, End):
        return reply
    run.rounds += 1
    turn = await commit_turn(run, reply)
    if not isinstance(turn, AssistantMessage):
        return turn  # answered without tool calls: the run ended, or follow-ups go on
    return await run_tools(run, turn)
