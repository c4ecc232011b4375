"""The round engine: one module per step (prepare → call model → run tools → decide).

``run.py`` reads like the run pseudocode of the architecture docs; the other modules are the
steps it calls. Nothing here is public API; the facade is :class:`power_loop.StatefulAgentLoop`.
"""
