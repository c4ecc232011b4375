"""The context of the tool call being executed.

A handler reads it with :func:`current_tool_context` or by declaring a parameter annotated
``ToolContext`` (injected, never shown to the model). The context travels in a
``contextvars.ContextVar``, so it is visible in async handlers and in sync handlers running
in worker threads alike.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ToolContext", "current_tool_context"]


@dataclass(frozen=True, kw_only=True)
class ToolContext:
    """Where and why a tool runs.

    Attributes:
        session_id: The session whose run called the tool.
        tool_call_id: The model's id for this call.
        tool_name: The tool's name.
        run_id: The run (one ``send``) that made the call.
        round_index: The round of the run, from 0.
        loop: The ``StatefulAgentLoop`` running the call (None when a registry is invoked
            directly), e.g. for a tool that schedules a timer or queues a follow-up.
    """

    session_id: str
    tool_call_id: str
    tool_name: str
    run_id: str = ""
    round_index: int = 0
    loop: Any = field(default=None, repr=False, compare=False)

    @property
    def idempotency_key(self) -> str:
        """A key stable across retries and resumes of this call: ``"<session>:<call id>"``.

        A tool with side effects can record it to avoid doing the work twice when a crashed
        run's call is executed again by ``resume``.
        """
        return f"{self.session_id}:{self.tool_call_id}"


_CURRENT: ContextVar[ToolContext | None] = ContextVar("power_loop_tool_context", default=None)


def current_tool_context() -> ToolContext | None:
    """The context of the tool call running in this task or thread, or None outside one."""
    return _CURRENT.get()


def _set_context(ctx: ToolContext | None) -> object:
    return _CURRENT.set(ctx)


def _reset_context(token: object) -> None:
    _CURRENT.reset(token)  # type: ignore[arg-type]
