"""The viewer's Starlette application: pages, JSON endpoints and the live event stream.

Pages are static files from the package (``static/``); the data comes from ``/api/...`` as
JSON and is put into the page by ``viewer.js`` as text. The live view (``/api/live``) is a
server-sent event stream fed by polling the store's read methods from the request's own task:
store calls are asynchronous, so a poll never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import SessionNotFoundError
from ..store.factory import open_store
from ._data import (
    InspectReader,
    jsonable,
    parse_filters,
    session_detail,
)
from ._guard import ViewerGuard

__all__ = ["build_app", "close_streams"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
_LIVE_BATCH = 200
_KEEPALIVE_POLLS = 30  # a comment line after this many quiet polls keeps proxies from closing the stream


@dataclass
class _ViewerState:
    url: str
    poll_interval_s: float
    store: Any = None
    closing: asyncio.Event = field(default_factory=asyncio.Event)


def _state(request: Request) -> _ViewerState:
    state: _ViewerState = request.app.state.viewer
    return state


def _reader(request: Request) -> InspectReader:
    reader: InspectReader = _state(request).store
    return reader


def close_streams(app: Starlette) -> None:
    """End every live view of ``app`` (called when the server shuts down)."""
    state: _ViewerState | None = getattr(app.state, "viewer", None)
    if state is not None:
        state.closing.set()


def _bad_request(text: str) -> JSONResponse:
    return JSONResponse({"error": text}, status_code=400)


def _int_param(request: Request, name: str, default: int, *, low: int = 0, high: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


async def _page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


async def _sessions(request: Request) -> Response:
    try:
        filters = parse_filters(request.query_params)
        limit = _int_param(request, "limit", 50, low=1, high=500)
        offset = _int_param(request, "offset", 0)
        reader = _reader(request)
        rows = await reader.list_sessions(**filters, limit=limit, offset=offset)
        filters.pop("order", None)
        total = await reader.count_sessions(**filters)
    except ValueError as exc:
        return _bad_request(str(exc))
    return JSONResponse({"total": total, "limit": limit, "offset": offset, "sessions": jsonable(rows)})


def _session_id(request: Request) -> str:
    sid = request.query_params.get("id", "")
    if not sid:
        raise ValueError("id is required")
    return sid


async def _session(request: Request) -> Response:
    try:
        sid = _session_id(request)
    except ValueError as exc:
        return _bad_request(str(exc))
    detail = await session_detail(_reader(request), sid)
    if detail is None:
        return JSONResponse({"error": f"no session {sid!r}"}, status_code=404)
    return JSONResponse(jsonable(detail))


async def _transcript(request: Request) -> Response:
    try:
        sid = _session_id(request)
        after_seq = _int_param(request, "after_seq", 0)
        limit = _int_param(request, "limit", 500, low=1, high=5000)
    except ValueError as exc:
        return _bad_request(str(exc))
    compacted = request.query_params.get("include_compacted", "1") not in ("0", "false")
    entries = await _reader(request).read_transcript(sid, after_seq=after_seq, limit=limit, include_compacted=compacted)
    return JSONResponse({"entries": jsonable(entries)})


async def _runs(request: Request) -> Response:
    try:
        sid = _session_id(request)
    except ValueError as exc:
        return _bad_request(str(exc))
    return JSONResponse({"runs": jsonable(await _reader(request).list_runs(sid))})


async def _timers(request: Request) -> Response:
    sid = request.query_params.get("id") or None
    report = await _reader(request).list_all_timers(sid)
    return JSONResponse(jsonable({"active": report.active, "recent": report.recent}))


async def _no_session(request: Request, exc: Exception) -> Response:
    return JSONResponse({"error": f"no session {request.query_params.get('id', '')!r}"}, status_code=404)


def _event(name: str, data: object) -> str:
    text = json.dumps(jsonable(data), separators=(",", ":"))
    return f"event: {name}\ndata: {text}\n\n"


async def _live_events(state: _ViewerState, sid: str, after_seq: int) -> AsyncIterator[str]:
    """New transcript entries, then the runs and timers whenever they change, until the
    server closes or the client goes away (Starlette cancels the stream then).

    A compaction adds a summary *before* rows already sent and folds them, which entries after
    ``after_seq`` cannot show: when the head of the live context changes, a ``compacted``
    event tells the page to read the transcript again.
    """
    reader: InspectReader = state.store
    yield "retry: 2000\n\n"
    try:
        async for event in _changes(state, reader, sid, after_seq):
            yield event
    except SessionNotFoundError:  # deleted while watched
        yield _event("closed", {"reason": "session deleted"})
        return
    yield _event("closed", {"reason": "server stopping"})


async def _changes(state: _ViewerState, reader: InspectReader, sid: str, after_seq: int) -> AsyncIterator[str]:
    """The live view's poll loop (see :func:`_live_events`)."""
    last = after_seq
    seen: dict[str, str] = {}
    head: str | None = None
    quiet = 0
    while not state.closing.is_set():
        sent = False
        entries = await reader.read_transcript(sid, after_seq=last, limit=_LIVE_BATCH)
        for entry in entries:
            last = max(last, entry.seq)
            yield _event("message", entry)
            sent = True
        first = await reader.read_transcript(sid, after_seq=0, limit=1, include_compacted=False)
        now_head = json.dumps([[e.seq, e.is_summary, len(e.content or "")] for e in first])
        if head is not None and now_head != head:
            yield _event("compacted", {"head": now_head})
            sent = True
        head = now_head
        report = await reader.list_all_timers(sid)
        snapshots = {
            "runs": await reader.list_runs(sid),
            "timers": {"active": report.active, "recent": report.recent},
        }
        for name, value in snapshots.items():
            text = json.dumps(jsonable(value), separators=(",", ":"))
            if seen.get(name) != text:
                seen[name] = text
                yield f"event: {name}\ndata: {text}\n\n"
                sent = True
        quiet = 0 if sent else quiet + 1
        if quiet >= _KEEPALIVE_POLLS:
            quiet = 0
            yield ": keepalive\n\n"
        if len(entries) < _LIVE_BATCH:
            try:
                await asyncio.wait_for(state.closing.wait(), timeout=state.poll_interval_s)
            except asyncio.TimeoutError:
                pass


