"""The round engine: one module per step.

``run.py`` drives a run and reads like the run pseudocode of the architecture docs:
``limits`` (stop, budget, round limit) → ``model_turn`` (ROUND_START, ``compaction``,
LLM_BEFORE, ``model_call``, LLM_AFTER, the model-turn commit) → ``tool_round`` (ROUND_DECIDE,
``tool_batch``, the results commit) → ``finish``. Every step returns an
:mod:`~power_loop.engine.outcome` (go on, or an ``End``); ``finish`` is the one place a run
ends. ``state`` holds the run's state; nothing about a run lives at module level. Imports
point one way, without cycles: ``state`` and ``outcome`` at the bottom, the steps above
them (a step never imports ``run`` or ``finish``), ``run`` on top.

Nothing here is public API; the facade is :class:`power_loop.StatefulAgentLoop`.
"""
