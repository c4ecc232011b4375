"""0.11 public names, by signature: provider config, retry, tool calls, messages, tool helpers,
token estimates and trimming (issue 12, item 4)."""

from __future__ import annotations

import asyncio
import typing
from typing import Any

import pytest

import power_loop
from power_loop import (
    FULL_TOOL_NAMES,
    TOOL_PRESETS,
    AgentMessage,
    CancellationRequested,
    CancellationToken,
    LLMProviderConfig,
    LLMRequest,
    LLMRetryExhausted,
    LLMRetryPolicy,
    LLMServerError,
    LLMStatusError,
    LLMTimeout,
    MessageRole,
    RuntimeMessage,
    StatefulAgentLoop,
    ToolArgsValidator,
    ToolCall,
    ToolDefinition,
    ToolHandler,
    ToolHandlerResult,
    ToolRegistry,
    UserMessage,
    build_registry,
    create_default_tool_registry,
    create_llm_service_from_config,
    estimate_text_tokens,
    estimate_tokens,
    format_tool_catalog,
    get_tool_definitions,
    trim_history,
    validate_tool_args,
    with_retry,
)
from power_loop.messages import AssistantMessage, ToolResultMessage, message_to_dict
from power_loop.testing import ScriptedServer, text_reply, tool_reply
from power_loop.tools.defaults import default_tools

# --------------------------------------------------------------------------- LLMProviderConfig


def test_provider_config_positional_in_011_order() -> None:
    cfg = LLMProviderConfig("http://127.0.0.1:9/v1", "key", "model-x", "anthropic", 12.5, 300, 0.2, 1, {"team": "a"})
    assert (cfg.base_url, cfg.api_key, cfg.model, cfg.provider) == (
        "http://127.0.0.1:9/v1",
        "key",
        "model-x",
        "anthropic",
    )
    assert (cfg.timeout_s, cfg.max_tokens, cfg.temperature, cfg.max_retries) == (12.5, 300, 0.2, 1)
    assert cfg.extra == {"team": "a"}
    assert LLMProviderConfig("u", "k", "m").extra == {}
    # The keyword form of this version keeps working.
    assert LLMProviderConfig(model="m", context_window=1000).context_window == 1000
    with pytest.raises(ValueError, match="model"):
        LLMProviderConfig("u", "k")


def test_provider_config_is_ready() -> None:
    assert LLMProviderConfig("u", "k", "m").is_ready
    assert LLMProviderConfig(model="m", api_key="k").is_ready  # base_url None: the SDK default
    assert not LLMProviderConfig("u", None, "m").is_ready
    assert not LLMProviderConfig("u", "", "m").is_ready
    assert not LLMProviderConfig("", "k", "m").is_ready


def test_provider_config_transport_views() -> None:
    cfg = LLMProviderConfig("u", "k", "m", "openai", 5.0, 100, 0.5, 2)
    anthropic = cfg.to_anthropic()
    assert anthropic.provider == "anthropic"
    openai = anthropic.to_openai_compatible()
    assert openai.provider == "openai"
    for view in (anthropic, openai):
        assert (view.base_url, view.api_key, view.model, view.timeout_s) == ("u", "k", "m", 5.0)
        assert (view.max_tokens, view.temperature, view.max_retries) == (100, 0.5, 2)


def test_provider_config_from_env_mapping() -> None:
    env = {
        "POWER_LOOP_BASE_URL": "http://h/v1",
        "OPENAI_COMPAT_API_KEY": "fallback-key",
        "POWER_LOOP_MODEL": "m1",
        "POWER_LOOP_PROVIDER": "anthropic",
        "POWER_LOOP_TIMEOUT_S": "7",
        "POWER_LOOP_MAX_TOKENS": "64",
        "POWER_LOOP_TEMPERATURE": "0.3",
        "POWER_LOOP_MAX_RETRIES": "1",
    }
    cfg = LLMProviderConfig.from_env(env=env)
    assert (cfg.base_url, cfg.api_key, cfg.model, cfg.provider) == ("http://h/v1", "fallback-key", "m1", "anthropic")
    assert (cfg.timeout_s, cfg.max_tokens, cfg.temperature, cfg.max_retries) == (7.0, 64, 0.3, 1)
    mine = LLMProviderConfig.from_env(
        prefix="APP", fallback_prefix=None, env={"APP_BASE_URL": "b", "APP_API_KEY": "k", "APP_MODEL": "m"}
    )
    assert (mine.base_url, mine.model) == ("b", "m")
    with pytest.raises(ValueError, match="APP_MODEL"):
        LLMProviderConfig.from_env(prefix="APP", env={"APP_BASE_URL": "b", "APP_API_KEY": "k"})


