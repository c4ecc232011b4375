"""Starting a run: the begin transaction, waiting for another process's run, and what a
cancellation during it leaves behind.

The begin transaction takes the session lease, drains the inbox, appends the user input and
inserts the run row. It runs in the store's worker thread, so cancelling the task that awaits
it does not stop it: it may still commit. A cancelled begin therefore waits for it and, when
it committed, closes the run as ``cancelled`` and releases the lease in one more transaction
before the cancellation goes on. Without this the session would stay held for
``lease_ttl_s`` (by a run nobody drives) with its run row left ``running``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from .._types import RunKind
from ..errors import (
    ApprovalPendingError,
    SessionBusyError,
    SessionNotFoundError,
    SessionPausedError,
    SessionPendingError,
)
from ..messages import UserMessage
from ..store.rows import BeginOutcome, BeginRun, FinishRun, LeaseClaim, RunTotals
from .history import Transcript
from .runtime import Runtime
from .writer import settle, settle_to_the_end, to_the_end, unwrap

log = logging.getLogger("power_loop.engine")

__all__ = ["begin_run", "transcript_after_begin"]


async def begin_run(
    rt: Runtime,
    *,
    session_id: str,
    kind: RunKind,
    run_id: str,
    lease: LeaseClaim,
    cached: Transcript | None,
    message: UserMessage | None,
    heal_pending: bool,
    lift_pause: bool = True,
    wait_foreign: bool,
    time_left: float,
) -> BeginOutcome:
    """Start the run in the store, waiting (bounded) while another process holds the session.

    Raises:
        SessionNotFoundError: Unknown session.
        SessionPendingError: Unanswered tool calls (``send`` without ``heal_pending``).
        SessionPausedError: The session is paused and the run is no ``resume``.
        SessionBusyError: Another process's run kept the session past ``time_left``.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + time_left
    delay = 0.02
    begin = BeginRun(
        session_id=session_id,
        run_id=run_id,
        lease=lease,
        kind=kind,
        messages=(message,) if message is not None else (),
        heal_pending=heal_pending,
        allow_pending=kind in ("resume", "submit_input", "approve"),
        lift_pause=lift_pause,
        cached_version=cached.version if cached is not None else None,
    )
    while True:
        outcome = await _attempt(rt, begin)
        if outcome.status == "ok":
            return outcome
        if outcome.status == "not_found":
            rt.histories.drop(session_id)
            raise SessionNotFoundError(session_id)
        if outcome.status == "paused":
            assert outcome.paused_at is not None
            raise SessionPausedError(session_id, paused_at=outcome.paused_at)
        if outcome.status == "pending":
            assert outcome.pending is not None
            calls = [
                # 0.11's tool_calls[] shape, plus flat name/arguments and the status
                {**c.to_dict(), "name": c.name, "arguments": c.arguments, "status": c.status}
                for c in outcome.pending.calls
            ]
            seq = outcome.pending.assistant_seq
            if outcome.pending.approvals:
                tokens = [a.token for a in outcome.pending.approvals]
                raise ApprovalPendingError(session_id, assistant_seq=seq, pending_tool_calls=calls, tokens=tokens)
            raise SessionPendingError(session_id, assistant_seq=seq, pending_tool_calls=calls)
        if not wait_foreign or loop.time() + delay > deadline:
            raise SessionBusyError(
                f"session {session_id!r} is held by another process's run ({outcome.lease_owner}) and "
                f"stayed busy for {rt.config.session_wait_s:.1f}s (AgentLoopConfig.session_wait_s); retry "
                "later, or use follow_up() to queue the message for that run",
                session_id=session_id,
            )
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)


async def _attempt(rt: Runtime, begin: BeginRun) -> BeginOutcome:
    """One begin transaction; if the caller is cancelled meanwhile, undo its hold first."""
    task = to_the_end(rt.store.begin_run(begin))
    try:
        return unwrap(await task)
    except asyncio.CancelledError:
        outcome = await settle_to_the_end(task)
        if outcome is not None and outcome.status == "ok":
            await settle(asyncio.ensure_future(_close_cancelled(rt, begin, outcome)))
        raise


async def _close_cancelled(rt: Runtime, begin: BeginRun, outcome: BeginOutcome) -> None:
    """Record a run whose begin committed after its task was cancelled: run row
    ``cancelled``, lease released (one transaction, fenced like any write of the run)."""
    rt.histories.drop(begin.session_id)  # the begin appended what the cached history lacks
    finish = FinishRun(
        begin.run_id,
        "cancelled",
        RunTotals(count_send=begin.kind != "wake"),
        error="task cancelled while the run was starting",
        drain_inbox=False,
    )
    await rt.store.write(begin.session_id, [finish], lease=replace(begin.lease, fence=outcome.fence))
    log.info("run %s of session %s was cancelled while starting", begin.run_id, begin.session_id)


def transcript_after_begin(rt: Runtime, session_id: str, cached: Transcript | None, begin: BeginOutcome) -> Transcript:
    """The run's history: the cached transcript brought up to date, or the one begin loaded."""
    if begin.history is not None or cached is None:
        transcript = Transcript(version=begin.version)
        if begin.history is not None:
            transcript.messages.extend(begin.history.messages)
            transcript.seqs.extend(begin.history.seqs)
    else:
        transcript = cached
        transcript.extend(begin.appended)
    transcript.version = begin.version
    rt.histories.put(session_id, transcript)
    return transcript
