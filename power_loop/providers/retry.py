"""The one retry layer.

``LLMRetryPolicy`` decides how often and how long a logical model call may be retried.
:func:`complete_with_retry` applies it around a provider's single-request ``complete``:

* Retried: errors marked ``retryable`` (429, 5xx, timeouts, connection errors). Never
  retried: other 4xx, and errors that are not provider errors (bugs in custom services
  surface at once).
* Backoff is exponential (``backoff_initial * 2**n`` capped at ``backoff_max``) with jitter
  (each delay drawn from its upper half). A provider's ``Retry-After`` wins when longer.
* ``total_timeout`` bounds the whole logical call, backoff sleeps included: a hung request is
  cancelled when it runs out, and a retry that could not start in time is not attempted.
* Provider SDKs are built with their own retries off, so one attempt here is one HTTP request.

:func:`with_retry` is 0.11's general form: it drives any zero-argument coroutine function
under a policy (see its docstring for how it differs from the model-call path).
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from ..cancellation import StopEventLike, StopSignal
from ..errors import CancellationRequested, ConfigurationError, LLMError, LLMRetryExhausted, LLMTimeout

if TYPE_CHECKING:
    from .base import LLMRequest, LLMResponse, LLMService, StreamCallbacks

__all__ = ["LLMRetryPolicy", "RetryAttemptCallback", "RetryNotice", "complete_with_retry", "with_retry"]

T = TypeVar("T")

RetryAttemptCallback = Callable[[int, BaseException, float], Any]
"""``on_retry(attempt, error, delay_s)`` of :func:`with_retry`: ``attempt`` is the 0-based index
of the attempt that failed. May be sync or async."""


@dataclass(frozen=True)
class LLMRetryPolicy:
    """How a logical model call is retried.

    Attributes:
        max_attempts: Requests allowed for one logical call (1 = no retry).
        backoff_initial: First backoff delay in seconds.
        backoff_max: Cap of a single backoff delay.
        total_timeout: Seconds the whole call may take, retries included (None = unbounded).
        retry_on: Exception types eligible for retry; an error must also be retryable.
    """

    max_attempts: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    total_timeout: float | None = 60.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"LLMRetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_initial < 0 or self.backoff_max < 0:
            raise ConfigurationError("LLMRetryPolicy backoff values must be >= 0")
        if self.total_timeout is not None and self.total_timeout <= 0:
            raise ConfigurationError(f"LLMRetryPolicy.total_timeout must be > 0, got {self.total_timeout}")
        if not isinstance(self.retry_on, tuple):
            object.__setattr__(self, "retry_on", tuple(self.retry_on))

    @classmethod
    def from_max_retries(cls, max_retries: int, *, total_timeout: float | None = None) -> LLMRetryPolicy:
        """The policy used when none is configured: ``max_retries`` retries after the first try."""
        return cls(max_attempts=max(1, max_retries + 1), total_timeout=total_timeout)

    def backoff(self, retry_number: int, *, rng: random.Random | None = None) -> float:
        """Delay before retry ``retry_number`` (1-based), jittered within its upper half."""
        ceiling = min(self.backoff_max, self.backoff_initial * (2.0 ** (retry_number - 1)))
        draw = float((rng or random).random())
        return ceiling / 2 + draw * ceiling / 2

    def backoff_for_attempt(self, attempt: int) -> float:
        """Delay before attempt ``attempt`` (0-based), without jitter (0.11's schedule).

        Attempt 0 is the first call and waits 0; attempt 1 waits ``backoff_initial``, and each
        later attempt doubles it, capped at ``backoff_max``.
        """
        if attempt <= 0:
            return 0.0
        return float(min(self.backoff_max, self.backoff_initial * (2.0 ** (attempt - 1))))

    def should_retry(self, error: BaseException) -> bool:
        """True when ``error`` is transient and eligible under ``retry_on``."""
        return isinstance(error, LLMError) and error.retryable and isinstance(error, self.retry_on)


@dataclass(frozen=True)
class RetryNotice:
    """What the retry layer reports before sleeping for a retry.

    Attributes:
        attempt: The attempt that failed (1-based).
        max_attempts: The policy's limit.
        delay_s: How long it will wait before the next attempt.
        error: The failure.
    """

    attempt: int
    max_attempts: int
    delay_s: float
    error: LLMError


async def complete_with_retry(
    llm: LLMService,
    request: LLMRequest,
    *,
    policy: LLMRetryPolicy | None = None,
    callbacks: StreamCallbacks | None = None,
    stop: StopSignal | None = None,
    on_retry: Callable[[RetryNotice], Awaitable[None] | None] | None = None,
) -> LLMResponse:
    """Run one logical model call under ``policy``.

    Args:
        llm: The provider (each ``complete`` is one request).
        request: The request.
        policy: Retry policy; defaults to ``LLMRetryPolicy.from_max_retries(llm.max_retries)``.
        callbacks: Streaming callbacks, passed to every attempt.
        stop: Cancellation signal, checked during requests and backoff sleeps.
        on_retry: Called before each backoff sleep (sync or async).

    Raises:
        LLMError: A non-retryable failure, at once.
        LLMRetryExhausted: Every allowed attempt failed with a retryable error.
        LLMTimeout: ``total_timeout`` ran out.
        CancellationRequested: ``stop`` fired.
    """
    policy = policy or LLMRetryPolicy.from_max_retries(getattr(llm, "max_retries", 0))
    stop = stop or StopSignal(None)
    deadline = None if policy.total_timeout is None else time.monotonic() + policy.total_timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            return await _attempt(llm, request, callbacks, stop, deadline, policy)
        except LLMError as exc:
            if not policy.should_retry(exc) or attempt >= policy.max_attempts:
                if attempt > 1 and policy.should_retry(exc):
                    raise LLMRetryExhausted(
                        f"model call failed after {attempt} attempts: {exc}", attempts=attempt, last_error=exc
                    ) from exc
                raise
            delay = max(policy.backoff(attempt), exc.retry_after or 0.0)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise LLMRetryExhausted(
                    f"model call failed after {attempt} attempt(s) and the retry budget "
                    f"(total_timeout={policy.total_timeout}s) leaves no time to wait {delay:.1f}s "
                    f"for another: {exc}",
                    attempts=attempt,
                    last_error=exc,
                ) from exc
            if on_retry is not None:
                outcome = on_retry(RetryNotice(attempt, policy.max_attempts, delay, exc))
                if outcome is not None:
                    await outcome
            await stop.sleep(delay)


async def _attempt(
    llm: LLMService,
    request: LLMRequest,
    callbacks: StreamCallbacks | None,
    stop: StopSignal,
    deadline: float | None,
    policy: LLMRetryPolicy,
) -> LLMResponse:
    call = llm.complete(request, callbacks=callbacks)
    if deadline is None:
        return await stop.run(call)
    remaining = deadline - time.monotonic()
    try:
        return await stop.run(asyncio.wait_for(call, timeout=max(remaining, 0.0)))
    except asyncio.TimeoutError:
        raise LLMTimeout(
            f"model call exceeded the retry policy's total_timeout of {policy.total_timeout}s "
            "and was cancelled; raise LLMRetryPolicy.total_timeout for slow models",
            provider=getattr(llm, "provider", None),
            retryable=False,
        ) from None


def _retryable_for(policy: LLMRetryPolicy, error: BaseException) -> bool:
    # A provider error that says it cannot succeed (a 4xx) is not retried even when retry_on
    # matches; stops are never retried.
    if isinstance(error, CancellationRequested) or not isinstance(error, policy.retry_on):
        return False
    return not isinstance(error, LLMError) or error.retryable


async def with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    policy: LLMRetryPolicy,
    token: StopEventLike | None = None,
    on_retry: RetryAttemptCallback | None = None,
) -> T:
    """Await ``call()`` under ``policy``, retrying failures (the 0.11 retry driver).

    Each attempt calls ``call()`` afresh. A failure is retried when it is an instance of
    ``policy.retry_on``, except a provider error that is not retryable (a 4xx) and
    :class:`~power_loop.errors.CancellationRequested`; anything else propagates unchanged at
    once. Before attempt ``n`` it waits :meth:`LLMRetryPolicy.backoff_for_attempt` ``(n)``
    seconds, after calling ``on_retry(n - 1, error, delay)``.

    Args:
        call: Zero-argument function returning an awaitable (e.g. ``lambda: llm.complete(req)``).
        policy: How often and how long to try.
        token: A ``CancellationToken`` (or any ``stop_event`` kind, or None), watched during
            each attempt and each backoff sleep.
        on_retry: Called before each backoff sleep as ``(attempt, error, delay_s)``; sync or async.

    Returns:
        What the first successful attempt returned.

    Raises:
        LLMRetryExhausted: ``max_attempts`` attempts failed with retryable errors (the last one
            is ``last_error`` and ``__cause__``).
        LLMTimeout: ``policy.total_timeout`` ran out: the attempt in flight is cancelled, and no
            backoff that would end past the deadline is started.
        CancellationRequested: ``token`` fired; the attempt in flight is cancelled.
    """
    stop = StopSignal(token)
    started = time.monotonic()
    deadline = None if policy.total_timeout is None else started + policy.total_timeout

    def timed_out(attempts: int) -> LLMTimeout:
        return LLMTimeout(
            elapsed=time.monotonic() - started,
            attempts=attempts,
            total_timeout=policy.total_timeout,
            retryable=False,
        )

    attempt = 0
    while True:
        stop.check()
        work = call()
        if deadline is not None:
            work = asyncio.wait_for(work, timeout=max(deadline - time.monotonic(), 0.0))
        try:
            return await stop.run(work)
        except Exception as exc:
            if deadline is not None and isinstance(exc, asyncio.TimeoutError) and time.monotonic() >= deadline:
                raise timed_out(attempt + 1) from None
            if not _retryable_for(policy, exc):
                raise
            if attempt + 1 >= policy.max_attempts:
                raise LLMRetryExhausted(attempts=attempt + 1, last_error=exc) from exc
            delay = policy.backoff_for_attempt(attempt + 1)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise timed_out(attempt + 1) from exc
            if on_retry is not None:
                outcome = on_retry(attempt, exc, delay)
                if inspect.isawaitable(outcome):
                    await outcome
            stop.check()  # on_retry may have cancelled: stop before starting the sleep
            await stop.sleep(delay)
            attempt += 1
