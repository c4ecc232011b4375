"""The ``power-loop`` command.

``power-loop demo [--db PATH|URL]``
    A multi-turn session with a tool call, printing the transcript, usage and where it is
    stored (an SQLite file by default; ``--db`` or ``POWER_LOOP_DB_URL`` name another file or
    a ``postgresql://`` URL). Uses the provider configured by ``POWER_LOOP_*`` (or ``.env``);
    without one, the built-in offline model (it says so).
``power-loop worker APP [--db PATH|URL]``
    Deliver timers until SIGTERM / SIGINT. ``APP`` is ``module:attribute`` naming a
    ``StatefulAgentLoop`` or a factory returning one (see ``power_loop.timers.worker``).
    ``--db`` sets ``POWER_LOOP_DB_URL`` before the APP is loaded: a loop created without
    ``db_path`` (or ``store``) then uses that store.
``power-loop version``
    Print the version.
``power-loop sessions | show SID | timers [SID] | export SID | import FILE | doctor | prune``
    Inspect a store (``--db PATH|URL``, default ``POWER_LOOP_DB_URL``; ``--json`` for
    machine output): see :mod:`power_loop._inspect_cli` and docs/operating.md. Their
    problems (no such file or session, a locked database, an unreachable server) exit 2;
    ``doctor`` exits 1 when it finds something to fix.

A failure prints one line, ``power-loop: error: <what is wrong>``, on stderr and exits with 2
for a usage error (a bad argument or option) and 1 for anything else (a store that cannot be
opened, a provider configuration error, an APP that cannot be loaded). ``--traceback`` prints
the full traceback instead.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import faulthandler
import math
import operator
import os
import re
import shlex
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, NoReturn, TextIO

from ._inspect_cli import COMMANDS as INSPECT_COMMANDS
from ._inspect_cli import add_commands, run_command
from ._version import __version__
from .errors import PowerLoopError
from .store.factory import DB_URL_ENV
from .viewer import add_serve_parser, run_serve

__all__ = ["main"]

DEMO_DB = "./power_loop_demo.db"
"""Where ``power-loop demo`` stores its session unless told otherwise."""

DEMO_TURNS = (
    "Hi! My favorite color is teal.",
    "Please compute 17 * 23 + 4 with the calculator.",
    "What is my favorite color?",
)

_OPS: dict[type[ast.AST], Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Mod: operator.mod,
    ast.FloorDiv: operator.floordiv,
}


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.left), _evaluate(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return float(_OPS[type(node.op)](_evaluate(node.operand)))
    raise ValueError("only numbers and + - * / % // ** are allowed")


def calculate(expression: str) -> str:
    """Evaluate an arithmetic expression.

    Args:
        expression: Numbers with + - * / % // ** and parentheses, e.g. "17 * 23 + 4".
    """
    value = _evaluate(ast.parse(expression, mode="eval"))
    return str(int(value)) if float(value).is_integer() else str(value)


def current_time() -> str:
    """The current UTC time in ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _describe(message: dict[str, Any]) -> str:
    role = message["role"]
    if role == "assistant" and message.get("tool_calls"):
        calls = ", ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in message["tool_calls"])
        text = f"{message.get('content') or ''} [calls {calls}]".strip()
        return f"  assistant: {text}"
    if role == "tool":
        return f"  tool ({message.get('name', '?')}): {message.get('content')}"
    content = message.get("content")
    text = content if isinstance(content, str) else repr(content)
    return f"  {role}: {text}"


async def run_demo(db_path: str, *, out: TextIO | None = None) -> int:
    """Run the demo session on ``db_path`` (an SQLite file or a database URL); return the
    process exit code."""
    from . import AgentLoopConfig, StatefulAgentLoop, ToolRegistry, create_llm_service_from_env
    from .providers.offline import OfflineLLM

    out = out or sys.stdout
    llm = create_llm_service_from_env(offline_fallback=True)
    if isinstance(llm, OfflineLLM):
        print("No POWER_LOOP_* provider configured: using the built-in offline model (deterministic,", file=out)
        print("rule-based, no network). Set POWER_LOOP_BASE_URL / _API_KEY / _MODEL to use a real one.\n", file=out)
    else:
        print(f"Using {llm.provider} model {llm.model!r}.\n", file=out)
    registry = ToolRegistry()
    registry.register(calculate)
    registry.register(current_time)
    config = AgentLoopConfig(
        system_prompt="You are a concise assistant. Use the calculator for arithmetic.", max_rounds=4
    )
    async with StatefulAgentLoop(llm=llm, db_path=db_path, config=config, tool_registry=registry) as loop:
        sid = await loop.new_session_async(metadata={"source": "power-loop demo"})
        print(f"session {sid}", file=out)
        for turn in DEMO_TURNS:
            print(f"\n> {turn}", file=out)
            result = await loop.send(turn, session_id=sid)
            print(
                f"< {result.final_text}  [{result.status}, {result.rounds} round(s), {result.tool_calls} tool call(s)]",
                file=out,
            )
        print("\nTranscript as stored:", file=out)
        for message in await loop.get_messages_async(sid):
            print(_describe(message), file=out)
        stats = await loop.get_session_stats_async(sid)
        if stats is not None:
            print(
                f"\nUsage: {stats.sends} sends, {stats.llm_calls} model calls, {stats.tool_calls} tool calls, "
                f"{stats.prompt_tokens} prompt + {stats.completion_tokens} completion = "
                f"{stats.total_tokens} tokens",
                file=out,
            )
        shown_path = loop.store.path
    if "://" not in shown_path:
        shown_path = os.path.abspath(shown_path)  # noqa: ASYNC240 - a string operation, done once
    print(f"Sessions are stored in {shown_path}", file=out)
    db = shlex.quote(shown_path) if "://" not in shown_path else "URL"  # never a password on screen
    print(f"Look inside: power-loop sessions --db {db}  ·  power-loop show {sid} --db {db}", file=out)
    return 0


