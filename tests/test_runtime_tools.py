"""The todo and background tools in real runs, the runtime projection each round, and the
skills section from ``AgentLoopConfig.skills_dir``."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from power_loop import AgentEventBus, AgentEventType, AgentLoopConfig, StatefulAgentLoop, create_default_tool_registry
from power_loop.store.rows import BackgroundTaskRow
from power_loop.testing import ScriptedLLM, error_reply, text_reply, tool_reply
from power_loop.testing.script import ScriptedReply, ScriptedRequest

GATED = "while [ ! -e go ]; do sleep 0.01; done; "
"""A command prefix that waits until the test creates the file ``go`` in the workspace."""


def tools(workspace: Path, *names: str) -> Any:
    return create_default_tool_registry(include=list(names), workspace_dir=workspace)


def by_text(replies: Mapping[str, ScriptedReply]) -> Any:
    """A model that answers the user's text with the scripted reply, and a tool result with its text."""

    def rule(request: ScriptedRequest) -> ScriptedReply:
        last = request.messages[-1]
        if last.role == "tool":
            return text_reply(last.text)
        return replies[last.text]

    return ScriptedLLM(rule=rule)


async def wait_for_end(loop: StatefulAgentLoop, sid: str, task_id: str) -> BackgroundTaskRow:
    for _ in range(3000):
        row = await loop.store.get_background_task_async(sid, task_id)
        if row is not None and row.status != "running":
            return row
        await asyncio.sleep(0.01)
    raise AssertionError(f"background command {task_id} did not end")


async def test_todo_is_stored_projected_and_published(tmp_path: Path, db_path: str) -> None:
    items = [{"content": "read the spec", "status": "completed"}, {"content": "write it", "status": "in_progress"}]
    llm = by_text(
        {
            "plan": tool_reply(("todo", {"items": items})),
            "next": text_reply("on it"),
            "bad": tool_reply(("todo", {"items": [{"content": "a", "status": "in_progress"}] * 2})),
        }
    )
    bus = AgentEventBus()
    seen: list[Any] = []
    bus.subscribe(AgentEventType.TODO_UPDATED, seen.append)
    async with StatefulAgentLoop(
        llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "todo"), event_bus=bus
    ) as loop:
        sid = await loop.new_session_async()
        first = await loop.send("plan", session_id=sid)
        assert first.final_text == "Todo list updated (1/2 completed):\n[x] read the spec\n[>] write it"
        # The round after the call shows the list, and so does every round of later runs.
        assert "# Todo\n[x] read the spec\n[>] write it" in (llm.requests[1].system_prompt or "")
        await loop.send("next", session_id=sid)
        assert (llm.requests[-1].system_prompt or "").endswith("# Todo\n[x] read the spec\n[>] write it")
        refused = await loop.send("bad", session_id=sid)
        assert refused.final_text.startswith("Error: 2 items are in_progress")
        stored = await loop.store.get_runtime_state_async(sid, "todo")
    assert stored == {"items": items}  # the refused list changed nothing
    assert len(seen) == 1 and seen[0].session_id == sid
    assert seen[0].data.counts == {"completed": 1, "in_progress": 1}


async def test_a_session_without_runtime_state_has_no_projection(tmp_path: Path, db_path: str) -> None:
    llm = by_text({"hi": text_reply("hello")})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "todo")) as loop:
        sid = await loop.new_session_async()
        await loop.send("hi", session_id=sid)
    prompt = llm.requests[0].system_prompt or ""
    assert "# Todo" not in prompt and "# Background commands" not in prompt


