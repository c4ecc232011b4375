"""The end of a run: the one place that finishes it, and the two failure paths.

* :func:`finish` turns the :class:`~.outcome.End` a step returned into the committed end of
  the run (its writes and the run row's status in one transaction, unless the step already
  committed them), then runs ``SESSION_END``, memory and ``session_ended``, and returns the
  result. Whatever fails after the commit is reported in ``post_commit_errors``, never raised.
* :func:`on_task_cancelled`: the task awaiting the run was cancelled. The end is recorded
  ``cancelled``; calls that had not finished stay pending (their side effects are unknown).
* :func:`on_error`: a step raised. The end is recorded ``failed`` (unanswered calls of the run
  answered), reported as ``agent_error``, and the error goes on to the caller.

Neither failure path raises anything of its own: a failing hook or subscriber is logged.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import SessionBusyError, SessionNotFoundError, SessionPausedError, SessionPendingError
from ..events import AgentErrorPayload, AgentEventType, SessionEndedPayload
from ..hooks import HookPoint, SessionEndCtx
from ..results import StatefulResult
from ..store.rows import AnswerPending
from .memory import remember_run
from .outcome import End
from .state import Run, RunRequest, dicts

log = logging.getLogger("power_loop.engine")

__all__ = ["finish", "on_error", "on_task_cancelled"]


async def finish(run: Run, end: End) -> StatefulResult:
    """Commit ``end`` (with its writes), announce it, and return the run's result."""
    if not end.committed:
        # An ending nobody is told of (a wake-up another run had taken) is no answer to deliver.
        ending = run.finish_op(end.status, final_text=end.final_text, deliver=end.announced)
        await run.writer.write([*end.ops, ending])
    run.rt.histories.settle(run.session_id, run.transcript)
    if end.announced:
        await _session_end(run, end.status, end.final_text, end.reason or end.status)
    wake_parent(run)
    return run.result(
        end.status, end.final_text, pending=end.pending, interactions=end.interactions, approvals=end.approvals
    )


def wake_parent(run: Run) -> None:
    """When this run's end delivered a background sub-agent's answer to its parent, start a
    run of the parent so it reads it (a busy parent reads it at its next round boundary; if
    this process dies first, a timer runner finds the waiting answer)."""
    parent = run.writer.delivered_to
    if parent is None or run.execute is None:
        return
    execute = run.execute
    ephemeral = run.session.lifecycle == "ephemeral"

    async def wake() -> None:
        try:
            if ephemeral:  # its answer is in the parent's inbox: the child has done its part
                run.rt.histories.drop(run.session_id)
                await run.rt.store.delete_session(run.session_id, cascade=True)
            await execute(run.rt, RunRequest(session_id=parent, kind="wake", wait_foreign=False))
        except (SessionBusyError, SessionPendingError, SessionNotFoundError, SessionPausedError):
            pass  # a run holds it and drains the inbox, it awaits resume (or is paused), or it is gone
        except Exception:
            log.exception("the run woken by a sub-agent's answer in session %s failed", parent)

    run.rt.spawn_task(wake(), name=f"power_loop-wake-{parent}")


async def _session_end(run: Run, status: str, final_text: str, reason: str) -> None:
    """SESSION_END, memory, session_ended. The run's end is committed by now."""
    run.end_hook_started = True
    hooks = run.rt.hooks
    if hooks.has(HookPoint.SESSION_END):
        ctx = SessionEndCtx(
            reason=reason,
            status=status,
            final_text=final_text,
            messages=dicts(run.transcript.messages),
            round_index=run.round_index,
            session_id=run.session_id,
            scope=run.scope,
        )
        await run.after_commit(hooks.run(HookPoint.SESSION_END, ctx), "session.end hook")
    await run.after_commit(remember_run(run, final_text, status), "memory remember")
    run.ended_published = True
    await run.after_commit(
        run.emitter.emit(
            AgentEventType.SESSION_ENDED,
            SessionEndedPayload(reason=reason, status=status, final_text=final_text, run_id=run.run_id),
        ),
        "session_ended event",
    )


async def on_task_cancelled(run: Run) -> None:
    """The task awaiting send() was cancelled: record the run's end, leave unfinished tool
    calls pending (their side effects are unknown). The caller re-raises."""
    # A write in flight when the cancellation landed may have committed without this run
    # learning it (its store task was cancelled too, e.g. at asyncio.run shutdown): the cached
    # history is not trusted; the next run reloads it.
    run.rt.histories.drop(run.session_id)
    if not run.writer.finished:
        try:
            ending = run.finish_op("cancelled", error="task cancelled", deliver=False)
            await asyncio.shield(run.writer.write([ending]))
        except Exception as exc:
            log.warning("could not record the end of cancelled run %s: %s", run.run_id, exc)
            await _release_quietly(run)
    # The end may have been committed just before the cancellation landed: report that status.
    status = run.writer.end_status or "cancelled"
    await _quietly_session_end(run, "cancelled", status)
    if not run.ended_published:
        run.ended_published = True
        await _quietly(
            run, AgentEventType.SESSION_ENDED, SessionEndedPayload(reason="cancelled", status=status, run_id=run.run_id)
        )


async def on_error(run: Run, exc: BaseException) -> None:
    """A run failed: record its end (unless already committed), report, close the session.
    The caller re-raises ``exc``."""
    run.rt.histories.drop(run.session_id)
    if not run.writer.finished:
        # Calls of this run that never got an answer are answered now (finished calls keep
        # their stored result), so the failure leaves a history the next send can use.
        answer = AnswerPending(
            f"[skipped: the run failed before this call completed ({type(exc).__name__})]", run.run_id
        )
        try:
            error = f"{type(exc).__name__}: {exc}"
            await run.writer.write([answer, run.finish_op("failed", error=error, final_text=f"[failed: {error}]")])
        except Exception:
            await _release_quietly(run)
    await _quietly_session_end(run, "error", "failed")
    wake_parent(run)
    await _quietly(
        run,
        AgentEventType.AGENT_ERROR,
        AgentErrorPayload(
            error=str(exc),
            error_type=type(exc).__name__,
            details={"run_id": run.run_id, "round_index": run.round_index},
        ),
    )
    if not run.ended_published:
        await _quietly(
            run, AgentEventType.SESSION_ENDED, SessionEndedPayload(reason="error", status="failed", run_id=run.run_id)
        )


async def _quietly_session_end(run: Run, reason: str, status: str) -> None:
    """Run SESSION_END on a failure path; a failing handler is logged, not raised."""
    hooks = run.rt.hooks
    if not hooks.has(HookPoint.SESSION_END) or run.end_hook_started:
        return
    run.end_hook_started = True
    ctx = SessionEndCtx(
        reason=reason,
        status=status,
        final_text=None,
        round_index=run.round_index,
        session_id=run.session_id,
        scope=run.scope,
    )
    try:
        await hooks.run(HookPoint.SESSION_END, ctx)
    except Exception:
        log.error("session.end hook failed while ending run %s", run.run_id, exc_info=True)


async def _release_quietly(run: Run) -> None:
    try:
        await run.rt.store.release_lease(run.session_id, run.writer.lease.owner)
    except Exception:
        log.warning("could not release the lease of session %s", run.session_id, exc_info=True)


async def _quietly(run: Run, event_type: AgentEventType, data: Any) -> None:
    """Publish during error handling: a failing subscriber must not mask the real error."""
    try:
        await run.emitter.emit(event_type, data)
    except Exception:
        log.error("event subscriber failed while reporting a run error", exc_info=True)