PROG = "power-loop"
USAGE_ERROR = 2
FAILURE = 1
_APP_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line: ``power-loop: error: ...`` (exit 2)."""

    def error(self, message: str) -> NoReturn:
        command = self.prog[len(PROG) :].strip()
        where = f"{command}: " if command else ""
        self.exit(USAGE_ERROR, f"{PROG}: error: {where}{message} (see '{self.prog} --help')\n")


def _number(kind: Callable[[str], float], minimum: float, *, inclusive: bool) -> Callable[[str], float]:
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number {bound}, not {text!r}") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"expected a number {bound}, not {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _app_spec(text: str) -> str:
    if not _APP_SPEC.match(text):
        raise argparse.ArgumentTypeError(
            f"APP must look like 'module:attribute' (e.g. 'myapp.agents:loop'), not {text!r}"
        )
    return text


def _log_level(text: str) -> int:
    import logging

    level = logging.getLevelName(text.upper())
    if not isinstance(level, int):
        raise argparse.ArgumentTypeError(f"unknown level {text!r} (use DEBUG, INFO, WARNING or ERROR)")
    return level


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="power_loop agent kernel")
    parser.add_argument(
        "--traceback", action="store_true", help="on a failure, print the full traceback instead of one line"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run a multi-turn demo session (offline without configuration)")
    demo.add_argument(
        "--db",
        default=None,
        help="SQLite file or database URL (default: $POWER_LOOP_DB_URL, else ./power_loop_demo.db)",
    )
    worker = sub.add_parser("worker", help="deliver timers until SIGTERM (APP is module:attribute)")
    worker.add_argument(
        "app", metavar="APP", type=_app_spec, help="module:attribute naming a StatefulAgentLoop or a factory"
    )
    worker.add_argument(
        "--scan-interval",
        type=_number(float, 0, inclusive=False),
        default=2.0,
        help="seconds between scans (default 2)",
    )
    worker.add_argument(
        "--stale-firing",
        type=_number(float, 0, inclusive=False),
        default=120.0,
        help="claim lease in seconds: a dead worker's timers are "
        "retaken this long after its last renewal (default 120)",
    )
    worker.add_argument(
        "--concurrency", type=_number(int, 1, inclusive=True), default=64, help="timers delivered at once (default 64)"
    )
    worker.add_argument(
        "--max-runs",
        type=_number(int, 1, inclusive=True),
        default=32,
        help="session runs started by deliveries going on at once; the others wait their turn (default 32)",
    )
    worker.add_argument(
        "--grace",
        type=_number(float, 0, inclusive=True),
        default=30.0,
        help="seconds the runs still going get at shutdown (default 30)",
    )
    worker.add_argument("--log-level", type=_log_level, default="INFO", help="logging level (default INFO)")
    worker.add_argument(
        "--db",
        default=None,
        help="SQLite file or database URL for the APP's loop (sets POWER_LOOP_DB_URL before the APP loads)",
    )
    sub.add_parser("version", help="print the version")
    add_commands(sub)
    add_serve_parser(sub)
    return parser


def _one_line(exc: BaseException) -> str:
    """What went wrong, on one line: our errors already say what to do; others get their type."""
    text = " ".join(str(exc).split())
    if isinstance(exc, PowerLoopError) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``power-loop`` command; returns the exit status (0, 1, 2 or 130)."""
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command in INSPECT_COMMANDS:
        return _inspect(args)
    try:
        if args.command == "worker":
            return _worker(args)
        if args.command == "serve":
            return run_serve(args)
        return asyncio.run(run_demo(args.db or os.environ.get(DB_URL_ENV) or DEMO_DB))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure: one line, unless --traceback asks for the whole story
        if args.traceback:
            traceback.print_exc()
        else:
            # Our errors and OS errors say what to do; anything else may be a bug worth a traceback.
            hint = "" if isinstance(exc, (PowerLoopError, OSError)) else " (run with --traceback for details)"
            print(f"{PROG}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return FAILURE


def _inspect(args: argparse.Namespace) -> int:
    try:
        return run_command(args, prog=PROG)
    except Exception as exc:  # not a problem of the user's input: one line with its type, as above
        if args.traceback:
            traceback.print_exc()
        else:
            hint = "" if isinstance(exc, (PowerLoopError, OSError)) else " (run with --traceback for details)"
            print(f"{PROG}: error: {_one_line(exc)}{hint}", file=sys.stderr)
        return FAILURE


def _worker(args: argparse.Namespace) -> int:
    import logging

    from .timers.worker import run_worker

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.db:
        os.environ[DB_URL_ENV] = args.db
    if hasattr(signal, "SIGUSR1"):  # `kill -USR1 PID`: every thread's stack on stderr, the worker goes on
        faulthandler.register(signal.SIGUSR1, all_threads=True)
    asyncio.run(
        run_worker(
            args.app,
            scan_interval_s=args.scan_interval,
            stale_firing_s=args.stale_firing,
            concurrency=int(args.concurrency),
            max_runs=int(args.max_runs),
            grace_s=args.grace,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