async def test_service_from_positional_config_talks_to_the_server() -> None:
    with ScriptedServer([text_reply("hello from the wire")]) as server:
        cfg = LLMProviderConfig(server.openai_base_url, "test-key", "test-model", "openai", 10.0)
        llm = create_llm_service_from_config(cfg)
        try:
            response = await llm.complete(LLMRequest(messages=[UserMessage(content="hi")]))
        finally:
            await llm.aclose()  # type: ignore[attr-defined]
        assert response.message.text == "hello from the wire"
        assert server.requests[0].model == "test-model"
    # 0.11's parameter name, and this library's earlier keyword.
    assert create_llm_service_from_config(cfg=cfg).model == "test-model"  # type: ignore[attr-defined]
    assert create_llm_service_from_config(config=cfg).model == "test-model"  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        create_llm_service_from_config()
    with pytest.raises(TypeError):
        create_llm_service_from_config(cfg, config=cfg)


# --------------------------------------------------------------------------- errors and retry


def test_llm_timeout_011_constructor() -> None:
    err = LLMTimeout(elapsed=1.5, attempts=2, total_timeout=1.0)
    assert (err.elapsed, err.attempts, err.total_timeout) == (1.5, 2, 1.0)
    assert "1.50s" in str(err) and "total_timeout=1s" in str(err) and "attempts=2" in str(err)
    assert isinstance(err, power_loop.PowerLoopError)
    own = LLMTimeout("request timed out", provider="openai")
    assert str(own) == "request timed out" and own.provider == "openai" and own.elapsed is None


def test_llm_retry_exhausted_011_constructor() -> None:
    boom = RuntimeError("boom")
    err = LLMRetryExhausted(attempts=3, last_error=boom)
    assert err.attempts == 3 and err.last_error is boom
    assert "3 attempt" in str(err) and "RuntimeError: boom" in str(err)
    server = LLMServerError("bad gateway", provider="openai", status_code=502)
    own = LLMRetryExhausted("gave up", attempts=2, last_error=server)
    assert str(own) == "gave up" and own.status_code == 502 and own.provider == "openai"


def test_backoff_for_attempt_is_011_schedule() -> None:
    policy = LLMRetryPolicy()
    assert [policy.backoff_for_attempt(i) for i in range(7)] == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert [LLMRetryPolicy(backoff_initial=1, backoff_max=3).backoff_for_attempt(i) for i in range(4)] == [0, 1, 2, 3]


async def test_with_retry_retries_then_succeeds() -> None:
    failures = [ConnectionError("first"), ConnectionError("second")]

    async def call() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    seen: list[tuple[int, str, float]] = []
    policy = LLMRetryPolicy(max_attempts=3, backoff_initial=0.01)
    result = await with_retry(
        call, policy=policy, token=CancellationToken(), on_retry=lambda a, e, d: seen.append((a, str(e), d))
    )
    assert result == "ok"
    assert seen == [(0, "first", 0.01), (1, "second", 0.02)]


async def test_with_retry_exhausted_keeps_last_error_as_cause() -> None:
    async def call() -> None:
        raise ConnectionError("down")

    for attempts in (1, 2):
        with pytest.raises(LLMRetryExhausted) as info:
            await with_retry(
                call, policy=LLMRetryPolicy(max_attempts=attempts, backoff_initial=0.01), token=CancellationToken()
            )
        assert info.value.attempts == attempts
        assert isinstance(info.value.last_error, ConnectionError)
        assert info.value.__cause__ is info.value.last_error


async def test_with_retry_does_not_retry_outside_retry_on_or_a_4xx() -> None:
    calls = 0

    async def value_error() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("bug")

    with pytest.raises(ValueError):
        await with_retry(value_error, policy=LLMRetryPolicy(retry_on=(ConnectionError,)), token=CancellationToken())
    assert calls == 1

    async def bad_request() -> None:
        nonlocal calls
        calls += 1
        raise LLMStatusError("bad request", status_code=400)

    with pytest.raises(LLMStatusError):
        await with_retry(bad_request, policy=LLMRetryPolicy(backoff_initial=0.01), token=CancellationToken())
    assert calls == 2


