"""Per-run budgets, checked before every model call and every tool call.

A model call first **reserves** its worst case in its run and in every run above it (a
sub-agent draws on its ancestors' budgets): the prompt estimate plus the completion cap, in
tokens and, with ``pricing``, in dollars. The cap is clamped to what is left under every
limit on the way up, so the call cannot overshoot even when sibling sub-agents call at the
same time; the reservation is released when the call returns and the real usage counted. A
call that cannot fit (its prompt plus one completion token) is refused: the run ends
``budget_exceeded`` before it, with :class:`~power_loop.guards.BudgetHit` saying which limit
and by how much. Tool calls count against ``max_tool_calls_per_run`` when they start, and
``max_wall_s_per_run`` is checked before both kinds of call.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from ..compaction import estimate_text_tokens, estimate_tokens
from ..errors import ConfigurationError
from ..guards import Budget, BudgetHit, BudgetLimit, Price
from ..messages import Usage
from ..providers._common import dumps, memo
from ..providers.base import LLMRequest
from ..store.rows import BudgetClaim, BudgetHold, BudgetHoldOutcome, HeldBudget
from ..tools.definition import ToolDefinition

if TYPE_CHECKING:
    from .state import Run

log = logging.getLogger("power_loop.engine")

__all__ = [
    "Reservation",
    "charge",
    "cost_nano",
    "check_tool_call",
    "check_wall",
    "price_of",
    "release",
    "reserve",
    "settle_unrecorded",
    "spent_budget",
]


@dataclass
class Reservation:
    """What a model call holds in its run and every run above it until it returns, and its
    holds on the shared budgets (settled with the call's record, or on their own)."""

    runs: tuple[Run, ...]
    tokens: int
    cost: float
    model: str | None
    holds: tuple[HeldBudget, ...] = ()


def _chain(run: Run) -> tuple[Run, ...]:
    chain: list[Run] = []
    current: Run | None = run
    while current is not None:
        chain.append(current)
        current = current.parent
    return tuple(chain)


def price_of(run: Run, model: str | None) -> Price | None:
    """The price of ``model`` in the run's config (None when it has no pricing for it)."""
    pricing = run.config.pricing
    if not pricing or model is None:
        return None
    return pricing.get(model)


def _model(run: Run, request: LLMRequest) -> str | None:
    return request.model or run.config.model or getattr(run.llm, "model", None)


def _hit(run: Run, limit: BudgetLimit, allowed: float, spent: float, needed: float) -> BudgetHit:
    return BudgetHit(
        limit=limit,
        allowed=allowed,
        spent=spent,
        needed=needed,
        over_by=max(0.0, spent + needed - allowed),
        session_id=run.session_id,
    )


def check_wall(run: Run) -> BudgetHit | None:
    """The wall-clock limit of the run or of a run above it, when it is reached."""
    for r in _chain(run):
        limit = r.config.max_wall_s_per_run
        if limit is not None:
            spent = r.wall_carried_s + (time.monotonic() - r.started_monotonic)
            if spent >= limit:
                return _hit(r, "max_wall_s_per_run", limit, round(spent, 3), 0)
    return None


def prompt_tokens(run: Run, request: LLMRequest) -> int:
    """The prompt's size for a reservation: the estimate (messages, system text, tool
    schemas) scaled by the provider's observed ratio, and never below the prompt the run's
    previous call was billed for (a run's prompt only grows, short of a compaction)."""
    raw = estimate_text_tokens(request.system_prompt) + _messages_tokens(run, request)
    raw += sum(_tool_tokens(t) for t in request.tools)
    return max(math.ceil(raw * max(1.0, run.rt.token_ratio)), run.last_prompt_tokens)


def _messages_tokens(run: Run, request: LLMRequest) -> int:
    """The request's messages' estimate. A request showing the run's history (plus messages
    after it, as the round-limit prompt) takes the transcript's running estimate instead of
    walking the whole history every call (it counts kernel markers too: never less)."""
    messages = request.messages
    if run.prefix is None:
        shown = run.transcript.for_model()
        n = len(shown)
        if n and len(messages) >= n and messages[n - 1] is shown[-1]:
            return run.transcript.token_estimate() + estimate_tokens(messages[n:])
    return estimate_tokens(messages)


def _tool_tokens(tool: ToolDefinition) -> int:
    return memo(tool, "_power_loop_tool_tokens", lambda: estimate_text_tokens(dumps(tool.to_openai_tool()).decode()))


async def reserve(run: Run, request: LLMRequest) -> tuple[LLMRequest, Reservation | None] | BudgetHit:
    """Reserve a model call's worst case; the request with its cap clamped to what every
    budget on the way up has left, or the limit it cannot fit in.

    Raises:
        ConfigurationError: A cost budget applies and the model has no price.
    """
    chain = _chain(run)
    wall = check_wall(run)
    if wall is not None:
        return wall
    limited = [r for r in chain if r.config.max_tokens_per_run is not None or r.config.max_cost_usd_per_run is not None]
    model = _model(run, request)
    priced = any(r.config.pricing for r in chain)
    if not limited and not run.config.budgets:
        return request, (Reservation(chain, 0, 0.0, model) if priced else None)
    prompt = prompt_tokens(run, request)
    cap = request.max_tokens if request.max_tokens is not None else run.config.max_tokens
    hits: list[BudgetHit] = []
    for r in limited:
        tokens = r.config.max_tokens_per_run
        if tokens is not None:
            left = tokens - r.usage.total_tokens - r.reserved_tokens
            if prompt + 1 > left:
                hits.append(_hit(r, "max_tokens_per_run", tokens, r.usage.total_tokens + r.reserved_tokens, prompt + 1))
                continue
            cap = min(cap, left - prompt)
        dollars = r.config.max_cost_usd_per_run
        if dollars is not None:
            price = price_of(r, model)
            if price is None:
                raise ConfigurationError(
                    f"AgentLoopConfig.max_cost_usd_per_run is set but pricing has no Price for model {model!r}; "
                    f"add pricing={{{model!r}: Price(input_per_mtok=..., output_per_mtok=...)}}"
                )
            left_usd = dollars - r.cost_usd - r.reserved_cost
            floor = price.worst_case(prompt, 1)
            if floor > left_usd:
                hits.append(_hit(r, "max_cost_usd_per_run", dollars, r.cost_usd + r.reserved_cost, floor))
                continue
            if price.output_per_mtok > 0:
                affordable = math.floor((left_usd - price.worst_case(prompt, 0)) * 1_000_000 / price.output_per_mtok)
                cap = min(cap, max(1, affordable))
    if hits:  # the tightest budget is reported; on a tie, the one furthest up
        return max(reversed(hits), key=lambda h: h.over_by)
    price = price_of(run, model)
    # Held in every run of the chain before anything is awaited: sibling sub-agents reserving
    # at the same time see each other's reservations.
    held = Reservation(chain, prompt + cap, price.worst_case(prompt, cap) if price is not None else 0.0, model)
    _hold_in_chain(held, +1)
    if run.config.budgets:
        try:
            shared = await _hold_shared(run, prompt, cap, model, price)
        except BaseException:
            _hold_in_chain(held, -1)
            raise
        if isinstance(shared, BudgetHit):
            _hold_in_chain(held, -1)
            return shared
        if shared[0] != cap:  # a shared budget left less: shrink the reservation to it
            _hold_in_chain(held, -1)
            cap = shared[0]
            held.tokens = prompt + cap
            held.cost = price.worst_case(prompt, cap) if price is not None else 0.0
            _hold_in_chain(held, +1)
        held.holds = shared[1]
    if cap != request.max_tokens:
        request = replace(request, max_tokens=cap)
    return request, held


HOLD_TTL_MS = 900_000
"""How long a shared-budget hold counts when its call never settles it (its process died)."""


def _root(run: Run) -> Run:
    while run.parent is not None:
        run = run.parent
    return run


MAX_TREE_HOPS = 64
"""Most parent links followed to find a sub-agent tree's root session."""


async def _tree_root(run: Run) -> tuple[str, Mapping[str, Any]]:
    """The session at the root of the run's sub-agent tree and its metadata: the root run's
    own, or, when that run is itself a sub-agent no parent run started (a background child,
    or one resumed after a crash), the ancestor found through the sessions' parent links
    (read once per run)."""
    root = _root(run)
    if root.budget_root is None:
        session_id, metadata = root.session_id, root.session.metadata or {}
        parent = root.session.parent_session_id
        for _ in range(MAX_TREE_HOPS):
            if not parent:
                break
            row = await run.rt.store.get_session_async(parent)
            if row is None:
                break
            session_id, metadata, parent = row.session_id, row.metadata or {}, row.parent_session_id
        root.budget_root = (session_id, metadata)
    return root.budget_root


async def _subject(run: Run, budget: Budget) -> str | None:
    """Whose budget ``budget`` is for this run: the tree's root session, its tenant, or the
    loop (None: the run is not covered, e.g. a session without a tenant). A sub-agent, in
    the foreground or the background, spends its root session's and its root's tenant's."""
    if budget.scope == "loop":
        return ""
    session_id, metadata = await _tree_root(run)
    if budget.scope == "session":
        return session_id
    tenant = metadata.get(run.config.tenant_key)
    return None if tenant in (None, "") else str(tenant)


async def _hold_shared(
    run: Run, prompt: int, cap: int, model: str | None, price: Price | None
) -> tuple[int, tuple[HeldBudget, ...]] | BudgetHit:
    """Take the call's holds on the shared budgets covering the run (one store transaction)."""
    now = int(time.time() * 1000)
    covered: list[tuple[Budget, str, BudgetClaim]] = []
    for budget in run.config.budgets:
        subject = await _subject(run, budget)
        if subject is None:
            continue
        if budget.cost_usd is not None and price is None:
            raise ConfigurationError(
                f"a Budget with cost_usd covers this run but pricing has no Price for model {model!r}; "
                f"add pricing={{{model!r}: Price(input_per_mtok=..., output_per_mtok=...)}}"
            )
        claim = BudgetClaim(
            key=budget.key(subject),
            window_start=budget.window_start(now),
            tokens_limit=budget.tokens,
            cost_limit_nano=None if budget.cost_usd is None else round(budget.cost_usd * 1e9),
        )
        covered.append((budget, subject, claim))
    if not covered:
        return cap, ()
    outcome = await _holds(run).take(
        BudgetHold(
            claims=tuple(c for _, _, c in covered),
            prompt_tokens=prompt,
            cap=cap,
            input_nano=price.input_per_mtok * 1000 if price is not None else 0.0,
            output_nano=price.output_per_mtok * 1000 if price is not None else 0.0,
            ttl_ms=HOLD_TTL_MS,
        )
    )
    if outcome.refused is None:
        return outcome.cap, outcome.holds
    budget, subject, claim = next(c for c in covered if c[2] == outcome.refused)
    limit: BudgetLimit = "tokens" if outcome.limit == "tokens" else "cost_usd"
    allowed = float((budget.tokens if limit == "tokens" else budget.cost_usd) or 0)
    return BudgetHit(
        limit=limit,
        allowed=allowed,
        spent=outcome.spent,
        needed=outcome.needed,
        over_by=max(0.0, outcome.spent + outcome.needed - allowed),
        session_id=(await _tree_root(run))[0],
        scope=budget.scope,
        subject=subject,
        window_s=budget.window_s,
    )


class HoldBatcher:
    """Group commit of shared-budget holds: the holds asked for while a hold transaction is
    in flight are taken together in the next one, each in turn (each sees the holds before
    it), so a loop running many calls at once pays a fraction of a transaction per call."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._queue: list[tuple[BudgetHold, asyncio.Future[BudgetHoldOutcome]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def take(self, request: BudgetHold) -> BudgetHoldOutcome:
        """The outcome of ``request``, taken with whatever else is waiting."""
        aio = asyncio.get_running_loop()
        future: asyncio.Future[BudgetHoldOutcome] = aio.create_future()
        self._queue.append((request, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = aio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                outcomes = await self.store.hold_budgets([r for r, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            orphaned: list[HeldBudget] = []
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)
                else:  # its caller was cancelled meanwhile: give the holds back
                    orphaned += outcome.holds
            if orphaned:
                try:
                    await self.store.settle_budget(orphaned, 0, 0)
                except Exception:
                    log.warning("giving back the holds of cancelled calls failed; they expire", exc_info=True)


def _holds(run: Run) -> HoldBatcher:
    """The loop's batcher for the running event loop (``send_sync`` in several threads runs
    several event loops: each batches its own calls)."""
    rt = run.rt
    if not isinstance(rt.hold_batcher, weakref.WeakKeyDictionary):
        rt.hold_batcher = weakref.WeakKeyDictionary()
    aio = asyncio.get_running_loop()
    batcher = rt.hold_batcher.get(aio)
    if batcher is None:
        batcher = rt.hold_batcher[aio] = HoldBatcher(rt.store)
    return batcher


async def settle_unrecorded(run: Run, held: Reservation, usage: Usage, model: str | None) -> None:
    """Settle the shared-budget holds of a call that produced no record (failed, cancelled);
    when that fails too, the holds expire on their own."""
    if not held.holds:
        return
    try:
        await run.rt.store.settle_budget(held.holds, usage.total_tokens, cost_nano(run, usage, model))
    except Exception:
        log.warning("settling the budget holds of a failed model call failed; they expire", exc_info=True)


def cost_nano(run: Run, usage: Usage, model: str | None) -> int:
    """A call's cost in nano-dollars (0 when its model has no price)."""
    price = price_of(run, model)
    return 0 if price is None else round(price.cost(usage) * 1e9)