async def test_background_command_result_is_shown_once(tmp_path: Path, db_path: str) -> None:
    llm = by_text(
        {
            "build": tool_reply(("background_run", {"command": GATED + "echo building; echo oops >&2; exit 3"})),
            "later": text_reply("ok"),
            "again": text_reply("ok"),
        }
    )
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "background_run")) as loop:
        sid = await loop.new_session_async()
        started = await loop.send("build", session_id=sid)
        task_id = started.final_text.split()[3].rstrip(":")
        assert started.final_text.startswith(f"Started background command {task_id}: {GATED}echo building")
        assert "# Background commands" not in (llm.requests[-1].system_prompt or "")  # it started seen
        (tmp_path / "go").touch()
        row = await wait_for_end(loop, sid, task_id)
        assert (row.status, row.return_code) == ("failed", 3)
        assert "building" in (row.output_tail or "") and "oops" in (row.output_tail or "")
        await loop.send("later", session_id=sid)
        shown = llm.requests[-1].system_prompt or ""
        assert f"# Background commands\n- {task_id} (failed, exit code 3): {GATED}echo building" in shown
        assert "last output: building" in shown
        await loop.send("again", session_id=sid)
        assert "# Background commands" not in (llm.requests[-1].system_prompt or "")  # shown once


async def test_check_background_reports_and_refuses_unknown_ids(tmp_path: Path, db_path: str) -> None:
    registry = tools(tmp_path, "background_run", "check_background")
    llm = by_text(
        {
            "start": tool_reply(("background_run", {"command": "printf 'all good'"})),
            "unknown": tool_reply(("check_background", {"task_id": "bg_nope"})),
            "list": tool_reply(("check_background", {})),
        }
    )
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        started = await loop.send("start", session_id=sid)
        task_id = started.final_text.split()[3].rstrip(":")
        await wait_for_end(loop, sid, task_id)
        llm.rule = _with(llm.rule, "one", tool_reply(("check_background", {"task_id": task_id})))
        one = await loop.send("one", session_id=sid)
        assert one.final_text == f"{task_id} (completed, exit code 0): printf 'all good'\noutput (end):\nall good"
        unknown = await loop.send("unknown", session_id=sid)
        assert unknown.final_text == f"Error: no background command 'bg_nope' in this session (known: {task_id})."
        listed = await loop.send("list", session_id=sid)
        assert listed.final_text == f"{task_id} (completed, exit code 0): printf 'all good'"
        assert await loop.store.list_unseen_background_updates_async(sid) == []  # check_background showed it


def _with(rule: Any, text: str, reply: ScriptedReply) -> Any:
    def extended(request: ScriptedRequest) -> ScriptedReply:
        last = request.messages[-1]
        return reply if last.role == "user" and last.text == text else rule(request)

    return extended


async def test_closing_the_loop_kills_a_running_command(tmp_path: Path, db_path: str) -> None:
    llm = by_text({"serve": tool_reply(("background_run", {"command": "echo $$ > pid; exec sleep 600"}))})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "background_run")) as loop:
        sid = await loop.new_session_async()
        started = await loop.send("serve", session_id=sid)
        task_id = started.final_text.split()[3].rstrip(":")
        for _ in range(3000):
            if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip():
                break
            await asyncio.sleep(0.01)
        pid = int((tmp_path / "pid").read_text())
        os.kill(pid, 0)  # running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    async with StatefulAgentLoop(llm=llm, db_path=db_path) as loop:
        row = await loop.store.get_background_task_async(sid, task_id)
    assert row is not None and row.status == "killed" and not row.seen


async def test_too_many_running_commands_are_refused(tmp_path: Path, db_path: str) -> None:
    calls = [("background_run", {"command": "exec sleep 600"}) for _ in range(9)]
    llm = by_text({"many": tool_reply(*calls)})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "background_run")) as loop:
        sid = await loop.new_session_async()
        await loop.send("many", session_id=sid)
        results = [m for m in await loop.get_messages_async(sid) if m["role"] == "tool"]
        running = await loop.store.list_background_tasks_async(sid)
    refused = [r for r in results if str(r["content"]).startswith("Error:")]
    assert len(running) == 8 and len(refused) == 1
    assert "8 background commands are already running" in str(refused[0]["content"])


class ThreadProjector:
    """A 0.11-style sync projector that records the thread it ran in."""

    def __init__(self) -> None:
        self.threads: list[int] = []

    def project(self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]) -> str | None:
        self.threads.append(threading.get_ident())
        assert store.get_session(session_id) is not None  # the blocking store API works here
        return f"# Round\nround {round_index} of {context['run_id'][:4]}"


