"""Asking the user from inside a tool: ``request_user_input``.

A tool that needs a human answer calls :func:`request_user_input`; the run stops with status
``waiting_for_input`` and the question in ``result.pending_interactions``. The tool call stays
unanswered (durably) until ``loop.submit_input(session_id, interaction_id, value)`` supplies
the value, which becomes that call's result, and the run continues.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .errors import ControlSignal

__all__ = ["HumanInputRequired", "request_user_input"]


@dataclass
class HumanInputRequired(ControlSignal):
    """Raised by :func:`request_user_input`; the engine turns it into a pause.

    A :class:`~power_loop.errors.ControlSignal`: a tool that catches ``PowerLoopError`` around
    ``request_user_input`` must let this one through.

    Positional arguments follow 0.11: ``HumanInputRequired(kind, prompt, ...)``.

    Attributes:
        kind: ``text``, ``choice``, ``confirm`` or the host's own kind.
        prompt: The question.
        options: Choices for ``choice`` questions.
        metadata: Anything the host needs to render the question.
        interaction_id: Id to pass to ``submit_input``.
    """

    kind: str = "text"
    prompt: str = ""
    options: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    interaction_id: str = field(default_factory=lambda: "input_" + secrets.token_hex(8))

    def __post_init__(self) -> None:
        super().__init__(self.prompt)

    def __str__(self) -> str:
        return self.prompt

    def to_pending(self, *, tool_call_id: str, tool_name: str = "request_user_input") -> dict[str, Any]:
        """The ``pending_interactions[]`` entry for this question, asked by ``tool_name``."""
        return {
            "interaction_id": self.interaction_id,
            "tool_call_id": tool_call_id,
            "tool_name": tool_name,
            "kind": self.kind,
            "prompt": self.prompt,
            "options": list(self.options),
            "metadata": dict(self.metadata),
        }


def request_user_input(
    *,
    prompt: str,
    kind: str = "text",
    options: Sequence[Mapping[str, Any] | str] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> NoReturn:
    """Pause the run until the user answers ``prompt`` (call it from inside a tool).

    Raises:
        ValueError: ``prompt`` is empty.
        HumanInputRequired: Always (the engine catches it).
    """
    if not prompt or not str(prompt).strip():
        raise ValueError("prompt is required")
    opts = [o if isinstance(o, Mapping) else {"label": str(o), "value": str(o)} for o in options or ()]
    raise HumanInputRequired(
        prompt=str(prompt), kind=kind, options=[dict(o) for o in opts], metadata=dict(metadata or {})
    )
