"""Memory recall at run start and remembering at run end.

A provider's shape is read from its parameter names (``messages`` / ``snapshot``: 0.11's
:class:`~power_loop.memory.MemoryProvider`; otherwise the query shape), once per provider
method, so a provider may mix sync and async methods of either shape.
"""

from __future__ import annotations

import inspect
from typing import Any

from ..events import AgentEventType, MemoryFailedPayload, MemoryRecalledPayload
from ..hooks import HookDirective, HookPoint, MemoryRecalledCtx
from ..memory import MemorySnapshot, format_memory, tag_as_memory
from ..messages import UserMessage
from .state import Run, dicts


def _last_user_text(run: Run) -> str:
    if run.req.message is not None:
        return run.req.message.text
    for message in reversed(run.transcript.messages):
        if isinstance(message, UserMessage):
            return message.text
    return ""


async def _maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _takes(method: Any, name: str) -> bool:
    """Whether ``method`` declares a parameter called ``name`` (False when unknowable)."""
    try:
        return name in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _messages(run: Run) -> list[dict[str, Any]]:
    return dicts(run.transcript.messages)


async def _recall(run: Run, memory: Any, budget: int) -> list[Any]:
    if _takes(memory.recall, "messages"):
        found = await _maybe_await(
            memory.recall(messages=_messages(run), session_id=run.session_id, budget_tokens=budget)
        )
        return tag_as_memory(list(found or []))
    found = await _maybe_await(
        memory.recall(query=_last_user_text(run), session_id=run.session_id, budget_tokens=budget)
    )
    return list(found or [])


async def recall_memory(run: Run) -> None:
    """Recall, let MEMORY_RECALLED steer, and add the result to the run's system prompt."""
    memory = run.config.memory
    if memory is None:
        return
    budget = run.config.memory_budget_tokens
    try:
        items = await _recall(run, memory, budget)
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


async def remember_run(run: Run, final_text: str, status: str = "") -> None:
    """Hand the finished run to the memory provider (a snapshot, or the exchange)."""
    memory = run.config.memory
    if memory is None or not hasattr(memory, "remember"):
        return
    try:
        if _takes(memory.remember, "snapshot"):
            snapshot = MemorySnapshot(
                session_id=run.session_id,
                messages=_messages(run),
                final_text=final_text,
                rounds=run.rounds,
                status=status,
                metadata=dict(run.session.metadata or {}),
            )
            await _maybe_await(memory.remember(snapshot=snapshot, session_id=run.session_id))
        elif run.req.message is not None:
            await _maybe_await(
                memory.remember(session_id=run.session_id, user_input=run.req.message.text, response=final_text)
            )
    except Exception as exc:
        await run.emitter.emit(
            AgentEventType.MEMORY_FAILED,
            MemoryFailedPayload(phase="remember", error_type=type(exc).__name__, error_message=str(exc)),
        )
