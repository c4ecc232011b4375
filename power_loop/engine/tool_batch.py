"""Running the tool calls of one model turn.

* Calls run concurrently, at most ``tool_concurrency`` at a time; results are returned in
  call order.
* A call is executed only if its tool was offered in this run, its JSON arguments parse and
  they validate against the tool's schema; otherwise the model gets a message it can act on.
* A handler runs at most once per call (TOOL_ERROR's SHORT_CIRCUIT asks for one retry).
* A handler's start (``running``) and its result (``done``/``failed``) are recorded in the
  store as they happen, so a crash mid-batch leaves finished results known and ``resume``
  re-runs only calls that never finished.
* The stop signal is checked before each call; calls that never started are answered
  ``<cancelled: reason>``.
* Sync handlers run on the loop's own tool threads (:mod:`power_loop.tools.threads`), never
  on the event loop's default executor; a call's time limit counts from its start.
* Whatever a handler raises is a tool error the model sees, ``SystemExit`` and a
  ``CancelledError`` of its own included. Only the cancellation of the run's task cancels the
  run. One exception: ``KeyboardInterrupt`` raised on the event loop's thread (an async
  handler) is taken for Ctrl-C: the call is recorded as failed, then the interrupt goes on
  and ends the run ``failed``.
* Once a handler has run, its result is recorded even when a ``tool.error`` or
  ``tool.after`` hook then raises and ends the run.
* A valid call that needs a human's approval (its tool's ``requires_approval``, or a
  ``TOOL_BEFORE`` ``PAUSE``) does not start: its outcome is ``awaiting_approval`` with a fresh
  :class:`~power_loop.approvals.ApprovalRequest`. An approved call runs without asking again,
  after its tool's ``precheck``; a failing precheck issues a fresh request instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from .._types import ToolCallStatus, ToolOutcomeStatus
from ..approvals import ApprovalRequest
from ..errors import LeaseLostError, PowerLoopError, StoreError
from ..events import (
    AgentEventType,
    BaseEventPayload,
    ToolCallCompletedPayload,
    ToolCallFailedPayload,
    ToolCallStartedPayload,
)
from ..hooks import HookDirective, HookPoint, ToolAfterCtx, ToolBeforeCtx, ToolErrorCtx
from ..human import HumanInputRequired
from ..messages import ToolCall, scrub_surrogates
from ..store.rows import UpdateToolCall
from ..tools.context import ToolContext, _reset_context, _set_context
from ..tools.registry import RegisteredTool, bind_handler, format_tool_result, validation_message
from ..tools.threads import ToolNotStarted, ToolRaisedBaseException, ToolTimeout
from .budgets import check_tool_call
from .state import Run
from .subagents import RunSubagents

__all__ = ["ToolOutcome", "counted_calls", "run_tool_batch"]

log = logging.getLogger("power_loop.engine")


@dataclass
class ToolOutcome:
    """The result of one call.

    Attributes:
        call: The call (as the model made it).
        content: The result text the model will see.
        is_error: The result reports a failure.
        status: ``done``, ``failed``, ``skipped``, ``cancelled`` or ``waiting_input`` (or the
            stored status of a call answered before a resume, e.g. ``aborted``).
        interaction: The open question when a tool asked the user (``waiting_input``).
        approval: The approval request of a call that waits for one (``awaiting_approval``).
    """

    call: ToolCall
    content: str
    is_error: bool = False
    status: ToolCallStatus = "done"
    interaction: dict[str, Any] | None = None
    approval: ApprovalRequest | None = None
    executed: bool = False
    stop_batch: bool = field(default=False, repr=False)
    interrupt: BaseException | None = field(default=None, repr=False)


def counted_calls(outcomes: Sequence[ToolOutcome]) -> int:
    """How many of ``outcomes`` count in ``StatefulResult.tool_calls`` and the session stats:
    as in 0.11, a call a hook skipped is not a call, nor is one a stop prevented from
    starting. Failed calls (unknown tool, invalid arguments, exceptions) count; a call waiting
    for approval counts once it runs."""
    return sum(1 for o in outcomes if o.status not in ("skipped", "cancelled", "awaiting_approval"))


async def run_tool_batch(
    run: Run, calls: Sequence[ToolCall], approved: frozenset[str] = frozenset()
) -> list[ToolOutcome]:
    """Execute ``calls``; return one outcome per call, in call order. Calls whose id is in
    ``approved`` were approved by a human and do not ask again."""
    outcomes: list[ToolOutcome | None] = [None] * len(calls)
    stopped = asyncio.Event()
    interrupts: list[BaseException] = []
    semaphore = asyncio.Semaphore(run.config.tool_concurrency)

    async def one(index: int, call: ToolCall) -> None:
        async with semaphore:
            if interrupts:  # Ctrl-C: start nothing more; the failed run answers these calls
                return
            if stopped.is_set():
                outcomes[index] = ToolOutcome(call, "[skipped: tool.after hook stopped the batch]", True, "skipped")
                return
            if run.stop.is_set():
                outcomes[index] = ToolOutcome(call, f"<cancelled: {run.stop.reason}>", True, "cancelled")
                return
            outcome = await execute_call(run, call, approved=call.id in approved)
            outcomes[index] = outcome
            if outcome.stop_batch:
                stopped.set()
            if outcome.interrupt is not None:
                interrupts.append(outcome.interrupt)

    if len(calls) == 1:
        await one(0, calls[0])
    else:
        tasks = [asyncio.ensure_future(one(i, c)) for i, c in enumerate(calls)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise failed[0].exception()  # type: ignore[misc]
    if interrupts:
        # Raised here, in the run's own task, once every started call is recorded: a
        # KeyboardInterrupt raised inside a task of the batch would leave the event loop.
        raise interrupts[0]
    return [o for o in outcomes if o is not None]


async def execute_call(run: Run, call: ToolCall, *, approved: bool = False) -> ToolOutcome:
    """Run one call through hooks, validation, the approval gate, the handler and events."""
    hooks = run.rt.hooks
    name = call.name
    args: Any
    parse_error: str | None = None
    paused = False
    try:
        args = _parsed_arguments(call)
    except ValueError as exc:
        args = {}
        parse_error = (
            f"Error: invalid JSON arguments for tool '{name}': {exc}. Send the arguments as a single JSON object."
        )
    if hooks.has(HookPoint.TOOL_BEFORE):
        before = ToolBeforeCtx(
            tool_call=call.to_dict(),
            tool_name=name,
            tool_args=dict(args),
            round_index=run.round_index,
            session_id=run.session_id,
            approved=approved,
        )
        directive = await hooks.run(HookPoint.TOOL_BEFORE, before)
        if directive is HookDirective.SKIP:
            await _started(run, call, name, args)
            return await _finish(
                run, call, name, args, str(before.output), failed=False, status="skipped", started=time.monotonic()
            )
        paused = directive is HookDirective.PAUSE
        if before.tool_args != args:
            parse_error = None
        name, args = before.tool_name, before.tool_args
    tool = run.tools.get(name) if run.tools is not None and name in run.round_offered else None
    problem = None if tool is None else parse_error or validation_message(tool.definition, args)
    if tool is not None and problem is None and (paused or approved or tool.definition.requires_approval is not False):
        # Only a valid call is worth a human's time; an invalid one gets its error at once.
        waiting = await _approval_gate(run, call, tool, name, args, paused=paused, approved=approved)
        if waiting is not None:
            return waiting
    await _started(run, call, name, args)
    started = time.monotonic()
    if tool is None:
        available = ", ".join(run.tools.names()) if run.tools is not None and len(run.tools) else "none"
        return await _finish(
            run,
            call,
            name,
            args,
            f"Unknown tool: {name} (available tools: {available})",
            failed=True,
            status="failed",
            started=started,
        )
    if problem is not None:
        return await _finish(run, call, name, args, problem, failed=True, status="failed", started=started)
    hit = check_tool_call(run)
    if hit is not None:  # the run ends budget_exceeded at the round's end (limits.check_limits)
        run.budget_hit = hit
        note = f"[not run: budget exceeded: {hit.describe()}]"
        return await _finish(run, call, name, args, note, failed=True, status="skipped", started=started)
    await run.writer.write([UpdateToolCall(call.id, "running")])
    output, failed, interaction, interrupt = await _invoke(run, call, tool, name, args)
    if interaction is not None:
        return ToolOutcome(call, "", False, "waiting_input", interaction=interaction, executed=True)
    outcome = await _finish(
        run,
        call,
        name,
        args,
        output,
        failed=failed,
        status="failed" if failed else "done",
        started=started,
        executed=True,
    )
    outcome.interrupt = interrupt
    return outcome


async def _approval_gate(
    run: Run, call: ToolCall, tool: RegisteredTool, name: str, args: dict[str, Any], *, paused: bool, approved: bool
) -> ToolOutcome | None:
    """The ``awaiting_approval`` outcome of a call that must wait for a human, or None when it
    may run: an approved call passes once its tool's precheck agrees; another call waits when
    a hook paused it or its tool requires approval (a predicate that raises counts as yes)."""
    definition = tool.definition
    reason: str | None = None
    if approved:
        if definition.precheck is None:
            return None
        try:
            verdict = await _judged(definition.precheck, args, _tool_context(run, call, tool))
        except Exception as exc:
            log.warning("the precheck of tool %s raised; asking for approval again", name, exc_info=True)
            verdict = f"the precheck raised {type(exc).__name__}: {exc}"
        if not isinstance(verdict, str) and verdict:
            return None
        reason = verdict if isinstance(verdict, str) and verdict else "the tool's precheck no longer agrees"
    elif not paused:
        check = definition.requires_approval
        if check is False:
            return None
        if check is not True:
            try:
                needed = bool(await _judged(check, args, _tool_context(run, call, tool)))
            except Exception:
                log.warning("requires_approval of tool %s raised; the call waits for approval", name, exc_info=True)
                needed = True
            if not needed:
                return None
    ttl_s = definition.approval_ttl_s or run.config.approval_ttl_s
    now = int(time.time() * 1000)
    request = ApprovalRequest(
        token=secrets.token_urlsafe(24),
        session_id=run.session_id,
        tool_call_id=call.id,
        tool_name=name,
        arguments=dict(args),
        expires_at=now + int(ttl_s * 1000),
        reason=reason,
        created_at=now,
    )
    return ToolOutcome(call, "", False, "awaiting_approval", approval=request)


async def _judged(check: Callable[..., Any], args: dict[str, Any], context: ToolContext) -> Any:
    """``check(args, ctx)``, awaited when it returns an awaitable."""
    verdict = check(dict(args), context)
    if inspect.isawaitable(verdict):
        verdict = await verdict
    return verdict


def _parsed_arguments(call: ToolCall) -> Any:
    """The call's arguments decoded from the text the store keeps (lone surrogates as U+FFFD),
    so a call run again by ``resume`` gets the same values."""
    scrubbed = scrub_surrogates(call.arguments)
    return (call if scrubbed is call.arguments else replace(call, arguments=scrubbed)).parsed_arguments()


_Invoked = tuple[str, bool, "dict[str, Any] | None", "BaseException | None"]


async def _invoke(run: Run, call: ToolCall, tool: RegisteredTool, name: str, args: dict[str, Any]) -> _Invoked:
    """(output, failed, interaction, interrupt) of the handler, TOOL_ERROR applied.

    ``interrupt`` is a KeyboardInterrupt an async handler raised: to be raised again once the
    call's result is recorded.
    """
    limit = run.config.max_tool_result_chars
    try:
        value = await _call_with_context(run, call, tool, args)
        return format_tool_result(value, limit), False, None, None
    except HumanInputRequired as request:
        return "", False, request.to_pending(tool_call_id=call.id, tool_name=name), None
    except PowerLoopError as exc:
        if _is_run_fatal(exc):
            raise
        error: Exception = exc
    except Exception as exc:
        error = exc
    message = _error_text(error, name)
    interrupt = _ctrl_c(error)
    if interrupt is not None:
        return message, True, None, interrupt
    if not run.rt.hooks.has(HookPoint.TOOL_ERROR):
        return message, True, None, None
    ctx = ToolErrorCtx(
        tool_call=call.to_dict(),
        tool_name=name,
        tool_args=dict(args),
        error=error.error if isinstance(error, ToolRaisedBaseException) else error,
        error_message=message,
        output=message,
        round_index=run.round_index,
        session_id=run.session_id,
    )
    try:
        directive = await run.rt.hooks.run(HookPoint.TOOL_ERROR, ctx)
    except Exception:
        # The handler ran (and failed): record that before the hook's error ends the run.
        await _record(run, call, "failed", format_tool_result(message, limit), failed=True)
        raise
    if directive is HookDirective.SKIP:
        return str(ctx.output or message), False, None, None
    if directive is HookDirective.SHORT_CIRCUIT:
        try:
            value = await _call_with_context(run, call, tool, args)
            return format_tool_result(value, limit), False, None, None
        except PowerLoopError as retry_exc:
            if _is_run_fatal(retry_exc):
                raise
            retry_error: Exception = retry_exc
        except Exception as retry_exc:
            retry_error = retry_exc
        retry_message = f"Error (retry failed): {_error_text(retry_error, name).removeprefix('Error: ')}"
        return retry_message, True, None, _ctrl_c(retry_error)
    return str(ctx.output or message), True, None, None


def _is_run_fatal(exc: PowerLoopError) -> bool:
    return isinstance(exc, (LeaseLostError, StoreError))


def _ctrl_c(error: Exception) -> BaseException | None:
    """The KeyboardInterrupt in ``error`` if an async handler raised it on the event loop's
    thread, where Ctrl-C may arrive that way (a real one is never delivered to a tool thread)."""
    if (
        isinstance(error, ToolRaisedBaseException)
        and not error.in_worker
        and isinstance(error.error, KeyboardInterrupt)
    ):
        return error.error
    return None


def _error_text(error: Exception, name: str) -> str:
    """The tool result the model sees for ``error``."""
    if isinstance(error, ToolTimeout):  # the kernel's limit, not a TimeoutError the tool raised
        return f"Error: tool '{name}' timed out after {error.limit}s"
    if isinstance(error, ToolNotStarted):
        return (
            f"Error: tool '{name}' was not started: {error}. Try again later; if this persists, the application "
            "should raise AgentLoopConfig.tool_threads or make its sync tools return within their time limit."
        )
    if isinstance(error, ToolRaisedBaseException):
        inner = error.error
        if isinstance(inner, asyncio.CancelledError):
            return (
                "Error: the tool raised CancelledError (a task or future it awaited was cancelled; "
                "the run itself was not)"
            )
        detail = f": {inner}" if str(inner) else ""
        return f"Error: the tool raised {type(inner).__name__}{detail}"
    return f"Error: {error}" if str(error) else f"Error: {type(error).__name__}"


class RunEvents:
    """:class:`~power_loop.tools.context.SessionEvents` of a run: events a tool publishes
    carry the run's session, sequence and round."""

    __slots__ = ("_run",)

    def __init__(self, run: Run) -> None:
        self._run = run

    async def publish(self, event_type: AgentEventType, payload: BaseEventPayload) -> None:
        """See :meth:`power_loop.tools.context.SessionEvents.publish`."""
        await self._run.emitter.emit(event_type, payload, round_index=self._run.round_index)


