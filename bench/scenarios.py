"""Benchmark scenarios, each run in its own process by ``bench/run.py``.

Usage: ``python bench/scenarios.py SCENARIO --url URL [--reps N] [--quick]``. Prints one JSON
object: the raw per-repetition measurements of the scenario. ``concurrency`` and
``cold_start`` use only the power-loop 0.11 API, so the same code measures 0.11 when run with
its interpreter (``--legacy``); so does ``storage``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

SYSTEM_PROMPT = "You are a concise assistant."


TRANSPORT: str | None = None
"""The providers' ``http_transport`` (``--transport``); None keeps the default (native)."""


def new_llm() -> Any:
    """The service of ``create_llm_service_from_env()``, on the transport chosen by ``--transport``."""
    from power_loop import create_llm_service_from_env

    llm = create_llm_service_from_env()
    if TRANSPORT is not None:
        llm.http_transport = TRANSPORT  # read when the SDK client is built, at the first call
    return llm


def configure_env(url: str) -> None:
    """Point create_llm_service_from_env() at the scripted server."""
    os.environ["POWER_LOOP_BASE_URL"] = f"{url}/v1"
    os.environ["POWER_LOOP_API_KEY"] = "bench-key"
    os.environ["POWER_LOOP_MODEL"] = "bench-model"
    os.environ["POWER_LOOP_MAX_RETRIES"] = "0"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Ticker:
    """Measures event-loop lateness with a 1 ms sleep loop.

    On Linux it also reads the loop thread's scheduler statistics around each tick
    (``/proc/thread-self/schedstat``): ``os_wait`` is how long the thread was ready to run but
    waited for a CPU, which is the machine's other load (other processes, or this process's
    other threads), not the event loop's own work.
    """

    def __init__(self) -> None:
        self.lateness: list[float] = []
        self.spans: list[tuple[float, float]] = []
        """``(start, end)`` perf_counter seconds of each tick, for attributing late ones."""
        self.os_wait: list[float] = []
        """ms the loop thread spent runnable but not running during each tick (Linux; else 0)."""
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        try:
            stats = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            stats = None
        try:
            while True:
                waited = int(os.pread(stats, 64, 0).split()[1]) if stats is not None else 0
                started = time.perf_counter()
                await asyncio.sleep(0.001)
                ended = time.perf_counter()
                if stats is not None:
                    waited = int(os.pread(stats, 64, 0).split()[1]) - waited
                self.lateness.append((ended - started - 0.001) * 1000)
                self.spans.append((started, ended))
                self.os_wait.append(waited / 1e6)
        finally:
            if stats is not None:
                os.close(stats)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()


class GcWatch:
    """Records CPython's full (generation 2) collections while a load runs.

    A full collection walks every tracked object of the process that is not frozen (the
    providers freeze the ~70,000 of the ``openai`` SDK after importing it, unless
    ``POWER_LOOP_GC_FREEZE=0``) with the event loop stopped, so it shows up as one long
    lateness. The bench attributes each late tick to it or not:
    ``lateness_max_outside_gc_ms`` is the worst tick that no full collection overlapped, the
    stall the kernel's own steps (and the machine's other load) caused.
    """

    def __init__(self) -> None:
        self.full: list[tuple[float, float]] = []
        self._started = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.full.append((self._started, time.perf_counter()))

    def __enter__(self) -> GcWatch:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def figures(self, ticker: Ticker) -> dict[str, float]:
        """Full collections, the longest in ms, the worst lateness outside them, and the same
        less the OS run-queue wait of each tick (what is left is the process's own stall)."""
        outside = [
            (late, waited)
            for late, waited, (start, end) in zip(ticker.lateness, ticker.os_wait, ticker.spans, strict=True)
            if not any(g_start < end and g_end > start for g_start, g_end in self.full)
        ]
        return {
            "gc_full_passes": len(self.full),
            "gc_full_max_ms": max(((end - start) * 1000 for start, end in self.full), default=0.0),
            "lateness_max_outside_gc_ms": max((late for late, _ in outside), default=0.0),
            "lateness_max_outside_gc_less_os_wait_ms": max((late - waited for late, waited in outside), default=0.0),
            "loop_thread_os_wait_ms": sum(ticker.os_wait),
        }


def steal_ms() -> float | None:
    """CPU time the hypervisor has taken from this VM's CPUs since boot, all CPUs, in ms.

    The ``steal`` column of ``/proc/stat`` (Linux; 10 ms granularity): time a virtual CPU
    had work but the host ran something else. The guest's scheduler does not see it as a
    wait, so it shows up as lateness that neither the loop thread's run-queue wait nor any
    of the process's work explains. None where it cannot be read.
    """
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
        return int(fields[8]) * 1000 / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def cpu_gap_max_ms(seconds: float) -> float:
    """The longest time, in ms, a thread that never yields lost its CPU during ``seconds``.

    The thread spins reading the clock; a gap between two reads is time it did not run. With
    the machine otherwise idle (run before the load) nothing of the guest competes for that
    CPU, so a gap is the kernel's or the host's: the stall any busy thread, an event loop
    under load included, can meet at that moment whatever it does.
    """
    clock = time.perf_counter
    last = clock()
    end = last + seconds
    worst = 0.0
    while last < end:
        now = clock()
        if now - last > worst:
            worst = now - last
        last = now
    return worst * 1000


