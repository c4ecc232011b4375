"""Tools that misbehave: stuck sync handlers, raising hooks, stray BaseExceptions, lone
surrogates, a tool's own TimeoutError. Each fault ends as a clear, recorded outcome."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from power_loop import AgentHooks, AgentLoopConfig, HookError, HookPoint, StatefulAgentLoop, ToolRegistry, tool
from power_loop.errors import ConfigurationError
from power_loop.human import request_user_input
from power_loop.messages import ToolCall
from power_loop.testing import ScriptedLLM, ScriptedServer, text_reply, tool_reply
from power_loop.tools.threads import ToolNotStarted, ToolThreads, ToolTimeout

from .conftest import ServiceFactory
from .helpers import history_is_valid


async def _statuses(loop: StatefulAgentLoop, sid: str) -> list[tuple[str, str]]:
    rows = await loop.store.execute_fetchall(
        "SELECT tool_call_id, status FROM tool_calls "
        "WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY assistant_seq, position",
        (sid,),
    )
    return [(str(r[0]), str(r[1])) for r in rows]


async def _run_status(loop: StatefulAgentLoop, sid: str) -> list[tuple[str, str | None]]:
    rows = await loop.store.execute_fetchall(
        "SELECT status, error FROM runs WHERE session = (SELECT id FROM sessions WHERE session_id = ?) ORDER BY run",
        (sid,),
    )
    return [(str(r[0]), r[1]) for r in rows]


# --------------------------------------------------------------------------- 6: the tool threads


@pytest.fixture
def gates() -> Iterator[list[threading.Event]]:
    """Events that stuck tools wait on; all released when the test ends (no thread outlives it)."""
    made: list[threading.Event] = []
    yield made
    for event in made:
        event.set()


def test_tool_threads_is_validated() -> None:
    assert AgentLoopConfig().tool_threads >= 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigurationError, match="tool_threads"):
            AgentLoopConfig(tool_threads=bad)  # type: ignore[arg-type]


async def test_stuck_sync_tools_starve_only_their_own_threads(db_path: str, gates: list[threading.Event]) -> None:
    gate = threading.Event()
    gates.append(gate)
    entered: list[str] = []
    ran: list[str] = []

    @tool(timeout_s=0.2)
    def stuck(label: str) -> str:
        """Blocks until the test releases it (ignores its time limit, as a sync handler must)."""
        entered.append(label)
        gate.wait(60)
        return f"released {label}"

    @tool(timeout_s=30)
    def quick() -> str:
        """Returns at once."""
        ran.append(threading.current_thread().name)
        return "quick ran"

    # As many stuck calls as the default executor has threads: had they run there, nothing
    # else (the SDK import, other libraries) could use it any more.
    n = min(32, (os.cpu_count() or 1) + 4)
    stuck_calls = [("stuck", {"label": str(i)}, f"s{i}") for i in range(n)]
    llm = ScriptedLLM(
        [
            tool_reply(*stuck_calls),
            text_reply("all timed out"),
            tool_reply(("quick", {}, "q1")),
            text_reply("starved"),
            tool_reply(("quick", {}, "q2")),
            text_reply("ran"),
        ]
    )
    reg = ToolRegistry([stuck, quick])
    config = AgentLoopConfig(tool_threads=n, tool_concurrency=n)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=reg, config=config) as loop:
        sid = await loop.new_session_async()
        first = await loop.send("block", session_id=sid)
        assert first.status == "completed"
        messages = await loop.get_messages_async(sid)
        assert [m["content"] for m in messages[2 : 2 + n]] == ["Error: tool 'stuck' timed out after 0.2s"] * n
        assert sorted(entered) == sorted(str(i) for i in range(n))  # all started: they hold every thread

        # Every tool thread is held by a call that already timed out: the next sync call is
        # not started, and the model is told exactly that (not a fake timeout).
        second = await loop.send("quick please", session_id=sid)
        assert second.status == "completed"
        messages = await loop.get_messages_async(sid)
        starved = messages[-2]
        assert starved["tool_call_id"] == "q1" and starved["is_error"] is True
        assert starved["content"].startswith(
            f"Error: tool 'quick' was not started: all {n} tool threads are still held by earlier calls that timed out"
        )
        assert "AgentLoopConfig.tool_threads" in starved["content"]
        assert ran == []
        assert ("q1", "failed") in await _statuses(loop, sid)

        # The default executor (SDK imports, other libraries) is free.
        free = asyncio.get_running_loop().run_in_executor(None, lambda: "free")
        assert await asyncio.wait_for(free, 30) == "free"

        # Once the stuck handlers return, their threads serve new calls.
        gate.set()
        threads = loop._rt.tool_threads()
        for _ in range(1000):  # hang guard only
            if threads.held == 0:
                break
            await asyncio.sleep(0.01)
        third = await loop.send("again", session_id=sid)
        assert third.status == "completed"
        messages = await loop.get_messages_async(sid)
        assert messages[-2]["content"] == "quick ran"
        assert ran and ran[0].startswith("power_loop-tool")
        assert history_is_valid(messages)


async def test_time_limit_counts_from_the_start_of_the_handler(db_path: str) -> None:
    """With one tool thread, the second call waits for the first; its limit runs only once it starts."""
    order: list[str] = []

    @tool(timeout_s=1.5)
    def nap(label: str) -> str:
        """Takes one second."""
        order.append(label)
        threading.Event().wait(1.0)
        return f"rested {label}"

    llm = ScriptedLLM([tool_reply(("nap", {"label": "a"}, "a"), ("nap", {"label": "b"}, "b")), text_reply("ok")])
    config = AgentLoopConfig(tool_threads=1)
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([nap]), config=config) as loop:
        sid = await loop.new_session_async()
        await loop.send("go", session_id=sid)
        messages = await loop.get_messages_async(sid)
    assert [m["content"] for m in messages[2:4]] == ["rested a", "rested b"]
    assert order == ["a", "b"]


async def test_closing_the_loop_does_not_wait_for_stuck_tool_threads(
    db_path: str, gates: list[threading.Event]
) -> None:
    gate = threading.Event()
    gates.append(gate)

    @tool(timeout_s=0.1)
    def stuck() -> str:
        """Blocks until released."""
        gate.wait(60)
        return "late"

    llm = ScriptedLLM([tool_reply(("stuck", {})), text_reply("ok")])
    loop = StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([stuck]))
    sid = await loop.new_session_async()
    await loop.send("go", session_id=sid)
    await asyncio.wait_for(loop.aclose(), 30)  # returns although a tool thread is still blocked
    assert not gate.is_set()
    held = [t for t in threading.enumerate() if t.name.startswith("power_loop-tool")]
    # The stuck thread is a daemon: neither asyncio.run's executor shutdown nor the
    # interpreter's exit waits for it.
    assert held and all(t.daemon for t in held)


async def test_queued_calls_fail_once_every_thread_is_held_by_a_timed_out_call(
    gates: list[threading.Event],
) -> None:
    gate = threading.Event()
    gates.append(gate)
    entered = threading.Event()

    def stuck() -> str:
        entered.set()
        gate.wait(60)
        return "late"

    pool = ToolThreads(1)
    try:
        first = asyncio.ensure_future(pool.run(stuck, timeout=0.2))
        await asyncio.to_thread(entered.wait, 30)
        # Queued behind a live call, without a limit of its own: it waits...
        queued = asyncio.ensure_future(pool.run(lambda: "never"))
        with pytest.raises(ToolTimeout):
            await first
        # ...until the only thread is held by a call that timed out: then it is told so.
        with pytest.raises(ToolNotStarted, match="all 1 tool threads are still held by earlier calls that timed out"):
            await asyncio.wait_for(queued, 30)
        assert pool.held == 1
        gate.set()
        for _ in range(1000):  # hang guard only
            if pool.held == 0:
                break
            await asyncio.sleep(0.01)
        assert await pool.run(lambda: "fresh", timeout=30) == "fresh"
    finally:
        pool.shutdown()
    with pytest.raises(ToolNotStarted, match="closed"):
        await pool.run(lambda: "after close")


# --------------------------------------------------------------------------- 7: TOOL_AFTER raising


async def test_a_raising_tool_after_hook_records_what_the_handler_did(db_path: str) -> None:
    sent: list[str] = []

    @tool
    def send_email(to: str) -> str:
        """Sends an email (a real side effect)."""
        sent.append(to)
        return f"sent to {to}"

    def broken_after(ctx: Any) -> None:
        raise RuntimeError("audit log unavailable")

    llm = ScriptedLLM(
        [tool_reply(("send_email", {"to": "ann@example.com"}, "e1")), text_reply("done"), text_reply("hi")]
    )
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([send_email])) as loop:
        loop.hooks.register(HookPoint.TOOL_AFTER, broken_after)
        sid = await loop.new_session_async()
        with pytest.raises(HookError, match="audit log unavailable"):
            await loop.send("mail ann", session_id=sid)
        assert sent == ["ann@example.com"]
        messages = await loop.get_messages_async(sid)
        assert messages[2]["tool_call_id"] == "e1"
        assert messages[2]["content"] == "sent to ann@example.com"
        assert not messages[2].get("is_error")
        assert await _statuses(loop, sid) == [("e1", "done")]
        runs = await _run_status(loop, sid)
        assert runs[-1][0] == "failed" and "HookError" in (runs[-1][1] or "")
        assert history_is_valid(messages)
        loop.hooks.unregister(HookPoint.TOOL_AFTER, broken_after)
        assert (await loop.send("next", session_id=sid)).status == "completed"
    assert sent == ["ann@example.com"]  # never sent twice


async def test_a_raising_tool_error_hook_records_the_handler_failure(db_path: str) -> None:
    attempts: list[int] = []

    @tool
    def charge(cents: int) -> str:
        """Charges, then fails on the receipt (the charge happened)."""
        attempts.append(cents)
        raise RuntimeError("receipt printer jammed")

    def broken_error_hook(ctx: Any) -> None:
        raise ValueError("pager down")

    llm = ScriptedLLM([tool_reply(("charge", {"cents": 500}, "c1")), text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([charge])) as loop:
        loop.hooks.register(HookPoint.TOOL_ERROR, broken_error_hook)
        sid = await loop.new_session_async()
        with pytest.raises(HookError, match="pager down"):
            await loop.send("charge", session_id=sid)
        messages = await loop.get_messages_async(sid)
        assert messages[2]["content"] == "Error: receipt printer jammed" and messages[2]["is_error"] is True
        assert await _statuses(loop, sid) == [("c1", "failed")]
        assert history_is_valid(messages)
    assert attempts == [500]


# --------------------------------------------------------------------------- 8: stray BaseExceptions


async def test_a_tool_whose_inner_task_was_cancelled_is_a_tool_error(db_path: str) -> None:
    @tool
    async def fetch() -> str:
        """Awaits an inner task that something else cancels."""
        inner = asyncio.ensure_future(asyncio.sleep(60))
        asyncio.get_running_loop().call_soon(inner.cancel)
        await inner
        return "never"

    llm = ScriptedLLM([tool_reply(("fetch", {}, "f1")), text_reply("noted"), text_reply("next")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([fetch])) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
        assert result.status == "completed"
        messages = await loop.get_messages_async(sid)
        assert messages[2]["is_error"] is True
        assert messages[2]["content"].startswith("Error: the tool raised CancelledError")
        assert await _statuses(loop, sid) == [("f1", "failed")]
        assert (await loop.send("next", session_id=sid)).status == "completed"  # no SessionPendingError


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (SystemExit(2), "Error: the tool raised SystemExit: 2"),
        (KeyboardInterrupt(), "Error: the tool raised KeyboardInterrupt"),
    ],
    ids=["SystemExit", "KeyboardInterrupt"],
)
async def test_system_exit_and_keyboard_interrupt_from_a_tool(
    db_path: str, is_async: bool, error: BaseException, expected: str
) -> None:
    def sync_handler() -> str:
        raise error

    async def async_handler() -> str:
        raise error

    reg = ToolRegistry()
    reg.register(
        tool(name="explode", description="Raises.")(async_handler if is_async else sync_handler),  # type: ignore[arg-type]
    )
    llm = ScriptedLLM([tool_reply(("explode", {}, "x1")), text_reply("noted"), text_reply("next")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=reg) as loop:
        sid = await loop.new_session_async()
        if is_async and isinstance(error, KeyboardInterrupt):
            # Ctrl-C on the event loop's thread: the call is recorded, the run ends failed,
            # and the interrupt goes on to the caller.
            with pytest.raises(KeyboardInterrupt):
                await loop.send("go", session_id=sid)
            runs = await _run_status(loop, sid)
            assert runs[-1][0] == "failed" and "KeyboardInterrupt" in (runs[-1][1] or "")
        else:
            result = await loop.send("go", session_id=sid)
            assert result.status == "completed"
        messages = await loop.get_messages_async(sid)
        assert messages[2]["content"] == expected and messages[2]["is_error"] is True
        assert await _statuses(loop, sid) == [("x1", "failed")]
        assert history_is_valid(messages)
        assert (await loop.send("next", session_id=sid)).status == "completed"  # no SessionPendingError


async def test_ctrl_c_in_one_call_of_a_batch(db_path: str) -> None:
    """The interrupt leaves the batch's task only after every started call is recorded."""
    done: list[str] = []

    @tool
    async def interrupt() -> str:
        """Raises KeyboardInterrupt on the event loop."""
        raise KeyboardInterrupt

    @tool
    async def work(label: str) -> str:
        """Finishes normally."""
        await asyncio.sleep(0)
        done.append(label)
        return f"worked {label}"

    llm = ScriptedLLM(
        [
            tool_reply(("work", {"label": "a"}, "w1"), ("interrupt", {}, "k1"), ("work", {"label": "b"}, "w2")),
            text_reply("next"),
        ]
    )
    config = AgentLoopConfig(tool_concurrency=2)
    reg = ToolRegistry([interrupt, work])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=reg, config=config) as loop:
        sid = await loop.new_session_async()
        with pytest.raises(KeyboardInterrupt):
            await loop.send("go", session_id=sid)
        statuses = dict(await _statuses(loop, sid))
        assert statuses["w1"] == "done" and statuses["k1"] == "failed"
        # w2 waited for a free slot: started before the interrupt was seen, it ran; after, it
        # never starts and the failed run answers it.
        assert statuses["w2"] == ("done" if "b" in done else "aborted")
        messages = await loop.get_messages_async(sid)
        assert history_is_valid(messages)
        assert (await loop.send("next", session_id=sid)).status == "completed"
    assert done[0] == "a"


