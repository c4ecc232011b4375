"""``AgentLoopConfig``: how a loop runs (0.11 fields plus power_loop's own).

Configs are frozen dataclasses validated on creation; ``dataclasses.replace`` derives
variants.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Union, runtime_checkable

from ._types import MAX_SPAWN_DEPTH
from .approvals import MAX_APPROVAL_TTL_S
from .errors import ConfigurationError
from .guards import Budget, NoProgressPolicy, Price
from .projectors import default_runtime_projectors
from .providers.retry import LLMRetryPolicy
from .structured import resolve_response_format

__all__ = ["DEFAULT_SYSTEM_PROMPT", "AgentLoopConfig", "PriorityKey", "RateClock", "RateLimit"]

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, precise assistant. Answer concisely. Use the available tools when they "
    "help, read their results carefully, and say plainly when you cannot do something."
)


class _DefaultCompactor:
    """Marker for "use DefaultCompactor()" (resolved when the loop starts)."""

    def __repr__(self) -> str:
        return "DefaultCompactor()"


DEFAULT_COMPACTOR: Any = _DefaultCompactor()


@dataclass(frozen=True)
class AgentLoopConfig:
    """How a loop runs.

    Attributes:
        system_prompt: Default system prompt (a session's own and a per-call one take
            precedence; None falls back to a built-in default).
        max_rounds: Rounds per run before ``hit_round_limit``.
        temperature: Sampling temperature of every model call.
        max_tokens: Completion cap per model call.
        max_tokens_per_run: Token budget (prompt + completion) of one run, its sub-agents'
            tokens included. Checked before every model call: the call's prompt estimate plus
            its completion cap is reserved, the cap clamped to what is left, so the run never
            goes past it; a call that cannot fit ends the run ``budget_exceeded`` first (see
            ``StatefulResult.budget``). None = unlimited.
        compactor: Context compaction strategy; None disables compaction.
        retry_policy: Retry policy of model calls; None uses the provider's ``max_retries``.
        memory: A memory provider recalled at the start of each run.
        memory_budget_tokens: Token budget of recalled memory.
        notes_policy: The limits of agent-written notes (``NotesPolicy``; None: the default
            policy).
        skills_dir: A folder of skills (``*/SKILL.md``): every run's system prompt lists them
            in a ``# Skills`` section, and ``load_skill`` loads from it when the runtime
            environment names no skills folder.
        runtime_projectors: What the model is shown of the session's runtime state each
            round, appended to that round's system prompt (default: the todo list and
            unseen background-command updates; ``()`` shows nothing). See
            :mod:`power_loop.projectors`.
        inject_tool_descriptions: Append a catalog of the offered tools to the system prompt.
        tool_catalog_header: Heading of that catalog.
        tool_concurrency: Tool calls of one model turn run concurrently, at most this many
            at a time.
        tool_timeout_s: Default time limit of a tool call (None = none); ``@tool(timeout_s=)``
            overrides it per tool. It counts from when the handler starts.
        max_tool_result_chars: Tool results longer than this are truncated with a marker.
        max_input_chars: Largest accepted user input (characters of text).
        stream: Stream model responses (deltas reach ``stream_delta`` subscribers).
        model: Model override for every call (None: the provider's model).
        context_window: The model's context window in tokens (None: ask the provider).
        session_wait_s: How long a send waits for a session another run holds.
        lease_ttl_s: Lifetime of a session lease between renewals; a crashed process's
            sessions are free again this long after its last renewal.
        history_cache_size: Sessions whose history stays in memory between sends.
        history_cache_hot: Of those, how many (the most recently used) keep their messages as
            objects; the others are kept as their stored JSON, one string per message, which
            CPython's garbage collector never walks (a full collection stops the event loop
            for as long as it takes to walk every tracked object). A parked session sent to
            again is decoded in one parse, without a store read.
        tool_threads: Threads of the loop's own pool for sync tool handlers (all sessions of
            the loop share it; async handlers run on the event loop and do not use it). A sync
            handler that outlives its time limit keeps its thread until it returns.
        max_subagent_depth: How deep sub-agents may nest (a main session is depth 0, its
            children depth 1); a spawn deeper than this is refused with a message the model
            reads.
        max_concurrent_subagents: Sub-agents of one run running at the same time (the
            children a model spawns in one round run concurrently, this many at a time).
        llm_services: Model services a sub-agent spec may name in ``model`` (by key); any
            other ``model`` is asked of the loop's own service.
        response_format: The structured output every run of a main session must give (a
            ``StructuredOutputSpec``, a pydantic model class or a JSON schema dict; see
            ``send(response_format=...)``, which wins). Sub-agents do not inherit it.
        max_cost_usd_per_run: Cost budget of one run in US dollars, its sub-agents' calls
            included, priced with ``pricing``; reserved and clamped before every model call as
            ``max_tokens_per_run`` is. ``StatefulResult.usage["cost_usd"]`` reports the cost.
        max_wall_s_per_run: Wall-clock budget of one run in seconds, checked before every
            model call and every tool call. A run continued by ``resume``, ``submit_input`` or
            ``approve`` counts the time its earlier parts took; a new ``send`` starts afresh.
        max_tool_calls_per_run: Tool calls one run (with its sub-agents) may start; the call
            that would cross it is answered without running and the run ends
            ``budget_exceeded``.
        pricing: Price of each model, by the model name the loop sends (``model``, else the
            service's); needed for ``max_cost_usd_per_run`` and ``usage["cost_usd"]``.
        no_progress: Stop (or nudge) a run that repeats the same tool call or keeps sending
            invalid arguments (:class:`~power_loop.guards.NoProgressPolicy`). None = off.
        budgets: Budgets shared by many runs, per session, tenant or loop and per time
            window (:class:`~power_loop.guards.Budget`), kept in the session store so runs in
            every process draw on the same ones; checked and reserved before every model call.
        tenant_key: The session-metadata key naming a session's tenant, for ``Budget(scope=
            "tenant")`` (a sub-agent counts under its root session's tenant).
        approval_ttl_s: How long an approval request stays valid, in seconds (a tool's own
            ``approval_ttl_s`` wins). Approving it later answers the call as expired and
            ends the run ``approval_expired``.
        persist_events: Store every event of the loop's sessions (all but stream deltas)
            in the session store, read back with ``loop.iter_events``; see
            docs/events.md#the-event-log. Off by default: nothing is recorded then.
        max_concurrent_runs: At most this many runs of this loop go on at once; the others
            wait in a queue, holding no session lease (None: no limit). A sub-agent run, or
            any run started from inside a run's task, shares its caller's place. See
            docs/admission.md.
        rate_limit: A :class:`RateLimit` on the model requests of every run of this loop,
            sub-agents' included (None: no limit).
        priority_key: The order of the runs waiting for ``max_concurrent_runs``: the name of
            a session-metadata key holding a number, or a callable
            ``(session_id, metadata) -> number`` (sync or async). Higher first, first come
            first served within one priority; None: first come first served.
    """

    system_prompt: str | None = None
    max_rounds: int = 24
    temperature: float = 0.0
    max_tokens: int = 8000
    max_tokens_per_run: int | None = None
    compactor: Any = field(default=DEFAULT_COMPACTOR)
    retry_policy: LLMRetryPolicy | None = None
    memory: Any = None
    memory_budget_tokens: int = 1500
    notes_policy: Any = None
    skills_dir: str | Path | None = None
    runtime_projectors: Sequence[Any] = field(default_factory=default_runtime_projectors)
    inject_tool_descriptions: bool = True
    tool_catalog_header: str = "# Available Tools"
    tool_concurrency: int = 8
    tool_timeout_s: float | None = None
    max_tool_result_chars: int = 50_000
    max_input_chars: int = 1_000_000
    stream: bool = True
    model: str | None = None
    context_window: int | None = None
    session_wait_s: float = 30.0
    lease_ttl_s: float = 5.0
    history_cache_size: int = 256
    history_cache_hot: int = 64
    tool_threads: int = 16
    max_subagent_depth: int = MAX_SPAWN_DEPTH
    max_concurrent_subagents: int = 4
    llm_services: Mapping[str, Any] | None = None
    response_format: Any = None
    max_cost_usd_per_run: float | None = None
    max_wall_s_per_run: float | None = None
    max_tool_calls_per_run: int | None = None
    pricing: Mapping[str, Price] | None = None
    no_progress: NoProgressPolicy | None = None
    budgets: Sequence[Budget] = ()
    tenant_key: str = "tenant_id"
    approval_ttl_s: float = 3600.0
    persist_events: bool = False
    max_concurrent_runs: int | None = None
    rate_limit: RateLimit | None = None
    priority_key: PriorityKey | None = None

    def __post_init__(self) -> None:
        _positive("max_rounds", self.max_rounds)
        _positive("max_tokens", self.max_tokens)
        _positive("tool_concurrency", self.tool_concurrency)
        if not isinstance(self.tool_threads, int) or isinstance(self.tool_threads, bool) or self.tool_threads < 1:
            raise ConfigurationError(f"AgentLoopConfig.tool_threads must be an integer >= 1, got {self.tool_threads!r}")
        _positive("max_tool_result_chars", self.max_tool_result_chars)
        _positive("max_concurrent_subagents", self.max_concurrent_subagents)
        if (
            not isinstance(self.max_subagent_depth, int)
            or isinstance(self.max_subagent_depth, bool)
            or self.max_subagent_depth < 0
        ):
            raise ConfigurationError(
                f"AgentLoopConfig.max_subagent_depth must be an integer >= 0, got {self.max_subagent_depth!r}"
            )
        if self.llm_services is not None and not all(isinstance(k, str) and k for k in self.llm_services):
            raise ConfigurationError("AgentLoopConfig.llm_services must map non-empty model names to services")
        _positive("max_input_chars", self.max_input_chars)
        _positive("lease_ttl_s", self.lease_ttl_s)
        if self.max_tokens_per_run is not None:
            _positive("max_tokens_per_run", self.max_tokens_per_run)
        if self.tool_timeout_s is not None:
            _positive("tool_timeout_s", self.tool_timeout_s)
        if self.context_window is not None:
            _positive("context_window", self.context_window)
        if self.session_wait_s < 0:
            raise ConfigurationError(f"session_wait_s must be >= 0, got {self.session_wait_s}")
        if self.history_cache_size < 0:
            raise ConfigurationError(f"history_cache_size must be >= 0, got {self.history_cache_size}")
        if self.history_cache_hot < 0:
            raise ConfigurationError(f"history_cache_hot must be >= 0, got {self.history_cache_hot}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigurationError(f"temperature must be within [0, 2], got {self.temperature}")
        if self.retry_policy is not None and not isinstance(self.retry_policy, LLMRetryPolicy):
            raise ConfigurationError("retry_policy must be an LLMRetryPolicy")
        if self.response_format is not None:
            try:
                resolve_response_format(self.response_format)
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"AgentLoopConfig.response_format: {exc}") from None
        if not isinstance(self.runtime_projectors, tuple):
            object.__setattr__(self, "runtime_projectors", tuple(self.runtime_projectors))
        self._check_guards()
        self._check_admission()

    def _check_guards(self) -> None:
        for name in ("max_cost_usd_per_run", "max_wall_s_per_run", "max_tool_calls_per_run"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.max_tool_calls_per_run is not None and not isinstance(self.max_tool_calls_per_run, int):
            raise ConfigurationError(
                f"AgentLoopConfig.max_tool_calls_per_run must be an integer, got {self.max_tool_calls_per_run!r}"
            )
        if self.pricing is not None and not all(
            isinstance(k, str) and k and isinstance(v, Price) for k, v in self.pricing.items()
        ):
            raise ConfigurationError("AgentLoopConfig.pricing must map model names to Price(...) values")
        if self.max_cost_usd_per_run is not None and not self.pricing:
            raise ConfigurationError(
                "AgentLoopConfig.max_cost_usd_per_run needs pricing={model: Price(input_per_mtok=..., "
                "output_per_mtok=...)} for the models the loop calls"
            )
        if not isinstance(self.budgets, tuple):
            object.__setattr__(self, "budgets", tuple(self.budgets))
        if not all(isinstance(b, Budget) for b in self.budgets):
            raise ConfigurationError("AgentLoopConfig.budgets must hold Budget(...) values")
        keys = [b.key("") for b in self.budgets]
        if len(set(keys)) != len(keys):
            raise ConfigurationError(
                "AgentLoopConfig.budgets has two budgets of the same scope and window; tell them apart with name="
            )
        if any(b.cost_usd is not None for b in self.budgets) and not self.pricing:
            raise ConfigurationError("a Budget with cost_usd needs AgentLoopConfig.pricing={model: Price(...)}")
        if not isinstance(self.tenant_key, str) or not self.tenant_key:
            raise ConfigurationError("AgentLoopConfig.tenant_key must be a non-empty string")
        if self.no_progress is not None and not isinstance(self.no_progress, NoProgressPolicy):
            raise ConfigurationError("AgentLoopConfig.no_progress must be a NoProgressPolicy or None")
        _positive("approval_ttl_s", self.approval_ttl_s)
        if self.approval_ttl_s > MAX_APPROVAL_TTL_S:
            raise ConfigurationError(
                f"AgentLoopConfig.approval_ttl_s must be at most 100 years, got {self.approval_ttl_s}"
            )
        if not isinstance(self.persist_events, bool):
            raise ConfigurationError(f"AgentLoopConfig.persist_events must be a bool, got {self.persist_events!r}")

    def _check_admission(self) -> None:
        limit = self.max_concurrent_runs
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ConfigurationError(
                f"AgentLoopConfig.max_concurrent_runs must be an integer >= 1 or None, got {limit!r}"
            )
        if self.rate_limit is not None and not isinstance(self.rate_limit, RateLimit):
            raise ConfigurationError(
                "AgentLoopConfig.rate_limit must be a RateLimit(requests_per_s=..., tokens_per_min=..., burst=...) "
                f"or None, got {type(self.rate_limit).__name__}"
            )
        key = self.priority_key
        if key is None:
            return
        if isinstance(key, str):
            if not key:
                raise ConfigurationError("AgentLoopConfig.priority_key must be a non-empty metadata key")
        elif not callable(key):
            raise ConfigurationError(
                "AgentLoopConfig.priority_key must be a session-metadata key (str) or a callable "
                f"(session_id, metadata) -> number, got {type(key).__name__}"
            )
        if limit is None:
            raise ConfigurationError(
                "AgentLoopConfig.priority_key orders the runs waiting for max_concurrent_runs; "
                "set max_concurrent_runs too"
            )


def _positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"AgentLoopConfig.{name} must be > 0, got {value!r}")


PriorityKey = Union[str, Callable[[str, Mapping[str, Any]], Union[float, Awaitable[float]]]]
"""What ``AgentLoopConfig.priority_key`` accepts: a session-metadata key, or a callable
``(session_id, metadata) -> number`` (or an awaitable of one)."""


@runtime_checkable
class RateClock(Protocol):
    """The time a :class:`RateLimit` reads and sleeps on (a test may pass its own)."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` on this clock."""
        ...


@dataclass(frozen=True)
class RateLimit:
    """The pace of the model requests of one loop (``AgentLoopConfig.rate_limit``).

    Attributes:
        requests_per_s: Requests that may start per second, on average. With ``burst`` it
            is a token bucket of capacity ``burst`` refilled at this rate: no one-second
            window sees more than ``requests_per_s + burst`` requests start. None: no
            request limit.
        tokens_per_min: Tokens per minute: each request reserves its estimated prompt tokens
            plus its completion cap (``max_tokens``) from a bucket of this capacity refilled
            at ``tokens_per_min / 60`` a second, and waits while the bucket cannot cover
            it; once answered, the reservation is corrected to the tokens the provider
            reports. None: no token limit.
        burst: Requests that may start at once after a quiet spell (an integer >= 1; it
            applies to ``requests_per_s``).
        clock: The clock the limits read and sleep on (None: ``time.monotonic`` and
            ``asyncio.sleep``). Tests pass a clock of their own to run without waiting.

    At least one of ``requests_per_s`` and ``tokens_per_min`` must be given.
    """

    requests_per_s: float | None = None
    tokens_per_min: int | None = None
    burst: int = 1
    clock: RateClock | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        rps = self.requests_per_s
        if rps is not None and (
            not isinstance(rps, (int, float)) or isinstance(rps, bool) or not math.isfinite(rps) or rps <= 0
        ):
            raise ConfigurationError(f"RateLimit.requests_per_s must be a finite number > 0 or None, got {rps!r}")
        tpm = self.tokens_per_min
        if tpm is not None and (not isinstance(tpm, int) or isinstance(tpm, bool) or tpm < 1):
            raise ConfigurationError(f"RateLimit.tokens_per_min must be an integer >= 1 or None, got {tpm!r}")
        if rps is None and tpm is None:
            raise ConfigurationError("RateLimit needs requests_per_s, tokens_per_min or both")
        burst = self.burst
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            raise ConfigurationError(f"RateLimit.burst must be an integer >= 1, got {burst!r}")
        if rps is None and burst != 1:
            raise ConfigurationError("RateLimit.burst applies to requests_per_s; set requests_per_s too")
        if self.clock is not None and not isinstance(self.clock, RateClock):
            raise ConfigurationError("RateLimit.clock must have now() and an async sleep(seconds)")
