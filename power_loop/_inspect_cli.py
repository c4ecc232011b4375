"""The inspector commands of ``power-loop``: ``sessions``, ``show``, ``timers``, ``export``,
``import``, ``doctor``, ``prune`` and ``migrate`` (registered by :mod:`power_loop.cli`).

Each reads the store named by ``--db`` (default: ``$POWER_LOOP_DB_URL``) through
:class:`~power_loop.store.protocols.InspectStore`; only ``import``, ``prune`` and ``migrate``
write.
``--json`` prints one JSON document (JSON lines for ``export`` and ``show --follow``).

Guarantees:

* Inspecting never creates a store: a missing SQLite file, a PostgreSQL schema without
  power_loop's tables, or a file written by another power_loop version is refused before the
  store is opened (opening would create or migrate it).
* A failure the user can act on (no such file or session, a locked database, a server that
  does not answer, invalid import input) prints one line, ``power-loop: error: ...``, on
  stderr and exits 2; ``doctor`` exits 1 when it found a problem.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

from ._inspect_open import InspectError, MigrateReport, hide_passwords, migrate_store, opened
from .store._inspect_rows import RunOverview, TranscriptEntry
from .store._inspect_sql import ORDERS
from .store.factory import DB_URL_ENV
from .store.postgres import PostgresSessionStore, redact_url
from .store.rows import TimerRow
from .store.sqlite import SQLiteSessionStore

__all__ = ["COMMANDS", "InspectError", "add_commands", "run_command"]

COMMANDS = ("sessions", "show", "timers", "export", "import", "doctor", "prune", "migrate")
USAGE_ERROR = 2
_MAX_COUNT = 2**62  # page sizes and offsets both databases take as integers
_MAX_WAIT_S = 86400.0 * 365  # a year: more is a typo, and a busy timeout becomes an integer of ms
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# What a terminal would act on rather than show: C0 controls but tab and line feed, DEL, C1
# controls, and the bidirectional overrides that reorder what is shown; and lone surrogates,
# which no UTF-8 output can encode.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

Store = SQLiteSessionStore | PostgresSessionStore


# --------------------------------------------------------------------------- arguments


def _duration_s(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 30s, 15m, 2h, 7d or 1w, not {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _since_ms(text: str) -> int:
    """``2h`` (that long ago) or an ISO time (UTC when it names no zone) → epoch ms."""
    if _DURATION.match(text):
        return int((datetime.now(timezone.utc).timestamp() - _duration_s(text)) * 1000)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO time or a duration like 2h, 30m, 7d, not {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= _MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= _MAX_COUNT:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, not {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):  # NaN fails too: a poll every 0 s would spin
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, not {text!r}")
    return value


def _command(sub: Any, name: str, common: argparse.ArgumentParser, summary: str) -> argparse.ArgumentParser:
    """A subcommand whose summary shows in ``power-loop --help`` and atop its own ``--help``."""
    description = f"{summary[0].upper()}{summary[1:]}."
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=summary, description=description)
    return parser


def _wait_s(text: str) -> float:
    """A number of seconds to wait, 0 included (a busy timeout, ``--max-wait``)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= _MAX_WAIT_S:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number of seconds from 0 to {_MAX_WAIT_S:g}, not {text!r}")
    return value