async def test_cancelling_the_run_still_leaves_a_running_async_tool_pending(db_path: str) -> None:
    started = asyncio.Event()

    @tool
    async def wait_forever() -> str:
        """Waits until cancelled."""
        started.set()
        await asyncio.sleep(60)
        return "never"

    llm = ScriptedLLM([tool_reply(("wait_forever", {}, "w1")), text_reply("done")])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([wait_forever])) as loop:
        sid = await loop.new_session_async()
        task = asyncio.ensure_future(loop.send("go", session_id=sid))
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _statuses(loop, sid) == [("w1", "running")]
        pending = await loop.get_pending_async(sid)
        assert pending is not None


# --------------------------------------------------------------------------- 9: lone surrogates


@pytest.fixture
def odd_dir(tmp_path: Any) -> str:
    """A real directory holding a file whose name is not valid UTF-8."""
    path = os.path.join(str(tmp_path), "inbox")
    os.mkdir(path)
    try:
        with open(os.path.join(os.fsencode(path), b"caf\xe9.txt"), "wb") as out:
            out.write(b"x")
    except OSError as exc:  # pragma: no cover - file systems that refuse such names
        pytest.skip(f"the file system refuses non-UTF-8 names: {exc}")
    return path


async def test_a_non_utf8_file_name_in_tool_output(
    db_path: str, odd_dir: str, protocol: str, llm_factory: ServiceFactory
) -> None:
    @tool
    def list_files(path: str) -> str:
        """Lists a directory."""
        return ", ".join(sorted(os.listdir(path)))

    assert os.listdir(odd_dir) == ["caf\udce9.txt"]  # what Python hands the tool
    server = ScriptedServer(
        [tool_reply(("list_files", {"path": odd_dir}, "l1")), text_reply("one file"), text_reply("ok")]
    )
    with server:
        llm = llm_factory(protocol, server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([list_files])) as loop:
            sid = await loop.new_session_async()
            assert (await loop.send("what is in the inbox?", session_id=sid)).status == "completed"
            assert (await loop.send("thanks", session_id=sid)).status == "completed"
            messages = await loop.get_messages_async(sid)
    assert messages[2]["content"] == "caf\ufffd.txt"
    assert history_is_valid(messages)
    # The model was shown the same text in both later requests.
    assert all("caf\ufffd.txt" in str(r.messages) for r in server.requests[1:])


