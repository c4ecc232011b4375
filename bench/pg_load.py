"""The PostgreSQL load scenario: P processes share one store on a local server.

``python bench/scenarios.py postgres --url SCRIPTED_URL`` (or through ``bench/run.py --only
postgres``) starts a throwaway PostgreSQL server (durable settings: fsync and synchronous
commit on), then for P in (1, 2, 4): P worker processes send to the same 200 sessions, 10 sends
per session per process, 50 sends in flight per process, while a TimerRunner in each process
delivers timers that come due during the run. Afterwards every session is checked: each
question followed by its own answer, nothing lost, nothing twice, every timer delivered once.
A second phase measures timer delivery alone: N timers due at one instant, 2 worker processes
delivering them with the ``TimerRunner`` defaults (each woken session runs one model call, at
most ``max_runs`` runs at a time per process); it reports deliveries/s (every timer fired, its
wake-up durable in the inbox) and when the woken runs had read every wake-up.

A worker is this file run as a script: ``pg_load.py worker URL SCHEMA MODEL_URL P_INDEX ...``.
It prints one JSON line with its measurements.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _instrument(store: Any) -> dict[str, list[float]]:
    """Time the store calls that matter: each text round's commit (a write that ends the run)
    and each begin that found the session held by another process (a lease wait)."""
    stats: dict[str, list[float]] = {"commit_ms": [], "busy_begins": []}
    write, begin = store.write, store.begin_run

    async def timed_write(session_id: str, ops: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        result = await write(session_id, ops, **kwargs)
        if any(type(op).__name__ == "FinishRun" for op in ops):
            stats["commit_ms"].append((time.perf_counter() - started) * 1000)
        return result

    async def counted_begin(request: Any) -> Any:
        outcome = await begin(request)
        if outcome.status == "busy":
            stats["busy_begins"].append(1.0)
        return outcome

    store.write, store.begin_run = timed_write, counted_begin
    return stats


async def worker(
    url: str, schema: str, model_url: str, index: int, sessions: int, sends: int, in_flight: int = 50
) -> dict[str, Any]:
    from power_loop import AgentLoopConfig, PostgresSessionStore, StatefulAgentLoop, TimerRunner
    from power_loop.providers.openai import OpenAIChatService

    llm = OpenAIChatService(base_url=f"{model_url}/v1", api_key="bench", model="bench-model", max_retries=0)
    store = PostgresSessionStore(url, schema=schema, max_size=16)
    stats = _instrument(store)
    config = AgentLoopConfig(session_wait_s=300, system_prompt="You are a concise assistant.")
    latencies: list[float] = []
    async with StatefulAgentLoop(llm=llm, store=store, config=config) as loop:
        runner = TimerRunner(loop, scan_interval_s=0.2)
        await runner.start()
        order = [f"s{i:04d}" for i in range(sessions)]
        random.Random(index).shuffle(order)
        queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        for k in range(sends):
            for sid in order:
                queue.put_nowait((sid, k))

        async def sender() -> None:
            while not queue.empty():
                sid, k = queue.get_nowait()
                started = time.perf_counter()
                await loop.send(f"p{index} m{k}", session_id=sid)
                latencies.append((time.perf_counter() - started) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(in_flight)))
        elapsed = time.perf_counter() - started
        for _ in range(600):  # the timers due during the run are all delivered (by any process)
            ((left,),) = await store.execute_fetchall("SELECT COUNT(*) FROM timers WHERE status != 'fired'")
            if int(left) == 0:
                break
            await asyncio.sleep(0.1)
        await runner.drain()
        await runner.stop()
    await store.close()
    await llm.aclose()
    return {
        "sends": len(latencies),
        "elapsed_s": elapsed,
        "latencies_ms": latencies,
        "commit_ms": stats["commit_ms"],
        "busy_begins": len(stats["busy_begins"]),
    }


async def timer_worker(url: str, schema: str, model_url: str, seconds: float) -> dict[str, Any]:
    from power_loop import PostgresSessionStore, StatefulAgentLoop, TimerRunner
    from power_loop.providers.openai import OpenAIChatService

    llm = OpenAIChatService(base_url=f"{model_url}/v1", api_key="bench", model="bench-model", max_retries=0)
    store = PostgresSessionStore(url, schema=schema, max_size=16)
    async with StatefulAgentLoop(llm=llm, store=store) as loop:
        runner = TimerRunner(loop, scan_interval_s=0.05, concurrency=64)
        await runner.start()
        await asyncio.sleep(seconds)
        await runner.stop()
    await store.close()
    await llm.aclose()
    return {}


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HERE / "pg_load.py"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _collect(procs: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


async def _rows(url: str, schema: str, sql: str) -> list[tuple[Any, ...]]:
    from power_loop import PostgresSessionStore

    store = PostgresSessionStore(url, schema=schema)
    try:
        return await store.execute_fetchall(sql)
    finally:
        await store.close()


async def _setup(url: str, schema: str, sessions: int, timers: int, due_in_s: float, spread_s: float) -> None:
    from power_loop import PostgresSessionStore

    store = PostgresSessionStore(url, schema=schema)
    try:
        for i in range(sessions):
            await store.create_session(f"s{i:04d}")
        due = int(time.time() * 1000 + due_in_s * 1000)
        for t in range(timers):
            sid = f"s{t % sessions:04d}"
            at = due + int(spread_s * 1000 * t / max(1, timers))
            await store.schedule_timer(sid, due_at=at, note=f"timer {t}")
    finally:
        await store.close()


async def _check_sessions(
    url: str, schema: str, processes: int, sends: int, sessions: int, timers: int
) -> dict[str, Any]:
    from power_loop import PostgresSessionStore, message_to_dict

    store = PostgresSessionStore(url, schema=schema)
    lost = interleaved = duplicates = 0
    try:
        for i in range(sessions):
            messages = [message_to_dict(m.message) for m in await store.load_messages(f"s{i:04d}")]
            questions = [m["content"] for m in messages if m["role"] == "user" and str(m["content"]).startswith("p")]
            expected = {f"p{p} m{k}" for p in range(processes) for k in range(sends)}
            lost += len(expected - set(questions))
            duplicates += len(questions) - len(set(questions))
            # Runs never interleave: after a question, its run's answer comes before the next
            # question (timer wake-ups may join a run as extra user messages).
            waiting = False
            for m in messages:
                if m["role"] == "user" and str(m["content"]).startswith("p"):
                    interleaved += waiting
                    waiting = True
                elif m["role"] == "assistant":
                    waiting = False
            interleaved += waiting
        ((refs, distinct, fired_once),) = await store.execute_fetchall(
            "SELECT (SELECT COUNT(*) FROM inbox WHERE source = 'timer'), "
            "(SELECT COUNT(DISTINCT session::text || ':' || ref) FROM inbox WHERE source = 'timer'), "
            "(SELECT COUNT(*) FROM timers WHERE status = 'fired' AND fire_count = 1)"
        )
    finally:
        await store.close()
    return {
        "lost_messages": lost,
        "interleaved": interleaved,
        "duplicate_messages": duplicates,
        "timer_duplicates": int(refs) - int(distinct),
        "timers_fired_once": int(fired_once) == timers == int(refs),
    }


async def postgres(url: str, reps: int, quick: bool) -> dict[str, Any]:
    """See the module docstring."""
    from power_loop.testing import TemporaryPostgres

    sessions, sends = (40, 3) if quick else (200, 10)
    timer_count = 200 if quick else 2_000
    burst = 500 if quick else 4_000
    out: dict[str, Any] = {"sessions": sessions, "sends_per_session_per_process": sends}
    with TemporaryPostgres(durable=True, settings={"max_connections": "300"}) as pg:
        # The commit of a text round with nothing else going on: one process, one send at a time.
        await _setup(pg.url, "load_idle", 20, 0, due_in_s=1.0, spread_s=0.0)
        idle = _collect([_spawn("worker", pg.url, "load_idle", url, "0", "20", "5" if quick else "20", "1")])[0]
        out["idle"] = {
            "sends": idle["sends"],
            "send_p50_ms": round(pct(idle["latencies_ms"], 0.5), 2),
            "commit_p50_ms": round(pct(idle["commit_ms"], 0.5), 3),
            "commit_p99_ms": round(pct(idle["commit_ms"], 0.99), 3),
        }
        for processes in (1, 2, 4):
            schema = f"load_p{processes}"
            await _setup(pg.url, schema, sessions, timer_count, due_in_s=1.0, spread_s=2.0 if quick else 5.0)
            args = [pg.url, schema, url]
            procs = [_spawn("worker", *args, str(i), str(sessions), str(sends)) for i in range(processes)]
            results = _collect(procs)
            latencies = [x for r in results for x in r["latencies_ms"]]
            commits = [x for r in results for x in r["commit_ms"]]
            total = sum(r["sends"] for r in results)
            elapsed = max(r["elapsed_s"] for r in results)
            checks = await _check_sessions(pg.url, schema, processes, sends, sessions, timer_count)
            out[f"P{processes}"] = {
                "sends": total,
                "sends_per_s": round(total / elapsed, 1),
                "send_p50_ms": round(pct(latencies, 0.5), 2),
                "send_p99_ms": round(pct(latencies, 0.99), 2),
                "commit_p50_ms": round(pct(commits, 0.5), 3),
                "commit_p99_ms": round(pct(commits, 0.99), 3),
                "lease_waits": sum(r["busy_begins"] for r in results),
                **checks,
            }
        # Timer delivery alone: `burst` timers due at one instant, two worker processes.
        schema = "load_timers"
        await _setup(pg.url, schema, 1_000 if not quick else 100, burst, due_in_s=3.0, spread_s=0.0)
        due = time.time() + 3.0
        procs = [_spawn("timers", pg.url, schema, url, "300") for _ in range(2)]
        delivered_at = None
        while delivered_at is None and time.time() < due + 120:
            await asyncio.sleep(0.05)
            ((left,),) = await _rows(pg.url, schema, "SELECT COUNT(*) FROM timers WHERE status != 'fired'")
            if int(left) == 0 and time.time() >= due:
                delivered_at = time.time()
        # The runs those wake-ups start (a model call each, max_runs at a time per process)
        # follow at their own pace: when was every wake-up read by its session?
        read_at = None
        while read_at is None and delivered_at is not None and time.time() < delivered_at + 300:
            ((unread,),) = await _rows(
                pg.url, schema, "SELECT COUNT(*) FROM inbox WHERE source = 'timer' AND consumed_at IS NULL"
            )
            if int(unread) == 0:
                read_at = time.time()
            else:
                await asyncio.sleep(0.1)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.communicate(timeout=120)
        ((refs, distinct),) = await _rows(
            pg.url,
            schema,
            "SELECT COUNT(*), COUNT(DISTINCT session::text || ':' || ref) FROM inbox WHERE source = 'timer'",
        )
        out["timer_burst"] = {
            "timers": burst,
            "processes": 2,
            "deliveries_per_s": round(burst / (delivered_at - due), 1) if delivered_at else 0.0,
            "duplicates": int(refs) - int(distinct),
            "delivered": int(refs),
            "all_read_after_s": round(read_at - due, 2) if read_at else None,
        }
    return out


def main() -> None:
    mode, *args = sys.argv[1:]
    if mode == "worker":
        url, schema, model_url, index, sessions, sends, *rest = args
        in_flight = int(rest[0]) if rest else 50
        result = asyncio.run(worker(url, schema, model_url, int(index), int(sessions), int(sends), in_flight))
    elif mode == "timers":
        url, schema, model_url, seconds = args
        result = asyncio.run(timer_worker(url, schema, model_url, float(seconds)))
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("POWER_LOOP_GC_FREEZE", "1")
    main()
