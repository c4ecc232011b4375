"""The provider SDK is imported once per process in a worker thread, never on the event-loop
thread; a loop starts that import when it opens; afterwards the objects alive are frozen out
of the collector's full passes unless ``POWER_LOOP_GC_FREEZE`` switches it off.

Each case runs a fresh interpreter, so the SDK import really is the process's first."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from power_loop.providers._sdk_import import GC_FREEZE_ENV, gc_freeze_enabled

HANG_GUARD_S = 120  # only a guard against a hang

PROGRAM = """
    import asyncio, gc, json, sys, threading

    first_import = threading.Event()
    importers = []

    class Witness:  # sees the SDK's import begin, on whichever thread runs it
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name == "{sdk}" and not importers:
                importers.append(threading.current_thread() is threading.main_thread())
                first_import.set()
            return None

    sys.meta_path.insert(0, Witness)

    from power_loop import StatefulAgentLoop
    from power_loop.providers.{sdk} import {service}
    from power_loop.testing import ScriptedServer, text_reply

    async def main():
        assert "{sdk}" not in sys.modules
        with ScriptedServer([text_reply("hello")]) as server:
            llm = {service}(model="m", base_url=server.{base_url}, api_key="k")
            async with StatefulAgentLoop(llm=llm, db_path="s.db") as loop:
                # open() started the import in the background: it begins with no send made
                await asyncio.to_thread(first_import.wait)
                started_before_send = len(server.requests) == 0
                sid = await loop.new_session_async()
                result = await loop.send("hi", session_id=sid)
            await llm.aclose()
        print(json.dumps({{
            "on_main_thread": importers,
            "started_before_send": started_before_send,
            "answer": result.final_text,
            "frozen": gc.get_freeze_count(),
        }}))

    asyncio.run(main())
"""

SERVICES = {
    "openai": ("OpenAIChatService", "openai_base_url"),
    "anthropic": ("AnthropicMessagesService", "anthropic_base_url"),
}


def run_program(tmp_path: Path, sdk: str, extra_env: dict[str, str]) -> dict[str, Any]:
    service, base_url = SERVICES[sdk]
    script = tmp_path / "program.py"
    script.write_text(textwrap.dedent(PROGRAM.format(sdk=sdk, service=service, base_url=base_url)))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1]), **extra_env}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=HANG_GUARD_S
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


@pytest.mark.parametrize("sdk", sorted(SERVICES))
def test_the_sdk_is_imported_off_the_loop_thread_at_open_then_frozen(tmp_path: Path, sdk: str) -> None:
    found = run_program(tmp_path, sdk, {})
    assert found["on_main_thread"] == [False]
    assert found["started_before_send"] is True
    assert found["answer"] == "hello"
    assert found["frozen"] > 10_000  # the SDK's modules, classes and functions at least


@pytest.mark.parametrize("value", ["0", "false", "off"])
def test_the_freeze_can_be_switched_off(tmp_path: Path, value: str) -> None:
    found = run_program(tmp_path, "openai", {GC_FREEZE_ENV: value})
    assert found["on_main_thread"] == [False]
    assert found["answer"] == "hello"
    assert found["frozen"] == 0


def test_the_switch_reads_common_spellings() -> None:
    assert gc_freeze_enabled({})
    assert gc_freeze_enabled({GC_FREEZE_ENV: "1"})
    assert gc_freeze_enabled({GC_FREEZE_ENV: "yes"})
    for off in ("0", "false", "False", " no ", "OFF"):
        assert not gc_freeze_enabled({GC_FREEZE_ENV: off})