async def idle_lateness(seconds: float) -> float:
    """The worst lateness of the 1 ms ticker on this event loop with nothing else to do.

    Measured for ``seconds`` just before each loaded run, it is the machine's own floor at
    that moment: what a run's lateness cannot go below whatever the kernel does.
    """
    ticker = Ticker()
    ticker.start()
    await asyncio.sleep(seconds)
    ticker.stop()
    await asyncio.sleep(0)
    return max(ticker.lateness, default=0.0)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --------------------------------------------------------------------------- floors


async def http_floor(url: str, bodies: list[bytes], transport: str) -> float:
    """ms per streaming POST of ``bodies`` with httpx2 (default transport, ours, or the SDK's aiohttp one)."""
    import httpx2

    kwargs: dict[str, Any] = {}
    factory: Any = httpx2.AsyncClient
    if transport == "native":
        from power_loop.providers._transport import native_transport

        kwargs["transport"] = native_transport(httpx2)
    elif transport == "aiohttp":
        import openai

        factory = openai.DefaultAioHttpClient  # httpx2's API on the SDK's aiohttp transport
    async with factory(timeout=60, **kwargs) as client:

        async def post(body: bytes) -> None:
            async with client.stream(
                "POST",
                f"{url}/v1/chat/completions",
                content=body,
                headers={"content-type": "application/json", "authorization": "Bearer k"},
            ) as r:
                async for _ in r.aiter_lines():
                    pass

        await post(bodies[0])
        started = time.perf_counter()
        for body in bodies:
            await post(body)
        return (time.perf_counter() - started) / len(bodies) * 1000


async def sdk_floor(url: str, bodies: list[bytes]) -> float:
    """ms per ``AsyncOpenAI.chat.completions.create(stream=True)`` with the same payloads."""
    import openai

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0)
    payloads = [json.loads(b) for b in bodies]

    async def call(p: dict[str, Any]) -> None:
        stream = await client.chat.completions.create(
            model=p["model"],
            messages=p["messages"],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=p.get("max_tokens"),
            temperature=p.get("temperature"),
        )
        async for _ in stream:
            pass

    await call(payloads[0])
    started = time.perf_counter()
    for p in payloads:
        await call(p)
    elapsed = (time.perf_counter() - started) / len(payloads) * 1000
    await client.close()
    return elapsed


def request_bodies(messages: list[Any], system_prompt: str, sends: int) -> list[bytes]:
    """The exact Chat Completions bodies power_loop sent for each send of a text-only session."""
    from power_loop.providers.base import LLMRequest
    from power_loop.providers.openai import build_chat_body

    bodies = []
    for i in range(sends):
        request = LLMRequest(
            messages=messages[: 2 * i + 1], system_prompt=system_prompt, max_tokens=8000, temperature=0.0
        )
        bodies.append(build_chat_body(request, model="bench-model", max_tokens=8000, temperature=0.0))
    return bodies


# --------------------------------------------------------------------------- scenarios


async def overhead(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """Sequential sends on one session vs raw HTTP and raw SDK calls with the same bodies."""
    from power_loop import AgentLoopConfig, StatefulAgentLoop
    from power_loop.messages import message_from_dict

    sends = 40 if quick else 200
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "ms_per_send",
            "http_ms",
            "native_http_ms",
            "sdk_ms",
            "ratio_vs_http",
            "ratio_vs_native_http",
            "ratio_vs_sdk",
            "transactions_per_send",
            "transactions_per_round",
        )
    }
    llm = new_llm()
    with tempfile.TemporaryDirectory() as tmp:
        loop = StatefulAgentLoop(
            llm=llm, db_path=os.path.join(tmp, "bench.db"), config=AgentLoopConfig(system_prompt=SYSTEM_PROMPT)
        )
        warm = await loop.new_session_async()
        for i in range(20):
            await loop.send(f"warm-up {i}", session_id=warm)
        for _rep in range(reps):
            sid = await loop.new_session_async()
            statements: list[str] = []
            await loop.store._db.set_trace_callback(statements.append)  # type: ignore[union-attr]
            started = time.perf_counter()
            for i in range(sends):
                await loop.send(f"Message number {i} of this benchmark session.", session_id=sid)
            ours = (time.perf_counter() - started) / sends * 1000
            await loop.store._db.set_trace_callback(None)  # type: ignore[union-attr]
            begins = sum(1 for s in statements if s.lstrip().upper().startswith("BEGIN"))
            messages = [message_from_dict(m) for m in await loop.get_messages_async(sid)]
            bodies = request_bodies(messages, SYSTEM_PROMPT, sends)
            http = await http_floor(url, bodies, "httpx")
            native = await http_floor(url, bodies, "native")
            sdk = await sdk_floor(url, bodies)
            if TRANSPORT == "aiohttp":  # the floor of the transport under test, too
                aio = await http_floor(url, bodies, "aiohttp")
                out.setdefault("aiohttp_http_ms", []).append(aio)
                out.setdefault("ratio_vs_aiohttp_http", []).append(ours / aio)
            out["ms_per_send"].append(ours)
            out["http_ms"].append(http)
            out["native_http_ms"].append(native)
            out["sdk_ms"].append(sdk)
            out["ratio_vs_http"].append(ours / http)
            out["ratio_vs_native_http"].append(ours / native)
            out["ratio_vs_sdk"].append(ours / sdk)
            out["transactions_per_send"].append(begins / sends)
            out["transactions_per_round"].append((begins - sends) / sends)  # minus the run-start transaction
        await loop.aclose()
    await llm.aclose()  # type: ignore[attr-defined]
    return {"sends": sends, **out}


