"""A send cancelled while its transaction waits on the store's worker: the transaction ends
(it cannot be taken back), the run is recorded with what it did, and the session is free."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from power_loop import AgentLoopConfig, SQLiteSessionStore, StatefulAgentLoop, ToolRegistry, tool
from power_loop.testing import ScriptedLLM, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest


class WorkerBlocker:
    """Queues a job that holds the store's worker thread until released."""

    def __init__(self, store: SQLiteSessionStore) -> None:
        self.store = store
        self.started = threading.Event()
        self.release = threading.Event()
        self.job: asyncio.Future[Any] | None = None

    def _hold(self, tx: Any) -> None:
        self.started.set()
        self.release.wait(30)

    def queue(self) -> None:
        """From the event loop's thread, without awaiting (a model rule is synchronous)."""
        self.job = asyncio.ensure_future(self.store._call(self._hold, tx=False))


async def _statuses(store: SQLiteSessionStore) -> list[str]:
    return [status for (status,) in await store.execute_fetchall("SELECT status FROM runs ORDER BY run")]


@pytest.mark.parametrize("where", ["begin", "end"])
async def test_a_send_cancelled_while_its_transaction_is_queued(db_path: str, where: str) -> None:
    store = SQLiteSessionStore(db_path)
    blocker = WorkerBlocker(store)
    answers = iter(["first", "second"])

    def rule(request: ScriptedRequest) -> ScriptedReply:
        if where == "end" and blocker.job is None:
            blocker.queue()  # the run's end write queues behind it
        return text_reply(next(answers))

    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), store=store) as loop:
        sid = loop.new_session()
        try:
            if where == "begin":
                blocker.queue()  # the run's begin queues behind it
            send = asyncio.ensure_future(loop.send("hello", session_id=sid))
            await asyncio.to_thread(blocker.started.wait, 30)
            for _ in range(20):
                await asyncio.sleep(0)
            send.cancel()
            for _ in range(20):  # the transaction is queued behind the blocker: the send waits
                await asyncio.sleep(0)
            assert not send.done()
        finally:
            blocker.release.set()
        with pytest.raises(asyncio.CancelledError):
            await send
        assert blocker.job is not None
        await blocker.job
        # The run is recorded: cancelled while starting, or with the end it committed.
        assert await _statuses(store) == ["cancelled" if where == "begin" else "completed"]
        result = await loop.send("again", session_id=sid)  # the session is free
        assert result.status == "completed"
        contents = [m["content"] for m in await loop.get_messages_async(sid)]
        if where == "begin":
            assert contents == ["hello", "again", "first"]
        else:
            assert contents == ["hello", "first", "again", "second"]


async def test_the_lease_is_renewed_while_a_run_waits_and_not_after_it(db_path: str) -> None:
    """Renewal runs on a timer: while a tool waits, the lease's expiry moves forward every
    third of its lifetime; once the run has ended, nothing renews it any more."""
    inside, leave = asyncio.Event(), asyncio.Event()

    @tool
    async def wait_here() -> str:
        """Wait until released."""
        inside.set()
        await leave.wait()
        return "left"

    async def expiry(sid: str) -> int:
        rows = await store.execute_fetchall("SELECT lease_expires_at FROM sessions WHERE session_id = ?", (sid,))
        return int(rows[0][0])

    store = SQLiteSessionStore(db_path)
    llm = ScriptedLLM([tool_reply(("wait_here", {})), text_reply("done")])
    config = AgentLoopConfig(lease_ttl_s=0.3)  # renewed every 0.1 s
    async with StatefulAgentLoop(llm=llm, store=store, tool_registry=ToolRegistry([wait_here]), config=config) as loop:
        sid = loop.new_session()
        send = asyncio.ensure_future(loop.send("go", session_id=sid))
        await asyncio.wait_for(inside.wait(), 30)
        seen = {await expiry(sid)}
        while len(seen) < 4:  # three renewals, however slow the machine
            await asyncio.sleep(0.02)
            seen.add(await expiry(sid))
        leave.set()
        assert (await send).final_text == "done"
        ended = await expiry(sid)
        await asyncio.sleep(0.35)  # more than three renewal intervals
        assert await expiry(sid) == ended


async def test_a_result_whose_event_loop_closed_meanwhile_leaves_the_worker_serving(db_path: str) -> None:
    """A transaction queued from an event loop that is closed before it ends (a ``send_sync``
    thread's loop, say) is dropped when it ends: the worker thread goes on serving the others
    (it used to die reporting into the closed loop, and every later call hung)."""
    async with SQLiteSessionStore(db_path) as store:
        await store.create_session("before")
        blocker = WorkerBlocker(store)

        def queue_then_close_loop() -> None:
            loop = asyncio.new_event_loop()
            try:
                blocker.job = loop.run_until_complete(_queue(blocker))
            finally:
                loop.close()  # the job is still running on the worker thread

        await asyncio.to_thread(queue_then_close_loop)
        await asyncio.to_thread(blocker.started.wait, 30)
        blocker.release.set()
        await asyncio.wait_for(store.create_session("after"), 30)  # the same worker thread serves it
        assert {s.session_id for s in await store.list_sessions()} == {"before", "after"}


async def _queue(blocker: WorkerBlocker) -> asyncio.Future[Any]:
    blocker.queue()
    await asyncio.sleep(0)  # the job is on the worker's queue
    assert blocker.job is not None
    return blocker.job
