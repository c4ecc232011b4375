"""A run's access to the store: fenced writes, the in-memory history, lease renewal.

Every write of a run carries the run's lease (owner + fencing number); the store refuses it
with ``LeaseLostError`` if another run has taken the session since. The lease is renewed every
third of its lifetime while the run lives (a timer, then a short task per renewal), so a long
model call or tool never lets it lapse, and a crashed process's sessions free up one
``lease_ttl_s`` after its last renewal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from ..errors import LeaseLostError
from ..store.protocols import RunStore
from ..store.rows import Append, FinishRun, LeaseClaim, RecordEvents, WriteOp, WriteOutcome
from .emit import Emitter
from .history import Transcript

log = logging.getLogger("power_loop.engine")

EVENT_SEQ_HEADROOM = 64

T = TypeVar("T")


async def settle(task: asyncio.Future[T]) -> T | None:
    """Wait until ``task`` has ended, however often the caller is cancelled meanwhile.

    A store transaction runs in the store's worker thread: cancelling the task that awaits it
    does not stop it, and it may commit afterwards. Cleanup after a cancellation first waits
    for it with this, then acts on what it did. Returns its result, or None when it failed
    (logged) or was cancelled itself.
    """
    while not task.done():
        try:
            await asyncio.shield(task)
        except (asyncio.CancelledError, Exception):
            continue  # the loop condition tells whether the transaction has ended
    if task.cancelled():
        return None
    error = task.exception()
    if error is not None:
        log.warning("a store transaction awaited by a cancelled run failed: %r", error)
        return None
    return task.result()


class _ToTheEnd(asyncio.Task[T]):
    """A task nobody can cancel: see :func:`to_the_end`."""

    def cancel(self, msg: Any | None = None) -> bool:
        return False


class Raised:
    """The exception a transaction run by :func:`to_the_end` raised, as its task's result.

    Such a task does not end with the exception itself: ``asyncio.run`` finds it among the
    tasks it cancels at shutdown, cannot cancel it, and would report its exception as
    unhandled although the awaiting run took it (:func:`unwrap`, :func:`settle_to_the_end`).
    """

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


async def _carry(coro: Coroutine[Any, Any, T]) -> T | Raised:
    try:
        return await coro
    except Exception as exc:
        return Raised(exc)


def to_the_end(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T | Raised]:
    """Run ``coro`` (a store transaction) as a task that cannot be cancelled from outside.

    A task cancelled while it awaits one is told so once it has ended: asyncio marks the
    awaiting task and throws ``CancelledError`` at its next step, so the caller finds the
    transaction done (:func:`settle_to_the_end` returns at once) and can act on what it did.
    That is ``asyncio.shield`` plus a wait, without the extra future and callbacks on every
    write. An exception of ``coro`` is the task's result (:class:`Raised`): :func:`unwrap`
    raises it again.
    """
    return _ToTheEnd(_carry(coro), loop=asyncio.get_running_loop())


def unwrap(outcome: T | Raised) -> T:
    """The result of a :func:`to_the_end` task, or its transaction's exception raised."""
    if isinstance(outcome, Raised):
        raise outcome.error
    return outcome


async def settle_to_the_end(task: asyncio.Future[T | Raised]) -> T | None:
    """:func:`settle` for a :func:`to_the_end` task: its result, or None when it failed (logged)."""
    outcome = await settle(task)
    if isinstance(outcome, Raised):
        log.warning("a store transaction awaited by a cancelled run failed: %r", outcome.error)
        return None
    return outcome