def _tool_context(run: Run, call: ToolCall, tool: RegisteredTool) -> ToolContext:
    """The :class:`ToolContext` of ``call`` in ``run``."""
    return ToolContext(
        session_id=run.session_id,
        tool_call_id=call.id,
        tool_name=tool.name,
        run_id=run.run_id,
        round_index=run.round_index,
        loop=run.rt.facade,
        capabilities=replace(
            run.rt.tool_capabilities(run.session_id, call.id, on_runtime_write=run.mark_runtime),
            subagents=RunSubagents(run, call.id),
            events=RunEvents(run),
        ),
    )


async def _call_with_context(run: Run, call: ToolCall, tool: RegisteredTool, args: dict[str, Any]) -> Any:
    context = _tool_context(run, call, tool)
    token = _set_context(context)
    try:
        timeout = tool.timeout_s or run.config.tool_timeout_s
        handler = bind_handler(tool, args, context)
        if tool.is_async:
            return await _run_async(handler, timeout)
        # The thread sees this task's context variables (current_tool_context() works there).
        value = await run.rt.tool_threads().run(functools.partial(contextvars.copy_context().run, handler), timeout)
        if inspect.isawaitable(value):  # a sync callable that returned a coroutine
            return await _run_async(lambda: value, timeout)
        return value
    finally:
        _reset_context(token)


