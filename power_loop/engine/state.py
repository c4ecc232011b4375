"""The state of one run, shared by the engine's steps, and small helpers they all use.

:class:`Run` holds everything that lives as long as one run: the request, the transcript, the
writer, counters and usage, the hook projection, the compaction memo. Nothing about a run
is kept anywhere else (no module-level per-run state). Steps read and update it; only
:mod:`power_loop.engine.finish` ends it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._types import RunKind, RunRowStatus
from ..approvals import ApprovalRequest
from ..cancellation import StopEventLike, StopSignal
from ..config import AgentLoopConfig
from ..errors import HookError
from ..guards import BudgetHit
from ..hooks import HookPoint, MessageAppendCtx
from ..messages import (
    AssistantMessage,
    Message,
    ToolResultMessage,
    Usage,
    UserMessage,
    message_from_dict,
    message_from_json,
    message_json,
    message_to_dict,
)
from ..providers.base import LLMResponse, LLMService
from ..results import RunStatus, StatefulResult
from ..store.rows import BeginOutcome, FinishRun, PendingCall, RunTotals, SessionRow
from ..structured import ResponseFormat, resolve_response_format
from ..tools.definition import ToolDefinition
from ..tools.registry import ToolRegistry
from .emit import Emitter, report_after_commit
from .history import Transcript
from .prepare import resolve_system_prompt, system_text
from .runtime import Runtime
from .writer import RunWriter

__all__ = ["ChildLink", "Run", "RunRequest", "as_response", "dicts", "on_append"]


@dataclass(frozen=True)
class ChildLink:
    """What a sub-agent's run takes from the run that spawned it.

    Attributes:
        parent: The spawning run: the child's usage is added to it (and its ancestors) as
            it is spent, and the root run's ``max_tokens_per_run`` bounds the child's calls.
            None for a child started outside a run (``run_agent_spec`` from host code).
        config: The child's config: the loop's, with the spec's limits.
        llm: The model service of the child (the loop's, or one named by the spec).
        spawn_tool_call_id: The tool call that spawned the child, when the spawner knows it.
    """

    parent: Run | None
    config: AgentLoopConfig
    llm: LLMService
    spawn_tool_call_id: str = ""


@dataclass
class RunRequest:
    """What the facade asks for.

    Attributes:
        session_id: The session.
        kind: ``send``, ``resume``, ``submit_input`` or ``wake``.
        message: The new user message (None for resume / submit_input / wake).
        stop_event: Cooperative cancellation source.
        tools: Per-call tool names or registry.
        system_prompt: Per-call system prompt.
        heal_pending: Abort unanswered calls before sending.
        wait_foreign: Wait while another process's run holds the session (``wake`` does not:
            that run drains the inbox itself).
        response_format: The structured output this call asks for (None: the config's).
        lift_pause: A ``resume`` lifts a pause of the session (False: a continuation the
            kernel starts on its own, which a pause stops like any other run).
    """

    session_id: str
    kind: RunKind = "send"
    message: UserMessage | None = None
    stop_event: StopEventLike | None = None
    tools: Sequence[str] | ToolRegistry | None = None
    system_prompt: str | None = None
    heal_pending: bool = False
    wait_foreign: bool = True
    child: ChildLink | None = None
    response_format: ResponseFormat | None = None
    lift_pause: bool = True


Executor = Callable[["Runtime", RunRequest], Awaitable[StatefulResult]]
"""Runs a request to its end (:func:`power_loop.engine.run.execute_run`); a run holds it to
start its sub-agents' runs without importing the module that drives runs."""


class Run:
    """The state of one run, shared by the engine steps."""

    def __init__(
        self,
        rt: Runtime,
        req: RunRequest,
        *,
        run_id: str,
        begin: BeginOutcome,
        session: SessionRow,
        transcript: Transcript,
        writer: RunWriter,
        emitter: Emitter,
        tools: ToolRegistry | None,
        execute: Executor | None = None,
    ) -> None:
        self.rt = rt
        self.req = req
        link = req.child
        self.parent = link.parent if link is not None else None
        self.config = link.config if link is not None else rt.config
        self.llm = link.llm if link is not None else rt.llm
        self.execute = execute
        # Sub-agents spawned by this run's tool calls (created on first use), bounded by
        # config.max_concurrent_subagents across the whole round.
        self.child_slots: asyncio.Semaphore | None = None
        self.run_id = run_id
        self.begin = begin
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
            call_prompt=req.system_prompt, session_prompt=session.system_prompt, config=self.config
        )
        self.memory_text: str | None = None
        # The skills section (AgentLoopConfig.skills_dir), read at the run's start, and this
        # round's runtime projection (the todo list, background updates).
        self.skills_text: str | None = None
        self.runtime_text: str | None = None
        # The session keeps runtime state: the runtime projectors read it every round.
        self.runtime_used = begin.runtime
        # The context this round's projectors were given, until the answer is committed.
        self.projection_context: dict[str, Any] | None = None
        # Structured output: the per-call format wins; the config's applies to main sessions.
        fmt = req.response_format
        if fmt is None and session.depth == 0 and self.config.response_format is not None:
            fmt = resolve_response_format(self.config.response_format)
        self.response_format: ResponseFormat | None = fmt
        self.output: Any = None
        self.output_corrections = 0
        self.started_at = int(time.time() * 1000)
        self.round_index = 0
        self.rounds = 0
        self.llm_calls = 0
        self.tool_calls = 0
        self.usage = Usage()
        # Budgets (engine/budgets.py): what this run and its sub-agents spent in dollars, what
        # calls in flight hold, tool calls started, and the wall-clock its earlier parts took.
        self.cost_usd = 0.0
        self.reserved_tokens = 0
        self.reserved_cost = 0.0
        self.tool_calls_started = 0
        self.last_prompt_tokens = 0
        self.started_monotonic = time.monotonic()
        self.wall_carried_s = begin.wall_carried_ms / 1000
        self.budget_hit: BudgetHit | None = None
        # The sub-agent tree's root session and its metadata, for shared budgets (read once).
        self.budget_root: tuple[str, Mapping[str, Any]] | None = None
        # No-progress detection (engine/progress.py), made on the run's first tool round.
        self.progress: Any = None
        self.post_commit_errors: list[str] = []
        # What the model sees when hooks replaced the history for this run: prefix + the
        # transcript from `prefix_from` on.
        self.prefix: list[Message] | None = None
        self.prefix_from = 0
        # After a compaction that did not happen: the smallest fold worth a new attempt
        # (compaction.NEVER after a failure: no new attempt, and no new cost, every round).
        self.next_fold = 0
        # How far the end of the run got, so the failure paths do not repeat a step.
        self.end_hook_started = False
        self.ended_published = False

    @property
    def system_prompt(self) -> str:
        """The system text sent with every model call of the run."""
        return system_text(
            self.base_prompt, self.offered, self.config, self.memory_text, self.skills_text, self.runtime_text
        )

    def mark_runtime(self) -> None:
        """A tool of the run wrote runtime state: project it from the next round on."""
        self.runtime_used = True

    @property
    def depth(self) -> int:
        """How deep the run's session is in a sub-agent tree (0 for a main session)."""
        return self.session.depth

    @property
    def scope(self) -> str:
        """``subagent`` for a sub-agent's run, else ``main`` (hook contexts and events carry it)."""
        return "subagent" if self.session.depth > 0 else "main"

    def add_usage(self, usage: Usage) -> None:
        """Count ``usage`` in this run and in every run above it (a sub-agent's tokens are
        its parent's too)."""
        run: Run | None = self
        while run is not None:
            run.usage = run.usage + usage
            run = run.parent

    def tokens_left(self) -> int | None:
        """The fewest tokens any ``max_tokens_per_run`` from this run up to the root has left,
        calls in flight counted (None: no token budget). A sub-agent's usage is counted in
        every run above it."""
        left: int | None = None
        run: Run | None = self
        while run is not None:
            budget = run.config.max_tokens_per_run
            if budget is not None:
                mine = budget - run.usage.total_tokens - run.reserved_tokens
                left = mine if left is None else min(left, mine)
            run = run.parent
        return left

    def view(self) -> list[Message]:
        """The messages the model sees (hook projections applied)."""
        if self.prefix is None:
            return self.transcript.messages
        return self.prefix + self.transcript.messages[self.prefix_from :]

    def finish_op(
        self,
        status: RunRowStatus,
        *,
        drain_inbox: bool = False,
        error: str | None = None,
        final_text: str | None = None,
        deliver: bool = True,
    ) -> FinishRun:
        """The operation ending this run. ``final_text`` is the answer a background
        sub-agent's parent receives (in the same transaction); ``deliver=False`` for an end
        that is no answer."""
        return FinishRun(
            self.run_id,
            status,
            self.totals(),
            error=error,
            drain_inbox=drain_inbox,
            started_at=self.started_at,
            final_text=final_text,
            # Only a sub-agent's session can have a parent waiting for its answer.
            deliver=deliver and self.session.depth > 0,
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
        status: RunStatus,
        final_text: str,
        *,
        pending: Sequence[PendingCall] = (),
        interactions: Sequence[dict[str, Any]] = (),
        approvals: Sequence[ApprovalRequest] = (),
    ) -> StatefulResult:
        """The :class:`StatefulResult` of the run."""
        return StatefulResult(
            session_id=self.session_id,
            status=status,
            final_text=final_text,
            rounds=self.rounds,
            pending_tool_calls=[c.to_dict() for c in pending],
            pending_interactions=list(interactions),
            usage=self.usage_dict(),
            tool_calls=self.tool_calls,
            run_id=self.run_id,
            post_commit_errors=list(self.post_commit_errors),
            output=self.output if status == "completed" else None,
            budget=self.budget_hit if status == "budget_exceeded" else None,
            approvals=list(approvals),
        )

    def usage_dict(self) -> dict[str, Any]:
        """The result's ``usage``: the token counts, and ``cost_usd`` when the loop has pricing."""
        usage: dict[str, Any] = dict(self.usage.to_dict())
        if self.config.pricing:
            usage["cost_usd"] = round(self.cost_usd, 9)
        return usage

    async def after_commit(self, step: Awaitable[Any], where: str) -> None:
        """Run a step that follows the committed end of the run. Its failure is reported (log,
        ``system_log`` event, ``StatefulResult.post_commit_errors``), not raised: an error from
        ``send`` would tell the caller nothing happened, and a retry would store the message twice."""
        try:
            await step
        except Exception as exc:
            await report_after_commit(self.emitter, self.post_commit_errors, self.run_id, where, exc)


def dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """The 0.11 dict view of ``messages`` (what hook contexts carry)."""
    return [message_to_dict(m) for m in messages]


def as_response(output: Any) -> LLMResponse:
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


async def on_append(rt: Runtime, session_id: str, round_index: int, message: Message) -> Any:
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
