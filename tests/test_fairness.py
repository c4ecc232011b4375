"""The fairness gate counts turns per event loop: one loop object used from several threads
(``send_sync`` runs one event loop per call) never strands another loop's waiters."""

from __future__ import annotations

import asyncio
import threading

from power_loop.engine.fairness import TickGate

HANG_GUARD_S = 30  # only against a hang: the turns are granted within a few loop iterations


async def test_waiters_of_one_event_loop_survive_another_loops_turns() -> None:
    gate = TickGate(per_tick=1)
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
    gate = TickGate(per_tick=1)
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
