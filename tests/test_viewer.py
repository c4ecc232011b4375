"""The session viewer's HTTP surface: pages, JSON endpoints, escaping, the token and bind
rules, and the live event stream, on real stores filled by a real loop (the model is the
scripted server, reached through the real OpenAI SDK)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

with warnings.catch_warnings():
    # Starlette releases before 1.8 (the newest on Python 3.10) name anyio.abc.BlockingPortal,
    # an alias that anyio >= 4.16 deprecates: not this suite's business.
    warnings.filterwarnings("ignore", "The anyio.abc.BlockingPortal alias", DeprecationWarning)
    from starlette.testclient import TestClient

from power_loop import AgentLoopConfig, DefaultCompactor, StatefulAgentLoop, ToolRegistry, tool
from power_loop.cli import main
from power_loop.providers.openai import OpenAIChatService
from power_loop.testing import ScriptedRequest, ScriptedServer, text_reply, tool_reply
from power_loop.viewer import ViewerConfigError, ViewerServer, create_app
from power_loop.viewer._guard import COOKIE_NAME

XSS = 'Look: <script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> & done'
LOCAL = "http://127.0.0.1"


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers and + - * /, e.g. "17 * 23".
    """
    left, _, right = expression.partition("*")
    return str(int(left) * int(right))


def model_rule(request: ScriptedRequest) -> object:
    """The scripted model: reports tool results, computes with the tool when asked, acknowledges
    the rest (compaction summaries included)."""
    if request.tool_results:
        return text_reply(f"The result is {request.tool_results[0].text}.")
    text = request.last_user_text
    if text.startswith("Please compute") and "calculate" in request.tools:
        return tool_reply(("calculate", {"expression": "17 * 23"}, "call_calc_1"))
    return text_reply(f"Noted: {text[:120]}")


def _llm(server: ScriptedServer) -> OpenAIChatService:
    return OpenAIChatService(model="test-model", base_url=server.openai_base_url, api_key="test-key", timeout_s=10.0)


async def fill_store(db: str, server: ScriptedServer) -> dict[str, str]:
    """Three sessions: one with a tool call and a timer, one holding markup, one compacted."""
    llm = _llm(server)
    registry = ToolRegistry([calculate])
    try:
        async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
            calc = await loop.new_session_async(session_id="calc-alice", metadata={"user_id": "alice", "team": "blue"})
            await loop.send("Please compute 17 * 23 with the calculator.", session_id=calc)
            await loop.send("Thanks!", session_id=calc)
            await loop.schedule_timer_async(calc, delay_s=3600, note="check on the build")
            xss = await loop.new_session_async(session_id="xss-mallory", metadata={"user_id": "mallory"})
            await loop.send(XSS, session_id=xss)
        config = AgentLoopConfig(compactor=DefaultCompactor(absolute_threshold=120, keep_last_n=2))
        async with StatefulAgentLoop(llm=llm, db_path=db, config=config) as loop:
            long = await loop.new_session_async(session_id="long-carol", metadata={"user_id": "carol"})
            for n in range(5):
                await loop.send(f"Fact number {n}: the sky was a different colour on day {n}.", session_id=long)
    finally:
        await llm.aclose()
    return {"calc": calc, "xss": xss, "long": long}


@pytest.fixture(scope="module")
def filled_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """An SQLite file holding :func:`fill_store`'s sessions (shared by the read-only tests)."""
    db = str(tmp_path_factory.mktemp("viewer") / "sessions.db")
    with ScriptedServer(rule=model_rule) as server:
        asyncio.run(fill_store(db, server))
    return db


@pytest.fixture
def client(filled_db: str) -> Iterator[TestClient]:
    with TestClient(create_app(filled_db), base_url=LOCAL) as test_client:
        yield test_client


# ---- pages and headers ---------------------------------------------------------------------


