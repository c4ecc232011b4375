"""Building providers from the environment, a .env file or an LLMProviderConfig."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from power_loop import ConfigurationError, LLMProviderConfig, OfflineLLM
from power_loop.providers.anthropic import AnthropicMessagesService
from power_loop.providers.factory import (
    create_llm_service_from_config,
    create_llm_service_from_env,
    provider_config_from_env,
)
from power_loop.providers.openai import OpenAIChatService

REQUIRED = ("BASE_URL", "API_KEY", "MODEL")


def set_required(monkeypatch: pytest.MonkeyPatch, prefix: str = "POWER_LOOP", tag: str = "main") -> None:
    monkeypatch.setenv(f"{prefix}_BASE_URL", f"http://127.0.0.1:9/{tag}")
    monkeypatch.setenv(f"{prefix}_API_KEY", f"key-{tag}")
    monkeypatch.setenv(f"{prefix}_MODEL", f"model-{tag}")


def write_dotenv(text: str) -> Path:
    """Write ``.env`` into the current directory (the test's tmp_path)."""
    path = Path.cwd() / ".env"
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- environment


def test_reads_power_loop_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    service = create_llm_service_from_env()
    assert isinstance(service, OpenAIChatService)
    assert service.provider == "openai"
    assert service.base_url == "http://127.0.0.1:9/main"
    assert service.api_key == "key-main"
    assert service.model == "model-main"


def test_defaults_when_only_required_variables_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    service = create_llm_service_from_env()
    assert isinstance(service, OpenAIChatService)
    assert service.timeout_s == 60.0
    assert service.max_retries == 3
    assert service.max_tokens is None
    assert service.temperature is None
    assert service.context_window is None


def test_falls_back_to_openai_compat_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch, prefix="OPENAI_COMPAT", tag="compat")
    service = create_llm_service_from_env()
    assert isinstance(service, OpenAIChatService)
    assert service.base_url == "http://127.0.0.1:9/compat"
    assert service.api_key == "key-compat"
    assert service.model == "model-compat"


def test_power_loop_variables_win_over_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch, prefix="OPENAI_COMPAT", tag="compat")
    monkeypatch.setenv("POWER_LOOP_MODEL", "model-main")
    monkeypatch.setenv("OPENAI_COMPAT_MAX_TOKENS", "111")
    monkeypatch.setenv("POWER_LOOP_MAX_TOKENS", "222")
    service = create_llm_service_from_env()
    assert isinstance(service, OpenAIChatService)
    assert service.model == "model-main"
    assert service.max_tokens == 222
    # variables only the fallback sets still come from the fallback
    assert service.base_url == "http://127.0.0.1:9/compat"
    assert service.api_key == "key-compat"


def test_blank_primary_value_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch, prefix="OPENAI_COMPAT", tag="compat")
    monkeypatch.setenv("POWER_LOOP_MODEL", "   ")
    service = create_llm_service_from_env()
    assert service.model == "model-compat"


def test_values_are_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("POWER_LOOP_MODEL", "  gpt-test \n")
    assert create_llm_service_from_env().model == "gpt-test"


