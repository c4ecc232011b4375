"""Guards on a run: prices for cost budgets, what a crossed budget reports, and the
no-progress policy.

The limits themselves are fields of :class:`~power_loop.config.AgentLoopConfig`
(``max_tokens_per_run``, ``max_cost_usd_per_run``, ``max_wall_s_per_run``,
``max_tool_calls_per_run``, ``pricing``, ``no_progress``); the engine applies them in
:mod:`power_loop.engine.budgets` and :mod:`power_loop.engine.progress`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .errors import ConfigurationError
from .messages import Usage

__all__ = ["Budget", "BudgetHit", "NoProgressPolicy", "Price"]


@dataclass(frozen=True)
class Price:
    """What a model costs, in US dollars per million tokens.

    Attributes:
        input_per_mtok: Price of a million prompt tokens.
        output_per_mtok: Price of a million completion tokens (reasoning tokens included).
        cache_read_per_mtok: Price of a million prompt tokens served from the provider's
            prompt cache (None: the input price).
    """

    input_per_mtok: float
    output_per_mtok: float
    cache_read_per_mtok: float | None = None

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok", "cache_read_per_mtok"):
            value = getattr(self, name)
            if value is None and name == "cache_read_per_mtok":
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"Price.{name} must be a finite number >= 0, got {value!r}")

    def cost(self, usage: Usage) -> float:
        """The cost of ``usage`` in US dollars."""
        cached = min(usage.cache_read_tokens, usage.prompt_tokens)
        cache_price = self.input_per_mtok if self.cache_read_per_mtok is None else self.cache_read_per_mtok
        return (
            (usage.prompt_tokens - cached) * self.input_per_mtok
            + cached * cache_price
            + usage.completion_tokens * self.output_per_mtok
        ) / 1_000_000

    def worst_case(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The most a call with this prompt and completion cap can cost (no cache discount)."""
        return (prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok) / 1_000_000


BudgetLimit = Literal[
    "max_tokens_per_run",
    "max_cost_usd_per_run",
    "max_wall_s_per_run",
    "max_tool_calls_per_run",
    "tokens",
    "cost_usd",
]
"""The per-run limits of :class:`~power_loop.config.AgentLoopConfig`, and a shared
:class:`Budget`'s ``tokens`` and ``cost_usd``."""

BudgetScope = Literal["session", "tenant", "loop"]
"""Who shares a :class:`Budget`."""


@dataclass(frozen=True)
class Budget:
    """A budget shared by many runs, kept in the session store (``AgentLoopConfig(budgets=[...])``).

    Every model call of a run that the budget covers reserves its worst case in the store
    before it is sent (in a transaction that sees every other run's reservations, in every
    process using the store), with its completion cap clamped to what is left, and settles
    the real usage in the transaction that records the call. So concurrent runs can never
    together spend past the budget; the call that cannot fit ends its run
    ``budget_exceeded``.

    Attributes:
        scope: ``"session"``: each session has its own (a sub-agent spends its root
            session's); ``"tenant"``: the sessions whose metadata has the same value under
            ``AgentLoopConfig.tenant_key`` share one (a session without that key is not
            covered); ``"loop"``: every run of every loop using this store (and this
            budget's ``name``) shares one.
        tokens: Prompt + completion tokens per window (None: not limited).
        cost_usd: US dollars per window, priced with ``AgentLoopConfig.pricing`` (None: not
            limited).
        window_s: Length of the window in seconds; windows are aligned to the Unix epoch
            (``3600``: each clock hour, UTC), and a call counts in the window it was
            reserved in. None: one window forever.
        name: Tells budgets of the same scope and window apart (and names a ``loop``
            budget shared by several applications of one store).
    """

    scope: BudgetScope
    tokens: int | None = None
    cost_usd: float | None = None
    window_s: float | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if self.scope not in ("session", "tenant", "loop"):
            raise ConfigurationError(f"Budget.scope must be 'session', 'tenant' or 'loop', got {self.scope!r}")
        if self.tokens is None and self.cost_usd is None:
            raise ConfigurationError("Budget needs tokens=..., cost_usd=... or both")
        if self.tokens is not None and (
            not isinstance(self.tokens, int) or isinstance(self.tokens, bool) or self.tokens <= 0
        ):
            raise ConfigurationError(f"Budget.tokens must be an integer > 0, got {self.tokens!r}")
        for field_name in ("cost_usd", "window_s"):
            value = getattr(self, field_name)
            if value is not None and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0
            ):
                raise ConfigurationError(f"Budget.{field_name} must be a finite number > 0, got {value!r}")
        if not isinstance(self.name, str) or "|" in self.name:
            raise ConfigurationError(f"Budget.name must be a string without '|', got {self.name!r}")

    def key(self, subject: str) -> str:
        """The ledger key of this budget for ``subject`` (a session id, a tenant, or "")."""
        window = "" if self.window_s is None else repr(float(self.window_s))
        return f"{self.scope}|{subject}|{window}|{self.name}"

    def window_start(self, now_ms: int) -> int:
        """Start (ms since the epoch) of the window holding ``now_ms``; 0 without a window."""
        if self.window_s is None:
            return 0
        size = int(self.window_s * 1000)
        return now_ms - now_ms % size


