"""The session viewer (``power-loop serve``) started in-process on a filled store.

The example fills a temporary SQLite file with two sessions (one with a tool call and a
timer), serves the read-only viewer on 127.0.0.1 on a free port, reads the sessions list as
JSON and the session page over HTTP like a browser would, prints what it got, and stops.
From a shell, ``power-loop serve --db sessions.db`` does the same until Ctrl-C; open the
address it prints in a browser.

Needs the ``web`` extra (``pip install "power-loop[web]"``). Runs offline with the built-in
model.
"""

import ast
import asyncio
import json
import operator
import tempfile
import urllib.request
from pathlib import Path

from power_loop import StatefulAgentLoop, ToolRegistry, create_llm_service_from_env, tool
from power_loop.viewer import ViewerServer


@tool
def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers with + - * /, e.g. "17 * 23 + 4".
    """
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](value(node.left), value(node.right))
        raise ValueError("only numbers and + - * /")

    result = value(ast.parse(expression, mode="eval").body)
    return str(int(result)) if float(result).is_integer() else str(result)


async def fill(db: str) -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=ToolRegistry([calculate])) as loop:
        sid = await loop.new_session_async(session_id="support-ada", metadata={"user_id": "ada"})
        await loop.send("My favorite color is teal.", session_id=sid)
        await loop.send("Please compute 17 * 23 + 4.", session_id=sid)
        await loop.schedule_timer_async(sid, delay_s=3600, note="follow up with Ada")
        other = await loop.new_session_async(session_id="support-bob", metadata={"user_id": "bob"})
        await loop.send("Hello <b>there</b>!", session_id=other)


def get(url: str) -> tuple[str, str]:
    # No proxy: the viewer is on this machine.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=30) as response:
        return response.headers["content-type"], response.read().decode()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "sessions.db")
        asyncio.run(fill(db))
        with ViewerServer(db) as viewer:  # 127.0.0.1, a free port, read-only
            print(f"viewer at {viewer.url}/")
            _, body = get(f"{viewer.url}/api/sessions?order=id")
            listing = json.loads(body)
            print(f"{listing['total']} sessions:")
            for s in listing["sessions"]:
                tokens = s["input_tokens"] + s["output_tokens"]
                print(
                    f"  {s['session_id']:<12} {s['messages']} messages, {s['runs']} runs, "
                    f"last {s['last_status']}, {s['armed_timers']} timer(s), {tokens} tokens"
                )
            kind, page = get(f"{viewer.url}/session?id=support-ada")
            print(f"session page: {kind}, {len(page)} bytes (the page's script reads the API)")
            _, body = get(f"{viewer.url}/api/transcript?id=support-ada")
            for entry in json.loads(body)["entries"]:
                calls = ", ".join(f"{c['name']}({c['arguments']})" for c in entry["tool_calls"])
                print(f"  #{entry['seq']} {entry['role']:<9} {entry['content'] or ''}{calls}")
        print("viewer stopped")


if __name__ == "__main__":
    main()