async def _run_async(start: Callable[[], Awaitable[Any]], timeout: float | None) -> Any:
    """Await ``start()`` in a task of its own, within ``timeout`` seconds.

    The own task tells the two kinds of ``CancelledError`` apart (on Python 3.10 too): when
    the run's task is cancelled, the wait below raises, the handler is cancelled and the
    cancellation goes on; when the handler's task ends cancelled although nobody cancelled
    it, the handler raised ``CancelledError`` itself (an inner task it awaited was
    cancelled), which is a tool error.

    Raises:
        ToolTimeout: ``timeout`` passed (the handler is cancelled).
        ToolRaisedBaseException: The handler raised CancelledError, KeyboardInterrupt, SystemExit, ...
    """

    async def guarded() -> Any:
        try:
            return await start()
        except (asyncio.CancelledError, Exception):
            raise
        except BaseException as exc:  # kept off the event loop, which would stop on it
            raise ToolRaisedBaseException(exc, in_worker=False) from exc

    task = asyncio.ensure_future(guarded())
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        await _settled(task)
        raise
    if not done:
        task.cancel()
        await _settled(task)
        if task.cancelled():
            assert timeout is not None
            raise ToolTimeout(timeout)
    if task.cancelled():
        raise ToolRaisedBaseException(asyncio.CancelledError(), in_worker=False)
    return task.result()