@dataclass(frozen=True)
class BudgetHit:
    """Which budget stopped a run, and by how much (``StatefulResult.budget``).

    The check runs before each model call and each tool call: the run stops before the
    call that would cross the limit, so ``spent`` never exceeds ``allowed``.

    Attributes:
        limit: The limit crossed (an ``AgentLoopConfig`` field name).
        allowed: Its value (tokens, US dollars, seconds or tool calls).
        spent: What the run (with its sub-agents, and for wall-clock its earlier parts
            before a resume) had used when it stopped.
        needed: What the refused call needed at the least (the prompt plus one completion
            token for a model call; one call for a tool call; 0 for wall-clock).
        over_by: How far the refused call would have gone past the limit
            (``spent + needed - allowed``, at least 0).
        session_id: The session whose budget it is: the run's own, or an ancestor's when a
            sub-agent drew on its parent's budget.
        scope: ``"run"`` for the per-run limits; a shared :class:`Budget`'s scope otherwise.
        subject: For a shared budget: the session id, the tenant, or "" (``loop``).
        window_s: For a shared budget: its window (None: forever).
    """

    limit: BudgetLimit
    allowed: float
    spent: float
    needed: float
    over_by: float
    session_id: str
    scope: Literal["run", "session", "tenant", "loop"] = "run"
    subject: str = ""
    window_s: float | None = None

    def describe(self) -> str:
        """One line: ``max_cost_usd_per_run 0.05: spent 0.049, the next call needs 0.002``."""
        what: str = self.limit
        if self.scope != "run":
            per = "" if self.window_s is None else f" per {_fmt(self.window_s)} s"
            what = f"{self.scope} budget{f' {self.subject!r}' if self.subject else ''} {self.limit}{per}"
        return (
            f"{what} {_fmt(self.allowed)}: spent {_fmt(self.spent)}, the next call needs "
            f"{_fmt(self.needed)} (over by {_fmt(self.over_by)})"
        )


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"


@dataclass(frozen=True)
class NoProgressPolicy:
    """When a run is going round in circles, and what then.

    A run makes no progress when the model makes the same tool call (same tool, same
    arguments) ``repeat_limit`` times, or when ``repeat_limit`` rounds in a row had a call
    with invalid arguments (unparsable JSON, a schema violation or an unknown tool).

    Attributes:
        repeat_limit: How many times (2 or more).
        action: ``"stop"`` ends the run with status ``no_progress`` (the calls of that turn
            are answered, not run). ``"nudge"`` answers the repeated call with a note telling
            the model it is repeating itself (the call is not run) and goes on; the next time
            it happens, the run stops as with ``"stop"``.
    """

    repeat_limit: int = 3
    action: Literal["stop", "nudge"] = "stop"

    def __post_init__(self) -> None:
        if not isinstance(self.repeat_limit, int) or isinstance(self.repeat_limit, bool) or self.repeat_limit < 2:
            raise ConfigurationError(
                f"NoProgressPolicy.repeat_limit must be an integer >= 2, got {self.repeat_limit!r}"
            )
        if self.action not in ("stop", "nudge"):
            raise ConfigurationError(f"NoProgressPolicy.action must be 'stop' or 'nudge', got {self.action!r}")
