"""The session viewer in a real headless Chromium: the sessions list with its filters, a
session's transcript and tool calls, runs and their chart, timers, untrusted markup shown as
text, and the live view receiving a message sent while the page is open.

Needs the system Chromium at /usr/bin/chromium (Playwright drives it; no browser download).
Skipped when it is missing or when ``POWER_LOOP_TEST_BROWSER=0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from power_loop import StatefulAgentLoop, ToolRegistry
from power_loop.testing import ScriptedServer
from power_loop.viewer import ViewerServer
from tests.test_viewer import XSS, _llm, calculate, fill_store, model_rule

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM = "/usr/bin/chromium"
# The machine's network is closed: these keep Chromium from opening connections of its own.
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: each wait ends as soon as the page shows what it waits for.
WAIT_MS = 60_000

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("POWER_LOOP_TEST_BROWSER") == "0", reason="browser tests are off (POWER_LOOP_TEST_BROWSER=0)"
    ),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM),
        reason=f"no Chromium at {CHROMIUM}: install it (apt-get install chromium) or set POWER_LOOP_TEST_BROWSER=0",
    ),
]

playwright_api = pytest.importorskip(
    "playwright.async_api", reason='the browser tests need Playwright: pip install -e ".[test]"'
)
expect = playwright_api.expect


async def test_browsing_sessions_in_chromium(tmp_path: Path) -> None:
    db = str(tmp_path / "sessions.db")
    expect.set_options(timeout=WAIT_MS)
    with ScriptedServer(rule=model_rule) as model:
        await fill_store(db, model)
        llm = _llm(model)
        async with (
            StatefulAgentLoop(llm=llm, db_path=db, tool_registry=ToolRegistry([calculate])) as loop,
            playwright_api.async_playwright() as playwright,
        ):
            with ViewerServer(db, poll_interval_s=0.2) as viewer:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
                try:
                    page = await browser.new_page()
                    problems: list[str] = []
                    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
                    page.on(
                        "console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None
                    )
                    await _sessions_list(page, viewer.url)
                    await _untrusted_markup_is_text(page, viewer.url)
                    await _compacted_session(page, viewer.url)
                    await _session_with_tool_call(page, viewer.url)
                    # The live view: a message sent now appears without reloading the page.
                    await expect(page.locator("#live")).to_have_text("live")
                    result = await loop.send("Please compute 17 * 23 again, live.", session_id="calc-alice")
                    assert result.status == "completed"
                    transcript = page.locator("#transcript")
                    await expect(transcript).to_contain_text("Please compute 17 * 23 again, live.")
                    await expect(transcript.locator("details.tool-call")).to_have_count(2)
                    await expect(page.locator("#runs-table tbody tr")).to_have_count(3)
                    await expect(page.locator("#token-chart g.run-bar")).to_have_count(3)
                    await transcript.locator("details.tool-call summary").nth(1).click()
                    await expect(transcript.locator("details.tool-call pre.result").nth(1)).to_have_text("391")
                    assert problems == [], problems
                finally:
                    await browser.close()
        await llm.aclose()


async def _sessions_list(page: Page, url: str) -> None:
    await page.goto(url + "/")
    rows = page.locator("#sessions-table tbody tr")
    await expect(rows).to_have_count(3)
    await expect(page.locator("#count")).to_have_text("1–3 of 3")
    await expect(page.locator("header .subtitle")).to_contain_text("times in UTC")  # the times shown are UTC

    await page.fill("#search", "calc")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("calc-alice")
    await expect(rows.first).to_contain_text("team=blue")
    assert "search=calc" in page.url  # the filters live in the address
    await page.fill("#search", "")
    await expect(rows).to_have_count(3)

    await page.select_option("#kind", "subagent")
    await expect(page.locator("#no-sessions")).to_be_visible()
    await page.select_option("#kind", "main")
    await expect(rows).to_have_count(3)
    await page.select_option("#kind", "")

    await page.fill("#metadata", "user_id=carol")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("long-carol")
    await page.fill("#metadata", "")
    await page.select_option("#order", "id")
    await expect(rows.first).to_contain_text("calc-alice")
    await expect(rows.last).to_contain_text("xss-mallory")


async def _untrusted_markup_is_text(page: Page, url: str) -> None:
    await page.goto(url + "/?search=xss")
    await page.click("#sessions-table a:text('xss-mallory')")
    await page.wait_for_url("**/session?id=xss-mallory")
    first = page.locator("#transcript li").first
    await expect(first.locator(".content")).to_have_text(XSS)
    assert await page.locator("#transcript script, #transcript img").count() == 0
    assert await page.evaluate("typeof window.__pwned") == "undefined"


async def _compacted_session(page: Page, url: str) -> None:
    await page.goto(url + "/session?id=long-carol")
    transcript = page.locator("#transcript")
    await expect(transcript.locator("li.summary").first).to_contain_text("compaction summary")
    folded = transcript.locator("li.compacted")
    assert await folded.count() > 0
    await expect(folded.first).to_be_visible()
    await page.uncheck("#show-compacted")
    await expect(folded.first).to_be_hidden()


async def _session_with_tool_call(page: Page, url: str) -> None:
    await page.goto(url + "/")
    await page.click("#sessions-table a:text('calc-alice')")
    await page.wait_for_url("**/session?id=calc-alice")
    head = page.locator("#session-head")
    await expect(head).to_contain_text("user_id=alice")
    call = page.locator("#transcript details.tool-call").first
    await expect(call.locator("summary")).to_contain_text("calculate")
    await expect(call.locator("pre.arguments")).to_be_hidden()
    await call.locator("summary").click()
    await expect(call.locator("pre.arguments")).to_be_visible()
    await expect(call.locator("pre.arguments")).to_contain_text('"expression": "17 * 23"')
    await expect(call.locator("pre.result")).to_have_text("391")
    await expect(page.locator("#transcript")).to_contain_text("The result is 391.")

    runs = page.locator("#runs-table tbody tr")
    await expect(runs).to_have_count(2)
    await expect(runs.first).to_contain_text("completed")
    chart = page.locator("#token-chart")
    await expect(chart.locator("rect.bar-in")).to_have_count(2)
    await expect(chart.locator("rect.bar-out")).to_have_count(2)
    await expect(page.locator("#timers-active")).to_contain_text("check on the build")
