"""The public surface: every exported name resolves, the 0.11 names are there, and the
subpackages users import from export what their docs say."""

from __future__ import annotations

import importlib
import inspect

import power_loop

# Names a power-loop 0.11 program imports from ``power_loop`` (the parts of its surface this
# version implements; see ROADMAP.md for the rest).
NAMES_0_11 = (
    "StatefulAgentLoop",
    "StatefulResult",
    "AgentLoopConfig",
    "AgentLoopResult",
    "SessionStore",
    "SubagentLifecycle",
    "PowerLoopError",
    "SessionPendingError",
    "SessionNotFoundError",
    "LLMTimeout",
    "LLMRetryExhausted",
    "CancellationRequested",
    "LLMRetryPolicy",
    "CancellationToken",
    "AgentHooks",
    "AgentEventBus",
    "AgentEvent",
    "AgentEventType",
    "HookPoint",
    "HookDirective",
    "ToolRegistry",
    "ToolDefinition",
    "FollowUpQueued",
    "TimerRunner",
    "TimerRow",
    "TimerFireCtx",
    "DefaultCompactor",
    "SessionStatsRow",
    "HumanInputRequired",
    "request_user_input",
    "LLMProviderConfig",
    "create_llm_service_from_env",
    "create_llm_service_from_config",
    "STABLE_API",
    "MAX_SPAWN_DEPTH",
    "AgentSpec",
    "AgentSpecError",
    "SpecValidationError",
    "SPAWN_AGENT_DEFINITION",
    "RUN_AGENT_DEFINITION",
    "SystemPromptBuilder",
    "SystemPromptContext",
    "BUILTIN_SECTIONS",
    "build_agent_system_prompt",
    "build_subagent_system_prompt",
    "build_explore_subagent_system_prompt",
    "DEFAULT_AGENT_SYSTEM_PROMPT",
    "DEFAULT_SUBAGENT_SYSTEM_PROMPT",
    "DEFAULT_EXPLORE_SUBAGENT_SYSTEM_PROMPT",
)


def test_every_exported_name_resolves_and_is_documented() -> None:
    assert len(power_loop.__all__) == len(set(power_loop.__all__))
    for name in power_loop.__all__:
        obj = getattr(power_loop, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__doc__ and obj.__doc__.strip(), f"{name} has no docstring"


def test_the_0_11_names_are_exported() -> None:
    missing = [n for n in NAMES_0_11 if n not in power_loop.__all__]
    assert missing == []
    assert set(power_loop.STABLE_API) <= set(power_loop.__all__)


def test_enumerations_have_the_0_11_members() -> None:
    assert len(power_loop.AgentEventType) == 28
    assert len(power_loop.HookPoint) == 17
    assert power_loop.AgentEventType.TIMER_FIRED.value == "timer_fired"
    assert power_loop.HookPoint.TIMER_FIRE.value == "timer.fire"


def test_subpackages_export_what_they_document() -> None:
    for module_name in ("power_loop.store", "power_loop.timers", "power_loop.testing", "power_loop.compaction"):
        module = importlib.import_module(module_name)
        assert module.__doc__, module_name
        for name in getattr(module, "__all__", ()):
            assert getattr(module, name) is not None, f"{module_name}.{name}"
    from power_loop.store import SessionStore, SQLiteSessionStore

    assert SessionStore is SQLiteSessionStore is power_loop.SessionStore


def test_importing_the_package_does_not_import_the_provider_sdks() -> None:
    import subprocess
    import sys

    code = "import sys, power_loop; print(any(m in sys.modules for m in ('openai', 'anthropic')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
