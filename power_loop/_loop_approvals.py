"""The approvals part of :class:`~power_loop.StatefulAgentLoop`: ``approve`` and
``list_approvals``.

A run whose tool call needs a human's approval ends ``awaiting_approval`` with the requests in
``result.approvals``; the requests are rows of the store, so any process on the same store can
decide them, after a restart too. :meth:`ApprovalFacade.approve` decides one request in one
transaction (a token decides once, whichever process tries first) and, once no request of the
paused model turn is left undecided, continues the run: approved calls run (validated,
hooked, timed as usual), denied ones answer the model with the denial and the reviewer's note.

It is a base class of the loop only, kept apart so the facade stays readable; it reaches the
engine the way the loop does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from .approvals import ApprovalRequest
from .cancellation import StopEventLike
from .engine.run import RunRequest, execute_run
from .engine.runtime import Runtime
from .errors import ApprovalError
from .results import StatefulResult
from .store.protocols import SessionStoreProtocol

__all__ = ["ApprovalFacade"]

T = TypeVar("T")


class ApprovalFacade:
    """Approval methods of :class:`~power_loop.StatefulAgentLoop` (see there)."""

    store: SessionStoreProtocol
    _rt: Runtime

    if TYPE_CHECKING:  # provided by StatefulAgentLoop

        async def _when_free(self, call: Callable[[], Awaitable[T]]) -> T: ...

    async def approve(
        self,
        session_id: str,
        token: str,
        *,
        approved: bool = True,
        note: str | None = None,
        stop_event: StopEventLike | None = None,
    ) -> StatefulResult:
        """Decide an approval request and continue the run it paused.

        Approved, the call runs (its tool's ``precheck`` first: when that fails, a fresh
        request with a new token is issued and the result is ``awaiting_approval`` again).
        Denied, the model gets a result saying a human did not approve the call, with
        ``note``. Either way the run then goes on with the model, once every request of the
        same model turn is decided; until then the result is ``awaiting_approval`` listing
        the others. Approving after the request's ``expires_at`` does not run the call: it is
        answered as expired and the result is ``approval_expired`` (the run stops there;
        ``resume`` lets the model react).

        While a run holds the session this waits, up to ``AgentLoopConfig.session_wait_s``.

        Args:
            session_id: The session of the request.
            token: The request's token (``result.approvals``, :meth:`list_approvals`).
            approved: True to run the call, False to deny it.
            note: The reviewer's words, shown to the model with a denial (kept with the
                decision either way).
            stop_event: Cooperative cancellation of the continued run.

        Raises:
            ApprovalError: No request of the session has that token, or it was decided
                already (a token works once; concurrent decisions: exactly one wins).
            SessionNotFoundError: Unknown session.
            SessionBusyError: A run held the session longer than ``session_wait_s``.
        """
        if not isinstance(token, str) or not token:
            raise ApprovalError("token must be a non-empty string", token=str(token), session_id=session_id)
        if note is not None and not isinstance(note, str):
            raise TypeError(f"note must be a str or None, not {type(note).__name__}")
        decision = await self._when_free(
            lambda: self.store.decide_approval(session_id, token, approved=bool(approved), note=note)
        )
        if decision.remaining:
            pending = await self.store.get_pending(session_id)
            expired = decision.outcome == "expired"
            return StatefulResult(
                session_id=session_id,
                status="approval_expired" if expired else "awaiting_approval",
                final_text=f"[approval_expired: {decision.request.tool_name}]" if expired else "",
                pending_tool_calls=[c.to_dict() for c in pending.calls] if pending else [],
                pending_interactions=[dict(i) for i in pending.interactions] if pending else [],
                usage={},
                approvals=list(decision.remaining),
            )
        return await execute_run(self._rt, RunRequest(session_id=session_id, kind="approve", stop_event=stop_event))

    async def list_approvals(self, session_id: str | None = None) -> list[ApprovalRequest]:
        """Undecided approval requests, oldest first: of one session, or of every session in
        the store (any process's). Expired ones are included (``request.expired``): approving
        or denying one answers its call, so its run can go on."""
        return await self.store.list_approvals(session_id)

    def list_approvals_sync(self, session_id: str | None = None) -> list[ApprovalRequest]:
        """Blocking twin of :meth:`list_approvals` (a short-lived connection of its own)."""
        return self.store.list_approvals_sync(session_id)
