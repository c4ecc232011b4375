"""``TimerRunner``: delivers due timers, exactly once, from one process or many.

Delivery guarantee. A runner claims due timers (owner + lease, renewed while it works, + a
claim number), runs the ``TIMER_FIRE`` hook, then in ONE transaction writes the wake-up
message into the session's inbox and marks the timer fired (or re-arms a recurring timer's
next occurrence) — but only while it still holds that very claim. So:

* a crash before that commit leaves the timer claimed; once the lease (``stale_firing_s``)
  expires another runner claims it again: never lost;
* a crash after it leaves the timer fired and the message in the inbox: never delivered twice;
* the inbox is drained into the conversation exactly once (see the reliability docs), by the
  run the runner starts for an idle session, by the session's current run at its next round
  boundary, or by the next run of a session with unanswered tool calls.

A calendar timer (a cron schedule in a time zone) is one timer for the whole series: its
delivery transaction also arms the schedule's next occurrence. A firing that comes late, after
a downtime, stands for every occurrence missed since it came due: with the ``once`` rule it
delivers one wake-up that says how many were missed and since when, with ``skip`` it drops
them; the series then resumes on its calendar.

Each claimed timer is delivered by a task of its own, at most ``concurrency`` at a time, and
the runner claims more as soon as a slot frees: a slow hook delays only its own timer. The
session's run is started as a separate task after the delivery commits, so a slow run never
holds up another delivery. Deliveries that are ready together share one transaction (group
commit); what follows a commit (the ``timer_fired`` event, starting the run) is done by the
committer itself, so it happens even when the delivering task is cancelled by :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Literal

from ..errors import PowerLoopError, SessionBusyError, SessionPausedError, SessionPendingError
from ..events import AgentEventType, TimerFiredPayload
from ..hooks import HookDirective, HookPoint, TimerFireCtx
from ..store._timer_calendar import plan_firing
from ..store.protocols import MAX_DELAY_S, ClaimedTimer, Delivery
from .host import TimerHost

__all__ = ["TimerRunner", "wake_up_message"]

log = logging.getLogger("power_loop.timers")

_Outcome = tuple[str | None, int]

RUN_DEFER_S = 1.0
"""Longest a run started by a delivery waits for the runner to catch up with a burst of due
timers before it takes a run slot."""

TimerAction = Literal["deliver", "skip", "cancel", "postpone"]
"""What a delivery does with its timer, as decided by the ``TIMER_FIRE`` hook."""


def wake_up_message(timer_id: int, note: str, missed: str = "") -> str:
    """The message a firing timer puts into the conversation (0.11 format); ``missed`` is
    what a late calendar firing adds, e.g. ``(missed 3 occurrences since
    2026-12-01T09:00+01:00)``."""
    fired = f"fired {missed}" if missed else "fired"
    return f"<timer id={timer_id}>\nYour scheduled wake-up has {fired}. Your note to yourself was:\n{note}\n</timer>"


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set, ``timeout`` seconds at most. A cancellation is never lost:
    ``asyncio.wait_for`` before Python 3.12 returns normally when the wait ends in the same
    iteration as the task is cancelled, which once left a stopping runner scanning forever."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait((waiter,), timeout=timeout)
    finally:
        waiter.cancel()


class TimerRunner:
    """Delivers a loop's due timers.

    Args:
        loop: The loop whose store holds the timers: a ``StatefulAgentLoop``, or anything
            implementing :class:`~power_loop.timers.TimerHost` (the only members used).
        scan_interval_s: Longest pause between scans (a timer scheduled through this loop wakes
            the runner at once; one scheduled by another process is seen within this delay).
        stale_firing_s: Lease of a claim: a dead runner's claims are taken over this long after
            its last renewal. A failed delivery is retried this long after it failed.
        concurrency: Timers being delivered at the same time.
        batch: Most timers claimed per transaction.
        max_runs: Session runs started by deliveries that go on at the same time; the others
            wait for a slot (their wake-ups are already safe in the inbox) so a burst of due
            timers never starves the deliveries themselves, nor floods the model provider or
            the store's connection pool. Raise it when runs spend long waiting on a slow
            model. During a burst (a claim that filled every free delivery slot) a run also
            waits until the runner has caught up, :data:`RUN_DEFER_S` at most. A runner
            stopping drops the runs that have not started; the next runner starts them.
        misfire_grace_s: How late a calendar timer's occurrence may fire and still count as
            on time; an occurrence later than this was missed (see the ``misfire`` rule of
            ``schedule_timer``). ``math.inf``: none is ever missed.
        clock: The time, in epoch seconds (default ``time.time``), that decides what is due,
            the claims' leases and a calendar timer's next occurrence. Tests and simulations
            pass their own to move through dates without waiting; every runner of one store
            must use the same clock.
    """

    def __init__(
        self,
        loop: TimerHost,
        *,
        scan_interval_s: float = 2.0,
        stale_firing_s: float = 120.0,
        concurrency: int = 64,
        batch: int = 200,
        max_runs: int = 32,
        misfire_grace_s: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if scan_interval_s <= 0 or stale_firing_s <= 0 or concurrency < 1 or batch < 1 or max_runs < 1:
            raise ValueError("scan_interval_s and stale_firing_s must be > 0; concurrency, batch and max_runs >= 1")
        if not misfire_grace_s >= 0:
            raise ValueError("misfire_grace_s must be >= 0")
        self.misfire_grace_s = misfire_grace_s
        self._clock = clock
        self.loop: TimerHost = loop
        self.scan_interval_s = scan_interval_s
        self.stale_firing_s = stale_firing_s
        self.concurrency = concurrency
        self.batch = batch
        self.max_runs = max_runs
        self._run_slots: asyncio.Semaphore | None = None
        self._caught_up: asyncio.Event | None = None
        """Set while the last claim left nothing due behind it: runs wait (a little) for it."""
        self.owner = f"runner-{os.getpid()}-{secrets.token_hex(4)}"
        self.delivered = 0
        """Timers this runner processed (delivered, queued, skipped, cancelled or postponed)."""
        self._task: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._fires: set[asyncio.Task[str | None]] = set()
        self._after: set[asyncio.Task[None]] = set()
        self._wakes: set[asyncio.Task[None]] = set()
        self._queued: dict[asyncio.Task[None], str] = {}
        """Wakes waiting for a run slot (nothing started yet), with their session."""
        self._waking: set[str] = set()
        self._queue: list[tuple[Delivery, asyncio.Future[_Outcome]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._stopping = False
        self._kick: asyncio.Event | None = None
        self._kick_fn: Callable[[], None] | None = None

    def _now_ms(self) -> int:
        """The runner's time in epoch ms."""
        return int((time.time() if self._clock is None else self._clock()) * 1000)

    def _store_now(self) -> int | None:
        """The time handed to the store: None (its own wall clock) unless a clock was given."""
        return None if self._clock is None else self._now_ms()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._task is not None and not self._task.done()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start delivering in the background (idempotent)."""
        if self.running:
            return
        await self.loop.store.open()
        self._stopping = False
        aio = asyncio.get_running_loop()
        kick = self._kick = asyncio.Event()
        self._run_slots = None  # made on first use, in this event loop
        self._caught_up = None

        def kick_fn() -> None:
            aio.call_soon_threadsafe(kick.set)

        self._kick_fn = kick_fn
        self.loop.add_timer_listener(kick_fn)
        self._task = aio.create_task(self._run_forever(), name="power-loop-timer-runner")
        self._renewer = aio.create_task(self._renew_forever(), name="power-loop-timer-leases")

    async def stop(self, *, grace_s: float = 30.0) -> None:
        """Stop delivering and shut down cleanly.

        Deliveries whose hooks are still running are cancelled and their claims handed back;
        a delivery already committing completes (its event is published and its session run
        started, or queued for a run slot). Runs still waiting for a slot are dropped: their
        wake-ups stay in the inbox and the next runner starts them (see ``max_runs``). Runs
        going on get ``grace_s`` seconds to finish, then they are
        cancelled (a cancelled run leaves its session as a crash would: consistent, with any
        interrupted tool calls pending). Finally the remaining claims are released for the
        next runner.
        """
        self._stopping = True  # the scan loop ends even if a cancellation were lost
        for task in (self._task, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._renewer = None
        for fire in list(self._fires):
            fire.cancel()
        if self._fires:
            await asyncio.gather(*self._fires, return_exceptions=True)
        if self._flusher is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._flusher
        if self._after:
            await asyncio.gather(*self._after, return_exceptions=True)
        for task in list(self._queued):
            task.cancel()  # not started: its wake-up waits in the inbox for the next runner
        if self._wakes:
            _, late = await asyncio.wait(set(self._wakes), timeout=max(0.0, grace_s))
            if late:
                log.warning("cancelling %d run(s) still going %ss after stop()", len(late), grace_s)
                self.cancel_runs()
                await asyncio.gather(*late, return_exceptions=True)
        if self._kick_fn is not None:
            self.loop.remove_timer_listener(self._kick_fn)
            self._kick_fn = None
        with contextlib.suppress(Exception):
            await self.loop.store.release_timer_claims(self.owner)

    def cancel_runs(self) -> None:
        """Cancel the session runs started by deliveries (e.g. on a second SIGTERM)."""
        for task in list(self._wakes):
            task.cancel()

    async def drain(self) -> None:
        """Wait until the deliveries and the runs they started so far have finished (handy in
        tests and before shutting a process down)."""
        while self._fires or self._after or self._wakes:
            await asyncio.gather(*self._fires, *self._after, *self._wakes, return_exceptions=True)

    async def __aenter__(self) -> TimerRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ scanning

    async def scan_once(self) -> int:
        """Claim and deliver every timer due now (not the occurrences they re-arm), waiting for
        the deliveries; start runs for sessions whose wake-up was left waiting by a crash.
        Returns the number of timers processed."""
        due_by = self._now_ms()
        processed = 0
        while True:
            started = await self._dispatch(due_by=due_by)
            outcomes = await asyncio.gather(*started, return_exceptions=True)
            processed += sum(1 for o in outcomes if isinstance(o, str))
            if len(started) < self._room(ignore_running=True):
                break
        await self._recover_orphans()
        return processed

    def _room(self, *, ignore_running: bool = False) -> int:
        running = 0 if ignore_running else len(self._fires)
        return max(0, min(self.batch, self.concurrency - running))

    async def _dispatch(self, *, due_by: int | None = None) -> list[asyncio.Task[str | None]]:
        """Claim as many due timers as there are free delivery slots and start delivering them."""
        room = self._room()
        if room == 0:
            return []
        lease_ms = int(self.stale_firing_s * 1000)
        claimed = await self.loop.store.claim_due_timers(
            self.owner, lease_ms=lease_ms, limit=room, due_by=due_by, now=self._store_now()
        )
        caught_up = self._caught_up_event()
        if len(claimed) < room:
            caught_up.set()
        else:
            caught_up.clear()  # more may be due: deliveries go before the runs they start
        aio = asyncio.get_running_loop()
        started = []
        for timer in claimed:
            task = aio.create_task(self._fire(timer))
            self._fires.add(task)
            task.add_done_callback(self._fire_done)
            started.append(task)
        return started

    def _fire_done(self, task: asyncio.Task[str | None]) -> None:
        self._fires.discard(task)
        if self._kick is not None:
            self._kick.set()  # a slot is free: the loop may claim more

    async def _recover_orphans(self) -> None:
        for session_id in await self.loop.store.orphan_inboxes(limit=self.batch):
            self._start_wake(session_id)
        # Background sub-agents whose process died mid-run: resumed here, so their answer
        # still reaches their parent.
        for session_id in await self.loop.store.orphan_subagents(limit=self.batch):
            self._start_wake(session_id, resume=True)

    async def _run_forever(self) -> None:
        assert self._kick is not None
        failing: str | None = None  # the last scan failure reported
        while not self._stopping:
            self._kick.clear()
            delay = self.scan_interval_s
            try:
                started = await self._dispatch()
                await self._recover_orphans()
                if started and len(started) == self.batch:
                    continue  # more may be due right now
                due = await self.loop.store.next_timer_due_at(self.owner)
                if due is not None:
                    delay = min(delay, max(0.0, (due - self._now_ms()) / 1000))
                if self._room() == 0:
                    delay = self.scan_interval_s  # all slots busy: a finishing delivery kicks
                if failing is not None:
                    log.warning("timer scans work again after: %s", failing)
                    failing = None
            except Exception as exc:
                # A lasting fault (a vanished or read-only store) fails every scan the same
                # way: report it once, with its traceback, not every scan_interval_s.
                text = f"{type(exc).__name__}: {exc}"
                if text != failing:
                    log.exception("timer scan failed; retrying every %ss", self.scan_interval_s)
                    failing = text
                else:
                    log.debug("timer scan failed again: %s", text)
            await wait_event(self._kick, delay)

    async def _renew_forever(self) -> None:
        lease_ms = int(self.stale_firing_s * 1000)
        while True:
            await asyncio.sleep(self.stale_firing_s / 3)
            try:
                await self.loop.store.renew_timer_claims(self.owner, lease_ms=lease_ms, now=self._store_now())
            except Exception:
                log.warning("renewing timer claims failed", exc_info=True)

    # ------------------------------------------------------------------ delivering

    async def _fire(self, timer: ClaimedTimer) -> str | None:
        """Run the hook and commit the outcome; the outcome, None when the claim was lost."""
        loop = self.loop
        action: TimerAction = "deliver"
        postpone_ms = 0
        try:
            if timer.cron is None:
                message, covered_until, on_time = wake_up_message(timer.timer_id, timer.note), None, True
            else:
                # Counting the occurrences a late firing stands for walks the calendar (up to
                # MISSED_COUNT_LIMIT of them, and a zone's first use reads its file): a burst
                # of series late after a downtime must not stall the event loop.
                now = self._now_ms()  # the clock is read here, on the event loop
                if timer.claimed_at is not None:
                    # Taken over from a runner that died holding it: the firing happened when
                    # that runner picked it up; what came due since is left for the next one.
                    now = min(now, timer.claimed_at)
                message, covered_until, on_time = await asyncio.to_thread(self._calendar_firing, timer, now)
            if not on_time:  # every occurrence it stands for was missed, and the rule is skip
                action = "skip"
            elif loop.hooks.has(HookPoint.TIMER_FIRE):
                ctx = TimerFireCtx(
                    session_id=timer.session_id,
                    timer_id=timer.timer_id,
                    note=timer.note,
                    due_at=timer.due_at,
                    message=message,
                )
                directive = await loop.hooks.run(HookPoint.TIMER_FIRE, ctx)
                if not isinstance(ctx.message, str):
                    raise TypeError(f"TIMER_FIRE set ctx.message to a {type(ctx.message).__name__}, not a str")
                message = ctx.message
                if directive is HookDirective.SKIP:
                    action = "skip"
                elif directive is HookDirective.BREAK:
                    action = "cancel"
                elif ctx.postpone_s > 0:
                    action, postpone_ms = "postpone", int(min(ctx.postpone_s, 100 * 365 * 86400) * 1000)
        except Exception as exc:
            await self._failed(timer, exc)
            return "error"
        outcome, _ = await self._commit(Delivery(timer, action, message, postpone_ms, covered_until))
        return outcome

    def _calendar_firing(self, timer: ClaimedTimer, now: int) -> tuple[str, int | None, bool]:
        """The wake-up message of a firing at ``now``, the instant up to which a calendar
        timer's firing stands for its occurrences (None for other timers), and whether it
        delivers (False: every occurrence it stands for was missed and the rule is ``skip``)."""
        if timer.cron is None or timer.tz is None:
            return wake_up_message(timer.timer_id, timer.note), None, True
        # What this firing stands for is counted at ``now``; the series resumes after it.
        plan = plan_firing(
            timer.cron,
            timer.tz,
            timer.misfire or "once",
            due_at=timer.due_at,
            now=now,
            grace_ms=int(min(self.misfire_grace_s, MAX_DELAY_S) * 1000),  # math.inf: never missed
            until=timer.until_at,
        )
        return wake_up_message(timer.timer_id, timer.note, plan.describe(timer.tz)), now, plan.deliver

    async def _failed(self, timer: ClaimedTimer, exc: BaseException | str) -> None:
        """A delivery failed: hand the claim back, due ``stale_firing_s`` later, and say so."""
        log.warning("delivering timer %s of session %s failed: %s", timer.timer_id, timer.session_id, exc)
        try:
            retried = await self.loop.store.retry_timer_later(
                timer, self.owner, delay_ms=int(self.stale_firing_s * 1000), now=self._store_now()
            )
        except Exception:
            retried = True  # the claim stays; its lease runs out and it is taken over
        if retried:  # not when the timer was cancelled or taken over meanwhile
            await self._publish(timer, "error", 0)

    async def _commit(self, delivery: Delivery) -> _Outcome:
        """Group commit: deliveries that become ready while a transaction is in flight are
        applied together in the next one (each timer still commits atomically with its
        wake-up message; a batch only saves transactions)."""
        future: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        self._queue.append((delivery, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        aio = asyncio.get_running_loop()
        while self._queue:
            batch, self._queue = self._queue, []
            try:
                outcomes = await self.loop.store.deliver_timers(
                    self.owner, [d for d, _ in batch], now=self._store_now()
                )
            except Exception as exc:
                # Nothing of this batch committed; each claim stays and is handed back.
                outcomes = [("error", 0)] * len(batch)
                failure: BaseException | str = exc
            else:
                failure = "its transaction failed"
            for (delivery, future), (outcome, seq) in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result((outcome, seq))
                after = aio.create_task(self._after_commit(delivery.timer, outcome, seq, failure))
                self._after.add(after)
                after.add_done_callback(self._after.discard)

    async def _after_commit(self, timer: ClaimedTimer, outcome: str | None, seq: int, failure: object) -> None:
        """Publish the outcome and start the session's run (also when the deliverer was
        cancelled while its delivery committed)."""
        if outcome is None:
            return  # cancelled meanwhile, or another runner took the claim over
        if outcome == "error":
            await self._failed(timer, str(failure))
            return
        self.delivered += 1
        await self._publish(timer, outcome, seq)
        if outcome == "delivered":
            self._start_wake(timer.session_id)

    async def _publish(self, timer: ClaimedTimer, outcome: str, seq: int) -> None:
        try:
            await self.loop.publish_session_event(
                timer.session_id,
                AgentEventType.TIMER_FIRED,
                TimerFiredPayload(timer_id=timer.timer_id, note=timer.note, due_at=timer.due_at, outcome=outcome),
                source="timer",
                min_seq=seq,
            )
        except Exception:
            log.exception("a timer_fired subscriber failed (timer %s of %s)", timer.timer_id, timer.session_id)

    def _start_wake(self, session_id: str, *, resume: bool = False) -> None:
        """Run the session so it reads its inbox (or, with ``resume``, so a background
        sub-agent goes on), as a task of its own (a slow run never holds up the next delivery).
        Wake-ups of one session delivered together start one run."""
        if session_id in self._waking:
            return
        self._waking.add(session_id)

        async def wake() -> None:
            # During a burst, the deliveries go first: a run waits until the runner has caught
            # up with what is due, or RUN_DEFER_S at most (runs never starve).
            await wait_event(self._caught_up_event(), RUN_DEFER_S)
            async with self._slots():
                del self._queued[task]
                self._waking.discard(session_id)  # a wake-up delivered from now on needs a new run
                await run()

        async def run() -> None:
            try:
                if resume:
                    await self.loop.resume(session_id, lift_pause=False)  # a pause by hand holds
                else:
                    await self.loop.wake(session_id)
            except (SessionBusyError, SessionPendingError, SessionPausedError):
                pass  # another run holds it (and drains the inbox), or it awaits resume
            except PowerLoopError as exc:
                log.warning("run woken by a timer for session %s failed: %s", session_id, exc)
            except Exception:
                log.exception("run woken by a timer for session %s failed", session_id)

        task = asyncio.get_running_loop().create_task(wake())
        self._queued[task] = session_id
        self._wakes.add(task)
        task.add_done_callback(self._wake_done)

    def _wake_done(self, task: asyncio.Task[None]) -> None:
        self._wakes.discard(task)
        session_id = self._queued.pop(task, None)
        if session_id is not None:  # cancelled before its run started
            self._waking.discard(session_id)

    def _caught_up_event(self) -> asyncio.Event:
        if self._caught_up is None:
            self._caught_up = asyncio.Event()
            self._caught_up.set()
        return self._caught_up

    def _slots(self) -> asyncio.Semaphore:
        if self._run_slots is None:
            self._run_slots = asyncio.Semaphore(self.max_runs)
        return self._run_slots
