"""Row types of the shared budgets (``AgentLoopConfig.budgets``): what a model call asks of
the store's ledger before it is sent, and what it got (see :mod:`._budgets_sql`). Re-exported
by :mod:`power_loop.store.rows`."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BudgetClaim", "BudgetHold", "BudgetHoldOutcome", "HeldBudget"]


@dataclass(frozen=True)
class BudgetClaim:
    """One shared budget window a model call must fit in.

    Attributes:
        key: The budget's ledger key (``Budget.key``).
        window_start: Start of the current window (ms since the epoch; 0: no window).
        tokens_limit: Tokens allowed in the window (None: not limited).
        cost_limit_nano: Nano-dollars allowed in the window (None: not limited).
    """

    key: str
    window_start: int
    tokens_limit: int | None
    cost_limit_nano: int | None


@dataclass(frozen=True)
class BudgetHold:
    """What a model call asks of the shared budgets before it is sent.

    Attributes:
        claims: The budget windows covering it.
        prompt_tokens: Its prompt (estimated).
        cap: The completion cap it would like (clamped by the holds).
        input_nano: Price of a prompt token in nano-dollars (0: unpriced).
        output_nano: Price of a completion token in nano-dollars.
        ttl_ms: How long the hold counts if it is never settled (its process died).
    """

    claims: tuple[BudgetClaim, ...]
    prompt_tokens: int
    cap: int
    input_nano: float = 0.0
    output_nano: float = 0.0
    ttl_ms: int = 900_000


@dataclass(frozen=True)
class HeldBudget:
    """A hold taken on one budget window."""

    hold_id: str
    key: str
    window_start: int


@dataclass(frozen=True)
class BudgetHoldOutcome:
    """The holds taken (``cap``: the clamped completion cap), or the budget that refused.

    Attributes:
        cap: The completion cap every budget allows (0 when refused).
        holds: The holds taken, one per claim.
        refused: The budget window that cannot fit the call (None: holds taken).
        limit: ``"tokens"`` or ``"cost_usd"``: what it cannot fit.
        spent: What that window had spent and held (tokens, or US dollars).
        needed: What the call needed at the least (tokens, or US dollars).
    """

    cap: int
    holds: tuple[HeldBudget, ...] = ()
    refused: BudgetClaim | None = None
    limit: str = ""
    spent: float = 0.0
    needed: float = 0.0
