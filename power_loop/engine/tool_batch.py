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
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import PowerLoopError
from ..events import AgentEventType, ToolCallCompletedPayload, ToolCallFailedPayload, ToolCallStartedPayload
from ..hooks import HookDirective, HookPoint, ToolAfterCtx, ToolBeforeCtx, ToolErrorCtx
from ..messages import ToolCall
from ..store.rows import UpdateToolCall
from ..tools.context import ToolContext, _reset_context, _set_context
from ..tools.registry import RegisteredTool, call_handler, format_tool_result, validation_message

if TYPE_CHECKING:
    from .run import Run

__all__ = ["ToolOutcome", "run_tool_batch"]


@dataclass
class ToolOutcome:
    """The result of one call.

    Attributes:
        call: The call (as the model made it).
        content: The result text the model will see.
        is_error: The result reports a failure.
        status: ``done``, ``failed``, ``skipped``, ``cancelled`` or ``waiting_input``.
        interaction: The open question when a tool asked the user (``waiting_input``).
    """

    call: ToolCall
    content: str
    is_error: bool = False
    status: str = "done"
    interaction: dict[str, Any] | None = None
    executed: bool = False
    stop_batch: bool = field(default=False, repr=False)


class _HumanInput(Exception):
    """Carries a ``request_user_input`` pause out of a handler."""


async def run_tool_batch(run: Run, calls: Sequence[ToolCall]) -> list[ToolOutcome]:
    """Execute ``calls``; return one outcome per call, in call order."""
    outcomes: list[ToolOutcome | None] = [None] * len(calls)
    stopped = asyncio.Event()
    semaphore = asyncio.Semaphore(run.rt.config.tool_concurrency)

    async def one(index: int, call: ToolCall) -> None:
        async with semaphore:
            if stopped.is_set():
                outcomes[index] = ToolOutcome(call, "[skipped: tool.after hook stopped the batch]", True, "skipped")
                return
            if run.stop.is_set():
                outcomes[index] = ToolOutcome(call, f"<cancelled: {run.stop.reason}>", True, "cancelled")
                return
            outcome = await execute_call(run, call)
            outcomes[index] = outcome
            if outcome.stop_batch:
                stopped.set()

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
    return [o for o in outcomes if o is not None]


async def execute_call(run: Run, call: ToolCall) -> ToolOutcome:
    """Run one call through hooks, validation, the handler and events."""
    hooks = run.rt.hooks
    name = call.name
    args: Any
    parse_error: str | None = None
    try:
        args = call.parsed_arguments()
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
        )
        if await hooks.run(HookPoint.TOOL_BEFORE, before) is HookDirective.SKIP:
            await _started(run, call, name, args)
            return await _finish(
                run, call, name, args, str(before.output), failed=False, status="skipped", started=time.monotonic()
            )
        if before.tool_args != args:
            parse_error = None
        name, args = before.tool_name, before.tool_args
    await _started(run, call, name, args)
    started = time.monotonic()
    tool = run.tools.get(name) if run.tools is not None and name in run.round_offered else None
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
    problem = parse_error or validation_message(tool.definition, args)
    if problem is not None:
        return await _finish(run, call, name, args, problem, failed=True, status="failed", started=started)
    await run.writer.write([UpdateToolCall(call.id, "running")])
    output, failed, interaction = await _invoke(run, call, tool, name, args)
    if interaction is not None:
        return ToolOutcome(call, "", False, "waiting_input", interaction=interaction, executed=True)
    return await _finish(
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


async def _invoke(
    run: Run, call: ToolCall, tool: RegisteredTool, name: str, args: dict[str, Any]
) -> tuple[str, bool, dict[str, Any] | None]:
    """(output, failed, interaction) of the handler, TOOL_ERROR applied."""
    from ..human import HumanInputRequired

    limit = run.rt.config.max_tool_result_chars
    try:
        value = await _call_with_context(run, call, tool, args)
        return format_tool_result(value, limit), False, None
    except HumanInputRequired as request:
        return "", False, request.to_pending(tool_call_id=call.id, tool_name=name)
    except PowerLoopError as exc:
        if _is_run_fatal(exc):
            raise
        error: BaseException = exc
    except Exception as exc:
        error = exc
    message = _error_text(error, name, tool, run)
    if not run.rt.hooks.has(HookPoint.TOOL_ERROR):
        return message, True, None
    ctx = ToolErrorCtx(
        tool_call=call.to_dict(),
        tool_name=name,
        tool_args=dict(args),
        error=error,
        error_message=message,
        output=message,
        round_index=run.round_index,
        session_id=run.session_id,
    )
    directive = await run.rt.hooks.run(HookPoint.TOOL_ERROR, ctx)
    if directive is HookDirective.SKIP:
        return str(ctx.output or message), False, None
    if directive is HookDirective.SHORT_CIRCUIT:
        try:
            value = await _call_with_context(run, call, tool, args)
            return format_tool_result(value, limit), False, None
        except Exception as retry_exc:
            return f"Error (retry failed): {retry_exc}", True, None
    return str(ctx.output or message), True, None


def _is_run_fatal(exc: PowerLoopError) -> bool:
    from ..errors import LeaseLostError, StoreError

    return isinstance(exc, (LeaseLostError, StoreError))


def _error_text(error: BaseException, name: str, tool: RegisteredTool, run: Run) -> str:
    if isinstance(error, asyncio.TimeoutError):
        limit = tool.timeout_s or run.rt.config.tool_timeout_s
        return f"Error: tool '{name}' timed out after {limit}s"
    return f"Error: {error}" if str(error) else f"Error: {type(error).__name__}"


async def _call_with_context(run: Run, call: ToolCall, tool: RegisteredTool, args: dict[str, Any]) -> Any:
    context = ToolContext(
        session_id=run.session_id,
        tool_call_id=call.id,
        tool_name=tool.name,
        run_id=run.run_id,
        round_index=run.round_index,
        loop=run.rt.facade,
    )
    token = _set_context(context)
    try:
        timeout = tool.timeout_s or run.rt.config.tool_timeout_s
        if timeout is None:
            return await call_handler(tool, args, context)
        return await asyncio.wait_for(call_handler(tool, args, context), timeout)
    finally:
        _reset_context(token)


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
    status: str,
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
        stop_batch = await run.rt.hooks.run(HookPoint.TOOL_AFTER, ctx) is HookDirective.BREAK
        output, failed = str(ctx.output), bool(ctx.failed)
        if status in ("done", "failed"):
            status = "failed" if failed else "done"
    output = format_tool_result(output, run.rt.config.max_tool_result_chars)
    if executed:
        await run.writer.write([UpdateToolCall(call.id, status, result=output, is_error=failed)])
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
