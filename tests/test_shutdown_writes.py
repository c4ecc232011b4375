"""Cancellation around store transactions that cannot be taken back: what asyncio reports
when it shuts down with one still going."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from power_loop import SQLiteSessionStore, StatefulAgentLoop
from power_loop.testing import ScriptedLLM, text_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest


class WorkerBlocker:
    """Queues a job that holds the store's worker thread until released; ``steal`` makes it
    take the lease of every session first (as another process's run would)."""

    def __init__(self, store: SQLiteSessionStore, *, steal: bool = False) -> None:
        self.store = store
        self.steal = steal
        self.started = threading.Event()
        self.release = threading.Event()
        self.job: asyncio.Future[Any] | None = None

    def _hold(self, tx: Any) -> None:
        if self.steal:
            tx.execute("UPDATE sessions SET lease_owner = 'another-process', fence = fence + 1")
        self.started.set()
        self.release.wait(30)

    def queue(self) -> None:
        """From the event loop's thread, without awaiting (a model rule is synchronous)."""
        self.job = asyncio.ensure_future(self.store._call(self._hold, tx=False))


def test_a_write_failing_at_asyncio_run_shutdown_is_not_reported_as_unhandled(db_path: str) -> None:
    """``asyncio.run`` ends with a send still waiting on its end write, which then fails (its
    lease was taken): the run handles the failure, so asyncio's exception handler hears of
    nothing ("unhandled exception during asyncio.run() shutdown")."""
    reported: list[dict[str, Any]] = []
    kept: list[object] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: reported.append(context))
        store = SQLiteSessionStore(db_path)
        blocker = WorkerBlocker(store, steal=True)

        def rule(request: ScriptedRequest) -> ScriptedReply:
            if blocker.job is None:
                blocker.queue()  # the run's end write queues behind it
            return text_reply("answer")

        loop = StatefulAgentLoop(llm=ScriptedLLM(rule=rule), store=store)
        sid = loop.new_session()
        send = asyncio.ensure_future(loop.send("hello", session_id=sid))
        await asyncio.to_thread(blocker.started.wait, 30)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not send.done()
        # The worker goes on once this task has returned: asyncio.run then cancels the send.
        task = asyncio.current_task()
        assert task is not None
        task.add_done_callback(lambda _: blocker.release.set())
        kept.extend((send, loop, store))

    try:
        asyncio.run(main())
    finally:
        for obj in kept:
            if isinstance(obj, SQLiteSessionStore):
                obj.close_nowait()
    assert [context.get("message") for context in reported] == []
    send = kept[0]
    assert isinstance(send, asyncio.Future) and send.cancelled()