class BrokenProjector:
    def project(self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]) -> str | None:
        raise RuntimeError("projector bug")


async def test_custom_projectors_run_off_the_event_loop(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    projector = ThreadProjector()
    config = AgentLoopConfig(runtime_projectors=(BrokenProjector(), projector))
    llm = by_text({"hi": text_reply("hello")})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("hi", session_id=sid)
    assert result.status == "completed"
    assert projector.threads and threading.get_ident() not in projector.threads
    assert (llm.requests[0].system_prompt or "").endswith("# Round\nround 0 of run_")
    assert "projector bug" in caplog.text


class ExhaustedProjector:
    def project(self, *, store: Any, session_id: str, round_index: int, context: Mapping[str, Any]) -> str | None:
        return str(next(iter(())))  # StopIteration, which an asyncio future refuses


async def test_a_projector_raising_stop_iteration_is_left_out_not_a_hang(
    db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = AgentLoopConfig(runtime_projectors=(ExhaustedProjector(),))
    llm = by_text({"hi": text_reply("hello")})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config) as loop:
        sid = await loop.new_session_async()
        sent = asyncio.ensure_future(loop.send("hi", session_id=sid))
        await asyncio.wait({sent}, timeout=30)
        assert sent.done(), "the run never learned how its projector ended"
        assert sent.result().status == "completed"
    assert "StopIteration" in caplog.text


async def test_no_projectors_shows_nothing(tmp_path: Path, db_path: str) -> None:
    items = [{"content": "x", "status": "pending"}]
    llm = by_text({"plan": tool_reply(("todo", {"items": items}))})
    config = AgentLoopConfig(runtime_projectors=())
    async with StatefulAgentLoop(
        llm=llm, db_path=db_path, config=config, tool_registry=tools(tmp_path, "todo")
    ) as loop:
        sid = await loop.new_session_async()
        await loop.send("plan", session_id=sid)
    assert "# Todo" not in (llm.requests[1].system_prompt or "")


async def test_skills_dir_adds_the_skills_section_and_feeds_load_skill(tmp_path: Path, db_path: str) -> None:
    skills = tmp_path / "skills"
    (skills / "deploy").mkdir(parents=True)
    (skills / "deploy" / "SKILL.md").write_text("---\nname: deploy\ndescription: How to deploy.\n---\nRun make.\n")
    (skills / "broken").mkdir()
    (skills / "broken" / "SKILL.md").write_text("---\nname: [unclosed\n---\nbody\n")
    llm = by_text({"go": tool_reply(("load_skill", {"name": "deploy"}))})
    config = AgentLoopConfig(skills_dir=skills)
    registry = tools(tmp_path, "load_skill")  # the environment names no skills folder
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("go", session_id=sid)
    prompt = llm.requests[0].system_prompt or ""
    assert "# Skills" in prompt and "- deploy: How to deploy." in prompt and "broken" not in prompt
    assert result.final_text == '<skill name="deploy">\nRun make.\n</skill>'


def test_a_sync_call_refuses_background_commands(tmp_path: Path, db_path: str) -> None:
    llm = by_text({"serve": tool_reply(("background_run", {"command": "sleep 600"}))})
    loop = StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "background_run"))
    try:
        sid = loop.new_session()
        result = loop.send_sync("serve", session_id=sid)
        assert result.final_text.startswith("Error: background commands need an event loop that outlives the call")
        assert loop.store.list_background_tasks(sid) == []
    finally:
        loop.close()


async def test_an_update_is_not_lost_when_the_model_call_fails(tmp_path: Path, db_path: str) -> None:
    llm = by_text(
        {
            "build": tool_reply(("background_run", {"command": GATED + "echo done"})),
            "retry": text_reply("ok"),
        }
    )
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "background_run")) as loop:
        sid = await loop.new_session_async()
        started = await loop.send("build", session_id=sid)
        task_id = started.final_text.split()[3].rstrip(":")
        (tmp_path / "go").touch()
        await wait_for_end(loop, sid, task_id)
        llm.push(error_reply(400, "bad request"))
        failed = await loop.send("retry", session_id=sid)
        assert failed.status != "completed"
        assert f"- {task_id} (completed, exit code 0)" in (llm.requests[-1].system_prompt or "")
        await loop.send("retry", session_id=sid)  # shown again: the failed call never answered it
        assert f"- {task_id} (completed, exit code 0)" in (llm.requests[-1].system_prompt or "")
        assert await loop.store.list_unseen_background_updates_async(sid) == []
        await loop.send("retry", session_id=sid)
        assert "# Background commands" not in (llm.requests[-1].system_prompt or "")