@pytest.mark.parametrize("raw", [True, False], ids=["decoded-surrogate", "escaped-surrogate"])
async def test_model_tool_arguments_with_a_lone_surrogate(
    db_path: str, protocol: str, llm_factory: ServiceFactory, raw: bool
) -> None:
    seen: list[str] = []

    @tool
    def echo_path(path: str) -> str:
        """Echoes a path."""
        seen.append(path)
        return f"got {path}"

    if raw:
        # The wire carries the escape \udce9; the client decodes it into a lone surrogate.
        call: Any = ToolCall(id="p1", name="echo_path", arguments='{"path": "caf\udce9"}')
    else:
        # The arguments JSON itself carries the escape: the tool receives a lone surrogate.
        call = ("echo_path", {"path": "caf\udce9"}, "p1")
    server = ScriptedServer([tool_reply(call), text_reply("echoed"), text_reply("ok")])
    with server:
        llm = llm_factory(protocol, server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([echo_path])) as loop:
            sid = await loop.new_session_async()
            assert (await loop.send("echo", session_id=sid)).status == "completed"
            assert (await loop.send("again", session_id=sid)).status == "completed"
            messages = await loop.get_messages_async(sid)
    assert len(seen) == 1
    assert messages[2]["content"] == "got caf\ufffd"
    assert history_is_valid(messages)
    assert "\udce9" not in str(messages)


