"""Durable human approvals of tool calls: the request a host decides on.

A tool call that needs a human's approval (``ToolDefinition(requires_approval=...)``, or a
``TOOL_BEFORE`` hook returning ``HookDirective.PAUSE``) does not run: the run ends with status
``awaiting_approval`` and ``result.approvals`` lists one :class:`ApprovalRequest` per such
call. The request is a row of the session store, written in the transaction that ends the
run, so it survives restarts and any process on the same store can decide it with
``loop.approve(session_id, token, approved=...)``.

This module is vocabulary: it imports nothing from the rest of power_loop.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_APPROVAL_TTL_S", "ApprovalRequest"]

MAX_APPROVAL_TTL_S = 100 * 365 * 86400.0
"""The longest time to live of an approval request (100 years): expiry times stay within a
64-bit column on every backend."""


@dataclass(frozen=True)
class ApprovalRequest:
    """A tool call waiting for a human's decision.

    Attributes:
        token: The secret that decides it (``loop.approve(session_id, token, ...)``); random
            and unguessable, valid once.
        session_id: The session whose run made the call.
        tool_call_id: The model's id of the call.
        tool_name: The tool it would run.
        arguments: The arguments it would run with (after ``TOOL_BEFORE`` hooks).
        expires_at: Epoch milliseconds after which approving it no longer runs the call
            (the run then ends ``approval_expired``).
        reason: Why a fresh request replaced an earlier one: the tool's ``precheck``
            found that the world changed since (None for a first request).
        created_at: When it was issued, epoch milliseconds.
    """

    token: str
    session_id: str
    tool_call_id: str
    tool_name: str
    arguments: Mapping[str, Any] = field(default_factory=dict, hash=False)
    expires_at: int = 0
    reason: str | None = None
    created_at: int = 0

    @property
    def expired(self) -> bool:
        """Whether :attr:`expires_at` has passed (by this machine's clock)."""
        return int(time.time() * 1000) > self.expires_at  # as the store decides: whole ms

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the request (to hand to a UI or a queue)."""
        return {
            "token": self.token,
            "session_id": self.session_id,
            "tool_call_id": self.tool_call_id,
            "tool_name": self.tool_name,
            "arguments": dict(self.arguments),
            "expires_at": self.expires_at,
            "reason": self.reason,
            "created_at": self.created_at,
        }
