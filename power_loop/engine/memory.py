"""Memory recall at run start and remembering at run end."""

from __future__ import annotations

import inspect
from typing import Any

from ..events import AgentEventType, MemoryFailedPayload, MemoryRecalledPayload
from ..hooks import HookDirective, HookPoint, MemoryRecalledCtx
from ..memory import format_memory
from ..messages import UserMessage
from .state import Run


def _last_user_text(run: Run) -> str:
    if run.req.message is not None:
        return run.req.message.text
    for message in reversed(run.transcript.messages):
        if isinstance(message, UserMessage):
            return message.text
    return ""


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


async def recall_memory(run: Run) -> None:
    """Recall, let MEMORY_RECALLED steer, and add the result to the run's system prompt."""
    memory = run.config.memory
    if memory is None:
        return
    budget = run.config.memory_budget_tokens
    try:
        items = list(
            await _maybe_await(
                memory.recall(query=_last_user_text(run), session_id=run.session_id, budget_tokens=budget)
            )
            or []
        )
    except Exception as exc:
        await run.emitter.emit(
            AgentEventType.MEMORY_FAILED,
            MemoryFailedPayload(phase="recall", error_type=type(exc).__name__, error_message=str(exc)),
        )
        return
    returned = len(items)
    if run.rt.hooks.has(HookPoint.MEMORY_RECALLED):
        ctx = MemoryRecalledCtx(recalled=list(items), budget_tokens=budget, session_id=run.session_id)
        if await run.rt.hooks.run(HookPoint.MEMORY_RECALLED, ctx) is HookDirective.SKIP:
            items = []
        else:
            items = list(ctx.recalled)
    run.memory_text, injected = format_memory(items, budget)
    await run.emitter.emit(
        AgentEventType.MEMORY_RECALLED,
        MemoryRecalledPayload(returned=returned, injected=injected, budget_tokens=budget),
    )


async def remember_run(run: Run, final_text: str) -> None:
    """Hand the finished exchange to the memory provider."""
    memory = run.config.memory
    if memory is None or run.req.message is None or not hasattr(memory, "remember"):
        return
    try:
        await _maybe_await(
            memory.remember(session_id=run.session_id, user_input=run.req.message.text, response=final_text)
        )
    except Exception as exc:
        await run.emitter.emit(
            AgentEventType.MEMORY_FAILED,
            MemoryFailedPayload(phase="remember", error_type=type(exc).__name__, error_message=str(exc)),
        )