def test_pages_are_static_files_with_a_strict_policy(client: TestClient) -> None:
    for path in ("/", "/session?id=calc-alice"):
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert page.headers["x-frame-options"] == "DENY"
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) == []  # no inline script
        assert "calc-alice" not in page.text  # the data never goes into HTML on the server
    script = client.get("/static/viewer.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text and "insertAdjacentHTML" not in script.text
    assert client.get("/static/viewer.css").status_code == 200


def test_only_reads_are_answered(client: TestClient) -> None:
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = client.request(method, "/api/sessions")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert "default-src 'self'" in response.headers["content-security-policy"]
    assert client.head("/").status_code == 200


def test_a_foreign_host_name_is_refused_without_a_token(client: TestClient) -> None:
    assert client.get("/api/sessions", headers={"host": "attacker.example"}).status_code == 400
    assert client.get("/api/sessions", headers={"host": "localhost:8765"}).status_code == 200
    assert client.get("/api/sessions", headers={"host": "[::1]:8765"}).status_code == 200


# ---- data ----------------------------------------------------------------------------------


def test_sessions_are_listed_filtered_and_paged(client: TestClient) -> None:
    every = client.get("/api/sessions").json()
    assert every["total"] == 3
    assert {s["session_id"] for s in every["sessions"]} == {"calc-alice", "xss-mallory", "long-carol"}
    calc = next(s for s in every["sessions"] if s["session_id"] == "calc-alice")
    assert calc["runs"] == 2 and calc["armed_timers"] == 1 and calc["metadata"]["team"] == "blue"
    assert calc["input_tokens"] > 0 and calc["output_tokens"] > 0

    def ids(**params: str) -> list[str]:
        return [s["session_id"] for s in client.get("/api/sessions", params=params).json()["sessions"]]

    assert ids(search="calc") == ["calc-alice"]
    assert ids(metadata="user_id=carol") == ["long-carol"]
    assert ids(kind="subagent") == []
    assert sorted(ids(active="1h")) == ["calc-alice", "long-carol", "xss-mallory"]
    assert ids(order="id") == ["calc-alice", "long-carol", "xss-mallory"]
    page = client.get("/api/sessions", params={"order": "id", "limit": "2", "offset": "2"}).json()
    assert page["total"] == 3 and [s["session_id"] for s in page["sessions"]] == ["xss-mallory"]
    for bad in (
        {"order": "bogus"},
        {"kind": "subagents"},
        {"active": "soon"},
        {"metadata": "novalue"},
        {"limit": "0"},
        {"offset": "x"},
    ):
        response = client.get("/api/sessions", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]


def test_a_session_shows_its_runs_timers_and_tool_calls(client: TestClient) -> None:
    detail = client.get("/api/session", params={"id": "calc-alice"}).json()
    assert detail["session"]["session_id"] == "calc-alice"
    assert [r["status"] for r in detail["runs"]] == ["completed", "completed"]
    assert all(r["input_tokens"] > 0 for r in detail["runs"])
    assert [t["note"] for t in detail["timers"]["active"]] == ["check on the build"]

    entries = client.get("/api/transcript", params={"id": "calc-alice"}).json()["entries"]
    assert [e["role"] for e in entries] == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    (call,) = entries[1]["tool_calls"]
    assert call["name"] == "calculate" and call["id"] == "call_calc_1"
    arguments = call["arguments"] if isinstance(call["arguments"], dict) else json.loads(call["arguments"])
    assert arguments == {"expression": "17 * 23"}
    assert entries[2]["tool_call_id"] == "call_calc_1" and entries[2]["content"] == "391"
    assert entries[3]["content"] == "The result is 391."
    later = client.get("/api/transcript", params={"id": "calc-alice", "after_seq": entries[3]["seq"]}).json()
    assert [e["role"] for e in later["entries"]] == ["user", "assistant"]

    for path in ("/api/session", "/api/transcript", "/api/runs", "/api/timers", "/api/live"):
        unknown = client.get(path, params={"id": "nobody"})
        assert unknown.status_code == 404 and unknown.json() == {"error": "no session 'nobody'"}, path
    assert client.get("/api/session").status_code == 400
    assert client.get("/api/transcript", params={"id": "calc-alice", "after_seq": "-1"}).status_code == 400


def test_compaction_summaries_and_folded_rows_are_marked(client: TestClient) -> None:
    every = client.get("/api/transcript", params={"id": "long-carol"}).json()["entries"]
    assert any(e["is_summary"] for e in every)
    assert any(e["compacted"] for e in every)
    live = client.get("/api/transcript", params={"id": "long-carol", "include_compacted": "0"}).json()["entries"]
    assert live and not any(e["compacted"] for e in live)
    assert len(live) < len(every)


def test_untrusted_content_comes_back_as_json_text(client: TestClient) -> None:
    response = client.get("/api/transcript", params={"id": "xss-mallory"})
    assert response.headers["content-type"] == "application/json"
    assert response.json()["entries"][0]["content"] == XSS
    assert XSS not in client.get("/session?id=xss-mallory").text


def test_timers_across_sessions(client: TestClient) -> None:
    report = client.get("/api/timers").json()
    assert [(t["session_id"], t["status"]) for t in report["active"]] == [("calc-alice", "armed")]
    assert client.get("/api/timers", params={"id": "xss-mallory"}).json()["active"] == []


# ---- token -----------------------------------------------------------------------------------


def test_with_a_token_every_request_must_carry_it(filled_db: str) -> None:
    token = "s3cret-token"
    with TestClient(create_app(filled_db, token=token), base_url=LOCAL, follow_redirects=False) as client:
        refused = client.get("/api/sessions")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert "default-src 'self'" in refused.headers["content-security-policy"]
        assert client.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/?token=wrong").status_code == 401
        assert client.get("/static/viewer.js").status_code == 401
        bearer = client.get("/api/sessions", headers={"authorization": f"Bearer {token}"})
        assert bearer.status_code == 200 and bearer.json()["total"] == 3

        first = client.get(f"/session?id=calc-alice&token={token}")
        assert first.status_code == 303
        assert first.headers["location"] == "/session?id=calc-alice"  # the token leaves the address
        cookie = first.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}=") and token not in cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        # The client keeps the cookie: later requests need nothing else.
        assert client.get("/api/sessions").status_code == 200
        assert client.get("/session?id=calc-alice").status_code == 200

        client.cookies.clear()
        client.cookies.set(COOKIE_NAME, "forged")
        assert client.get("/api/sessions").status_code == 401
        # With a token, the Host check gives way to it (a server reached from other machines).
        remote = {"host": "viewer.internal:8765", "authorization": f"Bearer {token}"}
        assert client.get("/api/sessions", headers=remote).status_code == 200