async def test_model_text_with_a_lone_surrogate(db_path: str, protocol: str, llm_factory: ServiceFactory) -> None:
    server = ScriptedServer([text_reply("caf\udce9 is closed"), text_reply("ok")])
    with server:
        llm = llm_factory(protocol, server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
            sid = await loop.new_session_async()
            assert (await loop.send("status?", session_id=sid)).status == "completed"
            assert (await loop.send("and now?", session_id=sid)).status == "completed"
            messages = await loop.get_messages_async(sid)
    assert messages[1]["content"] == "caf\ufffd is closed"
    assert "caf\ufffd is closed" in str(server.requests[1].messages)


async def test_lone_surrogates_in_prompts_notes_answers_and_ids(
    db_path: str, odd_dir: str, protocol: str, llm_factory: ServiceFactory
) -> None:
    """A file name from os.listdir (a lone surrogate) as a session's system prompt, a timer
    note and a submit_input answer is stored and sent as U+FFFD; as a session id it is refused."""
    (name,) = os.listdir(odd_dir)
    shown = name.replace("\udce9", "\ufffd")

    @tool
    def ask() -> str:
        """Asks which file to open."""
        request_user_input(prompt="which file?")
        return "unreachable"

    server = ScriptedServer(
        [text_reply("hello"), tool_reply(("ask", {}, "q1")), text_reply("opened"), text_reply("hi")]
    )
    with server:
        llm = llm_factory(protocol, server)
        async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=ToolRegistry([ask])) as loop:
            sid = await loop.new_session_async(system_prompt=f"work on {name}")
            assert (await loop.send("hi", session_id=sid)).status == "completed"
            assert shown in str(server.requests[0].system_prompt)
            timer = await loop.schedule_timer_async(sid, delay_s=3600, note=f"reopen {name}")
            assert timer.note == f"reopen {shown}"
            assert [t.note for t in await loop.list_timers_async(sid)] == [f"reopen {shown}"]
            waiting = await loop.send("open one", session_id=sid)
            interaction = waiting.pending_interactions[0]["interaction_id"]
            assert (await loop.submit_input(sid, interaction, name)).status == "completed"
            assert (await loop.get_messages_async(sid))[4]["content"] == shown
            other = await asyncio.to_thread(loop.new_session, system_prompt=name)  # the sync twin too
            assert (await loop.send("hi", session_id=other)).final_text == "hi"
            assert str(server.requests[-1].system_prompt).startswith(shown)
            with pytest.raises(ValueError, match="lone surrogate"):
                await loop.new_session_async(session_id=name)
            with pytest.raises(ValueError, match="lone surrogate"):
                await loop.send("hi", session_id=name)
            assert await loop.store.execute_fetchall("SELECT COUNT(*) FROM sessions") == [(2,)]


