"""Sub-agents: a tool call of a run hands a task to a child session and gets its answer.

:class:`RunSubagents` is the ``ctx.subagents`` capability of one tool call. A child run is an
ordinary run of the same loop (same store, hooks, event bus, retry policy) on its own session,
linked to the calling run by a :class:`~.state.ChildLink`:

* its usage is added to the calling run (and every run above it) as it is spent, so the
  parent's result, session stats and ``max_tokens_per_run`` count it; before each of its
  model calls the completion cap is clamped to what the root run's budget has left, and a
  call whose prompt alone would not fit ends the child ``budget_exceeded`` instead;
* it watches the calling run's stop signal, and it runs inside the calling tool call's task,
  so cancelling the parent cancels it (and records it cancelled);
* it is offered only tools the calling round was offered, narrowed by the spec, never more;
* children of one run share ``max_concurrent_subagents`` slots, so the children a model
  spawns in one round run concurrently, a bounded number at a time.

Invariants:

* The child session id is derived from the parent session, the spawning call and the order
  of the spawn within the call. A spawn run again by ``resume`` after a crash finds the child
  it started: an answered child's stored answer is returned without a new run; an unanswered
  one is resumed from where it stopped, never started twice.
* The depth limit is checked before anything is stored; a refusal is a
  :class:`~power_loop.errors.SubagentRefused` whose message the model can act on.
* An ``ephemeral`` child is deleted once its answer is read; ``linked`` children go with their
  parent; ``detached`` ones are kept.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from .._types import RunKind, SubagentLifecycle
from ..config import AgentLoopConfig
from ..errors import SessionBusyError, SessionNotFoundError, SessionPendingError, SubagentRefused
from ..events import (
    AgentEventType,
    BaseEventPayload,
    SubagentCompletedPayload,
    SubagentLimitPayload,
    SubagentTaskStartPayload,
    SubagentTextPayload,
)
from ..messages import AssistantMessage, UserMessage
from ..providers.base import LLMService
from ..results import SubagentReceipt, SubagentResult
from ..store.rows import BackgroundChild, SessionRow
from ..tools.registry import ToolRegistry
from .prepare import select_tools
from .runtime import Runtime
from .state import ChildLink, Executor, Run, RunRequest

__all__ = [
    "DEFAULT_SUBAGENT_PROMPT",
    "SETTINGS_KEY",
    "ChildTask",
    "RunSubagents",
    "background_task_name",
    "child_session_id",
    "run_in_background",
    "run_subagent",
    "settings_metadata",
    "stored_child",
]

DEFAULT_SUBAGENT_PROMPT = (
    "You are a sub-agent working on one task for another agent. Do the task with the tools you "
    "have, then answer with the result only: the other agent reads your answer, not your steps."
)

_LIFECYCLES = frozenset(v.value for v in SubagentLifecycle)

SETTINGS_KEY = "subagent"
"""Metadata key of a child session holding what it was started with (name, tools, model,
limits), so a run of the child that no parent starts (a background child, or one resumed
after a crash) keeps them: its tools are never widened."""

log = logging.getLogger("power_loop.engine")


def child_session_id(parent_session_id: str, tool_call_id: str, index: int) -> str:
    """The id of the ``index``-th child spawned by call ``tool_call_id`` of a session: the same
    on every execution of the call, so a spawn run again by ``resume`` finds its child."""
    digest = hashlib.sha256(f"{parent_session_id}\x00{tool_call_id}\x00{index}".encode()).hexdigest()
    return "sess_" + digest[:24]


@dataclass(frozen=True)
class ChildTask:
    """What a sub-agent is asked to do, and with what (the spec's fields)."""

    task: str
    system_prompt: str | None = None
    name: str = "subagent"
    tools: Sequence[str] | None = None
    max_rounds: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    model: str | None = None
    lifecycle: str = "ephemeral"
    metadata: Mapping[str, object] | None = None

    def checked(self) -> ChildTask:
        """The task with its lifecycle normalized.

        Raises:
            SubagentRefused: An empty task.
            ValueError: An unknown lifecycle.
        """
        if not isinstance(self.task, str) or not self.task.strip():
            raise SubagentRefused("a sub-agent needs a non-empty task: say what it should do")
        lifecycle = str(getattr(self.lifecycle, "value", self.lifecycle))
        if lifecycle not in _LIFECYCLES:
            raise ValueError(f"lifecycle must be one of {sorted(_LIFECYCLES)}, not {lifecycle!r}")
        return replace(self, lifecycle=lifecycle)


@dataclass
class _Spawn:
    """One child about to run: where it hangs, what it may use, how its end is published."""

    rt: Runtime
    execute: Executor
    parent: Run | None
    parent_session_id: str | None
    tool_call_id: str | None
    depth: int
    tools: Sequence[str] | ToolRegistry | None
    llm: LLMService
    config: AgentLoopConfig
    publish: Callable[[AgentEventType, BaseEventPayload], Awaitable[None]]


def settings_metadata(child: ChildTask, tools: Sequence[str] | ToolRegistry | None) -> dict[str, Any]:
    """The child session's metadata: the spec's, plus what the child was started with."""
    names = tools.names() if isinstance(tools, ToolRegistry) else (list(tools) if tools is not None else None)
    settings = {
        "name": child.name,
        "tools": names,
        "model": child.model,
        "max_rounds": child.max_rounds,
        "max_tokens": child.max_tokens,
        "temperature": child.temperature,
    }
    return {**(child.metadata or {}), SETTINGS_KEY: settings}


def stored_child(rt: Runtime, session: SessionRow) -> tuple[ChildLink, list[str] | None] | None:
    """A sub-agent session's stored settings as the link of a run no parent started, with the
    tool names it may use; None for any other session."""
    if session.kind != "subagent":
        return None
    settings = session.metadata.get(SETTINGS_KEY)
    if not isinstance(settings, Mapping):
        return None
    child = ChildTask(
        "-",
        name=str(settings.get("name") or "subagent"),
        model=settings.get("model"),
        max_rounds=settings.get("max_rounds"),
        max_tokens=settings.get("max_tokens"),
        temperature=settings.get("temperature"),
    )
    llm, config = _model(rt.llm, rt.config, child)
    tools = settings.get("tools")
    allowed = [str(t) for t in tools] if isinstance(tools, list) else None
    return ChildLink(parent=None, config=config, llm=llm), allowed


async def _run_child(spawn: _Spawn, child: ChildTask, sid: str) -> SubagentResult:
    """Create (or find) the child session ``sid``, run it, publish its end, apply its lifecycle."""
    rt = spawn.rt
    existing = await rt.store.get_session_async(sid)
    kind: RunKind = "send"
    if existing is None:
        await rt.store.create_session(
            sid,
            metadata=settings_metadata(child, spawn.tools),
            system_prompt=child.system_prompt or DEFAULT_SUBAGENT_PROMPT,
            parent_session_id=spawn.parent_session_id,
            kind="subagent",
            lifecycle=child.lifecycle,
            depth=spawn.depth,
            spawn_tool_call_id=spawn.tool_call_id,
        )
    else:
        if existing.parent_session_id != spawn.parent_session_id or existing.kind != "subagent":
            raise SubagentRefused(f"session {sid!r} exists and is not a sub-agent of this session")
        answered = await _stored_answer(rt, sid, spawn.depth)
        if answered is not None:
            return await _done(spawn, child, answered)
        kind = "resume"  # started before a crash: go on from where it stopped
    await spawn.publish(
        AgentEventType.SUBAGENT_TASK_START,
        SubagentTaskStartPayload(task=child.task, preset=child.name, sub_session_id=sid, depth=spawn.depth),
    )
    result = await spawn.execute(
        rt,
        RunRequest(
            session_id=sid,
            kind=kind,
            message=UserMessage(content=child.task) if kind == "send" else None,
            stop_event=spawn.parent.req.stop_event if spawn.parent is not None else None,
            tools=spawn.tools,
            child=ChildLink(
                parent=spawn.parent, config=spawn.config, llm=spawn.llm, spawn_tool_call_id=spawn.tool_call_id or ""
            ),
            lift_pause=False,  # a child paused by hand stays paused
        ),
    )
    outcome = SubagentResult(
        session_id=sid,
        status=result.status,
        final_text=result.final_text,
        rounds=result.rounds,
        depth=spawn.depth,
        usage={k: int(v) for k, v in result.usage.items() if isinstance(v, int)},
    )
    return await _done(spawn, child, outcome)


async def _done(spawn: _Spawn, child: ChildTask, outcome: SubagentResult) -> SubagentResult:
    """Publish the child's end; delete an ephemeral child."""
    sid = outcome.session_id
    if outcome.status == "hit_round_limit":
        await spawn.publish(
            AgentEventType.SUBAGENT_LIMIT, SubagentLimitPayload(sub_session_id=sid, max_rounds=spawn.config.max_rounds)
        )
    await spawn.publish(
        AgentEventType.SUBAGENT_TEXT,
        SubagentTextPayload(
            sub_session_id=sid,
            text=outcome.final_text,
            status=outcome.status,
            rounds=outcome.rounds,
            final_text=outcome.final_text,
        ),
    )
    await spawn.publish(
        AgentEventType.SUBAGENT_COMPLETED,
        SubagentCompletedPayload(
            sub_session_id=sid, status=outcome.status, rounds=outcome.rounds, final_text=outcome.final_text
        ),
    )
    if child.lifecycle == SubagentLifecycle.EPHEMERAL.value:
        spawn.rt.histories.drop(sid)
        spawn.rt.event_seqs.pop(sid, None)
        await spawn.rt.store.delete_session(sid, cascade=True)
    return outcome


async def _stored_answer(rt: Runtime, sid: str, depth: int) -> SubagentResult | None:
    """The answer a child gave before (its history ends with a plain assistant message), or
    None when it has not answered yet."""
    stored = await rt.store.load_messages(sid)
    if not stored:
        return None
    last = stored[-1].message
    if not isinstance(last, AssistantMessage) or last.tool_calls:
        return None
    return SubagentResult(session_id=sid, status="completed", final_text=last.text, rounds=0, depth=depth, reused=True)


def _refuse_depth(depth: int, limit: int) -> None:
    if depth > limit:
        raise SubagentRefused(
            f"sub-agent refused: this agent is at depth {depth - 1} and sub-agents may nest at most "
            f"{limit} deep (AgentLoopConfig.max_subagent_depth); do this task yourself with your own tools"
        )


def _model(llm: LLMService, config: AgentLoopConfig, child: ChildTask) -> tuple[LLMService, AgentLoopConfig]:
    """The child's model service and config: a service registered under ``child.model``, else
    ``llm`` asked for that model; the spec's limits over ``config``."""
    changes: dict[str, Any] = {}
    if child.model is not None:
        named = (config.llm_services or {}).get(child.model)
        if named is not None:
            llm = named
            changes["model"] = None
        else:
            changes["model"] = child.model
    if child.max_rounds is not None:
        changes["max_rounds"] = child.max_rounds
    if child.max_tokens is not None:
        changes["max_tokens"] = child.max_tokens
    if child.temperature is not None:
        changes["temperature"] = child.temperature
    return llm, replace(config, **changes) if changes else config


class _Plan(NamedTuple):
    """What a checked spawn runs with."""

    session_id: str
    depth: int
    tools: list[str]
    llm: LLMService
    config: AgentLoopConfig
    execute: Executor


@dataclass
class RunSubagents:
    """``ctx.subagents`` for one tool call of the run ``caller`` (see
    :class:`~power_loop.tools.context.SubagentSpawner`)."""

    caller: Run
    tool_call_id: str
    spawned: int = 0

    async def run(
        self,
        task: str,
        *,
        system_prompt: str | None = None,
        name: str = "subagent",
        tools: Sequence[str] | None = None,
        max_rounds: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model: str | None = None,
        lifecycle: str = "ephemeral",
        metadata: Mapping[str, object] | None = None,
    ) -> SubagentResult:
        """See :meth:`power_loop.tools.context.SubagentSpawner.run`."""
        child = ChildTask(
            task, system_prompt, name, tools, max_rounds, max_tokens, temperature, model, lifecycle, metadata
        ).checked()
        parent = self.caller
        plan = self._plan(child, background=False)

        async def publish(event_type: AgentEventType, payload: BaseEventPayload) -> None:
            await parent.emitter.emit(event_type, payload, round_index=parent.round_index)

        spawn = _Spawn(
            parent.rt,
            plan.execute,
            parent,
            parent.session_id,
            self.tool_call_id,
            plan.depth,
            plan.tools,
            plan.llm,
            plan.config,
            publish,
        )
        async with self._slot():
            return await _run_child(spawn, child, plan.session_id)

    async def start(
        self,
        task: str,
        *,
        system_prompt: str | None = None,
        name: str = "subagent",
        tools: Sequence[str] | None = None,
        max_rounds: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model: str | None = None,
        lifecycle: str = "linked",
        metadata: Mapping[str, object] | None = None,
    ) -> SubagentReceipt:
        """See :meth:`power_loop.tools.context.SubagentSpawner.start`."""
        child = ChildTask(
            task, system_prompt, name, tools, max_rounds, max_tokens, temperature, model, lifecycle, metadata
        ).checked()
        parent = self.caller
        plan = self._plan(child, background=True)
        sid, depth, offered = plan.session_id, plan.depth, plan.tools
        created = await parent.rt.store.start_background_child(
            sid,
            parent_session_id=parent.session_id,
            task=child.task,
            metadata=settings_metadata(child, offered),
            system_prompt=child.system_prompt or DEFAULT_SUBAGENT_PROMPT,
            lifecycle=child.lifecycle,
            depth=depth,
            spawn_tool_call_id=self.tool_call_id,
        )
        if created:
            await parent.emitter.emit(
                AgentEventType.SUBAGENT_TASK_START,
                SubagentTaskStartPayload(task=child.task, preset=child.name, sub_session_id=sid, depth=depth),
                round_index=parent.round_index,
            )
            request = RunRequest(
                session_id=sid,
                kind="wake",  # the run takes the task from the child's inbox
                wait_foreign=False,
                tools=offered,
                child=ChildLink(
                    parent=None, config=plan.config, llm=plan.llm, spawn_tool_call_id=self.tool_call_id or ""
                ),
            )
            parent.rt.spawn_task(run_in_background(parent.rt, plan.execute, request), name=background_task_name(sid))
        return SubagentReceipt(session_id=sid, name=child.name, started=created)

    async def background(self) -> list[BackgroundChild]:
        """See :meth:`power_loop.tools.context.SubagentSpawner.background`."""
        return await self.caller.rt.store.list_background_children(self.caller.session_id)

    async def stop(self, session_id: str) -> bool:
        """See :meth:`power_loop.tools.context.SubagentSpawner.stop`."""
        stopped = await self.caller.rt.store.stop_background_child(self.caller.session_id, session_id)
        if stopped:
            self.caller.rt.cancel_task(background_task_name(session_id))
        return stopped

    def _plan(self, child: ChildTask, *, background: bool) -> _Plan:
        """Check a spawn (depth, tools, budget) and settle what the child runs with; the
        child's id is allocated last, so a refused spawn takes none."""
        parent = self.caller
        depth = parent.depth + 1
        _refuse_depth(depth, parent.config.max_subagent_depth)
        offered = self._tools(child.tools)
        llm, config = _model(parent.llm, parent.config, child)
        if background:  # it outlives this run: it gets at most what the budget has left now
            left = parent.tokens_left()
            if left is not None:
                if left <= 0:
                    raise SubagentRefused(
                        "sub-agent refused: this run's token budget is spent; answer with what you have"
                    )
                config = replace(config, max_tokens_per_run=left)
        execute = parent.execute
        if execute is None:  # pragma: no cover - every run built by execute_run has it
            raise RuntimeError("this run cannot start sub-agents (it was built without an executor)")
        index, self.spawned = self.spawned, self.spawned + 1
        sid = child_session_id(parent.session_id, self.tool_call_id, index)
        return _Plan(sid, depth, offered, llm, config, execute)

    def _tools(self, names: Sequence[str] | None) -> list[str]:
        """The names the child is offered: the calling round's, narrowed to ``names``."""
        parent = self.caller
        allowed = [d.name for d in parent.offered if d.name in parent.round_offered]
        if names is None:
            return allowed
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise SubagentRefused("a sub-agent's tools must be a list of tool names")
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise SubagentRefused(
                f"sub-agent refused: it cannot use {', '.join(sorted(set(unknown)))}: a sub-agent gets only tools you "
                f"have yourself ({', '.join(allowed) or 'none'}); spawn it again with those"
            )
        return [n for n in allowed if n in set(names)]

    def _slot(self) -> asyncio.Semaphore:
        parent = self.caller
        if parent.child_slots is None:
            parent.child_slots = asyncio.Semaphore(parent.config.max_concurrent_subagents)
        return parent.child_slots


async def run_subagent(
    rt: Runtime,
    execute: Executor,
    child: ChildTask,
    *,
    parent_session_id: str | None,
    spawn_tool_call_id: str | None,
    publish: Callable[[str, AgentEventType, BaseEventPayload], Awaitable[None]],
) -> SubagentResult:
    """Run a sub-agent from host code (no calling run): a child of ``parent_session_id`` (or of
    no session), with the loop's tools narrowed to ``child.tools``, model and limits.

    With both ``parent_session_id`` and ``spawn_tool_call_id`` the child's id is derived from
    them, so calling again after a crash finds the child instead of starting a second one.

    Raises:
        SessionNotFoundError: ``parent_session_id`` does not exist.
        SubagentRefused: The depth limit is reached.
        ValueError: ``child.tools`` names an unregistered tool.
    """
    child = child.checked()
    depth = 1
    if parent_session_id is not None:
        row = await rt.store.get_session_async(parent_session_id)
        if row is None:
            raise SessionNotFoundError(parent_session_id)
        depth = row.depth + 1
    _refuse_depth(depth, rt.config.max_subagent_depth)
    tools = select_tools(rt.registry, child.tools)
    llm, config = _model(rt.llm, rt.config, child)
    if parent_session_id is not None and spawn_tool_call_id is not None:
        sid = child_session_id(parent_session_id, spawn_tool_call_id, 0)
    else:
        sid = "sess_" + secrets.token_hex(12)
    where = parent_session_id or sid

    async def on_parent(event_type: AgentEventType, payload: BaseEventPayload) -> None:
        await publish(where, event_type, payload)

    spawn = _Spawn(rt, execute, None, parent_session_id, spawn_tool_call_id, depth, tools, llm, config, on_parent)
    return await _run_child(spawn, child, sid)


def background_task_name(child_session_id: str) -> str:
    """The name of the task running a background child in this process."""
    return f"power_loop-subagent-{child_session_id}"


async def run_in_background(rt: Runtime, execute: Executor, request: RunRequest) -> None:
    """Run a background child to its end. Its end delivers its answer to its parent (in the
    ending transaction) and wakes the parent; a child another process runs, or one cut short
    by the loop closing, is left to that process or resumed later."""
    try:
        await execute(rt, request)
    except (SessionBusyError, SessionPendingError, SessionNotFoundError):
        pass  # another process runs it, it awaits resume, or it was deleted
    except Exception:
        log.exception("background sub-agent %s failed", request.session_id)
