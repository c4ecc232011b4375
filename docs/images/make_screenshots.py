"""Take the session viewer's screenshots of the docs (viewer-sessions.png, viewer-session.png).

Fills a temporary SQLite file through a real loop with the built-in offline model, serves the
viewer on 127.0.0.1 and shoots the pages with Playwright driving the system Chromium:

    python docs/images/make_screenshots.py [--chromium /usr/bin/chromium]

Needs the ``test`` extras (Starlette, uvicorn, Playwright) and Chromium; downloads nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

from power_loop import AgentLoopConfig, DefaultCompactor, StatefulAgentLoop, ToolRegistry, tool
from power_loop.providers.offline import OfflineLLM
from power_loop.viewer import ViewerServer

HERE = Path(__file__).resolve().parent
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]


@tool
def get_weather(city: str) -> dict[str, object]:
    """Current weather for a city.

    Args:
        city: City name, e.g. "Paris".
    """
    return {"city": city, "temperature": 21, "sky": "clear"}


@tool
def add(a: int, b: int) -> int:
    """Add two numbers.

    Args:
        a: First number.
        b: Second number.
    """
    return a + b


async def fill(db: str) -> None:
    llm = OfflineLLM()
    registry = ToolRegistry([get_weather, add])
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
        sid = await loop.new_session_async(session_id="trip-planner-ada", metadata={"user_id": "ada", "plan": "pro"})
        await loop.send("My destination is Lisbon.", session_id=sid)
        await loop.send('What is it like there? get_weather(city="Lisbon")', session_id=sid)
        await loop.send("Budget check: add(1250, 380)", session_id=sid)
        await loop.send("What is my destination?", session_id=sid)
        await loop.schedule_timer_async(sid, delay_s=6 * 3600, note="remind Ada to book the hotel")
        await loop.schedule_timer_async(sid, delay_s=24 * 3600, every_s=86_400, note="daily price check")
        for user, text in [("bob", "My team is blue."), ("chen", "Hello!"), ("dana", 'get_weather(city="Oslo")')]:
            other = await loop.new_session_async(session_id=f"support-{user}", metadata={"user_id": user})
            await loop.send(text, session_id=other)
    config = AgentLoopConfig(compactor=DefaultCompactor(absolute_threshold=150, keep_last_n=2))
    async with StatefulAgentLoop(llm=llm, db_path=db, config=config) as loop:
        sid = await loop.new_session_async(session_id="notes-erin", metadata={"user_id": "erin"})
        for fact in ("My city is Lyon.", "My dog is Rex.", "My job is pilot.", "Please summarize."):
            await loop.send(fact, session_id=sid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "sessions.db")
        asyncio.run(fill(db))
        with ViewerServer(db) as viewer, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=args.chromium, args=LAUNCH_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
            page.goto(f"{viewer.url}/")
            page.locator("#sessions-table tbody tr").nth(4).wait_for()
            page.screenshot(path=str(HERE / "viewer-sessions.png"))
            page.goto(f"{viewer.url}/session?id=trip-planner-ada")
            page.locator("#live.on").wait_for()
            page.locator("#transcript details.tool-call summary").first.click()
            page.screenshot(path=str(HERE / "viewer-session.png"), full_page=True)
            browser.close()
    print(f"wrote {HERE / 'viewer-sessions.png'} and {HERE / 'viewer-session.png'}")


if __name__ == "__main__":
    main()
