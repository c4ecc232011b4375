"""The application the timer-worker tests run with ``power-loop worker timer_app:make_loop``.

Environment: ``TIMER_DB`` (the SQLite file or database URL); ``TIMER_BLOCK_BEFORE_COMMIT`` /
``TIMER_BLOCK_AFTER_COMMIT`` (a marker path: touch it and freeze the process before / after a
delivery commits, so a test can SIGKILL it at that point).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from power_loop import AgentEventType, HookPoint, OfflineLLM, StatefulAgentLoop


def make_loop() -> StatefulAgentLoop:
    loop = StatefulAgentLoop(llm=OfflineLLM(), db_path=os.environ["TIMER_DB"])
    before = os.environ.get("TIMER_BLOCK_BEFORE_COMMIT")
    after = os.environ.get("TIMER_BLOCK_AFTER_COMMIT")
    if before:

        def freeze_before(ctx: object) -> None:
            Path(before).touch()
            time.sleep(3600)  # blocks the whole process, as a hung or dying host would

        loop.hooks.register(HookPoint.TIMER_FIRE, freeze_before)
    if after:

        def freeze_after(event: object) -> None:
            Path(after).touch()
            time.sleep(3600)

        loop.event_bus.subscribe(AgentEventType.TIMER_FIRED, freeze_after)
    return loop
