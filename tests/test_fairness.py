"""The fairness gate: heavy steps of one event-loop iteration stay within a time budget, waiters
are served in order, and turns are counted per event loop (one loop object used from several
threads, as ``send_sync`` does, never strands another loop's waiters)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings

import pytest

from power_loop._fairness import TickGate
from power_loop.providers import _transport

HANG_GUARD_S = 30  # only against a hang: the turns are granted within a few loop iterations


async def test_waiters_of_one_event_loop_survive_another_loops_turns() -> None:
    gate = TickGate(budget_s=0)
    done: list[int] = []

    async def step(n: int) -> None:
        await gate.turn()
        done.append(n)

    tasks = [asyncio.ensure_future(step(n)) for n in range(4)]
    await asyncio.sleep(0)  # the first has its turn, the others wait for the next iterations

    # Another thread's event loop takes turns from the same gate meanwhile.
    other = threading.Thread(target=lambda: asyncio.run(asyncio.wait_for(gate.turn(), HANG_GUARD_S)))
    other.start()
    other.join()

    await asyncio.wait_for(asyncio.gather(*tasks), HANG_GUARD_S)
    assert sorted(done) == [0, 1, 2, 3]


async def test_one_turn_per_iteration_on_each_loop() -> None:
    gate = TickGate(budget_s=0)
    order: list[str] = []

    async def heavy(name: str) -> None:
        await gate.turn()
        order.append(name)

    async def ticker() -> None:
        for _ in range(3):
            order.append("tick")
            await asyncio.sleep(0)

    await asyncio.gather(heavy("a"), heavy("b"), heavy("c"), ticker())
    # The heavy steps are spread over iterations: the ticker runs between them.
    assert order.index("a") < order.index("b") < order.index("c")
    assert order[: order.index("c")].count("tick") >= 2


def _spin(seconds: float) -> None:
    """CPU work on the event-loop thread (a heavy step)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_heavy_steps_beyond_the_budget_wait_for_a_later_iteration() -> None:
    gate = TickGate(budget_s=0.002)
    order: list[str] = []
    running = True

    async def heavy(name: str) -> None:
        await gate.turn()
        _spin(0.001)
        order.append(name)

    async def ticker() -> None:
        while running:
            order.append("tick")
            await asyncio.sleep(0)

    ticking = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    await asyncio.gather(*(heavy(f"h{i}") for i in range(8)))
    running = False
    await ticking
    heavy_order = [x for x in order if x != "tick"]
    assert heavy_order == [f"h{i}" for i in range(8)]  # first come, first served
    # 8 ms of heavy steps under a 2 ms budget: spread over at least three iterations, with
    # the ticker's turns in between.
    between = order[order.index("h0") : order.index("h7")]
    assert between.count("tick") >= 2


async def test_a_backlog_drains_in_order_and_every_waiter_gets_its_turn() -> None:
    gate = TickGate(budget_s=0.0)  # one turn per iteration: the strictest budget
    done: list[int] = []

    async def step(n: int) -> None:
        await gate.turn()
        done.append(n)

    await asyncio.wait_for(asyncio.gather(*(step(n) for n in range(50))), HANG_GUARD_S)
    assert done == list(range(50))


async def test_a_cancelled_waiter_does_not_block_the_others() -> None:
    gate = TickGate(budget_s=0.0)
    done: list[int] = []

    async def step(n: int) -> None:
        await gate.turn()
        done.append(n)

    tasks = [asyncio.ensure_future(step(n)) for n in range(5)]
    await asyncio.sleep(0)
    tasks[2].cancel()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), HANG_GUARD_S)
    assert done == [0, 1, 3, 4]


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="budget_s"):
        TickGate(budget_s=-1)


async def test_a_request_cancelled_while_its_response_waits_for_a_turn_closes_its_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The response head has arrived and the transport waits for a turn; cancelled there, the
    # connection (never handed to a response) is closed, not left to the garbage collector.
    client_gone = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()  # until the client closes
        client_gone.set()
        writer.close()

    waiting = asyncio.Event()

    class CrowdedGate:
        async def turn(self) -> None:
            waiting.set()
            await asyncio.Event().wait()  # many steps ahead: no turn before the cancellation

    monkeypatch.setattr(_transport, "EVENT_LOOP_GATE", CrowdedGate())
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lib = _transport.default_http_library()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            async with lib.AsyncClient(transport=_transport.native_transport(lib)) as client:
                request = asyncio.ensure_future(client.get(f"http://127.0.0.1:{port}/"))
                await waiting.wait()
                request.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await request
                del request
                gc.collect()
                await asyncio.wait_for(client_gone.wait(), HANG_GUARD_S)
        assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    finally:
        server.close()
        await server.wait_closed()
