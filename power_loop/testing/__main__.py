"""Run the scripted server as a process: ``python -m power_loop.testing [--port N] [--script FILE]``.

``--script`` takes a JSON list of replies, each an object with ScriptedReply fields
(``tool_calls`` as ``[{"id", "name", "arguments"}]``). Without a script the server echoes the
last user message. The first line printed is the base URL, so a parent process can read it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from ..messages import ToolCall
from .script import ScriptedReply
from .server import RULES, ScriptedServer


def _reply(data: dict[str, Any]) -> ScriptedReply:
    calls = tuple(ToolCall(**c) for c in data.pop("tool_calls", ()))
    return ScriptedReply(tool_calls=calls, **data)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m power_loop.testing", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="port to bind on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--script", type=Path, help="JSON file with a list of replies")
    parser.add_argument(
        "--rule",
        choices=sorted(RULES),
        default="echo",
        help="how to answer when there is no script: echo, or tools (one tool call, then an answer)",
    )
    args = parser.parse_args(argv)
    script = [_reply(dict(r)) for r in json.loads(args.script.read_text())] if args.script else []
    done = threading.Event()
    # Before the URL is printed: a parent may send SIGTERM as soon as it has read it.
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    # Nobody can read the requests of a server process: keeping them would grow it forever.
    server = ScriptedServer(
        script, rule=RULES[args.rule] if not script else None, port=args.port, keep_requests=False
    ).start()
    print(server.url, flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