async def test_a_failing_run_and_a_rewriting_hook_with_lone_surrogates(db_path: str, odd_dir: str) -> None:
    """A hook error whose message holds a lone surrogate is still recorded (the run ends
    ``failed``, not left ``running``); a MESSAGE_APPEND rewrite with one is stored, and
    returned, as U+FFFD."""
    (name,) = os.listdir(odd_dir)
    shown = name.replace("\udce9", "\ufffd")
    hooks = AgentHooks()
    state = {"fail": True, "rewrite": False}

    def before(_: Any) -> None:
        if state["fail"]:
            raise RuntimeError(f"cannot read {name}")

    def rewrite(ctx: Any) -> None:
        if state["rewrite"] and ctx.message["role"] == "assistant":
            ctx.message = {**ctx.message, "content": f"see {name}"}

    hooks.register(HookPoint.LLM_BEFORE, before)
    hooks.register(HookPoint.MESSAGE_APPEND, rewrite)
    llm = ScriptedLLM(rule=lambda r: text_reply("plain"))
    async with StatefulAgentLoop(llm=llm, db_path=db_path, hooks=hooks) as loop:
        sid = await loop.new_session_async()
        with pytest.raises(HookError):
            await loop.send("go", session_id=sid)
        assert await _run_status(loop, sid) == [
            ("failed", f"HookError: llm.before hook {before.__qualname__} raised RuntimeError: cannot read {shown}")
        ]
        state.update(fail=False, rewrite=True)
        result = await loop.send("again", session_id=sid)
        assert (result.status, result.final_text) == ("completed", f"see {shown}")
        assert (await loop.get_messages_async(sid))[-1]["content"] == f"see {shown}"