async def _live(request: Request) -> Response:
    try:
        sid = _session_id(request)
        after_seq = _int_param(request, "after_seq", 0)
    except ValueError as exc:
        return _bad_request(str(exc))
    if await _reader(request).get_session_async(sid) is None:
        raise SessionNotFoundError(sid)
    return StreamingResponse(
        _live_events(_state(request), sid, after_seq),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def build_app(
    url: str,
    *,
    token: str | None,
    poll_interval_s: float,
    allowed_hosts: Sequence[str] | None,
) -> Starlette:
    """The application (see :func:`power_loop.viewer.create_app`, which checks the arguments)."""
    state = _ViewerState(url=url, poll_interval_s=poll_interval_s)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[Mapping[str, Any]]:
        state.closing = asyncio.Event()  # bound to the serving event loop
        store = open_store(url)
        await store.open()
        state.store = store
        try:
            yield {}
        finally:
            state.closing.set()
            state.store = None
            await store.close()

    routes = [
        Route("/", _page, methods=["GET"]),
        Route("/session", _page, methods=["GET"]),
        Route("/api/sessions", _sessions, methods=["GET"]),
        Route("/api/session", _session, methods=["GET"]),
        Route("/api/transcript", _transcript, methods=["GET"]),
        Route("/api/runs", _runs, methods=["GET"]),
        Route("/api/timers", _timers, methods=["GET"]),
        Route("/api/live", _live, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={SessionNotFoundError: _no_session})
    app.state.viewer = state
    app.add_middleware(ViewerGuard, token=token, allowed_hosts=allowed_hosts)
    return app
