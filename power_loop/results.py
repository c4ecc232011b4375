"""Results of runs: ``StatefulResult``, its statuses, and ``FollowUpQueued``.

:data:`RunStatus` is the one list of the statuses a run can end with; :data:`RUN_STATUSES`
is derived from it, so adding a status is one edit and mypy finds every place to update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, NoReturn, get_args

from .approvals import ApprovalRequest
from .guards import BudgetHit

__all__ = [
    "RECOMMENDED_ACTIONS",
    "RUN_STATUSES",
    "STATUS_GUIDE",
    "AgentLoopResult",
    "FollowUpQueued",
    "RecommendedAction",
    "RunStatus",
    "StatefulResult",
    "StatusGuide",
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
    "awaiting_approval",
    "approval_expired",
    "no_progress",
]
"""How a run ended (``StatefulResult.status``); :data:`STATUS_GUIDE` says what each means and
what to do next."""
RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)
"""Every :data:`RunStatus`, in declaration order."""


# --------------------------------------------------------------------------- what to do next

RecommendedAction = Literal["none", "resume", "submit_input", "approve", "raise_budget", "heal", "retry", "send"]
"""What to do after a run (``StatefulResult.recommended_action``).

``none``: nothing, the work is done. ``resume``: ``await loop.resume(sid)`` continues the run
where it stopped. ``submit_input``: answer the open question (``loop.submit_input``).
``approve``: decide the pending approvals. ``raise_budget``: give the run more budget, then
``resume``. ``heal``: the session has unanswered calls no run will finish (a process died):
``send(..., heal_pending=True)`` answers them aborted, ``resume`` runs them again.
``retry``: once the cause is fixed (the model is reachable), ``resume`` runs the model again
on the stored conversation. ``send``: the run is over; the next message continues the
conversation.
"""
RECOMMENDED_ACTIONS: tuple[RecommendedAction, ...] = get_args(RecommendedAction)
"""Every :data:`RecommendedAction`, in declaration order."""


@dataclass(frozen=True)
class StatusGuide:
    """What a :data:`RunStatus` means and what to do next.

    Attributes:
        resumable: True when the work can go on without a new user message (``resume``,
            ``submit_input``, an approval, a larger budget, a retry); exactly when
            ``recommended_action`` is neither ``none`` nor ``send``.
        recommended_action: The next step (a :data:`RecommendedAction`).
        meaning: One sentence: what happened.
    """

    resumable: bool
    recommended_action: RecommendedAction
    meaning: str


def _guide(status: RunStatus) -> StatusGuide:
    """The guide of ``status``. A ``match`` over the Literal, so a status added to
    :data:`RunStatus` without a guide fails mypy (``assert_never``) and the tests."""
    match status:
        case "completed":
            return StatusGuide(False, "none", "The model gave its final answer.")
        case "pending_tools":
            return StatusGuide(
                True, "resume", "Tool calls are unanswered (kept for 0.11; this version does not end a run so)."
            )
        case "waiting_for_input":
            return StatusGuide(True, "submit_input", "A tool asked the user a question (request_user_input).")
        case "cancelled":
            return StatusGuide(False, "send", "A stop_event stopped the run; its open calls were answered.")
        case "hit_round_limit":
            return StatusGuide(False, "send", "The run reached max_rounds; the model summarized where it stands.")
        case "budget_exceeded":
            return StatusGuide(True, "raise_budget", "The next call would cross a budget (result.budget says which).")
        case "degraded":
            return StatusGuide(
                True,
                "retry",
                "The model could not be reached, or its final answer failed the requested response_format twice.",
            )
        case "paused":
            return StatusGuide(True, "resume", "The run was paused at a round boundary; nothing is lost.")
        case "awaiting_approval":
            return StatusGuide(True, "approve", "A tool call waits for a human approval.")
        case "approval_expired":
            return StatusGuide(False, "send", "An approval was not given in time; the call was not run.")
        case "no_progress":
            return StatusGuide(False, "send", "The run stopped because the model kept repeating itself.")
        case _:  # pragma: no cover - mypy proves every status is handled
            _unguided(status)


def _unguided(status: NoReturn) -> NoReturn:
    """Reached only by a status :func:`_guide` does not handle (mypy rejects the call then)."""
    raise AssertionError(f"no StatusGuide for run status {status!r}")


STATUS_GUIDE: Mapping[RunStatus, StatusGuide] = MappingProxyType({s: _guide(s) for s in RUN_STATUSES})
"""Every :data:`RunStatus` with its :class:`StatusGuide` (read-only): whether the run can be
continued without a new message, the recommended next step, and what the status means."""


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
            ``response_format`` twice (``[degraded: structured output ...]``). ``paused``,
            ``awaiting_approval``, ``approval_expired``, ``no_progress``: see
            :data:`STATUS_GUIDE`, which also gives every status's ``resumable`` and
            ``recommended_action`` (properties of this result).
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

    @property
    def resumable(self) -> bool:
        """True when the work can go on without a new user message (see :data:`STATUS_GUIDE`)."""
        return STATUS_GUIDE[self.status].resumable

    @property
    def recommended_action(self) -> RecommendedAction:
        """What to do next: a :data:`RecommendedAction` (see :data:`STATUS_GUIDE`)."""
        return STATUS_GUIDE[self.status].recommended_action


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
