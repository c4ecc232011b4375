"""Shared budgets (``AgentLoopConfig(budgets=[...])``): the ledger and the holds.

A model call covered by shared budgets first takes a **hold** on each: in one transaction,
per budget window, the ledger row is locked (``FOR UPDATE`` on a server database; SQLite's
write transaction excludes every other writer), what is spent and what live holds keep is
read, the call's completion cap is clamped to what is left, and the hold is inserted. So
runs in any number of processes can never together pass a budget. The hold is **settled**
(its real usage added to the ledger, the hold deleted) in the transaction that records the
call (:class:`~power_loop.store.rows.RecordLLMCall`), or on its own when the call failed. A
hold whose process died expires (``expires_at``) and stops counting.

Rows are locked in key order, so two calls covered by the same budgets never deadlock.
Money is kept in integer nano-dollars.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .protocols import Tx
from .rows import BudgetHold, BudgetHoldOutcome, HeldBudget

__all__ = ["hold", "hold_many", "settle"]


def hold(tx: Tx, request: BudgetHold, now: int) -> BudgetHoldOutcome:
    """Take the holds of one call, or refuse it (nothing written) when a budget cannot fit
    its prompt plus one completion token."""
    lock = " FOR UPDATE" if tx.dialect == "postgresql" else ""
    cap = request.cap
    prompt = request.prompt_tokens
    for claim in sorted(request.claims, key=lambda c: (c.key, c.window_start)):
        where = (claim.key, claim.window_start)
        tx.execute(
            "INSERT INTO budget_ledger (key, window_start, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (key, window_start) DO NOTHING",
            (*where, now),
        )
        spent = tx.execute(
            f"SELECT tokens, cost_nano FROM budget_ledger WHERE key = ? AND window_start = ?{lock}", where
        ).fetchone()
        tx.execute("DELETE FROM budget_holds WHERE key = ? AND window_start = ? AND expires_at <= ?", (*where, now))
        held = tx.execute(
            "SELECT COALESCE(SUM(tokens), 0) AS t, COALESCE(SUM(cost_nano), 0) AS c FROM budget_holds "
            "WHERE key = ? AND window_start = ?",
            where,
        ).fetchone()
        used_tokens = int(spent["tokens"]) + int(held["t"])
        used_nano = int(spent["cost_nano"]) + int(held["c"])
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
    tokens = prompt + cap
    nano = math.ceil(prompt * request.input_nano + cap * request.output_nano)
    ids: list[HeldBudget] = []
    for claim in request.claims:
        tx.execute(
            "INSERT INTO budget_holds (key, window_start, tokens, cost_nano, expires_at) VALUES (?, ?, ?, ?, ?)",
            (claim.key, claim.window_start, tokens, nano, now + request.ttl_ms),
        )
        row = tx.execute(
            "SELECT MAX(id) AS id FROM budget_holds WHERE key = ? AND window_start = ?",
            (claim.key, claim.window_start),
        ).fetchone()
        ids.append(HeldBudget(int(row["id"]), claim.key, claim.window_start))
    return BudgetHoldOutcome(cap=cap, holds=tuple(ids))


def hold_many(tx: Tx, requests: Sequence[BudgetHold], now: int) -> list[BudgetHoldOutcome]:
    """:func:`hold` for several calls in one transaction, in order (group commit)."""
    return [hold(tx, request, now) for request in requests]


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
