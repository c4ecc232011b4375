"""The inspector commands: ``power-loop sessions``, ``show`` (and ``--follow``), ``timers``,
``export``, ``import``, ``doctor`` and ``prune``, called in-process through
``power_loop.cli.main`` and as ``python -m power_loop`` subprocesses, on real stores (an
SQLite file and a fresh PostgreSQL schema) filled by real runs through the real SDKs and the
scripted server. Each problem ``doctor`` reports is made for real (a SIGKILLed process
holding a run, an unanswered call, an expired timer claim)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from power_loop import StatefulAgentLoop
from power_loop._inspect_cli import COMMANDS, _span, add_commands
from power_loop.cli import main
from power_loop.messages import AssistantMessage, ToolCall, UserMessage
from power_loop.store import open_store
from power_loop.store.rows import Append, Compact
from power_loop.testing import ScriptedServer, text_reply, tool_reply
from power_loop.viewer import add_serve_parser

from .conftest import make_service
from .helpers import registry

ROOT = Path(__file__).resolve().parent.parent
LEASE_WORKER = Path(__file__).with_name("lease_worker.py")
LONG = "x" * 500


def _fill(db: str, server: ScriptedServer) -> None:
    """ "alpha": a run with a tool call and a long answer; "beta": never ran."""

    async def fill() -> None:
        server.push(tool_reply(("add", {"a": 2, "b": 3}, "call-1")), text_reply(f"It is 5. {LONG}"))
        llm = make_service("openai", server)
        try:
            async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry()) as loop:
                await loop.new_session_async(session_id="alpha", metadata={"team": "red"})
                await loop.send("add 2 and 3", "alpha")
                await loop.new_session_async(session_id="beta", metadata={"team": "blue"})
        finally:
            await llm.aclose()

    asyncio.run(fill())


def _store_do(db: str, action: Any) -> Any:
    async def go() -> Any:
        store = open_store(db)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(go())


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = _run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def test_sessions_lists_and_filters(shared_db: str, scripted_server: ScriptedServer, capsys: Any) -> None:
    _fill(shared_db, scripted_server)
    code, out, err = _run(capsys, "sessions", "--db", shared_db)
    assert code == 0 and err == ""
    header = out.splitlines()[0].split()
    assert header[:3] == ["ID", "KIND", "PARENT"] and "TOKENS" in header and "PENDING" in header
    assert "alpha" in out and "beta" in out and "2 session(s)" in out
    listed = _json(capsys, "sessions", "--db", shared_db, "--sort", "id")
    assert [s["session_id"] for s in listed["sessions"]] == ["alpha", "beta"] and listed["total"] == 2
    alpha = listed["sessions"][0]
    assert (alpha["runs"], alpha["last_status"], alpha["messages"], alpha["pending_calls"]) == (1, "completed", 4, 0)
    assert alpha["input_tokens"] > 0 and alpha["metadata"] == {"team": "red"}
    assert [
        s["session_id"] for s in _json(capsys, "sessions", "--db", shared_db, "--metadata", "team=blue")["sessions"]
    ] == ["beta"]
    assert [s["session_id"] for s in _json(capsys, "sessions", "--db", shared_db, "--search", "LPH")["sessions"]] == [
        "alpha"
    ]
    recent = _json(capsys, "sessions", "--db", shared_db, "--active-since", "1h")
    assert [s["session_id"] for s in recent["sessions"]] == ["alpha"]
    paged = _json(capsys, "sessions", "--db", shared_db, "--sort", "id", "--limit", "1", "--page", "2")
    far = _json(capsys, "sessions", "--db", shared_db, "--limit", str(2**62), "--page", str(2**62))
    assert (far["sessions"], far["total"]) == ([], 2)
    assert [s["session_id"] for s in paged["sessions"]] == ["beta"] and paged["offset"] == 1
    with pytest.raises(SystemExit) as exited:
        main(["sessions", "--db", shared_db, "--active-since", "yesterday-ish"])
    assert exited.value.code == 2 and "expected an ISO time or a duration" in capsys.readouterr().err


def test_show_prints_the_transcript_runs_and_usage(
    shared_db: str, scripted_server: ScriptedServer, capsys: Any
) -> None:
    _fill(shared_db, scripted_server)
    code, out, _ = _run(capsys, "show", "alpha", "--db", shared_db)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "Session alpha (main)"
    assert "#1 user: add 2 and 3" in lines
    assert '#2 assistant → add({"a": 2, "b": 3})  [call-1]' in lines
    assert "#3 tool add[call-1]: 5" in lines
    answer = next(line for line in lines if line.startswith("#4 assistant: It is 5."))
    assert answer.endswith("… (209 more chars, --full to show)")
    run_line = next(line for line in lines if line.startswith("── run 1 (send) completed"))
    assert lines.index(run_line) == lines.index(answer) + 1 and "2 model call(s)" in run_line
    assert lines[-1].startswith("Usage: 1 run(s), 2 model call(s), ")
    _, full, _ = _run(capsys, "show", "alpha", "--db", shared_db, "--full")
    assert LONG in full and "--full to show" not in full
    shown = _json(capsys, "show", "alpha", "--db", shared_db)
    assert [e["seq"] for e in shown["transcript"]] == [1, 2, 3, 4]
    assert shown["runs"][0]["status"] == "completed" and shown["usage"]["llm_calls"] == 2
    assert shown["session"]["kind"] == "main"


def test_show_marks_compaction_summaries_and_folded_rows(db_path: str, capsys: Any) -> None:
    async def fill(store: Any) -> None:
        await store.create_session("c")
        out = await store.write("c", [Append([UserMessage(content=f"m{i}") for i in range(4)])])
        await store.write("c", [Compact(through_seq=out.seqs[1], summary="the first two")])

    _store_do(db_path, fill)
    _, out, _ = _run(capsys, "show", "c", "--db", db_path)
    assert "#1 user [folded]: m0" in out
    assert "#2 ≡ compaction summary (folds messages up to #2): " in out
    assert "the first two" in out and "#3 user: m2" in out


def test_export_import_round_trip(shared_db: str, scripted_server: ScriptedServer, capsys: Any, tmp_path: Path) -> None:
    _fill(shared_db, scripted_server)
    exported = tmp_path / "alpha.jsonl"
    code, _, err = _run(capsys, "export", "alpha", "--db", shared_db, "-o", str(exported))
    lines = exported.read_text().splitlines()
    messages = sum(1 for line in lines if json.loads(line)["type"] == "message")
    assert code == 0 and messages > 0
    assert err == f"wrote session alpha to {exported}: {len(lines)} record(s), {messages} message(s)\n"
    code, out, _ = _run(capsys, "import", str(exported), "--db", shared_db, "--session-id", "alpha-2")
    assert (code, out.strip()) == (0, "alpha-2")
    code, again, _ = _run(capsys, "export", "alpha-2", "--db", shared_db)
    assert code == 0

    def comparable(text: str) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in text.splitlines()]
        for r in records:
            r.pop("run_id", None)  # an imported session has no runs
            if r["type"] == "session":
                for k in ("session_id", "created_at", "exported_at"):
                    r.pop(k)
        return records

    assert comparable(again) == comparable(exported.read_text())
    code, out, _ = _run(capsys, "import", str(exported), "--db", shared_db)
    assert code == 0 and out.strip().startswith("sess_")
    code, _, err = _run(capsys, "import", str(exported), "--db", shared_db, "--session-id", "alpha-2")
    assert code == 2 and "already exists" in err and "Traceback" not in err
    broken = tmp_path / "broken.jsonl"
    lines = exported.read_text().splitlines()
    broken.write_text("\n".join([lines[0], lines[1], lines[3]]) + "\n")
    code, _, err = _run(capsys, "import", str(broken), "--db", shared_db, "--session-id", "bad")
    assert code == 2 and err.startswith("power-loop: error: line 3: tool result for call 'call-1'")
    assert len(err.strip().splitlines()) == 1
    broken.write_text(lines[0] + "\n{not json\n")
    code, _, err = _run(capsys, "import", str(broken), "--db", shared_db, "--session-id", "bad")
    assert code == 2 and "line 2: not JSON" in err
    assert _json(capsys, "sessions", "--db", shared_db, "--search", "bad")["total"] == 0


def test_doctor_is_quiet_on_a_healthy_store(shared_db: str, scripted_server: ScriptedServer, capsys: Any) -> None:
    _fill(shared_db, scripted_server)
    code, out, _ = _run(capsys, "doctor", "--db", shared_db)
    assert code == 0
    assert "Schema version: " in out and "Integrity: ok" in out and out.strip().endswith("No problems found.")
    store_line = out.splitlines()[0]
    if shared_db.startswith("postgresql://"):  # the URL, then the backend and schema, each once
        schema = shared_db.rsplit("schema=", 1)[1]
        assert store_line.endswith(f" (postgresql, schema {schema}), 2 session(s)") and "(schema" not in store_line
    else:
        assert store_line == f"Store: {shared_db} (sqlite), 2 session(s)"
    report = _json(capsys, "doctor", "--db", shared_db)
    assert report["healthy"] is True and report["findings"] == []


def test_doctor_finds_a_run_left_by_a_killed_process(shared_db: str, capsys: Any) -> None:
    _store_do(shared_db, lambda s: s.create_session("held"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    worker = subprocess.Popen(
        [sys.executable, str(LEASE_WORKER), shared_db, "held"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert worker.stdout is not None
        assert worker.stdout.readline().strip() == "holding held"
        code, out, _ = _run(capsys, "doctor", "--db", shared_db)
        assert code == 0, out  # the run is going on: nothing to fix
    finally:
        worker.kill()
        worker.communicate()
    code, out, _ = _run(capsys, "doctor", "--db", shared_db)
    assert code == 1
    assert "[stuck_run] session held:" in out and "fix: await loop.resume('held')" in out
    code, text, _ = _run(capsys, "doctor", "--db", shared_db, "--json")
    assert code == 1 and [f["kind"] for f in json.loads(text)["findings"]] == ["stuck_run"]


def test_doctor_finds_pending_calls_and_stuck_timers(db_path: str, capsys: Any) -> None:
    async def fill(store: Any) -> None:
        await store.create_session("p")
        call = ToolCall(id="c1", name="add", arguments="{}")
        await store.write("p", [Append([UserMessage(content="go"), AssistantMessage(content="", tool_calls=(call,))])])
        await store.create_session("t")
        await store.schedule_timer("t", due_at=1, note="claimed long ago")
        assert len(await store.claim_due_timers("gone-runner", lease_ms=1, limit=1)) == 1
        await store.schedule_timer("t", due_at=2, note="never delivered")

    _store_do(db_path, fill)
    code, out, _ = _run(capsys, "doctor", "--db", db_path)
    assert code == 1
    assert "[pending_calls] session p: 1 tool call(s) have no result" in out
    assert "fix: await loop.resume('p')" in out and "abort_pending_async('p')" in out
    assert "[expired_timer_claim] session t: timer 1 was claimed by gone-runner" in out
    assert "[overdue_timer] session t: timer 2" in out
    assert f"fix: power-loop worker APP --db {db_path}" in out


def test_timers_across_sessions(db_path: str, capsys: Any) -> None:
    now = int(time.time() * 1000)

    async def fill(store: Any) -> None:
        for sid in ("a", "b"):
            await store.create_session(sid)
        await store.schedule_timer("a", due_at=now + 3_600_000, note="check the build")
        await store.schedule_timer(
            "a", due_at=now + 7_200_000, note="digest", cron="0 9 * * MON-FRI", tz="Europe/Paris", misfire="once"
        )
        gone = await store.schedule_timer("b", due_at=now + 60_000, note="cancel me")
        await store.cancel_timer("b", gone.timer_id)

    _store_do(db_path, fill)
    code, out, _ = _run(capsys, "timers", "--db", db_path)
    assert code == 0 and "Armed and in flight (2):" in out and "check the build" in out
    # How far away each is reads in hours and minutes, not as a count of seconds.
    assert re.search(r"\(in (59m\d\ds|1h00m)\)  +-  +check the build", out), out
    assert re.search(r"\(in (1h59m|2h00m)\)  +0 9 \* \* MON-FRI", out), out
    assert "0 9 * * MON-FRI (Europe/Paris)" in out and "SCHEDULE" in out
    assert "Recent (1):" in out and "cancel me" in out
    report = _json(capsys, "timers", "b", "--db", db_path)
    assert report["active"] == [] and report["recent"][0]["status"] == "cancelled"
    (calendar,) = [t for t in _json(capsys, "timers", "a", "--db", db_path)["active"] if t["cron"]]
    assert (calendar["cron"], calendar["tz"], calendar["misfire"]) == ("0 9 * * MON-FRI", "Europe/Paris", "once")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59, "59s"), (60, "1m00s"), (3599, "59m59s"), (3600, "1h00m"), (86399, "23h59m"), (90000, "1d01h")],
)
def test_timer_distances_read_in_their_two_largest_units(seconds: int, text: str) -> None:
    assert _span(seconds) == text


def test_every_command_and_option_explains_itself_in_help(capsys: Any) -> None:
    parser = argparse.ArgumentParser(prog="power-loop")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    add_serve_parser(sub)
    for name, command in sub.choices.items():
        assert command.description, name
        for action in command._actions:
            assert action.help, f"{name} {action.dest}"
            assert action.option_strings or action.metavar, f"{name} {action.dest}"
    for name in (*COMMANDS, "serve"):
        with pytest.raises(SystemExit) as exited:
            main([name, "--help"])
        out = capsys.readouterr().out
        assert exited.value.code == 0 and f"usage: power-loop {name}" in out
        assert sub.choices[name].description.split(".")[0][:40] in " ".join(out.split())


def test_prune_dry_run_then_prune(db_path: str, capsys: Any) -> None:
    async def fill(store: Any) -> None:
        await store.create_session("c")
        out = await store.write("c", [Append([UserMessage(content=f"m{i}") for i in range(4)])])
        await store.write("c", [Compact(through_seq=out.seqs[2], summary="three")])

    _store_do(db_path, fill)
    code, out, _ = _run(capsys, "prune", "--dry-run", "--db", db_path)
    assert code == 0 and "Would delete 3 folded message row(s)." in out
    assert _json(capsys, "prune", "--db", db_path)["folded_messages"] == 3
    assert _json(capsys, "prune", "--dry-run", "--db", db_path)["folded_messages"] == 0


def test_problems_are_one_line_with_exit_status_2(db_path: str, capsys: Any, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.db")
    for argv in (["sessions"], ["doctor"], ["show", "x"], ["prune"]):
        code, out, err = _run(capsys, *argv, "--db", missing)
        assert (
            code == 2
            and out == ""
            and err == f"power-loop: error: no such database file: {missing} (nothing was created)\n"
        )
    assert not os.path.exists(missing)
    _store_do(db_path, lambda s: s.create_session("s"))
    code, _, err = _run(capsys, "show", "nope", "--db", db_path)
    assert (code, err) == (2, "power-loop: error: no session 'nope' in this store\n")
    for argv in (["export", "nope"], ["timers", "nope"], ["timers", "nope", "--json"]):
        code, out, err = _run(capsys, *argv, "--db", db_path)
        assert (code, out, err) == (2, "", "power-loop: error: no session 'nope' in this store\n"), argv
    code, _, err = _run(capsys, "sessions")
    assert code == 2 and "no database: pass --db PATH|URL or set POWER_LOOP_DB_URL" in err
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello, not a database" * 100)
    code, _, err = _run(capsys, "sessions", "--db", str(not_db))
    assert code == 2 and "is not a power_loop SQLite database" in err


def test_the_database_url_comes_from_the_environment(db_path: str, capsys: Any, monkeypatch: Any) -> None:
    _store_do(db_path, lambda s: s.create_session("from-env"))
    monkeypatch.setenv("POWER_LOOP_DB_URL", db_path)
    assert [s["session_id"] for s in _json(capsys, "sessions")["sessions"]] == ["from-env"]


def test_a_locked_database(db_path: str, capsys: Any) -> None:
    _store_do(db_path, lambda s: s.create_session("s"))
    holder = sqlite3.connect(db_path, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        code, _, err = _run(capsys, "prune", "--db", db_path, "--busy-timeout", "0")
        assert code == 2 and err.startswith("power-loop: error: the session store") and "locked" in err
        assert len(err.splitlines()) == 1
        code, out, _ = _run(capsys, "sessions", "--db", db_path)  # readers still read (WAL)
        assert code == 0 and "s " in out
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_a_postgres_url_that_does_not_connect(capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = _run(capsys, "sessions", "--db", f"postgresql://user:secret@127.0.0.1:{port}/db")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert err.startswith(
        f"power-loop: error: cannot connect to PostgreSQL at postgresql://user:***@127.0.0.1:{port}/db"
    )
    assert "secret" not in err


def test_an_empty_postgres_schema_is_not_created(pg_schema: Any, capsys: Any) -> None:
    url = f"{pg_schema.url}{'&' if '?' in pg_schema.url else '?'}schema=nothing_here"
    code, _, err = _run(capsys, "sessions", "--db", url)
    assert code == 2 and "PostgreSQL schema 'nothing_here'" in err and "holds no power_loop store" in err


def test_follow_tails_a_session_another_process_writes(
    shared_db: str, scripted_server: ScriptedServer, tmp_path: Path
) -> None:
    _fill(shared_db, scripted_server)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "power_loop",
            "show",
            "alpha",
            "--follow",
            "--json",
            "--interval",
            "0.1",
            "--db",
            shared_db,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert follower.stdout is not None
    try:
        seen: list[dict[str, Any]] = []
        while not (seen and seen[-1].get("type") == "run"):
            seen.append(json.loads(follower.stdout.readline()))
        assert [r.get("seq") for r in seen if r["type"] == "message"] == [1, 2, 3, 4]

        async def more() -> None:
            scripted_server.push(text_reply("Still 5."))
            llm = make_service("openai", scripted_server)
            try:
                async with StatefulAgentLoop(llm=llm, db_path=shared_db) as loop:
                    await loop.send("and now?", "alpha")
            finally:
                await llm.aclose()

        asyncio.run(more())
        later: list[dict[str, Any]] = []
        while not (later and later[-1].get("type") == "run"):
            later.append(json.loads(follower.stdout.readline()))
        assert [(r["seq"], r["content"]) for r in later if r["type"] == "message"] == [(5, "and now?"), (6, "Still 5.")]
        assert later[-1]["number"] == 2 and later[-1]["status"] == "completed"
    finally:
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate()
    assert follower.returncode == 0, err


def test_python_dash_m_power_loop_sessions(db_path: str, tmp_path: Path) -> None:
    _store_do(db_path, lambda s: s.create_session("sub"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "power_loop", "sessions", "--db", db_path, "--json"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [s["session_id"] for s in json.loads(done.stdout)["sessions"]] == ["sub"]


HOSTILE = "hi\x1b[2J\x1b]0;owned\x07 \x9b31m red\rOVER\u202eevil"


def test_untrusted_text_never_reaches_the_terminal_raw(db_path: str, capsys: Any) -> None:
    async def fill(store: Any) -> None:
        await store.create_session("evil", metadata={"k": HOSTILE})
        await store.write("evil", [Append([UserMessage(content=HOSTILE), AssistantMessage(content="multi\nline")])])
        await store.schedule_timer("evil", due_at=int(time.time() * 1000) + 60_000, note=HOSTILE)

    _store_do(db_path, fill)
    raw = ("\x1b", "\x07", "\x9b", "\r", "\u202e")
    for argv in (["show", "evil"], ["timers"], ["sessions", "--search", "evil"]):
        code, out, _ = _run(capsys, *argv, "--db", db_path)
        assert code == 0 and not any(c in out for c in raw), (argv, out)
    _, out, _ = _run(capsys, "show", "evil", "--db", db_path)
    assert "#1 user: hi\\x1b[2J\\x1b]0;owned\\x07 \\x9b31m red\\x0dOVER\\u202eevil" in out
    assert "#2 assistant: multi\nline" in out  # line breaks stay line breaks
    parsed = []
    for argv in (["show", "evil", "--json"], ["timers", "--json"], ["export", "evil"]):
        code, out, _ = _run(capsys, *argv, "--db", db_path)
        assert code == 0 and not any(c in out for c in raw), (argv, out)
        parsed.append([json.loads(line) for line in out.splitlines()])
    assert parsed[0][0]["transcript"][0]["content"] == HOSTILE  # the same text, escaped as JSON
    assert parsed[1][0]["active"][0]["note"] == HOSTILE
    assert parsed[2][1]["message"]["content"] == HOSTILE


def test_import_and_export_file_problems_are_one_line_naming_the_file_line(
    db_path: str, capsys: Any, tmp_path: Path
) -> None:
    _store_do(db_path, lambda s: s.create_session("s"))
    head = json.dumps({"type": "session", "format": 1, "session_id": "s", "metadata": {}})
    user = json.dumps({"type": "message", "seq": 1, "message": {"role": "user", "content": "hi"}})
    orphan = json.dumps({"type": "message", "seq": 2, "message": {"role": "tool", "tool_call_id": "c", "content": "x"}})
    spaced = tmp_path / "spaced.jsonl"
    spaced.write_text(f"{head}\n\n{user}\n\n\n{orphan}\n")
    code, _, err = _run(capsys, "import", str(spaced), "--db", db_path)
    assert code == 2 and err.startswith("power-loop: error: line 6: tool result for call 'c'"), err
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(head.encode() + b"\n\xff\xfe\n")
    code, _, err = _run(capsys, "import", str(binary), "--db", db_path)
    assert code == 2 and err.startswith("power-loop: error: line 2: not UTF-8 text"), err
    for argv in (["import", str(tmp_path)], ["export", "s", "-o", str(tmp_path)], ["export", "s", "-o", "/no/dir/x"]):
        code, out, err = _run(capsys, *argv, "--db", db_path)
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (argv, err)
        assert err.startswith("power-loop: error: cannot ") and "Error:" not in err, err
    assert _json(capsys, "sessions", "--db", db_path)["total"] == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sessions", "--offset", "-1"], "expected a whole number >= 0"),
        (["timers", "--recent", "-1"], "expected a whole number >= 0"),
        (["sessions", "--offset", str(2**64)], "expected a whole number >= 0"),
        (["sessions", "--limit", str(2**64)], "expected a whole number >= 1"),
        (["show", "s", "--follow", "--interval", "0"], "expected a number of seconds > 0"),
        (["show", "s", "--follow", "--interval", "nan"], "expected a number of seconds > 0"),
        (["show", "s", "--follow", "--max-wait", "-1"], "expected a number of seconds from 0 to"),
        (["sessions", "--busy-timeout", "nan"], "expected a number of seconds from 0 to"),
        (["sessions", "--busy-timeout", "inf"], "expected a number of seconds from 0 to"),
        (["sessions", "--busy-timeout", "-5"], "expected a number of seconds from 0 to"),
    ],
)
def test_out_of_range_arguments_are_refused(db_path: str, capsys: Any, argv: list[str], message: str) -> None:
    _store_do(db_path, lambda s: s.create_session("s"))
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--db", db_path])
    assert exited.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(("step", "hint"), [(-1, "open it once with this power_loop to migrate"), (1, "upgrade")])
def test_a_postgres_schema_of_another_version_is_refused_unchanged(
    pg_schema: Any, capsys: Any, tmp_path: Path, step: int, hint: str
) -> None:
    import psycopg

    from power_loop.store.schema import LATEST_VERSION

    url = f"{pg_schema.url}{'&' if '?' in pg_schema.url else '?'}schema={pg_schema.schema}"
    _store_do(url, lambda s: s.create_session("s"))
    table = f'"{pg_schema.schema}".power_loop_schema'
    with psycopg.connect(pg_schema.url, autocommit=True) as conn:
        conn.execute(f"UPDATE {table} SET version = %s", (LATEST_VERSION + step,))
    exported = tmp_path / "s.jsonl"
    exported.write_text(json.dumps({"type": "session", "format": 1, "session_id": "s"}) + "\n")
    for argv in (["sessions"], ["doctor"], ["prune", "--dry-run"], ["import", str(exported)]):
        code, out, err = _run(capsys, *argv, "--db", url)
        assert code == 2 and out == "" and len(err.splitlines()) == 1, (argv, err)
        assert f"has schema version {LATEST_VERSION + step}, this power_loop reads {LATEST_VERSION}" in err
        assert hint in err
    with psycopg.connect(pg_schema.url, autocommit=True) as conn:
        assert conn.execute(f"SELECT version FROM {table}").fetchone() == (LATEST_VERSION + step,)


def test_files_that_are_no_store_of_this_version_are_named_for_what_they_are(capsys: Any, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old.db"
    shutil.copyfile(ROOT / "tests" / "fixtures" / "power_loop_011.db", old)
    before = old.read_bytes()
    code, out, err = _run(capsys, "sessions", "--db", str(old))
    assert code == 2 and out == "" and "is a power-loop 0.11 database" in err
    assert f"power-loop migrate --db {old}" in err and old.read_bytes() == before
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    code, _, err = _run(capsys, "doctor", "--db", str(empty))
    assert code == 2 and f"{empty} is not a power_loop SQLite database (it is empty)" in err
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    code, _, err = _run(capsys, "prune", "--db", str(foreign))
    assert code == 2 and "is not a power_loop SQLite database (it holds other tables: invoices)" in err
    code, _, err = _run(capsys, "sessions", "--db", str(tmp_path))
    assert code == 2 and f"{tmp_path} is a directory, not an SQLite database file" in err


def test_follow_shows_a_compaction_of_rows_already_shown(db_path: str, tmp_path: Path) -> None:
    _store_do(db_path, lambda s: s.create_session("c"))
    _store_do(db_path, lambda s: s.write("c", [Append([UserMessage(content=f"m{i}") for i in range(4)])]))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["show", "c", "--follow", "--json", "--interval", "0.05", "--db", db_path]
    follower = subprocess.Popen(
        [sys.executable, "-m", "power_loop", *argv], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path
    )
    assert follower.stdout is not None
    try:
        seen = [json.loads(follower.stdout.readline()) for _ in range(4)]
        assert [r["seq"] for r in seen] == [1, 2, 3, 4]
        _store_do(db_path, lambda s: s.write("c", [Compact(through_seq=3, summary="the first three")]))
        _store_do(db_path, lambda s: s.write("c", [Append([UserMessage(content="m4")])]))
        later: list[dict[str, Any]] = []
        while not (later and later[-1].get("seq") == 5):
            later.append(json.loads(follower.stdout.readline()))
        assert [(r["type"], r["seq"]) for r in later] == [("summary", 3), ("message", 5)]
        assert "the first three" in later[0]["content"]
        more = [Append([UserMessage(content="m5"), UserMessage(content="m6")]), Compact(through_seq=6, summary="six")]
        _store_do(db_path, lambda s: s.write("c", more))
        _store_do(db_path, lambda s: s.write("c", [Append([UserMessage(content="m7")])]))
        last: list[dict[str, Any]] = []
        while not (last and last[-1].get("seq") == 8):
            last.append(json.loads(follower.stdout.readline()))
        assert [(r["type"], r["seq"]) for r in last] == [
            ("message", 6),
            ("message", 7),
            ("summary", 6),
            ("message", 8),
        ] or [(r["type"], r["seq"]) for r in last] == [("message", 6), ("summary", 6), ("message", 7), ("message", 8)]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate()
    assert follower.returncode == 0


def test_the_json_of_every_command_is_one_document_with_the_documented_keys(
    shared_db: str, scripted_server: ScriptedServer, capsys: Any, tmp_path: Path
) -> None:
    _fill(shared_db, scripted_server)
    exported = tmp_path / "alpha.jsonl"
    assert _run(capsys, "export", "alpha", "--db", shared_db, "-o", str(exported))[0] == 0
    expected = {
        ("sessions",): {"total", "offset", "sessions"},
        ("show", "alpha"): {"session", "runs", "transcript", "usage"},
        ("timers",): {"active", "recent"},
        ("import", str(exported)): {"session_id", "messages"},
        ("doctor",): {"backend", "schema_version", "integrity", "sessions", "healthy", "findings"},
        ("prune", "--dry-run"): {"dry_run", "folded_messages", "sessions"},
    }
    for argv, keys in expected.items():
        assert set(_json(capsys, *argv, "--db", shared_db)) == keys, argv
    code, out, _ = _run(capsys, "export", "alpha", "--db", shared_db, "--json")
    assert code == 0 and [json.loads(line)["type"] for line in out.splitlines()][0] == "session"


def test_lone_surrogates_in_stored_text_are_shown_escaped(db_path: str, capsys: Any, tmp_path: Path) -> None:
    head = {"type": "session", "format": 1, "session_id": "x", "metadata": {"k": "\ud800"}}
    user = {"type": "message", "seq": 1, "message": {"role": "user", "content": "bad \udc00 half"}}
    source = tmp_path / "s.jsonl"
    source.write_text(f"{json.dumps(head)}\n{json.dumps(user)}\n")  # ASCII: the file itself is valid UTF-8
    assert _run(capsys, "import", str(source), "--db", db_path, "--session-id", "sur")[0] == 0
    code, out, err = _run(capsys, "show", "sur", "--db", db_path)
    assert code == 0 and "#1 user: bad " in out and 'metadata {"k": "\\ud800"}' in out, err
    out.encode("utf-8")  # printable on a UTF-8 terminal
    shown = _json(capsys, "show", "sur", "--db", db_path)
    assert shown["session"]["metadata"] == {"k": "\ud800"} and shown["transcript"][0]["message"]["content"] in (
        "bad \udc00 half",
        "bad \ufffd half",
    )
    code, out, err = _run(capsys, "export", "sur", "--db", db_path)
    assert code == 0 and json.loads(out.splitlines()[0])["metadata"] == {"k": "\ud800"}, err


def test_no_password_of_a_connection_string_is_printed(pg_schema: Any, capsys: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for db in (
        f"host=127.0.0.1 port={port} password=hunter2 dbname=db user=u",
        f"postgresql://u@127.0.0.1:{port}/db?password=hunter2",
    ):
        code, out, err = _run(capsys, "sessions", "--db", db)
        assert code == 2 and "cannot connect to PostgreSQL" in err and "hunter2" not in err + out, err
    url = f"{pg_schema.url}&schema={pg_schema.schema}&password=hunter2"  # trust auth ignores it
    _store_do(url, lambda s: s.create_session("s"))
    _store_do(url, lambda s: s.schedule_timer("s", due_at=1, note="late"))
    code, out, err = _run(capsys, "doctor", "--db", url)
    assert code == 1 and "[overdue_timer]" in out and "hunter2" not in out + err, out


def test_the_worker_fix_is_a_command_a_shell_runs_as_shown(tmp_path: Path, capsys: Any) -> None:
    import shlex

    db = str(tmp_path / "my sessions & more.db")
    _store_do(db, lambda s: s.create_session("t"))
    _store_do(db, lambda s: s.schedule_timer("t", due_at=1, note="late"))
    code, out, _ = _run(capsys, "doctor", "--db", db)
    fix = next(line for line in out.splitlines() if "fix: power-loop worker" in line)
    command = fix.split("fix: ", 1)[1].split("  #", 1)[0]
    assert code == 1 and shlex.split(command) == ["power-loop", "worker", "APP", "--db", db]


def test_migrate_upgrades_an_older_store_in_place_and_only_that(shared_db: str, capsys: Any) -> None:
    from power_loop.store.schema import LATEST_VERSION

    from .helpers import RawDatabase

    _store_do(shared_db, lambda s: s.create_session("kept"))
    raw = RawDatabase(shared_db)  # back to version 10: no calendar columns
    for column in ("cron", "tz", "misfire"):
        raw.execute(f"ALTER TABLE timers DROP COLUMN {column}")
    raw.execute("UPDATE power_loop_schema SET version = 10" if raw.postgres else "PRAGMA user_version = 10")
    raw.close()
    code, _, err = _run(capsys, "sessions", "--db", shared_db)
    assert code == 2 and "has schema version 10" in err and "power-loop migrate --db" in err
    report = _json(capsys, "migrate", "--db", shared_db)
    assert report == {"db": report["db"], "from": 10, "to": LATEST_VERSION, "migrated": True, "backup": None}
    assert "password" not in report["db"]
    assert [s["session_id"] for s in _json(capsys, "sessions", "--db", shared_db)["sessions"]] == ["kept"]
    code, out, _ = _run(capsys, "migrate", "--db", shared_db)
    assert code == 0 and f"is at schema version {LATEST_VERSION} already: nothing to do." in out


def test_migrate_converts_a_0_11_file_and_refuses_what_is_no_store(capsys: Any, tmp_path: Path) -> None:
    import shutil

    from power_loop.store.schema import LATEST_VERSION

    old = tmp_path / "old.db"
    shutil.copyfile(ROOT / "tests" / "fixtures" / "power_loop_011.db", old)
    before = old.read_bytes()
    code, out, _ = _run(capsys, "migrate", "--db", str(old))
    assert code == 0 and f"from power-loop 0.11 to schema version {LATEST_VERSION}." in out
    backup = tmp_path / "old.db.011-backup"
    assert f"kept at {backup}" in out

    def dump(path: Path) -> list[str]:
        with sqlite3.connect(path) as conn:
            lines = list(conn.iterdump())
        conn.close()
        return lines

    original = tmp_path / "original.db"
    original.write_bytes(before)
    assert dump(backup) == dump(original)  # the 0.11 file as it was, row for row
    assert len(_json(capsys, "sessions", "--db", str(old))["sessions"]) == 5
    missing = tmp_path / "missing.db"
    code, _, err = _run(capsys, "migrate", "--db", str(missing))
    assert code == 2 and "no such database file" in err and not missing.exists()
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.close()
    code, _, err = _run(capsys, "migrate", "--db", str(foreign))
    assert code == 2 and "it holds other tables: invoices" in err
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["invoices"]
    conn.close()
    newer = tmp_path / "newer.db"
    shutil.copyfile(old, newer)
    with sqlite3.connect(newer) as conn:
        conn.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    conn.close()
    code, _, err = _run(capsys, "migrate", "--db", str(newer))
    assert code == 2 and "upgrade power_loop" in err
