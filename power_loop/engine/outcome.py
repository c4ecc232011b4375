"""What a step of the engine returns: go on, or end the run.

Every step of a round returns :data:`CONTINUE` or an :class:`End`; no step finishes a run or
raises to end one. :func:`power_loop.engine.finish.finish` is the one place that turns an
:class:`End` into the committed end of the run and its result. Exceptions stay for real
errors (and the cancellation of the caller's task), which end the run ``failed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from ..approvals import ApprovalRequest
from ..results import RunStatus
from ..store.rows import PendingCall, WriteOp

__all__ = ["CONTINUE", "Continue", "End", "StepOutcome"]


@dataclass(frozen=True)
class Continue:
    """The run goes on with the next step (or round)."""


CONTINUE: Final = Continue()


@dataclass(frozen=True)
class End:
    """The run ends.

    Attributes:
        status: The run's status.
        final_text: The result's ``final_text``.
        ops: Writes that commit together with the end of the run.
        reason: The ``reason`` of ``SESSION_END`` and ``session_ended`` (default: ``status``).
        committed: The end is already committed (the step wrote its writes with the finish):
            :func:`~power_loop.engine.finish.finish` writes nothing.
        announced: Run ``SESSION_END``, memory and ``session_ended`` (False only for a wake
            run that found nothing to do, which never started the session either).
        pending: Unanswered calls reported in the result (``waiting_for_input``).
        interactions: Open questions reported in the result (``waiting_for_input``).
        approvals: Undecided approval requests reported in the result (``awaiting_approval``).
    """

    status: RunStatus
    final_text: str
    ops: Sequence[WriteOp] = ()
    reason: str | None = None
    committed: bool = False
    announced: bool = True
    pending: Sequence[PendingCall] = ()
    interactions: Sequence[dict[str, Any]] = ()
    approvals: Sequence[ApprovalRequest] = ()


StepOutcome = Continue | End
"""What a step returns."""
