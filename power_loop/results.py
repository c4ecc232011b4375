"""Results of runs: ``StatefulResult``, its statuses, and ``FollowUpQueued``.

:data:`RunStatus` is the one list of the statuses a run can end with; :data:`RUN_STATUSES`
is derived from it, so adding a status is one edit and mypy finds every place to update.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .approvals import ApprovalRequest
from .guards import BudgetHit

__all__ = [
    "RUN_STATUSES",
    "AgentLoopResult",
    "FollowUpQueued",
    "RunStatus",
    "StatefulResult",
    "SubagentReceipt",
    "SubagentResult",
]

RunStatus = Literal[
    "completed",
    "pending_tools",
    "waiting_for_input",
    "cancelled",
    "hit_round_limit",
    "budget_exceeded",
    "degraded",
    "paused",
    "no_progress",
    "awaiting_approval",
    "approval_expired",
]
"""How a run ended (``StatefulResult.status``)."""
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
"""Every :data:`RunStatus`, in declaration order."""


@dataclass
class StatefulResult:
    """What one ``send`` (or ``resume`` / ``submit_input``) produced.

    Attributes:
        session_id: The session.
        status: How the run ended. ``completed``: the model answered. ``pending_tools``: kept
            for 0.11 compatibility; this version never ends a run with it (exits answer their
            open calls, a cancelled task raises). ``waiting_for_input``: a tool asked the user
            (``submit_input``). ``cancelled``: a stop_event fired. ``hit_round_limit``:
            ``max_rounds`` reached (a summary was requested). ``budget_exceeded``:
            ``max_tokens_per_run`` reached. ``degraded``: the model could not be reached (the
            session is usable once it can), or its final answer failed the requested
            ``response_format`` twice (``[degraded: structured output ...]``). ``paused``:
            ``loop.pause`` stopped it at a round boundary (``loop.resume`` continues it).
            ``no_progress``: it kept repeating a tool call or sending invalid arguments
            (``AgentLoopConfig.no_progress``).
            ``response_format`` twice (``[degraded: structured output ...]``).
            ``awaiting_approval``: a tool call needs a human's approval (``result.approvals``;
            ``loop.approve``). ``approval_expired``: an approval came after its expiry; the
            call was answered as expired and the run stopped (``resume`` lets the model react).
        final_text: The last answer, or a marker: ``[budget_exceeded]``,
            ``[hit_round_limit]\\n<summary>``, ``[cancelled by user]``, ``[degraded: ...]``,
            ``[approval_expired: <tool>]``.
        rounds: Rounds run (model calls made for rounds, the round-limit summary excluded).
        pending_tool_calls: Unanswered calls as OpenAI ``tool_calls[]`` dicts (``id``,
            ``type``, ``function.name``, ``function.arguments``).
        pending_interactions: Open ``request_user_input`` questions (``interaction_id``,
            ``tool_call_id``, ``tool_name``, ``kind``, ``prompt``, ``options``, ``metadata``).
        usage: Token usage summed over the run (``calls, prompt_tokens, completion_tokens,
            cache_read_tokens, reasoning_tokens, total_tokens``), every key present even when
            the run made no model call (0.11 gave ``{}`` then); with
            ``AgentLoopConfig.pricing``, also ``cost_usd`` (a float, sub-agents included).
        tool_calls: Tool calls this run handled, each counted once: executed ones, and ones
            answered with an error without running (unknown tool, invalid arguments). As in
            0.11, a call a hook skipped (``TOOL_BEFORE``, ``TOOLS_BATCH_BEFORE`` or
            ``ROUND_DECIDE`` ``SKIP``) is not counted, nor is one a stop prevented from
            starting. Parallel calls run concurrently, so a ``TOOL_AFTER`` ``BREAK`` stops
            only calls that had not started (0.11 ran them one by one).
        run_id: Id of the run (its row in the store).
        post_commit_errors: Failures after the run's end was committed (a ``SESSION_END`` or
            ``ROUND_END`` hook, an event subscriber), each as
            ``"<step>: <ErrorType>: <message>"``. They are logged and published as
            ``system_log`` events, never raised: the run happened as reported, so sending
            again would repeat it. Empty when nothing failed.
        output: The parsed final answer of a run asked for structured output
            (``response_format``): the pydantic model instance when a model class was given,
            else the dict. None otherwise, and whenever the run did not end ``completed``.
        budget: For ``budget_exceeded``: which limit stopped the run and by how much
            (:class:`~power_loop.guards.BudgetHit`); None otherwise.
        approvals: The approval requests still undecided when the run ended
            (``awaiting_approval``, or listed alongside another ending); empty otherwise.
    """

    session_id: str
    status: RunStatus
    final_text: str = ""
    rounds: int = 0
    pending_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    pending_interactions: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    tool_calls: int = 0
    run_id: str = ""
    post_commit_errors: list[str] = field(default_factory=list)
    output: Any = None
    budget: BudgetHit | None = None
    approvals: list[ApprovalRequest] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the run completed normally."""
        return self.status == "completed"


@dataclass(frozen=True)
class FollowUpQueued:
    """``follow_up`` found the session busy and stored the message in its inbox.

    Attributes:
        session_id: The session.
        queue_depth: Items waiting in the inbox, this one included.
    """

    session_id: str
    queue_depth: int


@dataclass
class AgentLoopResult:
    """Result of a run without a session (kept for 0.11 compatibility).

    Fields are in 0.11's order, so positional construction works as it did.

    Attributes:
        status: As in :class:`StatefulResult`.
        final_text: The last answer.
        rounds: Rounds run.
        pending_tool_calls: Unanswered calls (OpenAI ``tool_calls[]`` dicts).
        pending_interactions: Open ``request_user_input`` questions.
        messages: The conversation (dict view).
        usage: Summed usage.
        tool_calls: Tool calls handled (counted as in :class:`StatefulResult`).
    """

    status: RunStatus
    final_text: str = ""
    rounds: int = 0
    pending_tool_calls: list[dict[str, Any]] = field(default_factory=list)
    pending_interactions: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    tool_calls: int = 0


@dataclass(frozen=True)
class SubagentResult:
    """What a sub-agent's run produced (``ctx.subagents.run(...)``, ``run_agent_spec``).

    Attributes:
        session_id: The child session.
        status: How the child's run ended (a :data:`RunStatus`).
        final_text: The child's answer (or the marker of its ending).
        rounds: Rounds the child took.
        depth: The child session's depth (1 for a child of a main session).
        usage: The child's token usage (already counted in its parent run's usage).
        reused: True when the child had answered before (a spawn run again by ``resume``
            after a crash) and its stored answer was returned without a new run.
    """

    session_id: str
    status: RunStatus
    final_text: str
    rounds: int
    depth: int
    usage: dict[str, int] = field(default_factory=dict)
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The dict power-loop 0.11's ``run_agent_spec`` returned (session_id, status,
        final_text, rounds, depth)."""
        return {
            "session_id": self.session_id,
            "status": self.status,
            "final_text": self.final_text,
            "rounds": self.rounds,
            "depth": self.depth,
        }


@dataclass(frozen=True)
class SubagentReceipt:
    """A sub-agent started in the background (``ctx.subagents.start(...)``).

    Attributes:
        session_id: The child session.
        name: The child's label.
        started: False when the spawn had started this child already (a spawn run again by
            ``resume``): nothing new was started.
    """

    session_id: str
    name: str
    started: bool = True