async def tool_round_trip(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """Sends that make one tool call and then answer (two model calls each)."""
    from power_loop import StatefulAgentLoop, ToolRegistry, tool

    @tool
    def lookup(query: str = "x") -> str:
        """Look something up.

        Args:
            query: What to look up.
        """
        return "42"

    registry = ToolRegistry()
    registry.register(lookup)
    sends = 20 if quick else 100
    out: dict[str, list[float]] = {"ms_per_send": [], "ms_per_model_call": [], "transactions_per_send": []}
    llm = new_llm()
    with tempfile.TemporaryDirectory() as tmp:
        loop = StatefulAgentLoop(llm=llm, db_path=os.path.join(tmp, "bench.db"), tool_registry=registry)
        warm = await loop.new_session_async()
        for i in range(10):
            await loop.send(f"warm {i}", session_id=warm)
        for _rep in range(reps):
            sid = await loop.new_session_async()
            statements: list[str] = []
            await loop.store._db.set_trace_callback(statements.append)  # type: ignore[union-attr]
            started = time.perf_counter()
            for i in range(sends):
                result = await loop.send(f"look up item {i}", session_id=sid)
                assert result.tool_calls == 1 and result.final_text == "done: 42", result
            elapsed = (time.perf_counter() - started) / sends * 1000
            await loop.store._db.set_trace_callback(None)  # type: ignore[union-attr]
            out["ms_per_send"].append(elapsed)
            out["ms_per_model_call"].append(elapsed / 2)
            out["transactions_per_send"].append(
                sum(1 for s in statements if s.lstrip().upper().startswith("BEGIN")) / sends
            )
        await loop.aclose()
    await llm.aclose()  # type: ignore[attr-defined]
    return {"sends": sends, **out}


async def concurrency(url: str, reps: int, quick: bool, *, freeze: bool = False) -> dict[str, Any]:
    """50 sessions x 20 sends with asyncio.gather, beside a 1 ms ticker (0.11 API only)."""
    from power_loop import AgentLoopConfig, StatefulAgentLoop

    sessions, per_session = (20, 5) if quick else (50, 20)
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "sends_per_s",
            "p50_ms",
            "p99_ms",
            "lateness_max_ms",
            "lateness_p99_ms",
            "gc_full_passes",
            "gc_full_max_ms",
            "lateness_max_outside_gc_ms",
            "lateness_max_outside_gc_less_os_wait_ms",
            "loop_thread_os_wait_ms",
            "idle_lateness_max_ms",
            "cpu_gap_max_ms",
            "steal_ms",
        )
    }
    llm = new_llm()
    with tempfile.TemporaryDirectory() as tmp:
        loop = StatefulAgentLoop(
            llm=llm, db_path=os.path.join(tmp, "bench.db"), config=AgentLoopConfig(system_prompt=SYSTEM_PROMPT)
        )
        for _rep in range(reps):
            sids = [loop.new_session() for _ in range(sessions)]
            await asyncio.gather(*(loop.send("warm-up", session_id=s) for s in sids))
            if freeze:
                gc.collect()
                gc.freeze()
            latencies: list[float] = []
            out["idle_lateness_max_ms"].append(await idle_lateness(1.0))
            out["cpu_gap_max_ms"].append(cpu_gap_max_ms(1.0))
            stolen = steal_ms()

            async def worker(sid: str, latencies: list[float] = latencies) -> None:
                for i in range(per_session):
                    started = time.perf_counter()
                    await loop.send(f"message {i}", session_id=sid)
                    latencies.append((time.perf_counter() - started) * 1000)

            ticker = Ticker()
            ticker.start()
            started = time.perf_counter()
            with GcWatch() as watch:
                await asyncio.gather(*(worker(s) for s in sids))
            elapsed = time.perf_counter() - started
            ticker.stop()
            now_stolen = steal_ms()
            out["steal_ms"].append(now_stolen - stolen if now_stolen is not None and stolen is not None else 0.0)
            out["sends_per_s"].append(sessions * per_session / elapsed)
            out["p50_ms"].append(pct(latencies, 0.5))
            out["p99_ms"].append(pct(latencies, 0.99))
            out["lateness_max_ms"].append(max(ticker.lateness))
            out["lateness_p99_ms"].append(pct(ticker.lateness, 0.99))
            for name, value in watch.figures(ticker).items():
                out[name].append(value)
            if freeze:
                gc.unfreeze()
        close = getattr(loop, "aclose", None)
        if close is not None:
            await close()
        else:
            loop.close()
    return {
        "sessions": sessions,
        "sends_per_session": per_session,
        "gc_freeze": freeze,
        "peak_rss_mb": peak_rss_mb(),
        **out,
    }


