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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .._types import RunKind
from ..errors import SubagentRefused
from ..events import (
    AgentEventType,
    SubagentCompletedPayload,
    SubagentLimitPayload,
    SubagentTaskStartPayload,
    SubagentTextPayload,
)
from ..messages import AssistantMessage, UserMessage
from ..providers.base import LLMService
from ..results import StatefulResult, SubagentResult
from ..subagents import SubagentLifecycle
from .state import ChildLink, Run, RunRequest

__all__ = ["DEFAULT_SUBAGENT_PROMPT", "RunSubagents", "child_session_id"]

DEFAULT_SUBAGENT_PROMPT = (
    "You are a sub-agent working on one task for another agent. Do the task with the tools you "
    "have, then answer with the result only: the other agent reads your answer, not your steps."
)

_LIFECYCLES = frozenset(v.value for v in SubagentLifecycle)


def child_session_id(parent_session_id: str, tool_call_id: str, index: int) -> str:
    """The id of the ``index``-th child spawned by call ``tool_call_id`` of a session: the same
    on every execution of the call, so a spawn run again by ``resume`` finds its child."""
    digest = hashlib.sha256(f"{parent_session_id}\x00{tool_call_id}\x00{index}".encode()).hexdigest()
    return "sess_" + digest[:24]


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
        parent = self.caller
        if not isinstance(task, str) or not task.strip():
            raise SubagentRefused("a sub-agent needs a non-empty task: say what it should do")
        lifecycle = str(getattr(lifecycle, "value", lifecycle))
        if lifecycle not in _LIFECYCLES:
            raise ValueError(f"lifecycle must be one of {sorted(_LIFECYCLES)}, not {lifecycle!r}")
        depth = parent.depth + 1
        limit = parent.config.max_subagent_depth
        if depth > limit:
            raise SubagentRefused(
                f"sub-agent refused: this agent is at depth {parent.depth} and sub-agents may nest at most "
                f"{limit} deep (AgentLoopConfig.max_subagent_depth); do this task yourself with your own tools"
            )
        offered = self._tools(tools)
        llm, config = self._model(model, max_rounds=max_rounds, max_tokens=max_tokens, temperature=temperature)
        index, self.spawned = self.spawned, self.spawned + 1
        sid = child_session_id(parent.session_id, self.tool_call_id, index)
        store = parent.rt.store
        existing = await store.get_session_async(sid)
        kind: RunKind = "send"
        if existing is None:
            await store.create_session(
                sid,
                metadata={**(metadata or {}), "subagent_name": name},
                system_prompt=system_prompt or DEFAULT_SUBAGENT_PROMPT,
                parent_session_id=parent.session_id,
                kind="subagent",
                lifecycle=lifecycle,
                depth=depth,
                spawn_tool_call_id=self.tool_call_id,
            )
        else:
            answered = await _stored_answer(parent, sid)
            if answered is not None:
                return await self._done(sid, lifecycle, answered)
            kind = "resume"
        async with self._slot():
            await parent.emitter.emit(
                AgentEventType.SUBAGENT_TASK_START,
                SubagentTaskStartPayload(task=task, preset=name, sub_session_id=sid, depth=depth),
                round_index=parent.round_index,
            )
            result = await self._execute(
                RunRequest(
                    session_id=sid,
                    kind=kind,
                    message=UserMessage(content=task) if kind == "send" else None,
                    stop_event=parent.req.stop_event,
                    tools=offered,
                    child=ChildLink(parent=parent, config=config, llm=llm),
                )
            )
        usage = {k: int(v) for k, v in result.usage.items() if isinstance(v, int)}
        outcome = SubagentResult(
            session_id=sid,
            status=result.status,
            final_text=result.final_text,
            rounds=result.rounds,
            depth=depth,
            usage=usage,
        )
        return await self._done(sid, lifecycle, outcome)

    # ------------------------------------------------------------------ helpers

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

    def _model(
        self, model: str | None, *, max_rounds: int | None, max_tokens: int | None, temperature: float | None
    ) -> tuple[LLMService, Any]:
        """The child's model service and config: a service registered under ``model``, else
        the parent's service asked for ``model``; the spec's limits over the parent's config."""
        parent = self.caller
        llm = parent.llm
        changes: dict[str, Any] = {}
        if model is not None:
            named = (parent.config.llm_services or {}).get(model)
            if named is not None:
                llm = named
                changes["model"] = None
            else:
                changes["model"] = model
        if max_rounds is not None:
            changes["max_rounds"] = max_rounds
        if max_tokens is not None:
            changes["max_tokens"] = max_tokens
        if temperature is not None:
            changes["temperature"] = temperature
        return llm, replace(parent.config, **changes) if changes else parent.config

    def _slot(self) -> asyncio.Semaphore:
        parent = self.caller
        if parent.child_slots is None:
            parent.child_slots = asyncio.Semaphore(parent.config.max_concurrent_subagents)
        return parent.child_slots

    async def _execute(self, req: RunRequest) -> StatefulResult:
        execute = self.caller.execute
        if execute is None:  # pragma: no cover - every run built by execute_run has it
            raise RuntimeError("this run cannot start sub-agents (it was built without an executor)")
        return await execute(self.caller.rt, req)

    async def _done(self, sid: str, lifecycle: str, outcome: SubagentResult) -> SubagentResult:
        """Publish the child's end on the parent's bus; delete an ephemeral child."""
        parent = self.caller
        emitter = parent.emitter
        at = parent.round_index
        if outcome.status == "hit_round_limit":
            await emitter.emit(
                AgentEventType.SUBAGENT_LIMIT,
                SubagentLimitPayload(sub_session_id=sid, max_rounds=outcome.rounds),
                round_index=at,
            )
        await emitter.emit(
            AgentEventType.SUBAGENT_TEXT,
            SubagentTextPayload(
                sub_session_id=sid,
                text=outcome.final_text,
                status=outcome.status,
                rounds=outcome.rounds,
                final_text=outcome.final_text,
            ),
            round_index=at,
        )
        await emitter.emit(
            AgentEventType.SUBAGENT_COMPLETED,
            SubagentCompletedPayload(
                sub_session_id=sid, status=outcome.status, rounds=outcome.rounds, final_text=outcome.final_text
            ),
            round_index=at,
        )
        if lifecycle == SubagentLifecycle.EPHEMERAL.value:
            parent.rt.histories.drop(sid)
            parent.rt.event_seqs.pop(sid, None)
            await parent.rt.store.delete_session(sid, cascade=True)
        return outcome


async def _stored_answer(parent: Run, sid: str) -> SubagentResult | None:
    """The answer a child gave before (its history ends with a plain assistant message), or
    None when it has not answered yet."""
    row = await parent.rt.store.get_session_async(sid)
    if row is None or row.parent_session_id != parent.session_id:
        raise SubagentRefused(f"session {sid!r} exists and is not a sub-agent of this session")
    stored = await parent.rt.store.load_messages(sid)
    if not stored:
        return None
    last = stored[-1].message
    if not isinstance(last, AssistantMessage) or last.tool_calls:
        return None
    return SubagentResult(
        session_id=sid,
        status="completed",
        final_text=last.content if isinstance(last.content, str) else str(last.content or ""),
        rounds=0,
        depth=row.depth,
        reused=True,
    )