async def test_the_running_limit_holds_for_concurrent_calls(tmp_path: Path, db_path: str) -> None:
    calls = [("background_run", {"command": "exec sleep 600"}) for _ in range(12)]
    llm = by_text({"many": tool_reply(*calls)})
    config = AgentLoopConfig(tool_concurrency=16)
    registry = tools(tmp_path, "background_run")
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry, config=config) as loop:
        sid = await loop.new_session_async()
        await loop.send("many", session_id=sid)
        rows = await loop.store.list_background_tasks_async(sid)
    assert len(rows) == 8 and all(r.status == "running" for r in rows)


async def test_a_command_that_cannot_start_is_refused_and_never_left_running(tmp_path: Path, db_path: str) -> None:
    llm = by_text({"nul": tool_reply(("background_run", {"command": "echo a\x00b"}))})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "background_run")) as loop:
        sid = await loop.new_session_async()
        result = await loop.send("nul", session_id=sid)
        assert result.final_text == "Error: a command line cannot contain a NUL character"
        assert await loop.store.list_background_tasks_async(sid) == []


ORPHAN_SCRIPT = """
import asyncio, sys
from power_loop import StatefulAgentLoop, create_default_tool_registry
from power_loop.testing import ScriptedLLM, text_reply, tool_reply

async def main() -> None:
    db, workspace = sys.argv[1], sys.argv[2]
    def rule(request):
        last = request.messages[-1]
        if last.role == "tool":
            return text_reply(last.text)
        return tool_reply(("background_run", {"command": "echo $$ > pid; exec sleep 600"}))
    registry = create_default_tool_registry(include=["background_run"], workspace_dir=workspace)
    async with StatefulAgentLoop(llm=ScriptedLLM(rule=rule), db_path=db, tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        await loop.send("start", session_id=sid)
        print(sid, flush=True)
        await asyncio.sleep(600)

asyncio.run(main())
"""


async def test_a_command_of_a_killed_process_is_stopped_and_reported_lost(tmp_path: Path, db_path: str) -> None:
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, db_path, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        sid = proc.stdout.readline().strip()
        for _ in range(3000):
            if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text().strip():
                break
            await asyncio.sleep(0.01)
        command_pid = int((tmp_path / "pid").read_text())
        proc.send_signal(signal.SIGKILL)  # the loop's process dies; its command runs on
        proc.wait()
        os.kill(command_pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    llm = by_text({"check": tool_reply(("check_background", {}))})
    registry = tools(tmp_path, "check_background")
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry) as loop:
        report = await loop.send("check", session_id=sid)
    assert "(lost)" in report.final_text
    for _ in range(3000):  # killed by the reaper; wait until the kernel has reaped it too
        try:
            os.kill(command_pid, 0)
        except ProcessLookupError:
            break
        if Path(f"/proc/{command_pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the lost command still runs")


async def test_check_background_lists_the_latest_ended_commands(tmp_path: Path, db_path: str) -> None:
    llm = by_text({"list": tool_reply(("check_background", {}))})
    async with StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=tools(tmp_path, "check_background")) as loop:
        sid = await loop.new_session_async()
        for i in range(25):
            await loop.store.upsert_background_task_async(
                sid, task_id=f"t{i:02d}", command=f"job {i}", status="completed", return_code=0
            )
        listed = (await loop.send("list", session_id=sid)).final_text.splitlines()
    assert listed[0].startswith("t05 (completed") and listed[19].startswith("t24 (completed")
    assert listed[20] == "(5 older ended commands not listed; ask for one by its id)"