async def concurrency_frozen(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """``concurrency`` after ``gc.collect(); gc.freeze()`` (the recommended service setting)."""
    return await concurrency(url, reps, quick, freeze=True)


async def transports(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """The same load on each ``http_transport`` (native, httpx, and aiohttp when installed),
    interleaved: every repetition runs each transport in turn, in a rotating order, so they
    share the machine's background load. Per transport: 50 sessions x 20 concurrent sends
    beside a 1 ms ticker (throughput, latency, event-loop lateness), then sequential sends on
    one session (ms per send). ``ratios`` pairs each repetition with native's."""
    import importlib.util

    from power_loop import AgentLoopConfig, StatefulAgentLoop, create_llm_service_from_env

    names = ["native", "httpx"] + (["aiohttp"] if importlib.util.find_spec("aiohttp") else [])
    sessions, per_session = (20, 5) if quick else (50, 20)
    sequential = 40 if quick else 200
    metrics = ("sends_per_s", "p50_ms", "p99_ms", "lateness_max_ms", "lateness_p99_ms", "ms_per_send")
    out: dict[str, dict[str, list[float]]] = {t: {m: [] for m in metrics} for t in names}
    config = AgentLoopConfig(system_prompt=SYSTEM_PROMPT)
    with tempfile.TemporaryDirectory() as tmp:
        setups: dict[str, tuple[Any, Any]] = {}
        for name in names:
            llm = create_llm_service_from_env()
            llm.http_transport = name  # type: ignore[attr-defined]
            loop = StatefulAgentLoop(llm=llm, db_path=os.path.join(tmp, f"{name}.db"), config=config)
            warm = await loop.new_session_async()
            for i in range(20):
                await loop.send(f"warm-up {i}", session_id=warm)
            setups[name] = (llm, loop)
        for rep in range(reps):
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                llm, loop = setups[name]
                sids = [await loop.new_session_async() for _ in range(sessions)]
                await asyncio.gather(*(loop.send("warm-up", session_id=s) for s in sids))
                latencies: list[float] = []

                async def worker(sid: str, loop: Any = loop, latencies: list[float] = latencies) -> None:
                    for i in range(per_session):
                        started = time.perf_counter()
                        await loop.send(f"message {i}", session_id=sid)
                        latencies.append((time.perf_counter() - started) * 1000)

                ticker = Ticker()
                ticker.start()
                started = time.perf_counter()
                await asyncio.gather(*(worker(s) for s in sids))
                elapsed = time.perf_counter() - started
                ticker.stop()
                sid = await loop.new_session_async()
                seq_started = time.perf_counter()
                for i in range(sequential):
                    await loop.send(f"Message number {i} of this benchmark session.", session_id=sid)
                row = out[name]
                row["ms_per_send"].append((time.perf_counter() - seq_started) / sequential * 1000)
                row["sends_per_s"].append(sessions * per_session / elapsed)
                row["p50_ms"].append(pct(latencies, 0.5))
                row["p99_ms"].append(pct(latencies, 0.99))
                row["lateness_max_ms"].append(max(ticker.lateness))
                row["lateness_p99_ms"].append(pct(ticker.lateness, 0.99))
        for llm, loop in setups.values():
            await loop.aclose()
            await llm.aclose()
    ratios = {
        f"{name}_vs_native": {
            m: [a / b for a, b in zip(out[name][m], out["native"][m], strict=True)]
            for m in ("sends_per_s", "lateness_max_ms", "lateness_p99_ms", "ms_per_send")
        }
        for name in names[1:]
    }
    return {
        "sessions": sessions,
        "sends_per_session": per_session,
        "sequential_sends": sequential,
        "transports": names,
        **out,
        "ratios": ratios,
        "peak_rss_mb": peak_rss_mb(),
    }


async def _warm_up(tmp: str) -> None:
    """One untimed session first, so the first measured size does not pay one-time costs."""
    from power_loop import StatefulAgentLoop

    llm = new_llm()
    async with StatefulAgentLoop(llm=llm, db_path=os.path.join(tmp, "warm.db")) as loop:
        sid = await _seed_session(loop, 50)
        for _ in range(3):
            await loop.send("warm-up", session_id=sid)
    await llm.aclose()  # type: ignore[attr-defined]


async def _seed_session(loop: Any, n: int) -> str:
    from power_loop.messages import AssistantMessage, UserMessage
    from power_loop.store.rows import Append

    sid = await loop.new_session_async()
    batch = []
    for i in range(n // 2):
        batch.append(UserMessage(content=f"User message {i}: a question of typical length about the project."))
        batch.append(AssistantMessage(content=f"Assistant answer {i}: a reply of typical length with some detail."))
    for start in range(0, len(batch), 5000):
        await loop.store.write(sid, [Append(batch[start : start + 5000])])
    return sid


async def history(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """One more send on sessions holding N messages: cold (fresh loop) and warm (cached)."""
    from power_loop import AgentLoopConfig, StatefulAgentLoop
    from power_loop.messages import UserMessage

    sizes = (100, 1_000) if quick else (100, 1_000, 10_000)
    out: dict[str, Any] = {}
    storage: dict[str, float] = {}
    config = AgentLoopConfig(system_prompt=SYSTEM_PROMPT, compactor=None)
    with tempfile.TemporaryDirectory() as tmp:
        await _warm_up(tmp)
        for n in sizes:
            cold, warm, raw = [], [], []
            for rep in range(reps):
                path = os.path.join(tmp, f"h{n}_{rep}.db")
                llm = new_llm()
                async with StatefulAgentLoop(llm=llm, db_path=path, config=config) as seeder:
                    sid = await _seed_session(seeder, n)
                async with StatefulAgentLoop(llm=llm, db_path=path, config=config) as loop:
                    await loop.store.open()
                    from power_loop.providers.base import LLMRequest

                    await llm.complete(LLMRequest(messages=[UserMessage(content="connect")]))
                    started = time.perf_counter()
                    await loop.send("One more question.", session_id=sid)
                    cold.append((time.perf_counter() - started) * 1000)
                    transcript = loop._rt.histories.get(sid)
                    assert transcript is not None
                    body_messages = transcript.messages[:-1]
                    started = time.perf_counter()
                    await loop.send("And another one.", session_id=sid)
                    warm.append((time.perf_counter() - started) * 1000)
                from power_loop.providers.openai import build_chat_body

                body = build_chat_body(
                    LLMRequest(messages=body_messages, system_prompt=SYSTEM_PROMPT, max_tokens=8000, temperature=0.0),
                    model="bench-model",
                    max_tokens=8000,
                    temperature=0.0,
                )
                # The floor: the same body posted through the same transport, no kernel.
                raw.append(await http_floor(url, [body] * 3, "native"))
                await llm.aclose()  # type: ignore[attr-defined]
                if rep == 0 and n == sizes[-1]:
                    storage["bytes_per_1000_messages"] = checkpointed_size(path) / (n / 1000)
            out[str(n)] = {"cold_ms": cold, "warm_ms": warm, "http_ms": raw}
    # Cost per stored message: the slope of (send - raw HTTP) between the smallest and each
    # larger session, so the fixed cost of a send is not spread over its messages.
    small = sizes[0]
    for n in sizes[1:]:
        for kind in ("cold", "warm"):
            base = [s - r for s, r in zip(out[str(small)][f"{kind}_ms"], out[str(small)]["http_ms"], strict=True)]
            here = [s - r for s, r in zip(out[str(n)][f"{kind}_ms"], out[str(n)]["http_ms"], strict=True)]
            out[str(n)][f"kernel_us_per_message_{kind}"] = [
                (h - b) * 1000 / (n - small) for h, b in zip(here, base, strict=True)
            ]
    return {"sizes": out, **storage, "peak_rss_mb": peak_rss_mb()}


def checkpointed_size(path: str) -> int:
    """File size after moving the WAL into the main file."""
    import sqlite3

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(path)


async def history_compacted(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """One more send on compacted sessions of N stored messages (summary + 20-message tail)."""
    from power_loop import StatefulAgentLoop
    from power_loop.providers.base import LLMRequest
    from power_loop.store.rows import Compact

    sizes = (100, 1_000) if quick else (100, 1_000, 10_000, 100_000)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        await _warm_up(tmp)
        for n in sizes:
            cold, warm = [], []
            for rep in range(reps):
                path = os.path.join(tmp, f"c{n}_{rep}.db")
                llm = new_llm()
                async with StatefulAgentLoop(llm=llm, db_path=path) as seeder:
                    sid = await _seed_session(seeder, n)
                    await seeder.store.write(sid, [Compact(through_seq=n - 20, summary="Earlier: " + "x" * 800)])
                async with StatefulAgentLoop(llm=llm, db_path=path) as loop:  # default compactor on
                    await loop.store.open()
                    from power_loop.messages import UserMessage

                    await llm.complete(LLMRequest(messages=[UserMessage(content="connect")]))
                    started = time.perf_counter()
                    await loop.send("One more question.", session_id=sid)
                    cold.append((time.perf_counter() - started) * 1000)
                    started = time.perf_counter()
                    await loop.send("And another one.", session_id=sid)
                    warm.append((time.perf_counter() - started) * 1000)
                await llm.aclose()  # type: ignore[attr-defined]
            out[str(n)] = {"cold_ms": cold, "warm_ms": warm}
    small = str(sizes[0])
    for n in sizes[1:]:
        for kind in ("cold", "warm"):
            out[str(n)][f"{kind}_vs_{small}"] = [
                a / b for a, b in zip(out[str(n)][f"{kind}_ms"], out[small][f"{kind}_ms"], strict=True)
            ]
    return {"sizes": out, "peak_rss_mb": peak_rss_mb()}


async def cold_start(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """A fresh interpreter: import power_loop and construct a loop (0.11 API only)."""
    code = (
        "import time, tempfile, os; t0 = time.perf_counter(); import power_loop; t1 = time.perf_counter(); "
        "from power_loop import StatefulAgentLoop, create_llm_service_from_env; "
        "d = tempfile.mkdtemp(); loop = StatefulAgentLoop(llm=create_llm_service_from_env(), "
        "db_path=os.path.join(d, 'c.db')); t2 = time.perf_counter(); "
        "print((t1 - t0) * 1000, (t2 - t0) * 1000)"
    )
    out: dict[str, list[float]] = {"import_ms": [], "import_and_construct_ms": [], "process_ms": []}
    for _ in range(reps + 1):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=120, env=dict(os.environ)
        )
        process_ms = (time.perf_counter() - started) * 1000
        if done.returncode != 0:
            raise RuntimeError(done.stderr)
        import_ms, construct_ms = (float(x) for x in done.stdout.split())
        out["import_ms"].append(import_ms)
        out["import_and_construct_ms"].append(construct_ms)
        out["process_ms"].append(process_ms)
    return {k: v[1:] for k, v in out.items()}  # the first run warms the OS file cache


async def timers(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """N timers due at one instant across M sessions, delivered by one TimerRunner; each woken
    session runs a model call (scripted server). Measures time to deliver all, per-timer
    lateness (fired_at - due_at, from the store), and counts each delivery."""
    from power_loop import StatefulAgentLoop, TimerRunner

    sessions, per_session = (100, 10) if quick else (1_000, 10)
    total = sessions * per_session
    out: dict[str, list[float]] = {
        k: []
        for k in (
            "deliver_all_s",
            "deliveries_per_s",
            "answered_all_s",
            "lateness_p50_ms",
            "lateness_p99_ms",
            "lateness_max_ms",
            "loop_lateness_max_ms",
        )
    }
    exactly_once: list[bool] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            llm = new_llm()
            async with StatefulAgentLoop(llm=llm, db_path=os.path.join(tmp, f"t{rep}.db")) as loop:
                sids = [await loop.new_session_async() for _ in range(sessions)]
                due = int(time.time() * 1000) + 2_000
                for sid in sids:
                    for k in range(per_session):
                        await loop.schedule_timer_async(sid, due_at_ms=due, note=f"check #{k}")
                ticker = Ticker()
                runner = TimerRunner(loop)
                await runner.start()
                ticker.start()
                await asyncio.sleep(max(0.0, due / 1000 - time.time()))
                t0 = due / 1000
                delivered_at = answered_at = None
                while answered_at is None:
                    await asyncio.sleep(0.01)
                    ((left, waiting),) = await loop.store.execute_fetchall(
                        "SELECT (SELECT COUNT(*) FROM timers WHERE status != 'fired'), "
                        "(SELECT COUNT(*) FROM inbox WHERE consumed_at IS NULL)"
                    )
                    if delivered_at is None and left == 0:
                        delivered_at = time.time()
                    if delivered_at is not None and waiting == 0:
                        await runner.drain()
                        answered_at = time.time()
                ticker.stop()
                await runner.stop()
                lateness = [
                    float(r[0])
                    for r in await loop.store.execute_fetchall("SELECT fired_at - due_at FROM timers ORDER BY 1")
                ]
                ((refs, distinct_refs),) = await loop.store.execute_fetchall(
                    "SELECT COUNT(*), COUNT(DISTINCT session || ref) FROM inbox WHERE source = 'timer'"
                )
                ((in_history,),) = await loop.store.execute_fetchall(
                    "SELECT COUNT(*) FROM messages "
                    "WHERE json_extract(body, '$.role') = 'user' AND body LIKE '%<timer id=%'"
                )
                exactly_once.append(refs == distinct_refs == in_history == total)
                out["deliver_all_s"].append(delivered_at - t0)
                out["deliveries_per_s"].append(total / (delivered_at - t0))
                out["answered_all_s"].append(answered_at - t0)
                out["lateness_p50_ms"].append(pct(lateness, 0.5))
                out["lateness_p99_ms"].append(pct(lateness, 0.99))
                out["lateness_max_ms"].append(max(lateness))
                out["loop_lateness_max_ms"].append(max(ticker.lateness))
            await llm.aclose()  # type: ignore[attr-defined]
    return {
        "timers": total,
        "sessions": sessions,
        "exactly_once": all(exactly_once),
        "peak_rss_mb": peak_rss_mb(),
        **out,
    }


SCENARIOS: dict[str, Callable[[str, int, bool], Awaitable[dict[str, Any]]]] = {
    "overhead": overhead,
    "tool_round_trip": tool_round_trip,
    "concurrency": concurrency,
    "concurrency_gc_frozen": concurrency_frozen,
    "transports": transports,
    "history": history,
    "history_compacted": history_compacted,
    "cold_start": cold_start,
    "timers": timers,
}
LEGACY_SAFE = {"concurrency", "cold_start"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--transport", choices=("native", "httpx", "aiohttp"), help="the providers' http_transport")
    args = parser.parse_args()
    global TRANSPORT
    TRANSPORT = args.transport
    configure_env(args.url)
    result = asyncio.run(SCENARIOS[args.scenario](args.url, args.reps, args.quick))
    print(json.dumps(result))
    return 0


async def _fill_store(path: str, sessions: int, sends: int, registry: Any = None) -> int:
    """``sessions`` x ``sends`` real sends into a fresh file; the number of stored messages."""
    import sqlite3

    from power_loop import AgentLoopConfig, StatefulAgentLoop

    llm = new_llm()
    loop = StatefulAgentLoop(
        llm=llm, db_path=path, config=AgentLoopConfig(system_prompt=SYSTEM_PROMPT), tool_registry=registry
    )
    for _ in range(sessions):
        sid = loop.new_session()
        for i in range(sends):
            await loop.send(f"Question {i}: a user message of typical length about the project?", session_id=sid)
    loop.close()
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM messages").fetchone()
    return int(count)


async def _empty_store_size(path: str) -> int:
    """The checkpointed size of a store holding its schema and one empty session: what a file
    takes before any message (every table and index is at least one page)."""
    from power_loop import StatefulAgentLoop

    loop = StatefulAgentLoop(llm=new_llm(), db_path=path)
    loop.new_session()
    loop.close()
    return checkpointed_size(path)


async def storage(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """File bytes per 1,000 stored messages after 10 sessions x 50 sends (0.11 API only): text
    answers, and sends that each make one tool call first. Sizes are deterministic: one run.

    ``bytes_per_1000_messages`` is what the messages add to the file: its size less that of
    the same store empty (``empty_file_bytes``: the schema's pages, which every table and index
    takes once, however many messages there are). ``file_bytes`` is the whole file."""
    from power_loop import ToolDefinition, ToolRegistry

    sessions, sends = (4, 20) if quick else (10, 50)
    registry = ToolRegistry()
    registry.register(
        ToolDefinition(
            name="lookup",
            description="Look something up.",
            input_schema={"type": "object", "properties": {"query": {"type": "string"}}},
        ),
        lambda query="x": f"result for {query}: " + "data " * 10,
    )
    out: dict[str, Any] = {"sessions": sessions, "sends_per_session": sends}
    with tempfile.TemporaryDirectory() as tmp:
        empty = await _empty_store_size(os.path.join(tmp, "empty.db"))
        out["empty_file_bytes"] = empty
        for variant, tools in (("", None), ("_tools", registry)):
            path = os.path.join(tmp, f"storage{variant}.db")
            messages = await _fill_store(path, sessions, sends, tools)
            size = checkpointed_size(path)
            out[f"messages{variant}"] = messages
            out[f"file_bytes{variant}"] = size
            out[f"bytes_per_1000_messages{variant}"] = round((size - empty) * 1000 / messages, 1)
    return out


SCENARIOS["storage"] = storage
LEGACY_SAFE.add("storage")


async def subagent_spawn(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """What a sub-agent spawn costs beyond its model calls.

    Three kinds of sends on one loop, interleaved: a text answer (one model call), a tool round
    trip (two), and a tool that hands a task to an ephemeral child (three: the parent's call,
    the child's answer, the parent's answer). The spawn's own cost is the third minus the
    first two: creating, running, ending and deleting the child session.
    """
    from power_loop import StatefulAgentLoop, ToolContext, ToolRegistry, tool

    # @tool resolves the (string) annotations in this module's globals; power_loop is imported
    # lazily here so the 0.11 scenarios run on 0.11's interpreter.
    globals()["ToolContext"] = ToolContext

    @tool
    def lookup(query: str = "x") -> str:
        """Look something up.

        Args:
            query: What to look up.
        """
        return "42"

    @tool
    async def delegate(ctx: ToolContext, task: str = "look it up") -> str:
        """Hand a task to a sub-agent.

        Args:
            task: The task.
        """
        return (await ctx.subagents.run(task, tools=[])).final_text

    registry = ToolRegistry([lookup, delegate])
    sends = 20 if quick else 100
    out: dict[str, list[float]] = {"text_ms": [], "tool_ms": [], "spawn_send_ms": [], "spawn_overhead_ms": []}
    llm = new_llm()
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.db")
        async with StatefulAgentLoop(llm=llm, db_path=db, tool_registry=registry) as loop:
            for i in range(10):
                await loop.send(f"warm {i}", session_id=await loop.new_session_async(), tools=["delegate"])
            for _rep in range(reps):
                timings: dict[str, float] = {"text": 0.0, "tool": 0.0, "spawn": 0.0}
                for i in range(sends):
                    # Each measured send is the first of a fresh session: the same history size.
                    for kind, tools in (("text", []), ("tool", ["lookup"]), ("spawn", ["delegate"])):
                        sid = await loop.new_session_async()
                        started = time.perf_counter()
                        result = await loop.send(f"{kind} {i}", session_id=sid, tools=tools)
                        timings[kind] += time.perf_counter() - started
                        assert result.status == "completed", result
                text, tool_, spawn = (timings[k] / sends * 1000 for k in ("text", "tool", "spawn"))
                out["text_ms"].append(text)
                out["tool_ms"].append(tool_)
                out["spawn_send_ms"].append(spawn)
                out["spawn_overhead_ms"].append(spawn - tool_ - text)
    await llm.aclose()  # type: ignore[attr-defined]
    return {"sends": sends, **out}


SCENARIOS["subagent_spawn"] = subagent_spawn


async def postgres(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """P processes sharing one PostgreSQL store, and timers across two processes (pg_load.py)."""
    import pg_load

    return await pg_load.postgres(url, reps, quick)


SCENARIOS["postgres"] = postgres


def guard_configs() -> dict[str, Any]:
    """The ``guards`` scenario's settings: ``plain`` (none); ``guarded``: every guard the loop
    checks in memory, with limits never reached (per-run budgets in tokens, dollars,
    wall-clock and tool calls; no-progress detection; admission control: run slots and a
    request rate); ``shared``: ``guarded`` plus a shared tenant budget kept in the store (one
    hold per model call, group-committed, settled with the call's record)."""
    from power_loop import AgentLoopConfig, Budget, NoProgressPolicy, Price, RateLimit

    prices = {"bench-model": Price(input_per_mtok=1.0, output_per_mtok=2.0)}
    guarded = AgentLoopConfig(
        system_prompt=SYSTEM_PROMPT,
        pricing=prices,
        max_tokens_per_run=1_000_000,
        max_cost_usd_per_run=100.0,
        max_wall_s_per_run=3600.0,
        max_tool_calls_per_run=1_000,
        no_progress=NoProgressPolicy(repeat_limit=5),
        max_concurrent_runs=1_000,
        rate_limit=RateLimit(requests_per_s=100_000, burst=1_000),
    )
    return {
        "plain": AgentLoopConfig(system_prompt=SYSTEM_PROMPT),
        "guarded": guarded,
        "shared": replace(guarded, budgets=[Budget(scope="tenant", tokens=10**12, window_s=3600)]),
    }


async def guards(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """What the guards cost when nothing is exceeded: the ``concurrency`` load (50 sessions x
    20 sends, all of one tenant) with no guard and with every guard on, interleaved (each
    repetition runs both, in a rotating order). Per repetition: sends/s and this process's
    CPU time per send (its threads included: the event loop and the store's), which the
    machine's other load disturbs much less than throughput. ``ratio``: guarded sends/s over
    plain's; ``cpu_ratio``: guarded CPU per send over plain's; ``shared_*``: the same for
    ``shared``."""
    from power_loop import StatefulAgentLoop

    sessions, per_session = (20, 5) if quick else (50, 20)
    configs = guard_configs()
    out: dict[str, dict[str, list[float]]] = {
        name: {"sends_per_s": [], "p50_ms": [], "cpu_ms_per_send": []} for name in configs
    }
    ratios: dict[str, list[float]] = {"ratio": [], "cpu_ratio": [], "shared_ratio": [], "shared_cpu_ratio": []}
    with tempfile.TemporaryDirectory() as tmp:
        loops = {
            name: StatefulAgentLoop(llm=new_llm(), db_path=os.path.join(tmp, f"{name}.db"), config=config)
            for name, config in configs.items()
        }
        sids = {
            name: [await loop.new_session_async(metadata={"tenant_id": "acme"}) for _ in range(sessions)]
            for name, loop in loops.items()
        }
        for name, loop in loops.items():
            await asyncio.gather(*(loop.send("warm-up", session_id=s) for s in sids[name]))
        order = list(configs)
        for rep in range(reps):
            rates: dict[str, float] = {}
            cpu: dict[str, float] = {}
            for name in order[rep % len(order) :] + order[: rep % len(order)]:
                loop = loops[name]
                latencies: list[float] = []

                async def worker(sid: str, loop: Any = loop, latencies: list[float] = latencies) -> None:
                    for i in range(per_session):
                        started = time.perf_counter()
                        result = await loop.send(f"message {i}", session_id=sid)
                        assert result.status == "completed", result.status
                        latencies.append((time.perf_counter() - started) * 1000)

                gc.collect()
                started, cpu_started = time.perf_counter(), time.process_time()
                await asyncio.gather(*(worker(s) for s in sids[name]))
                sends = sessions * per_session
                rates[name] = sends / (time.perf_counter() - started)
                cpu[name] = (time.process_time() - cpu_started) * 1000 / sends
                out[name]["sends_per_s"].append(rates[name])
                out[name]["p50_ms"].append(pct(latencies, 0.5))
                out[name]["cpu_ms_per_send"].append(cpu[name])
            for prefix, name in (("", "guarded"), ("shared_", "shared")):
                ratios[f"{prefix}ratio"].append(rates[name] / rates["plain"])
                ratios[f"{prefix}cpu_ratio"].append(cpu[name] / cpu["plain"])
        for loop in loops.values():
            await loop.aclose()
    return {
        "sessions": sessions,
        "sends_per_session": per_session,
        **out,
        **ratios,
    }


SCENARIOS["guards"] = guards


if __name__ == "__main__":
    sys.exit(main())