@pytest.mark.parametrize("value", ["anthropic", "Anthropic", "ANTHROPIC"])
def test_provider_anthropic(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("POWER_LOOP_PROVIDER", value)
    service = create_llm_service_from_env()
    assert isinstance(service, AnthropicMessagesService)
    assert service.provider == "anthropic"
    assert service.model == "model-main"
    assert service.base_url == "http://127.0.0.1:9/main"
    assert service.api_key == "key-main"


def test_provider_openai_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("POWER_LOOP_PROVIDER", "openai")
    assert isinstance(create_llm_service_from_env(), OpenAIChatService)


def test_provider_from_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("OPENAI_COMPAT_PROVIDER", "anthropic")
    assert isinstance(create_llm_service_from_env(), AnthropicMessagesService)


def test_unknown_provider_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("POWER_LOOP_PROVIDER", "gemini")
    with pytest.raises(ConfigurationError, match="POWER_LOOP_PROVIDER") as info:
        create_llm_service_from_env()
    assert "gemini" in str(info.value)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_numeric_variables_are_parsed(monkeypatch: pytest.MonkeyPatch, provider: str) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("POWER_LOOP_PROVIDER", provider)
    monkeypatch.setenv("POWER_LOOP_TIMEOUT_S", "12.5")
    monkeypatch.setenv("POWER_LOOP_MAX_TOKENS", "256")
    monkeypatch.setenv("POWER_LOOP_TEMPERATURE", "0.25")
    monkeypatch.setenv("POWER_LOOP_MAX_RETRIES", "0")
    monkeypatch.setenv("POWER_LOOP_CONTEXT_WINDOW", " 8192 ")
    service = create_llm_service_from_env()
    assert isinstance(service, (OpenAIChatService, AnthropicMessagesService))
    assert service.timeout_s == 12.5
    assert isinstance(service.timeout_s, float)
    assert service.max_tokens == 256
    assert isinstance(service.max_tokens, int)
    assert service.temperature == 0.25
    assert service.max_retries == 0
    assert service.context_window == 8192


def test_integer_timeout_is_a_float(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("POWER_LOOP_TIMEOUT_S", "30")
    config = provider_config_from_env()
    assert config.timeout_s == 30.0
    assert isinstance(config.timeout_s, float)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("TIMEOUT_S", "ten"),
        ("MAX_TOKENS", "12.5"),
        ("MAX_TOKENS", "1e3"),
        ("TEMPERATURE", "warm"),
        ("MAX_RETRIES", "three"),
        ("CONTEXT_WINDOW", "128k"),
    ],
)
def test_malformed_number_names_the_variable(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv(f"POWER_LOOP_{key}", value)
    with pytest.raises(ValueError, match=f"POWER_LOOP_{key}") as info:
        create_llm_service_from_env()
    assert isinstance(info.value, ConfigurationError)
    assert value in str(info.value)


def test_malformed_fallback_number_names_the_variable_that_was_set(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("OPENAI_COMPAT_MAX_TOKENS", "lots")
    with pytest.raises(ConfigurationError, match="OPENAI_COMPAT_MAX_TOKENS"):
        create_llm_service_from_env()


@pytest.mark.parametrize(
    ("key", "value"),
    [("TIMEOUT_S", "0"), ("TIMEOUT_S", "-5"), ("MAX_TOKENS", "0"), ("MAX_RETRIES", "-1"), ("CONTEXT_WINDOW", "-1")],
)
def test_out_of_range_numbers_are_rejected(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv(f"POWER_LOOP_{key}", value)
    with pytest.raises(ConfigurationError):
        create_llm_service_from_env()


@pytest.mark.parametrize("build", ["env", "config"])
def test_nan_timeout_is_rejected(monkeypatch: pytest.MonkeyPatch, build: str) -> None:
    if build == "config":
        with pytest.raises(ConfigurationError, match="timeout_s"):
            LLMProviderConfig(model="m", timeout_s=math.nan)
        return
    set_required(monkeypatch)
    monkeypatch.setenv("POWER_LOOP_TIMEOUT_S", "nan")
    with pytest.raises(ConfigurationError, match="(?i)timeout"):
        create_llm_service_from_env()


@pytest.mark.parametrize("missing", REQUIRED)
def test_missing_required_variable_names_it(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    set_required(monkeypatch)
    monkeypatch.delenv(f"POWER_LOOP_{missing}")
    with pytest.raises(ValueError, match=f"POWER_LOOP_{missing}") as info:
        create_llm_service_from_env()
    assert isinstance(info.value, ConfigurationError)
    # the message also says where else it looked
    assert f"OPENAI_COMPAT_{missing}" in str(info.value)


def test_nothing_configured_names_a_variable() -> None:
    with pytest.raises(ConfigurationError, match=r"POWER_LOOP_(BASE_URL|API_KEY|MODEL)"):
        create_llm_service_from_env()


def test_configuration_error_is_a_value_error() -> None:
    assert issubclass(ConfigurationError, ValueError)


# --------------------------------------------------------------------------- .env


def test_dotenv_in_current_directory_is_read() -> None:
    write_dotenv(
        "POWER_LOOP_BASE_URL=http://127.0.0.1:9/dotenv\n"
        "POWER_LOOP_API_KEY=key-dotenv\n"
        "POWER_LOOP_MODEL=model-dotenv\n"
        "POWER_LOOP_PROVIDER=anthropic\n"
        "POWER_LOOP_MAX_TOKENS=77\n"
    )
    service = create_llm_service_from_env()
    assert isinstance(service, AnthropicMessagesService)
    assert service.base_url == "http://127.0.0.1:9/dotenv"
    assert service.api_key == "key-dotenv"
    assert service.model == "model-dotenv"
    assert service.max_tokens == 77


def test_process_environment_wins_over_dotenv(monkeypatch: pytest.MonkeyPatch) -> None:
    write_dotenv(
        "POWER_LOOP_BASE_URL=http://127.0.0.1:9/dotenv\nPOWER_LOOP_API_KEY=key-dotenv\nPOWER_LOOP_MODEL=model-dotenv\n"
    )
    monkeypatch.setenv("POWER_LOOP_MODEL", "model-env")
    service = create_llm_service_from_env()
    assert service.model == "model-env"
    assert service.api_key == "key-dotenv"  # what the environment lacks still comes from .env


def test_reading_dotenv_does_not_modify_the_environment() -> None:
    write_dotenv(
        "POWER_LOOP_BASE_URL=http://127.0.0.1:9/dotenv\n"
        "POWER_LOOP_API_KEY=key-dotenv\n"
        "POWER_LOOP_MODEL=model-dotenv\n"
        "UNRELATED_DOTENV_ONLY_VARIABLE=1\n"
    )
    before = dict(os.environ)
    service = create_llm_service_from_env()
    assert service.model == "model-dotenv"
    assert dict(os.environ) == before
    assert "POWER_LOOP_MODEL" not in os.environ
    assert "UNRELATED_DOTENV_ONLY_VARIABLE" not in os.environ


def test_dotenv_missing_variable_still_named() -> None:
    write_dotenv("POWER_LOOP_BASE_URL=http://127.0.0.1:9/x\nPOWER_LOOP_MODEL=m\n")
    with pytest.raises(ConfigurationError, match="POWER_LOOP_API_KEY"):
        create_llm_service_from_env()


def test_env_file_none_skips_dotenv() -> None:
    write_dotenv("POWER_LOOP_BASE_URL=http://127.0.0.1:9/x\nPOWER_LOOP_API_KEY=k\nPOWER_LOOP_MODEL=m\n")
    with pytest.raises(ConfigurationError, match="POWER_LOOP_"):
        create_llm_service_from_env(env_file=None)


def test_explicit_env_file_path(tmp_path: Path) -> None:
    other = tmp_path / "sub" / "custom.env"
    other.parent.mkdir()
    other.write_text("POWER_LOOP_BASE_URL=http://127.0.0.1:9/x\nPOWER_LOOP_API_KEY=k\nPOWER_LOOP_MODEL=from-file\n")
    assert create_llm_service_from_env(env_file=other).model == "from-file"


def test_missing_env_file_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    assert create_llm_service_from_env(env_file="does-not-exist.env").model == "model-main"


# --------------------------------------------------------------------------- offline fallback


def test_offline_fallback_when_nothing_configured() -> None:
    service = create_llm_service_from_env(offline_fallback=True)
    assert isinstance(service, OfflineLLM)
    assert service.provider == "offline"


def test_offline_fallback_not_used_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    service = create_llm_service_from_env(offline_fallback=True)
    assert isinstance(service, OpenAIChatService)


def test_offline_fallback_not_used_when_model_set_but_incomplete(monkeypatch: pytest.MonkeyPatch) -> None:
    """A half-configured provider is an error, not a silent switch to the offline model."""
    monkeypatch.setenv("POWER_LOOP_MODEL", "m")
    with pytest.raises(ConfigurationError, match="POWER_LOOP_BASE_URL"):
        create_llm_service_from_env(offline_fallback=True)


def test_offline_fallback_respects_dotenv() -> None:
    write_dotenv("POWER_LOOP_BASE_URL=http://127.0.0.1:9/x\nPOWER_LOOP_API_KEY=k\nPOWER_LOOP_MODEL=dotenv-model\n")
    service = create_llm_service_from_env(offline_fallback=True)
    assert isinstance(service, OpenAIChatService)
    assert service.model == "dotenv-model"


# --------------------------------------------------------------------------- custom prefixes


@pytest.fixture
def custom_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(("PLTEST_APP_", "PLTEST_LEGACY_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_custom_prefix(custom_env: pytest.MonkeyPatch) -> None:
    set_required(custom_env, prefix="PLTEST_APP", tag="app")
    set_required(custom_env, prefix="POWER_LOOP", tag="ignored")
    custom_env.setenv("PLTEST_APP_PROVIDER", "anthropic")
    service = create_llm_service_from_env(prefix="PLTEST_APP")
    assert isinstance(service, AnthropicMessagesService)
    assert service.model == "model-app"
    assert service.base_url == "http://127.0.0.1:9/app"


def test_custom_prefix_missing_names_custom_variable(custom_env: pytest.MonkeyPatch) -> None:
    set_required(custom_env, prefix="POWER_LOOP", tag="ignored")
    with pytest.raises(ConfigurationError, match="PLTEST_APP_"):
        create_llm_service_from_env(prefix="PLTEST_APP")


def test_custom_fallback_prefix(custom_env: pytest.MonkeyPatch) -> None:
    set_required(custom_env, prefix="PLTEST_LEGACY", tag="legacy")
    set_required(custom_env, prefix="OPENAI_COMPAT", tag="compat")
    custom_env.setenv("PLTEST_APP_MODEL", "model-app")
    service = create_llm_service_from_env(prefix="PLTEST_APP", fallback_prefix="PLTEST_LEGACY")
    assert service.model == "model-app"
    assert isinstance(service, OpenAIChatService)
    assert service.base_url == "http://127.0.0.1:9/legacy"
    assert service.api_key == "key-legacy"


def test_fallback_prefix_none_disables_fallback(custom_env: pytest.MonkeyPatch) -> None:
    set_required(custom_env, prefix="OPENAI_COMPAT", tag="compat")
    with pytest.raises(ConfigurationError, match="POWER_LOOP_") as info:
        create_llm_service_from_env(fallback_prefix=None)
    assert "OPENAI_COMPAT" not in str(info.value)


# --------------------------------------------------------------------------- LLMProviderConfig


def test_config_defaults() -> None:
    config = LLMProviderConfig(model="m")
    assert config.provider == "openai"
    assert config.timeout_s == 60.0
    assert config.max_retries == 3
    assert config.stream is True
    assert config.base_url is None


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"model": ""}, "model"),
        ({"model": "m", "provider": "gemini"}, "gemini"),
        ({"model": "m", "timeout_s": -1.0}, "timeout_s"),
        ({"model": "m", "timeout_s": 0}, "timeout_s"),
        ({"model": "m", "max_retries": -1}, "max_retries"),
        ({"model": "m", "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "context_window": 0}, "context_window"),
    ],
)
def test_config_validation(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ConfigurationError, match=pattern):
        LLMProviderConfig(**kwargs)  # type: ignore[arg-type]


def test_config_is_frozen() -> None:
    import dataclasses

    config = LLMProviderConfig(model="m")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.model = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("provider", "cls"), [("openai", OpenAIChatService), ("anthropic", AnthropicMessagesService)])
def test_create_from_config(provider: str, cls: type) -> None:
    config = LLMProviderConfig(
        model="cfg-model",
        base_url="http://127.0.0.1:9",
        api_key="cfg-key",
        provider=provider,  # type: ignore[arg-type]
        timeout_s=5.0,
        max_tokens=100,
        temperature=0.5,
        max_retries=1,
        context_window=4096,
        stream=False,
        default_headers={"x-test": "1"},
    )
    service = create_llm_service_from_config(config)
    assert isinstance(service, cls)
    assert service.provider == provider
    assert service.model == "cfg-model"
    assert service.base_url == "http://127.0.0.1:9"  # type: ignore[attr-defined]
    assert service.api_key == "cfg-key"  # type: ignore[attr-defined]
    assert service.timeout_s == 5.0  # type: ignore[attr-defined]
    assert service.max_tokens == 100  # type: ignore[attr-defined]
    assert service.temperature == 0.5  # type: ignore[attr-defined]
    assert service.max_retries == 1
    assert service.context_window == 4096
    assert service.stream is False  # type: ignore[attr-defined]


def test_provider_config_from_env_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    set_required(monkeypatch)
    monkeypatch.setenv("POWER_LOOP_TEMPERATURE", "0")
    config = provider_config_from_env()
    assert config == LLMProviderConfig(
        model="model-main", base_url="http://127.0.0.1:9/main", api_key="key-main", temperature=0.0
    )


# --------------------------------------------------------------------------- lazy SDK imports


def _run_python(code: str, extra_env: dict[str, str]) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POWER_LOOP_", "OPENAI_COMPAT_"))}
    env.update(extra_env)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=os.getcwd(),
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_import_power_loop_imports_no_sdk() -> None:
    out = _run_python("import sys, power_loop; print('openai' in sys.modules, 'anthropic' in sys.modules)", {})
    assert out == "False False"


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_creating_a_service_imports_no_sdk(provider: str) -> None:
    code = (
        "import sys, power_loop\n"
        "service = power_loop.create_llm_service_from_env()\n"
        "print(type(service).__name__, 'openai' in sys.modules, 'anthropic' in sys.modules)\n"
    )
    out = _run_python(
        code,
        {
            "POWER_LOOP_BASE_URL": "http://127.0.0.1:9",
            "POWER_LOOP_API_KEY": "k",
            "POWER_LOOP_MODEL": "m",
            "POWER_LOOP_PROVIDER": provider,
        },
    )
    expected = "AnthropicMessagesService" if provider == "anthropic" else "OpenAIChatService"
    assert out == f"{expected} False False"


def test_creating_a_service_from_config_imports_no_sdk() -> None:
    code = (
        "import sys, power_loop\n"
        "for p in ('openai', 'anthropic'):\n"
        "    power_loop.create_llm_service_from_config(power_loop.LLMProviderConfig(model='m', provider=p))\n"
        "print('openai' in sys.modules, 'anthropic' in sys.modules)\n"
    )
    assert _run_python(code, {}) == "False False"
