"""Shared budgets (``AgentLoopConfig(budgets=[...])``): the ledger and the holds.

A model call covered by shared budgets first takes a **hold** on each: in one transaction,
per budget window, the ledger row is locked (``FOR UPDATE`` on a server database; SQLite's
write transaction excludes every other writer), what is spent and what live holds keep is
read, the call's completion cap is clamped to what is left, and the hold is inserted. So
runs in any number of processes can never together pass a budget. The hold is **settled**
(its real usage added to the ledger, the hold deleted) in the transaction that records the
call (:class:`~power_loop.store.rows.RecordLLMCall`), or on its own when the call failed. A
hold whose process died expires (``expires_at``) and stops counting.

Calls asking at the same time are held in one transaction (:func:`hold_many`): each window
they touch is locked and read once, in key order (so two such transactions never deadlock),
and the calls are then decided one after the other against the running totals.
Money is kept in integer nano-dollars.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence

from .protocols import Tx
from .rows import BudgetClaim, BudgetHold, BudgetHoldOutcome, HeldBudget

__all__ = ["hold", "hold_many", "settle"]

_Window = tuple[str, int]


def _load(tx: Tx, windows: Sequence[_Window], now: int) -> dict[_Window, list[int]]:
    """Lock each window's ledger row (made when missing) and read what it spent plus what
    its live holds keep: ``[tokens, nano-dollars]`` per window."""
    lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
    used: dict[_Window, list[int]] = {}
    for window in sorted(set(windows)):
        tx.execute(
            "INSERT INTO budget_ledger (key, window_start, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key, window_start) DO NOTHING",
            (*window, now),
        )
        spent = tx.execute(
            f"SELECT tokens, cost_nano FROM budget_ledger WHERE key = ? AND window_start = ?{lock}", window
        ).fetchone()
        tx.execute("DELETE FROM budget_holds WHERE key = ? AND window_start = ? AND expires_at <= ?", (*window, now))
        held = tx.execute(
            "SELECT COALESCE(SUM(tokens), 0) AS t, COALESCE(SUM(cost_nano), 0) AS c FROM budget_holds "
            "WHERE key = ? AND window_start = ?",
            window,
        ).fetchone()
        used[window] = [int(spent["tokens"]) + int(held["t"]), int(spent["cost_nano"]) + int(held["c"])]
    return used


def _decide(request: BudgetHold, used: dict[_Window, list[int]]) -> BudgetHoldOutcome:
    """The clamped cap of one call against the running totals, or the window refusing it."""
    cap, prompt = request.cap, request.prompt_tokens
    for claim in request.claims:
        used_tokens, used_nano = used[(claim.key, claim.window_start)]
        if claim.tokens_limit is not None:
            left = claim.tokens_limit - used_tokens
            if prompt + 1 > left:
                return BudgetHoldOutcome(cap=0, refused=claim, limit="tokens", spent=used_tokens, needed=prompt + 1)
            cap = min(cap, left - prompt)
        if claim.cost_limit_nano is not None:
            left_nano = claim.cost_limit_nano - used_nano
            floor = prompt * request.input_nano + request.output_nano
            if floor > left_nano:
                return BudgetHoldOutcome(
                    cap=0, refused=claim, limit="cost_usd", spent=used_nano / 1e9, needed=floor / 1e9
                )
            if request.output_nano > 0:
                cap = min(cap, max(1, math.floor((left_nano - prompt * request.input_nano) / request.output_nano)))
    return BudgetHoldOutcome(cap=cap)


def hold_many(tx: Tx, requests: Sequence[BudgetHold], now: int) -> list[BudgetHoldOutcome]:
    """Take the holds of several calls, in order (each sees the holds before it), or refuse
    a call (nothing written for it) when a budget cannot fit its prompt plus one completion
    token."""
    claims: list[BudgetClaim] = [c for r in requests for c in r.claims]
    used = _load(tx, [(c.key, c.window_start) for c in claims], now)
    outcomes: list[BudgetHoldOutcome] = []
    for request in requests:
        decided = _decide(request, used)
        if decided.refused is not None:
            outcomes.append(decided)
            continue
        tokens = request.prompt_tokens + decided.cap
        nano = math.ceil(request.prompt_tokens * request.input_nano + decided.cap * request.output_nano)
        holds: list[HeldBudget] = []
        for claim in request.claims:
            window = (claim.key, claim.window_start)
            used[window][0] += tokens
            used[window][1] += nano
            held = HeldBudget(secrets.token_hex(12), claim.key, claim.window_start)
            tx.execute(
                "INSERT INTO budget_holds (id, key, window_start, tokens, cost_nano, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (held.hold_id, *window, tokens, nano, now + request.ttl_ms),
            )
            holds.append(held)
        outcomes.append(BudgetHoldOutcome(cap=decided.cap, holds=tuple(holds)))
    return outcomes


def hold(tx: Tx, request: BudgetHold, now: int) -> BudgetHoldOutcome:
    """:func:`hold_many` for one call."""
    return hold_many(tx, [request], now)[0]


def settle(tx: Tx, holds: Sequence[HeldBudget], tokens: int, cost_nano: int, now: int) -> None:
    """Add a call's real usage to the windows its holds were taken in, and drop the holds
    (one that expired meanwhile is gone already; its usage still counts)."""
    for held in sorted(holds, key=lambda h: (h.key, h.window_start)):
        tx.execute("DELETE FROM budget_holds WHERE id = ?", (held.hold_id,))
        tx.execute(
            "UPDATE budget_ledger SET tokens = tokens + ?, cost_nano = cost_nano + ?, updated_at = ? "
            "WHERE key = ? AND window_start = ?",
            (tokens, cost_nano, now, held.key, held.window_start),
        )