async def test_with_retry_total_timeout_cancels_a_hung_call() -> None:
    cancelled = asyncio.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(LLMTimeout) as info:
        await asyncio.wait_for(
            with_retry(hang, policy=LLMRetryPolicy(total_timeout=0.2), token=CancellationToken()), 30
        )
    assert cancelled.is_set()
    assert info.value.attempts == 1 and info.value.total_timeout == 0.2
    assert info.value.elapsed is not None and info.value.elapsed >= 0.2


async def test_with_retry_backoff_past_the_deadline_is_a_timeout() -> None:
    async def down() -> None:
        raise ConnectionError("down")

    policy = LLMRetryPolicy(max_attempts=5, backoff_initial=3600, backoff_max=3600, total_timeout=30)
    with pytest.raises(LLMTimeout) as info:
        await asyncio.wait_for(with_retry(down, policy=policy, token=CancellationToken()), 30)
    assert isinstance(info.value.__cause__, ConnectionError)


async def test_with_retry_token_stops_during_backoff() -> None:
    token = CancellationToken()

    async def down() -> None:
        raise ConnectionError("down")

    with pytest.raises(CancellationRequested):
        await asyncio.wait_for(
            with_retry(
                down,
                policy=LLMRetryPolicy(backoff_initial=3600, backoff_max=3600, total_timeout=None),
                token=token,
                on_retry=lambda *a: token.cancel("user"),
            ),
            30,
        )
    cancelled = CancellationToken()
    cancelled.cancel()
    ran = False

    async def never() -> None:
        nonlocal ran
        ran = True

    with pytest.raises(CancellationRequested):
        await with_retry(never, policy=LLMRetryPolicy(), token=cancelled)
    assert not ran


# --------------------------------------------------------------------------- messages


def test_tool_call_positional_and_openai_shape() -> None:
    call = ToolCall("c1", "add", {"a": 1})
    assert call.parsed_arguments() == {"a": 1}
    assert call.to_openai_tool_call() == {
        "id": "c1",
        "type": "function",
        "function": {"name": "add", "arguments": '{"a": 1}'},
    }
    assert ToolCall("c2", "now").to_openai_tool_call()["function"]["arguments"] == "{}"
    raw = ToolCall("c3", "f", '{"x": ')  # what a model sent, kept verbatim
    assert raw.arguments == '{"x": '
    assert ToolCall(id="c1", name="add", arguments='{"a": 1}') == call
    with pytest.raises(TypeError):
        ToolCall("c4", "f", 42)  # type: ignore[arg-type]