class RunWriter:
    """Writes of one run, applied to the store and then to the cached transcript."""

    def __init__(
        self,
        store: RunStore,
        session_id: str,
        lease: LeaseClaim,
        transcript: Transcript,
        emitter: Emitter,
    ) -> None:
        self.store = store
        self.session_id = session_id
        self.lease = lease
        self.transcript = transcript
        self.emitter = emitter
        self._renewal: asyncio.TimerHandle | None = None  # the next renewal, when it is due
        self._renewer: asyncio.Task[None] | None = None  # a renewal in progress
        self._renewal_stopped = False
        self.lost: LeaseLostError | None = None
        # The session was found paused by one of this run's writes (loop.pause, any process).
        self.paused = False
        self.finished = False
        self.end_status: str | None = None  # the status the run's end was committed with
        # The parent session that received this background sub-agent's answer with the end.
        self.delivered_to: str | None = None

    async def write(self, ops: Sequence[WriteOp]) -> WriteOutcome:
        """Apply ``ops`` in one transaction; extend the transcript with what was appended.

        If the awaiting task is cancelled, the transaction still ends (it may commit after the
        cancellation): this waits for it and records its outcome before re-raising, so the
        run's end is known (``finished``) and the cached history matches the store.
        """
        if self.lost is not None:
            raise self.lost
        # The event log's records ride along (no transaction of their own); a write that does
        # not commit gives them back for the next one.
        records = self.emitter.take_records()
        if records:
            ops = [*ops, RecordEvents(records)]
        # Events still follow the run's last write (round_completed, session_ended, ...): the
        # stored high-water mark reserves room for them, so a loop opened later starts above
        # every seq this run can publish.
        task = to_the_end(
            self.store.write(self.session_id, ops, lease=self.lease, event_seq=self.emitter.seq + EVENT_SEQ_HEADROOM)
        )
        try:
            outcome = unwrap(await task)
        except asyncio.CancelledError:
            late = await settle_to_the_end(task)
            if late is not None:
                self._applied(ops, late)
            elif records:
                self.emitter.restore_records(records)
            raise
        except BaseException:
            if records:
                self.emitter.restore_records(records)
            raise
        return self._applied(ops, outcome)

    def _applied(self, ops: Sequence[WriteOp], outcome: WriteOutcome) -> WriteOutcome:
        """Bring the transcript and the run's state up to a committed write."""
        self.paused = self.paused or outcome.paused
        appended = [m for op in ops if isinstance(op, Append) for m in op.messages]
        self.transcript.messages.extend(appended)
        self.transcript.seqs.extend(outcome.seqs)
        self.transcript.extend(outcome.drained)
        self.transcript.version = outcome.version
        if outcome.finished:
            # The run's end is committed (lease released): later failures must not write again.
            self.finished = True
            self.end_status = next((op.status for op in ops if isinstance(op, FinishRun)), None)
            self.delivered_to = outcome.delivered_to
        return outcome

    def start_renewal(self) -> None:
        """Renew the lease every third of its lifetime until :meth:`stop_renewal`.

        A timer, not a task, waits for each renewal: most runs end before the first one is due,
        and a timer is one object where a sleeping task is half a dozen for the collector.
        """
        if self._renewal is None and not self._renewal_stopped:
            self._renewal = asyncio.get_running_loop().call_later(self._renew_interval(), self._renewal_due)

    def _renew_interval(self) -> float:
        return max(self.lease.ttl_ms / 3000.0, 0.05)

    def _renewal_due(self) -> None:
        self._renewal = None
        if not self._renewal_stopped:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_once())

    async def _renew_once(self) -> None:
        try:
            await self.store.renew_lease(self.session_id, self.lease)
        except LeaseLostError as exc:
            self.lost = exc
            return
        except Exception:  # a transient store error: the next write will tell
            log.warning("renewing the lease of session %s failed", self.session_id, exc_info=True)
        self._renewer = None
        self.start_renewal()

    async def stop_renewal(self) -> None:
        """Stop renewing; waits for a renewal in progress."""
        self._renewal_stopped = True
        timer, self._renewal = self._renewal, None
        if timer is not None:
            timer.cancel()
        task, self._renewer = self._renewer, None
        if task is not None:
            task.cancel()
            # wait() does not raise the renewer's CancelledError, so a cancellation of the
            # run's own task that arrives meanwhile still propagates instead of being swallowed.
            await asyncio.wait((task,))