def _hold_in_chain(held: Reservation, sign: int) -> None:
    for r in held.runs:
        r.reserved_tokens += sign * held.tokens
        r.reserved_cost += sign * held.cost


def release(held: Reservation | None) -> None:
    """Give a reservation back (the call returned, or failed)."""
    if held is not None:
        _hold_in_chain(held, -1)


def charge(run: Run, usage: Usage, model: str | None) -> None:
    """Count a call's cost in the run and every run above it (tokens are counted by
    ``Run.add_usage``), and remember the prompt it was billed for."""
    run.last_prompt_tokens = max(run.last_prompt_tokens, usage.prompt_tokens)
    price = price_of(run, model)
    if price is None:
        return
    cost = price.cost(usage)
    current: Run | None = run
    while current is not None:
        current.cost_usd += cost
        current = current.parent


def check_tool_call(run: Run) -> BudgetHit | None:
    """Count a tool call about to start against ``max_tool_calls_per_run`` (of the run and
    every run above it), or the limit it would cross (then nothing is counted)."""
    chain = _chain(run)
    wall = check_wall(run)
    if wall is not None:
        return wall
    for r in chain:
        limit = r.config.max_tool_calls_per_run
        if limit is not None and r.tool_calls_started + 1 > limit:
            return _hit(r, "max_tool_calls_per_run", limit, r.tool_calls_started, 1)
    for r in chain:
        r.tool_calls_started += 1
    return None


def spent_budget(run: Run) -> BudgetHit | None:
    """At a round boundary: a limit already reached (a reported usage may pass the
    estimate), or the one a refused tool call hit."""
    if run.budget_hit is not None:
        return run.budget_hit
    for r in reversed(_chain(run)):  # a budget further up first: it binds the whole tree
        tokens = r.config.max_tokens_per_run
        if tokens is not None and r.usage.total_tokens >= tokens:
            return _hit(r, "max_tokens_per_run", tokens, r.usage.total_tokens, 1)
        dollars = r.config.max_cost_usd_per_run
        if dollars is not None and r.cost_usd >= dollars:
            return _hit(r, "max_cost_usd_per_run", dollars, r.cost_usd, 0)
    return check_wall(run)