def test_agent_message_and_type_names() -> None:
    msg = AgentMessage("assistant", "hi", [ToolCall("c1", "add", {"a": 1})], metadata={"k": 1})
    assert msg.to_openai_message() == {
        "role": "assistant",
        "content": "hi",
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}],
    }
    tool = AgentMessage("tool", "3", tool_call_id="c1", name="add")
    assert tool.to_openai_message() == {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add"}
    assert AgentMessage("user", "u").to_openai_message() == {"role": "user", "content": "u"}
    converted = msg.to_message()
    assert isinstance(converted, AssistantMessage) and converted.tool_calls[0].name == "add"
    assert isinstance(tool.to_message(), ToolResultMessage)
    assert AgentMessage.from_message(converted).to_openai_message() == msg.to_openai_message()
    msg.content = "edited"  # 0.11's record is mutable
    assert msg.to_openai_message()["content"] == "edited"
    assert set(typing.get_args(MessageRole)) == {"system", "user", "assistant", "tool"}
    assert RuntimeMessage(role="user", content="x") == {"role": "user", "content": "x"}


# --------------------------------------------------------------------------- tool helpers

ADD = ToolDefinition("add", "Add two numbers", {"type": "object", "properties": {"a": {"type": "integer"}}}, ("a",))
ECHO = ToolDefinition("echo", "Repeat the text")


async def test_build_registry_binds_handlers_by_name(db_path: str) -> None:
    def add(a: int) -> int:
        return a + 1

    registry = build_registry([ADD, ECHO], {"add": add, "echo": lambda text="": text, "unused": print})
    assert registry.names() == ["add", "echo"]
    assert registry.invoke("add", {"a": 1}) == 2
    with pytest.raises(ValueError, match="Missing handler for tool definition: echo"):
        build_registry([ADD, ECHO], {"add": add})
    with pytest.raises(ValueError, match="already registered: add"):
        build_registry([ADD, ADD], {"add": add})
    # The registry drives a real run.
    with ScriptedServer([tool_reply(("add", {"a": 41})), text_reply("42")]) as server:
        llm = create_llm_service_from_config(LLMProviderConfig(server.openai_base_url, "k", "test-model"))
        loop = StatefulAgentLoop(llm=llm, db_path=db_path, tool_registry=registry)
        try:
            sid = await loop.new_session_async()
            result = await loop.send("add", session_id=sid)
        finally:
            await loop.aclose()
            await llm.aclose()  # type: ignore[attr-defined]
        assert result.final_text == "42"
        answer = server.requests[1].messages[-1]
        assert isinstance(answer, ToolResultMessage) and answer.text == "42"


def test_format_tool_catalog() -> None:
    assert (
        format_tool_catalog([ADD, ECHO])
        == "# Available Tools\n\n- **add**: Add two numbers\n- **echo**: Repeat the text"
    )
    assert format_tool_catalog(ToolRegistry(), header="## Tools") == ""
    registry = build_registry([ECHO], {"echo": lambda text="": text})
    assert format_tool_catalog(registry, header="## Tools") == "## Tools\n\n- **echo**: Repeat the text"


def _names(definitions: list[ToolDefinition]) -> list[str]:
    return [d.name for d in definitions]


# Default tools this file may name: they ship in this version. The full list is read from
# default_tools() and TOOL_PRESETS, so tools added later need no change here.
CORE_0_11_ORDER = [
    "bash", "read_file", "write_file", "edit_file", "apply_patch", "glob", "grep", "load_skill", "request_user_input",
]  # fmt: skip
EXPLORE_0_11_ORDER = ["bash", "read_file", "glob", "grep", "load_skill", "request_user_input"]
FULL_0_11_ORDER_SHIPPED = [
    "write_file", "read_file", "edit_file", "apply_patch", "bash", "glob", "grep", "load_skill", "note_add",
    "note_update", "note_delete", "schedule_wakeup", "list_wakeups", "cancel_wakeup", "current_time",
    "request_user_input",
]  # fmt: skip


def test_default_tool_definitions_cover_every_default_tool_in_0_11_order() -> None:
    available = default_tools()
    every = _names(get_tool_definitions())
    assert sorted(every) == sorted(available)  # each default tool, once
    assert _names(get_tool_definitions(preset="full")) == every
    for preset, members in TOOL_PRESETS.items():
        assert set(_names(get_tool_definitions(preset=preset))) == set(members) & set(available), preset
    assert _names(get_tool_definitions(preset="core")) == CORE_0_11_ORDER
    assert _names(get_tool_definitions(preset="explore")) == EXPLORE_0_11_ORDER
    assert [n for n in every if n in FULL_0_11_ORDER_SHIPPED] == FULL_0_11_ORDER_SHIPPED
    # the same definitions the default registry offers the model
    registry = create_default_tool_registry(preset="core", bind=False)
    by_name = {d.name: d for d in get_tool_definitions(preset="core")}
    assert by_name == {d.name: d for d in registry.definitions()}


def test_default_tool_definitions_include_exclude_and_errors() -> None:
    every = _names(get_tool_definitions())
    assert _names(get_tool_definitions(preset="full", exclude=["current_time", "nope"])) == [
        n for n in every if n != "current_time"
    ]
    assert _names(get_tool_definitions(include=["current_time", "read_file", "cancel_wakeup", "read_file"])) == [
        "current_time",
        "read_file",
        "cancel_wakeup",
    ]
    assert _names(get_tool_definitions(preset="explore", include=["write_file", "bash"], exclude=["bash"])) == [
        "write_file"
    ]
    for name in (n for n in FULL_TOOL_NAMES if n not in default_tools()):
        with pytest.raises(ValueError, match="not available in this version"):
            get_tool_definitions(include=[name])
    with pytest.raises(ValueError, match="unknown default tool 'nope'"):
        get_tool_definitions(include=["read_file", "nope"])
    with pytest.raises(ValueError, match="unknown preset 'everything'; choose one of: core, explore, full"):
        get_tool_definitions(preset="everything")


def test_validate_tool_args_knows_every_default_tool() -> None:
    assert validate_tool_args("cancel_wakeup", {}) == "Error: missing required parameter(s): timer_id"
    assert validate_tool_args("cancel_wakeup", {"timer_id": 3}) is None
    assert validate_tool_args("read_file", {}) == "Error: missing required parameter(s): path"
    assert validate_tool_args("read_file", {"path": "notes.txt"}) is None
    assert validate_tool_args("read_file", {"path": 3}) == (
        "Error: invalid arguments for tool 'read_file': path: expected string, got integer"
    )
    assert validate_tool_args("read_file", ["notes.txt"]) == (  # type: ignore[arg-type]
        "Error: arguments for tool 'read_file' must be a JSON object, got list"
    )
    for name, fn_tool in default_tools().items():
        required = fn_tool.definition.parameters.get("required", [])
        if required:
            assert validate_tool_args(name, {}) == f"Error: missing required parameter(s): {', '.join(required)}"
    assert validate_tool_args("not_a_default_tool", {}) is None


def test_tool_protocols_and_result_envelope() -> None:
    result = ToolHandlerResult(True, "done")
    assert (result.ok, result.content, result.data) == (True, "done", {})

    def handler(args: dict[str, Any]) -> ToolHandlerResult:
        return ToolHandlerResult(bool(args), "x", {"n": len(args)})

    def validator(tool_name: str, args: dict[str, Any]) -> str | None:
        return None if args else f"{tool_name}: empty"

    assert isinstance(handler, ToolHandler) and isinstance(validator, ToolArgsValidator)
    assert not isinstance(42, ToolHandler)


# --------------------------------------------------------------------------- tokens and trimming


def test_token_estimates_over_dicts_and_messages() -> None:
    assert estimate_text_tokens(None) == 0 and estimate_text_tokens("") == 0
    assert estimate_text_tokens("abcd") == 1 and estimate_text_tokens("x" * 100) == 25
    dicts = [{"role": "user", "content": "u" * 400}, {"role": "assistant", "content": "a" * 40}]
    total = estimate_tokens(dicts)
    assert total == estimate_tokens(dicts[:1]) + estimate_tokens(dicts[1:]) and total > 110
    assert estimate_tokens([]) == 0
    objects = [UserMessage(content="u" * 400), AssistantMessage(content="a" * 40)]
    assert estimate_tokens(objects) == sum(estimate_tokens(m) for m in objects)
    assert abs(estimate_tokens(objects) - total) <= 4


def _history() -> list[dict[str, Any]]:
    call = ToolCall("c1", "lookup", {"q": "x"})
    return [
        {"role": "system", "content": "s" * 40},
        {"role": "user", "content": "old question " * 40},
        message_to_dict(AssistantMessage(content="", tool_calls=(call,))),
        {"role": "tool", "tool_call_id": "c1", "content": "r" * 400},
        {"role": "assistant", "content": "old answer " * 40},
        {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "q3"},
        {"role": "assistant", "content": "a3"},
    ]


def test_trim_history_keeps_system_and_last_exchanges() -> None:
    history = _history()
    snapshot = [dict(m) for m in history]
    assert trim_history(history, 10_000) is history
    protected = [history[0], *history[5:]]  # system prompt and the last two exchanges
    trimmed = trim_history(history, estimate_tokens(protected))
    assert trimmed == protected
    assert trim_history(history, 0) == protected  # kept whatever the budget
    assert history == snapshot  # the input is not modified
    assert trim_history(history, 60, keep_system=False) == history[5:]
    assert trim_history(history, 0, keep_last_n=1) == [history[0], *history[7:]]


def test_trim_history_never_starts_with_orphaned_tool_results() -> None:
    history = _history()
    # Dropping only the first user message would leave the kept part starting with the
    # assistant's tool call; a budget between that and the next cut must not keep the
    # tool result without its call.
    after_call = estimate_tokens(history[:1]) + estimate_tokens(history[3:])
    for budget in range(after_call - 5, after_call + 5):
        trimmed = trim_history(history, budget)
        first_kept = trimmed[1]
        assert first_kept["role"] != "tool"
        if any(m["role"] == "tool" for m in trimmed):
            assert history[2] in trimmed
    for keep_last_n in (0, 1, 2, 5):
        for budget in range(0, 400, 7):
            trimmed = trim_history(history, budget, keep_last_n=keep_last_n)
            roles = [m["role"] for m in trimmed]
            assert "tool" not in roles or roles[roles.index("tool") - 1] == "assistant"
