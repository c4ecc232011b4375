"""``TimerRunner``: delivers due timers, exactly once, from one process or many.

Delivery guarantee. A runner claims due timers (owner + lease, renewed while it works), runs
the ``TIMER_FIRE`` hook, then in ONE transaction writes the wake-up message into the
session's inbox and marks the timer fired (or re-arms a recurring timer's next occurrence) —
but only while it still holds the claim. So:

* a crash before that commit leaves the timer claimed; once the lease (``stale_firing_s``)
  expires another runner claims it again: never lost;
* a crash after it leaves the timer fired and the message in the inbox: never delivered twice;
* the inbox is drained into the conversation exactly once (see the reliability docs), by the
  run the runner starts for an idle session, by the session's current run at its next round
  boundary, or by the next run of a session with unanswered tool calls.

Deliveries of different sessions run concurrently (``concurrency`` at a time); a slow agent
run in one session never holds up another session's timers, because a session's run is
started as its own task after the delivery commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import PowerLoopError, SessionBusyError, SessionPendingError, StoreError
from ..events import AgentEventType, TimerFiredPayload
from ..hooks import HookDirective, HookPoint, TimerFireCtx
from ..store._timers_sql import ClaimedTimer, Delivery

if TYPE_CHECKING:
    from ..loop import StatefulAgentLoop

__all__ = ["TimerRunner", "wake_up_message"]

log = logging.getLogger("power_loop.timers")


def wake_up_message(timer_id: int, note: str) -> str:
    """The message a firing timer puts into the conversation (0.11 format)."""
    return f"<timer id={timer_id}>\nYour scheduled wake-up has fired. Your note to yourself was:\n{note}\n</timer>"


class TimerRunner:
    """Delivers a loop's due timers.

    Args:
        loop: The loop whose store holds the timers (its hooks and event bus are used).
        scan_interval_s: Longest pause between scans (a timer scheduled through this loop wakes
            the runner at once; one scheduled by another process is seen within this delay).
        stale_firing_s: Lease of a claim: a dead runner's claims are taken over this long after
            its last renewal.
        concurrency: Timers delivered at the same time.
        batch: Timers claimed per scan.
    """

    def __init__(
        self,
        loop: StatefulAgentLoop,
        *,
        scan_interval_s: float = 2.0,
        stale_firing_s: float = 120.0,
        concurrency: int = 64,
        batch: int = 200,
    ) -> None:
        if scan_interval_s <= 0 or stale_firing_s <= 0 or concurrency < 1 or batch < 1:
            raise ValueError("scan_interval_s and stale_firing_s must be > 0; concurrency and batch >= 1")
        self.loop = loop
        self.scan_interval_s = scan_interval_s
        self.stale_firing_s = stale_firing_s
        self.concurrency = concurrency
        self.batch = batch
        self.owner = f"runner-{os.getpid()}-{secrets.token_hex(4)}"
        self._task: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._wakes: set[asyncio.Task[None]] = set()
        self._waking: set[str] = set()
        self._queue: list[tuple[Delivery, asyncio.Future[tuple[str | None, int]]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._semaphore: asyncio.Semaphore | None = None
        self._kick: asyncio.Event | None = None
        self._kick_fn: Callable[[], None] | None = None
        self.delivered = 0

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start scanning in the background (idempotent)."""
        if self.running:
            return
        await self.loop.store.open()
        self._semaphore = asyncio.Semaphore(self.concurrency)
        self._kick = asyncio.Event()
        aio, kick = asyncio.get_running_loop(), self._kick

        def kick_fn() -> None:
            aio.call_soon_threadsafe(kick.set)

        self._kick_fn = kick_fn
        self.loop._rt.timer_kick = self._kick_fn
        self._task = asyncio.get_running_loop().create_task(self._scan_forever(), name="power-loop-timer-runner")
        self._renewer = asyncio.get_running_loop().create_task(self._renew_forever(), name="power-loop-timer-leases")

    async def stop(self) -> None:
        """Stop scanning, wait for deliveries and the runs they started, release claims."""
        for task in (self._task, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._renewer = None
        if self._flusher is not None:
            with contextlib.suppress(Exception):
                await self._flusher
        if self._wakes:
            await asyncio.gather(*self._wakes, return_exceptions=True)
        if self.loop._rt.timer_kick is self._kick_fn:
            self.loop._rt.timer_kick = None
        with contextlib.suppress(Exception):
            await self.loop.store.release_timer_claims(self.owner)

    async def drain(self) -> None:
        """Wait until the runs started by deliveries so far have finished (handy in tests and
        before shutting a process down)."""
        while self._wakes:
            await asyncio.gather(*list(self._wakes), return_exceptions=True)

    async def __aenter__(self) -> TimerRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _scan_forever(self) -> None:
        assert self._kick is not None
        while True:
            try:
                await self.scan_once()
            except Exception:
                log.exception("timer scan failed; retrying in %ss", self.scan_interval_s)
            delay = self.scan_interval_s
            with contextlib.suppress(Exception):
                due = await self.loop.store.next_timer_due_at()
                if due is not None:
                    delay = min(delay, max(0.0, due / 1000 - time.time()))
            self._kick.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), timeout=delay)

    async def _renew_forever(self) -> None:
        lease_ms = int(self.stale_firing_s * 1000)
        while True:
            await asyncio.sleep(self.stale_firing_s / 3)
            try:
                await self.loop.store.renew_timer_claims(self.owner, lease_ms=lease_ms)
            except Exception:
                log.warning("renewing timer claims failed", exc_info=True)

    async def scan_once(self) -> int:
        """Claim and deliver every due timer (in batches); wake sessions whose inbox was left
        behind by a crash. Returns the number of timers processed."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.concurrency)
        processed = 0
        lease_ms = int(self.stale_firing_s * 1000)
        while True:
            claimed = await self.loop.store.claim_due_timers(self.owner, lease_ms=lease_ms, limit=self.batch)
            if not claimed:
                break
            outcomes = await asyncio.gather(*(self._bounded(t) for t in claimed))
            processed += sum(1 for o in outcomes if o is not None)
            if len(claimed) < self.batch:
                break
        for session_id in await self.loop.store.orphan_inboxes(limit=self.batch):
            self._wake(session_id)
        return processed

    async def _bounded(self, timer: ClaimedTimer) -> str | None:
        assert self._semaphore is not None
        async with self._semaphore:
            return await self._fire(timer)

    async def _fire(self, timer: ClaimedTimer) -> str | None:
        loop = self.loop
        message = wake_up_message(timer.timer_id, timer.note)
        action, postpone_ms = "deliver", 0
        try:
            if loop.hooks.has(HookPoint.TIMER_FIRE):
                ctx = TimerFireCtx(
                    session_id=timer.session_id,
                    timer_id=timer.timer_id,
                    note=timer.note,
                    due_at=timer.due_at,
                    message=message,
                )
                directive = await loop.hooks.run(HookPoint.TIMER_FIRE, ctx)
                message = ctx.message
                if directive is HookDirective.SKIP:
                    action = "skip"
                elif directive is HookDirective.BREAK:
                    action = "cancel"
                elif ctx.postpone_s > 0:
                    action, postpone_ms = "postpone", int(ctx.postpone_s * 1000)
            outcome, seq = await self._commit(Delivery(timer, action, message, postpone_ms))
            if outcome == "error":
                raise StoreError("the delivery's transaction failed")
        except Exception as exc:
            # Retried stale_firing_s from now (if even that write fails, the claim's lease
            # runs out and another scan or runner takes it over).
            log.warning("delivering timer %s of session %s failed: %s", timer.timer_id, timer.session_id, exc)
            with contextlib.suppress(Exception):
                await loop.store.retry_timer_later(timer, self.owner, delay_ms=int(self.stale_firing_s * 1000))
            await self._publish(timer, "error", 0)
            return "error"
        if outcome is None:
            return None  # cancelled meanwhile, or another runner took the claim over
        self.delivered += 1
        await self._publish(timer, outcome, seq)
        if outcome == "delivered":
            self._wake(timer.session_id)
        return outcome

    async def _publish(self, timer: ClaimedTimer, outcome: str, seq: int) -> None:
        await self.loop._emit_session_event(
            timer.session_id,
            AgentEventType.TIMER_FIRED,
            TimerFiredPayload(timer_id=timer.timer_id, note=timer.note, due_at=timer.due_at, outcome=outcome),
            source="timer",
            min_seq=seq,
        )

    async def _commit(self, delivery: Delivery) -> tuple[str | None, int]:
        """Group commit: deliveries that become ready while a transaction is in flight are
        applied together in the next one (each timer still commits atomically with its
        wake-up message; a batch only saves transactions)."""
        future: asyncio.Future[tuple[str | None, int]] = asyncio.get_running_loop().create_future()
        self._queue.append((delivery, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                outcomes = await self.loop.store.deliver_timers(self.owner, [d for d, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else StoreError("cancelled"))
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)

    def _wake(self, session_id: str) -> None:
        """Run the session so it reads its inbox, as a task of its own (a slow run never holds
        up the next delivery). Wake-ups of one session delivered together start one run."""
        if session_id in self._waking:
            return
        self._waking.add(session_id)

        async def wake() -> None:
            self._waking.discard(session_id)
            try:
                await self.loop._wake(session_id)
            except (SessionBusyError, SessionPendingError):
                pass  # another run holds it (and drains the inbox), or it awaits resume
            except PowerLoopError as exc:
                log.warning("run woken by a timer for session %s failed: %s", session_id, exc)
            except Exception:
                log.exception("run woken by a timer for session %s failed", session_id)

        task = asyncio.get_running_loop().create_task(wake())
        self._wakes.add(task)
        task.add_done_callback(self._wakes.discard)