def add_commands(sub: Any) -> None:
    """Add the inspector commands to the ``power-loop`` parser's subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=None, help=f"SQLite file or database URL (default: ${DB_URL_ENV})")
    common.add_argument("--json", action="store_true", help="machine-readable output (JSON)")
    common.add_argument(
        "--busy-timeout", type=_wait_s, default=5.0, metavar="S", help="seconds to wait for a locked SQLite file (5)"
    )
    p = _command(sub, "sessions", common, "list sessions with their runs, calls, timers and tokens")
    p.add_argument("--kind", choices=("main", "subagent"), help="only sessions of this kind")
    p.add_argument(
        "--metadata",
        type=_key_value,
        action="append",
        default=[],
        metavar="K=V",
        help="only sessions whose metadata has KEY=VALUE (repeatable: all must match)",
    )
    p.add_argument("--active-since", type=_since_ms, metavar="WHEN", help="ISO time or a duration: 2h, 30m, 7d")
    p.add_argument("--search", help="substring of the id or the metadata")
    p.add_argument("--sort", choices=tuple(ORDERS), default="last_active", help="order (default last_active)")
    p.add_argument("--limit", type=_positive, default=50, help="sessions per page (default 50)")
    page = p.add_mutually_exclusive_group()
    page.add_argument("--page", type=_positive, default=1, help="page number, from 1")
    page.add_argument("--offset", type=_non_negative, default=None, help="sessions to skip (instead of --page)")
    p = _command(sub, "show", common, "print a session's transcript, runs and usage")
    p.add_argument("session_id", metavar="SID", help="the session's id (see: power-loop sessions)")
    p.add_argument("--full", action="store_true", help="do not fold long texts")
    p.add_argument("--fold", type=_positive, default=300, metavar="N", help="fold texts after N chars (300)")
    p.add_argument(
        "--follow", "-f", action="store_true", help="keep printing new messages and runs until Ctrl-C (or --max-wait)"
    )
    p.add_argument("--interval", type=_seconds, default=0.5, metavar="S", help="seconds between polls (0.5)")
    p.add_argument(
        "--max-wait",
        type=_wait_s,
        default=None,
        metavar="S",
        help="with --follow: stop after S seconds with nothing new",
    )
    p = _command(sub, "timers", common, "armed, in-flight and recent timers across sessions")
    p.add_argument("session_id", metavar="SID", nargs="?", help="only this session")
    p.add_argument("--recent", type=_non_negative, default=20, metavar="N", help="fired or cancelled timers shown (20)")
    p = _command(sub, "export", common, "write a session as JSON lines (with or without --json)")
    p.add_argument("session_id", metavar="SID", help="the session's id (see: power-loop sessions)")
    p.add_argument("-o", "--output", metavar="FILE", help="file to write (default: stdout)")
    p = _command(sub, "import", common, "store an exported session under a new id")
    p.add_argument("file", metavar="FILE", help="JSON lines written by export ('-': stdin)")
    p.add_argument("--session-id", metavar="NEW", help="the new session's id (default: a fresh one)")
    p = _command(sub, "doctor", common, "check the store; exit 1 when something needs fixing")
    p.add_argument(
        "--overdue",
        type=_duration_s,
        default=300.0,
        metavar="D",
        help="armed timers and wake-ups waiting longer than D (5m)",
    )
    p = _command(sub, "prune", common, "delete folded messages and ended ephemeral sub-agents")
    p.add_argument("--dry-run", action="store_true", help="only report what would be deleted")
    p.add_argument("--older-than", type=_duration_s, metavar="D", help="only what is older than D (e.g. 30d)")
    _command(sub, "migrate", common, "upgrade an older store (or a power-loop 0.11 file) to this version")


# --------------------------------------------------------------------------- formatting


def _time(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], out: TextIO) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    for row in (header, *rows):
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip(), file=out)


def _fold(text: str, args: argparse.Namespace) -> str:
    limit = args.fold
    if args.full or len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more chars, --full to show)"


def _visible(text: str) -> str:
    """Text from the store as a terminal should show it: controls written as escapes."""
    return _CONTROLS.sub(lambda m: f"\\x{ord(m[0]):02x}" if ord(m[0]) < 0x100 else f"\\u{ord(m[0]):04x}", text)


def _json_text(value: Any) -> str:
    """One JSON document on one line; characters a terminal acts on are ``\\u`` escapes."""
    text = json.dumps(value, ensure_ascii=False, default=str)
    return _CONTROLS.sub(lambda m: f"\\u{ord(m[0]):04x}", text)  # only inside strings: the same value


def _dump(value: Any, out: TextIO) -> None:
    print(_json_text(value), file=out)


class _Terminal:
    """A text stream that writes what the commands print with :func:`_visible` applied."""

    def __init__(self, out: TextIO) -> None:
        self._out = out

    def write(self, text: str) -> int:
        return self._out.write(_visible(text))

    def flush(self) -> None:
        self._out.flush()


# --------------------------------------------------------------------------- the commands


async def _sessions(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    offset = args.offset if args.offset is not None else min((args.page - 1) * args.limit, _MAX_COUNT)
    filters: dict[str, Any] = {
        "kind": args.kind,
        "metadata": dict(args.metadata) or None,
        "active_since_ms": args.active_since,
        "search": args.search,
    }
    found = await store.list_sessions(**filters, order=args.sort, limit=args.limit, offset=offset)
    total = await store.count_sessions(**filters)
    if args.json:
        _dump({"total": total, "offset": offset, "sessions": [o.to_dict() for o in found]}, out)
        return 0
    rows = [
        (
            o.session_id,
            o.kind + (f"/{o.lifecycle}" if o.lifecycle else ""),
            o.parent_session_id or "-",
            _time(o.created_at),
            _time(o.last_active_at),
            str(o.messages),
            str(o.runs),
            (o.last_status or "-") + (" (paused)" if o.paused else ""),
            str(o.pending_calls),
            str(o.armed_timers),
            f"{o.input_tokens}/{o.output_tokens}",
        )
        for o in found
    ]
    head = ("ID", "KIND", "PARENT", "CREATED (UTC)", "LAST ACTIVE", "MSGS", "RUNS", "LAST STATUS", "PENDING")
    _table(rows, (*head, "TIMERS", "TOKENS IN/OUT"), out)
    shown = f"{offset + 1}-{offset + len(found)}" if found else "none"
    print(f"\n{shown} of {total} session(s)", file=out)
    return 0


def _entry_lines(e: TranscriptEntry, args: argparse.Namespace) -> Iterator[str]:
    mark = " [folded]" if e.compacted else ""
    if e.is_summary:
        yield f"#{e.seq} ≡ compaction summary (folds messages up to #{e.seq}): {_fold(e.content or '', args)}"
        return
    if e.role == "tool":
        tag = " ERROR" if e.is_error else ""
        yield f"#{e.seq} tool {e.name or ''}[{e.tool_call_id}]{tag}{mark}: {_fold(e.content or '', args)}"
        return
    if e.content is not None or not e.tool_calls:
        yield f"#{e.seq} {e.role}{mark}: {_fold(e.content or '', args)}"
    for call in e.tool_calls:
        lead = f"#{e.seq} assistant{mark}" if e.content is None else " " * len(f"#{e.seq}")
        yield f"{lead} → {call['name']}({_fold(call['arguments'], args)})  [{call['id']}]"


def _run_line(r: RunOverview) -> str:
    took = f" · {(r.ended_at - r.started_at) / 1000:.1f} s" if r.ended_at is not None else ""
    status = r.status if r.ended_at is not None else f"{r.status} (not ended)"
    error = f" · error: {r.error}" if r.error else ""
    return (
        f"── run {r.number} ({r.kind}) {status} · {r.rounds} round(s) · {r.llm_calls} model call(s) · "
        f"{r.input_tokens} in / {r.output_tokens} out tokens{took}{error}"
    )


def _print_entries(
    entries: Sequence[TranscriptEntry],
    runs: dict[str, RunOverview],
    shown: set[str],
    args: argparse.Namespace,
    out: TextIO,
) -> None:
    """Print entries, each run's ending after its last message (when the run has ended)."""
    for i, e in enumerate(entries):
        if args.json:
            _dump({"type": "summary" if e.is_summary else "message", **e.to_dict()}, out)
        else:
            for line in _entry_lines(e, args):
                print(line, file=out)
        later = next((n.run_id for n in entries[i + 1 :] if not n.is_summary), "")
        run = runs.get(e.run_id or "")
        if run is not None and later != run.run_id and run.ended_at is not None and run.run_id not in shown:
            shown.add(run.run_id)
            print(_json_text({"type": "run", **run.to_dict()}) if args.json else _run_line(run), file=out)