# ---- the command -----------------------------------------------------------------------------


def test_serve_refuses_other_addresses_without_allow_remote_and_a_token(
    filled_db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = [
        ["--host", "0.0.0.0"],
        ["--host", "0.0.0.0", "--allow-remote"],
        ["--host", "0.0.0.0", "--token", "t"],
        ["--host", "192.168.1.10", "--allow-remote"],
    ]
    for extra in cases:
        assert main(["serve", "--db", filled_db, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("power-loop: error: refusing to listen on"), err
    monkeypatch.setenv("POWER_LOOP_VIEWER_TOKEN", "")
    assert main(["serve", "--db", filled_db, "--host", "0.0.0.0", "--allow-remote"]) == 2
    assert "a token (--token or POWER_LOOP_VIEWER_TOKEN)" in capsys.readouterr().err


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf"])
def test_serve_refuses_a_poll_interval_that_is_no_positive_number(
    filled_db: str, capsys: pytest.CaptureFixture[str], interval: str
) -> None:
    assert main(["serve", "--db", filled_db, "--poll-interval", interval]) == 2
    err = capsys.readouterr().err
    assert err == f"power-loop: error: --poll-interval must be a positive number of seconds, not {float(interval)}\n"
    with pytest.raises(ValueError, match="poll_interval_s must be a positive number of seconds"):
        create_app(filled_db, poll_interval_s=float(interval))


def test_serve_needs_an_existing_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing.db"
    assert main(["serve", "--db", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no database file at" in err and "nothing.db" in err
    assert not missing.exists()
    assert main(["serve"]) == 2
    assert "POWER_LOOP_DB_URL" in capsys.readouterr().err
    with pytest.raises(ViewerConfigError):
        create_app(f"sqlite:///{missing}")
    assert not missing.exists()


def test_serve_runs_until_interrupted(filled_db: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    command = [sys.executable, "-m", "power_loop", "serve", "--db", filled_db, "--port", "0"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()  # printed once the port is bound
        match = re.search(r"at (http://127\.0\.0\.1:\d+/) \(read-only", first)
        assert match, first
        with httpx.Client(base_url=match.group(1), trust_env=False) as http:
            assert http.get("/api/sessions").json()["total"] == 3
            assert http.post("/api/sessions").status_code == 405
        process.send_signal(signal.SIGINT)
        assert process.wait() == 130  # Ctrl-C, as the other commands
        assert process.stderr.read() == ""


def test_serve_reports_a_store_it_cannot_open(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--db", "postgresql://viewer@127.0.0.1:1/nothing"]) == 2  # as the inspector commands
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("power-loop: error: cannot connect to PostgreSQL"), err


def test_serve_never_migrates_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "power_loop_011.db", old)
    before = old.read_bytes()
    assert main(["serve", "--db", str(old)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"power-loop migrate --db {old}" in err, err
    assert old.read_bytes() == before
    wal = tmp_path / "old.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # a read-only look wrote nothing


def test_the_command_works_without_the_web_extra(filled_db: str, tmp_path: Path) -> None:
    # Nothing imports Starlette or uvicorn until the viewer is used; then the error names the extra.
    script = (
        "import sys\n"
        "sys.modules['starlette'] = None\n"
        "import power_loop, power_loop.cli, power_loop.viewer\n"
        "assert 'uvicorn' not in sys.modules\n"
        f"sys.exit(power_loop.cli.main(['serve', '--db', {filled_db!r}]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    expected = 'power-loop: error: the session viewer needs Starlette and uvicorn: pip install "power-loop[web]"\n'
    assert done.stderr == expected


def test_serve_is_listed_by_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--allow-remote" in out and "--token" in out and "--db" in out


# ---- the live view ---------------------------------------------------------------------------


async def _events(response: httpx.Response) -> AsyncIterator[tuple[str, object]]:
    name = "message"
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            yield name, json.loads(line[len("data: ") :])
            name = "message"


async def test_the_live_view_pushes_new_messages_and_runs(tmp_path: Path) -> None:
    db = str(tmp_path / "live.db")
    with ScriptedServer(rule=model_rule) as model:
        llm = _llm(model)
        async with StatefulAgentLoop(llm=llm, db_path=db) as loop:
            sid = await loop.new_session_async(session_id="live-session")
            first = await loop.send("Hello there.", session_id=sid)
            assert first.status == "completed"
            with ViewerServer(db, poll_interval_s=0.05) as viewer:
                async with httpx.AsyncClient(base_url=viewer.url, trust_env=False, timeout=None) as http:
                    url = f"/api/live?id={sid}&after_seq=0"
                    async with http.stream("GET", url) as response:
                        assert response.headers["content-type"].startswith("text/event-stream")
                        seen: list[str] = []
                        runs_seen: list[int] = []
                        sending: asyncio.Task[object] | None = None
                        async for name, data in _events(response):
                            if name == "message":
                                assert isinstance(data, dict)
                                seen.append(str(data["content"]))
                            elif name == "runs":
                                assert isinstance(data, list)
                                runs_seen.append(len(data))
                            if sending is None and runs_seen:
                                # What was there is out: now write while the stream is open.
                                assert seen == ["Hello there.", "Noted: Hello there."]
                                sending = asyncio.ensure_future(loop.send("Anyone live?", session_id=sid))
                            if "Noted: Anyone live?" in seen and runs_seen[-1] == 2:
                                break
                        assert sending is not None
                        await sending
        await llm.aclose()
    assert seen[2:] == ["Anyone live?", "Noted: Anyone live?"]


async def test_stopping_the_server_ends_open_live_views(filled_db: str) -> None:
    viewer = ViewerServer(filled_db)
    viewer.start()
    names: list[str] = []
    async with (
        httpx.AsyncClient(base_url=viewer.url, trust_env=False, timeout=None) as http,
        http.stream("GET", "/api/live?id=calc-alice") as response,
    ):
        async for name, _ in _events(response):
            names.append(name)
            if name == "timers":
                await asyncio.to_thread(viewer.stop)  # returns although the stream is open
            if name == "closed":
                break
    assert names[-1] == "closed" and "runs" in names


# ---- PostgreSQL ------------------------------------------------------------------------------


def test_the_viewer_reads_postgresql(pg_schema: object) -> None:
    url = f"{pg_schema.url}{'&' if '?' in pg_schema.url else '?'}schema={pg_schema.schema}"  # type: ignore[attr-defined]
    with ScriptedServer(rule=model_rule) as server:
        asyncio.run(fill_store(url, server))
    with TestClient(create_app(url), base_url=LOCAL) as client:
        listing = client.get("/api/sessions", params={"order": "id"}).json()
        assert [s["session_id"] for s in listing["sessions"]] == ["calc-alice", "long-carol", "xss-mallory"]
        detail = client.get("/api/session", params={"id": "calc-alice"}).json()
        assert [r["status"] for r in detail["runs"]] == ["completed", "completed"]
        entries = client.get("/api/transcript", params={"id": "calc-alice"}).json()["entries"]
        assert entries[1]["tool_calls"][0]["name"] == "calculate"
        assert client.get("/api/transcript", params={"id": "xss-mallory"}).json()["entries"][0]["content"] == XSS
    assert os.environ.get("POWER_LOOP_DB_URL") is None


async def test_a_live_view_of_a_deleted_session_ends(tmp_path: Path) -> None:
    db = str(tmp_path / "gone.db")
    with ScriptedServer(rule=model_rule) as model:
        llm = _llm(model)
        async with StatefulAgentLoop(llm=llm, db_path=db) as loop:
            sid = await loop.new_session_async(session_id="short-lived")
            await loop.send("Hello.", session_id=sid)
            with ViewerServer(db, poll_interval_s=0.05) as viewer:
                async with (
                    httpx.AsyncClient(base_url=viewer.url, trust_env=False, timeout=None) as http,
                    http.stream("GET", f"/api/live?id={sid}") as response,
                ):
                    closed: object = None
                    async for name, data in _events(response):
                        if name == "runs":
                            await loop.close_session_async(sid)
                        if name == "closed":
                            closed = data
        await llm.aclose()
    assert closed == {"reason": "session deleted"}  # and the stream ended there