async def _settled(task: asyncio.Future[Any]) -> None:
    """Wait until a cancelled handler's task has finished cleaning up."""
    await asyncio.wait((task,))
    if not task.cancelled():
        task.exception()  # retrieved: a late failure of an abandoned call is not logged as lost


async def _record(run: Run, call: ToolCall, status: ToolOutcomeStatus, output: str, *, failed: bool) -> None:
    await run.writer.write([UpdateToolCall(call.id, status, result=output, is_error=failed)])


async def _started(run: Run, call: ToolCall, name: str, args: Any) -> None:
    await run.emitter.emit(
        AgentEventType.TOOL_CALL_STARTED,
        ToolCallStartedPayload(
            name=name, tool_input=dict(args) if isinstance(args, dict) else {}, tool_call_id=call.id
        ),
        round_index=run.round_index,
    )


async def _finish(
    run: Run,
    call: ToolCall,
    name: str,
    args: Any,
    output: str,
    *,
    failed: bool,
    status: ToolOutcomeStatus,
    started: float,
    executed: bool = False,
) -> ToolOutcome:
    stop_batch = False
    if run.rt.hooks.has(HookPoint.TOOL_AFTER):
        ctx = ToolAfterCtx(
            tool_call=call.to_dict(),
            tool_name=name,
            tool_args=dict(args) if isinstance(args, dict) else {},
            output=output,
            failed=failed,
            round_index=run.round_index,
            session_id=run.session_id,
        )
        try:
            stop_batch = await run.rt.hooks.run(HookPoint.TOOL_AFTER, ctx) is HookDirective.BREAK
        except Exception:
            if executed:
                # The handler ran: store its real result before the hook's error ends the
                # run, so the model is never told that a side effect which happened did not.
                limit = run.config.max_tool_result_chars
                await _record(run, call, status, format_tool_result(output, limit), failed=failed)
            raise
        output, failed = str(ctx.output), bool(ctx.failed)
        if status in ("done", "failed"):
            status = "failed" if failed else "done"
    output = format_tool_result(output, run.config.max_tool_result_chars)
    if executed:
        await _record(run, call, status, output, failed=failed)
    duration_ms = int((time.monotonic() - started) * 1000)
    tool_input = dict(args) if isinstance(args, dict) else {}
    if failed:
        await run.emitter.emit(
            AgentEventType.TOOL_CALL_FAILED,
            ToolCallFailedPayload(
                name=name, output=output, tool_input=tool_input, tool_call_id=call.id, duration_ms=duration_ms
            ),
            round_index=run.round_index,
        )
    else:
        await run.emitter.emit(
            AgentEventType.TOOL_CALL_COMPLETED,
            ToolCallCompletedPayload(
                name=name, output=output, tool_input=tool_input, tool_call_id=call.id, duration_ms=duration_ms
            ),
            round_index=run.round_index,
        )
    return ToolOutcome(call, output, failed, status, executed=executed, stop_batch=stop_batch)