# --------------------------------------------------------------------------- 10: a tool's own TimeoutError


async def test_a_tool_raising_timeout_error_itself(db_path: str) -> None:
    @tool
    async def call_api() -> str:
        """Its upstream times out."""
        raise TimeoutError("upstream API did not answer in 30s")

    @tool
    def call_sync_api() -> str:
        """Its upstream times out without a message."""
        raise TimeoutError

    llm = ScriptedLLM([tool_reply(("call_api", {}, "a"), ("call_sync_api", {}, "b")), text_reply("ok")])
    async with StatefulAgentLoop(
        llm=llm, db_path=db_path, tool_registry=ToolRegistry([call_api, call_sync_api])
    ) as loop:
        sid = await loop.new_session_async()
        await loop.send("go", session_id=sid)
        messages = await loop.get_messages_async(sid)
    assert [m["content"] for m in messages[2:4]] == [
        "Error: upstream API did not answer in 30s",
        "Error: TimeoutError",
    ]


# --------------------------------------------------------------------------- 11: StopIteration from a sync tool


async def test_a_sync_tool_raising_stop_iteration_is_an_error_not_a_hang(db_path: str) -> None:
    """An asyncio future refuses StopIteration: delivered as it is, the call never ended. A
    sync handler's StopIteration (``next()`` on an exhausted iterator) comes back as a
    RuntimeError, so the run records an error result and goes on."""

    @tool
    def first_match() -> str:
        """The first of no matches."""
        return str(next(iter(())))

    llm = ScriptedLLM([tool_reply(("first_match", {}, "a")), text_reply("ok")])
    registry = ToolRegistry([first_match])
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        sent = asyncio.ensure_future(loop.send("go", session_id=sid))
        await asyncio.wait({sent}, timeout=30)
        assert sent.done(), "the run never learned how its tool call ended"
        assert sent.result().final_text == "ok"
        messages = await loop.get_messages_async(sid)
    assert "StopIteration" in messages[2]["content"]

    invoked = asyncio.ensure_future(registry.invoke_async("first_match"))
    await asyncio.wait({invoked}, timeout=30)
    assert invoked.done(), "invoke_async never learned how the handler ended"
    with pytest.raises(RuntimeError, match="StopIteration"):
        invoked.result()