async def _show(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    sid = args.session_id
    row = await store.get_session_async(sid)
    if row is None:
        raise InspectError(f"no session {sid!r} in this store")
    entries = await _all_entries(store, sid)
    runs = await store.list_runs(sid, limit=10_000)
    if args.json and not args.follow:
        _dump(
            {
                "session": _session_dict(row),
                "runs": [r.to_dict() for r in runs],
                "transcript": [e.to_dict() for e in entries],
                "usage": _usage(runs),
            },
            out,
        )
        return 0
    shown: set[str] = set()
    if not args.json:
        print(f"Session {sid} ({_kind(row.kind)}{', ' + row.lifecycle if row.lifecycle else ''})", file=out)
        print(
            f"created {_time(row.created_at)} UTC · metadata {json.dumps(row.metadata, ensure_ascii=False)}", file=out
        )
        if row.parent_session_id:
            print(f"parent {row.parent_session_id}", file=out)
        if row.system_prompt:
            print(f"system prompt: {_fold(row.system_prompt, args)}", file=out)
        print("", file=out)
    _print_entries(entries, {r.run_id: r for r in runs}, shown, args, out)
    if not args.json:
        wrote = {e.run_id for e in entries}
        for r in runs:  # runs that wrote no message, and runs still going
            if r.run_id not in shown and (r.ended_at is None or r.run_id not in wrote):
                print(_run_line(r), file=out)
                shown.add(r.run_id)
        u = _usage(runs)
        print(
            f"\nUsage: {u['runs']} run(s), {u['llm_calls']} model call(s), {u['input_tokens']} input + "
            f"{u['output_tokens']} output tokens",
            file=out,
        )
    if args.follow:
        summaries = {_summary_key(e) for e in entries if e.is_summary}
        await _follow(store, args, entries[-1].seq if entries else 0, shown, summaries, out)
    return 0


def _kind(kind: Any) -> str:
    value = str(getattr(kind, "value", kind))
    return "main" if value in ("root", "main") else value


def _session_dict(row: Any) -> dict[str, Any]:
    keys = ("session_id", "lifecycle", "parent_session_id", "metadata", "system_prompt", "created_at")
    return {"kind": _kind(row.kind), **{k: getattr(row, k) for k in keys}}


def _usage(runs: Sequence[RunOverview]) -> dict[str, int]:
    return {
        "runs": len(runs),
        "llm_calls": sum(r.llm_calls for r in runs),
        "input_tokens": sum(r.input_tokens for r in runs),
        "output_tokens": sum(r.output_tokens for r in runs),
    }


async def _all_entries(store: Store, sid: str, after: int = 0) -> list[TranscriptEntry]:
    entries: list[TranscriptEntry] = []
    while True:
        page = await store.read_transcript(sid, after_seq=after, limit=1000)
        entries += page
        if len(page) < 1000:
            return entries
        after = page[-1].seq


def _summary_key(e: TranscriptEntry) -> tuple[int, int, str]:
    return e.seq, e.created_at, e.content or ""


async def _new_summaries(store: Store, sid: str, seen: set[tuple[int, int, str]]) -> list[TranscriptEntry]:
    """Compaction summaries not shown yet, those folding rows shown already among them.

    A compaction folds every row up to its seq, so the first live row after the furthest
    summary seen lies past any newer summary: one read of one row brings them all."""
    after = max((key[0] for key in seen), default=0)
    page = await store.read_transcript(sid, after_seq=after, limit=1, include_compacted=False)
    return [e for e in page if e.is_summary and _summary_key(e) not in seen]


async def _follow(
    store: Store,
    args: argparse.Namespace,
    after: int,
    shown: set[str],
    summaries: set[tuple[int, int, str]],
    out: TextIO,
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    except (RuntimeError, ValueError, NotImplementedError):  # not the main thread: Ctrl-C ends asyncio.run
        pass
    out.flush()
    idle = 0.0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=args.interval)
            break
        except asyncio.TimeoutError:
            pass
        # Runs first: a run seen ended has all its messages stored, so its ending never shows
        # before its last message.
        runs = {r.run_id: r for r in await store.list_runs(args.session_id, limit=50)}
        folds = [e for e in await _new_summaries(store, args.session_id, summaries) if e.seq <= after]
        entries = await _all_entries(store, args.session_id, after)
        entries = folds + [e for e in entries if not (e.is_summary and _summary_key(e) in summaries)]
        summaries.update(_summary_key(e) for e in entries if e.is_summary)
        fresh = [r for r in runs.values() if r.ended_at is not None and r.run_id not in shown]
        if entries or fresh:
            idle = 0.0
            _print_entries(entries, runs, shown, args, out)
            for r in fresh:  # ended without a message after the ones already shown
                if r.run_id not in shown:
                    shown.add(r.run_id)
                    print(_json_text({"type": "run", **r.to_dict()}) if args.json else _run_line(r), file=out)
            after = max([after, *(e.seq for e in entries if not e.is_summary)])
            out.flush()
        else:
            idle += args.interval
            if args.max_wait is not None and idle >= args.max_wait:
                break


def _span(seconds: int) -> str:
    """A whole number of seconds >= 0 in its two largest units: ``45s``, ``12m05s``, ``15h15m``, ``3d04h``."""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _schedule(t: TimerRow) -> str:
    """How a timer repeats: its cron expression and zone, its period, or ``-`` (once)."""
    if t.cron:
        return f"{t.cron} ({t.tz or 'UTC'})"
    return f"every {t.every_s:g}s" if t.every_s else "-"


async def _timers(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    report = await store.list_all_timers(args.session_id, recent=args.recent)
    if args.json:
        _dump(report.to_dict(), out)
        return 0
    now = datetime.now(timezone.utc).timestamp() * 1000

    def when(due: int) -> str:
        delta = int((due - now) / 1000)
        return f"{_time(due)} ({'in ' + _span(delta) if delta >= 0 else _span(-delta) + ' late'})"

    print(f"Armed and in flight ({len(report.active)}):", file=out)
    active = [(t.session_id, str(t.timer_id), t.status, when(t.due_at), _schedule(t), t.note) for t in report.active]
    _table(active, ("SESSION", "TIMER", "STATUS", "DUE (UTC)", "SCHEDULE", "NOTE"), out)
    print(f"\nRecent ({len(report.recent)}):", file=out)
    recent = [
        (t.session_id, str(t.timer_id), t.status, _time(t.fired_at), str(t.fire_count), t.last_outcome or "-", t.note)
        for t in report.recent
    ]
    _table(recent, ("SESSION", "TIMER", "STATUS", "LAST FIRED", "FIRES", "OUTCOME", "NOTE"), out)
    return 0


async def _export(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    if await store.get_session_async(args.session_id) is None:
        raise InspectError(f"no session {args.session_id!r} in this store")
    records = await store.export_session(args.session_id)
    text = "".join(_json_text(r) + "\n" for r in records)
    if args.output:
        await asyncio.to_thread(_write_text, args.output, text)
        messages = sum(1 for r in records if r.get("type") == "message")
        summary = f"{len(records)} record(s), {messages} message(s)"
        print(f"wrote session {args.session_id} to {args.output}: {summary}", file=sys.stderr)
    else:
        out.write(text)
    return 0


def _write_text(path: str, text: str) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        raise InspectError(f"cannot write {path}: {exc.strerror or exc}") from None


def _read_records(path: str) -> tuple[list[Any], list[int]]:
    """The records of a JSON lines file and the line each came from (blank lines skipped)."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise InspectError(f"cannot read {path}: {exc.strerror or exc}") from None
    records: list[Any] = []
    numbers: list[int] = []
    for n, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InspectError(f"line {n}: not UTF-8 text; nothing was imported") from None
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError as exc:
                raise InspectError(f"line {n}: not JSON ({exc}); nothing was imported") from None
            numbers.append(n)
    return records, numbers


async def _import(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    from .store._compat import new_session_id
    from .store._inspect_io import check_records

    def read() -> list[Any]:  # in a worker thread: reading and checking a big file takes a while
        records, lines = _read_records(args.file)
        try:
            check_records(records, lines=lines)  # errors name the file's lines, blank ones counted
        except ValueError as exc:
            raise InspectError(str(exc)) from None
        return records

    records = await asyncio.to_thread(read)
    sid = args.session_id or new_session_id()
    try:
        count = await store.import_session(records, session_id=sid)
    except ValueError as exc:
        raise InspectError(str(exc)) from None
    if args.json:
        _dump({"session_id": sid, "messages": count}, out)
    else:
        print(sid, file=out)
    return 0


async def _doctor(store: Store, args: argparse.Namespace, db: str, out: TextIO) -> int:
    pg = isinstance(store, PostgresSessionStore)
    shown_db = hide_passwords(redact_url(db)) if pg else db  # no password in a fix or on screen
    report = await store.health_report(overdue_ms=int(args.overdue * 1000), db=shown_db)
    if args.json:
        _dump(report.to_dict(), out)
        return 0 if report.healthy else 1
    if isinstance(store, PostgresSessionStore):
        where = f"{hide_passwords(redact_url(store.url))} ({report.backend}, schema {store.schema})"
    else:
        where = f"{store.path} ({report.backend})"
    print(f"Store: {where}, {report.sessions} session(s)", file=out)
    print(f"Schema version: {report.schema_version}", file=out)
    print(f"Integrity: {report.integrity}", file=out)
    if not report.findings:
        print("No problems found." if report.healthy else "", file=out)
        return 0 if report.healthy else 1
    print(f"\n{len(report.findings)} problem(s):", file=out)
    for f in report.findings:
        where = f" session {f.session_id}:" if f.session_id else ""
        print(f"  [{f.kind}]{where} {f.detail}", file=out)
        print(f"      fix: {f.fix}", file=out)
    return 1


async def _prune(store: Store, args: argparse.Namespace, out: TextIO) -> int:
    older = None
    if args.older_than is not None:
        older = int((datetime.now(timezone.utc).timestamp() - args.older_than) * 1000)
    report = await store.prune(dry_run=args.dry_run, older_than_ms=older)
    if args.json:
        _dump(report.to_dict(), out)
        return 0
    verb = "Would delete" if report.dry_run else "Deleted"
    print(f"{verb} {report.folded_messages} folded message row(s).", file=out)
    print(
        f"{verb} {len(report.sessions)} ended ephemeral sub-agent session(s){':' if report.sessions else '.'}", file=out
    )
    for sid in report.sessions:
        print(f"  {sid}", file=out)
    return 0


async def _migrate(args: argparse.Namespace, out: TextIO) -> int:
    db = args.db or os.environ.get(DB_URL_ENV)
    if not db:
        raise InspectError(f"no database: pass --db PATH|URL or set {DB_URL_ENV}")
    report: MigrateReport = await migrate_store(db, busy_timeout_s=args.busy_timeout)
    if args.json:
        _dump(report.to_dict(), out)
    elif not report.migrated:
        print(f"{report.db} is at schema version {report.to_version} already: nothing to do.", file=out)
    else:
        found = "power-loop 0.11" if report.from_version == "0.11" else f"schema version {report.from_version}"
        print(f"Migrated {report.db} from {found} to schema version {report.to_version}.", file=out)
        if report.backup:
            print(f"The file as it was is kept at {report.backup}.", file=out)
    return 0


async def _dispatch(args: argparse.Namespace, out: TextIO) -> int:
    if not args.json and args.command != "export":  # export writes JSON lines
        out = _Terminal(out)  # type: ignore[assignment]
    if args.command == "migrate":
        return await _migrate(args, out)
    async with opened(args, create=args.command == "import") as (store, db):
        if args.command == "doctor":
            return await _doctor(store, args, db, out)
        run: Callable[[Store, argparse.Namespace, TextIO], Any] = {
            "sessions": _sessions,
            "show": _show,
            "timers": _timers,
            "export": _export,
            "import": _import,
            "prune": _prune,
        }[args.command]
        return int(await run(store, args, out))


def run_command(args: argparse.Namespace, *, prog: str, out: TextIO | None = None) -> int:
    """Run one inspector command; return the exit status (0; 1 for doctor's findings; 2 for
    a problem the user can act on, printed as one line on stderr)."""
    from .errors import SessionNotFoundError, StoreError

    try:
        return asyncio.run(_dispatch(args, out or sys.stdout))
    except KeyboardInterrupt:
        return 0 if getattr(args, "follow", False) else 130
    except BrokenPipeError:  # the reader went away (``| head``): done, quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except (InspectError, SessionNotFoundError, StoreError) as exc:
        if args.traceback:
            raise
        text = _visible(hide_passwords(" ".join(str(exc).split())))
        if isinstance(exc, SessionNotFoundError):
            text = f"no session {exc.session_id!r} in this store"
        print(f"{prog}: error: {text}", file=sys.stderr)
        return USAGE_ERROR
