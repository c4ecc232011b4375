"""Prepared requests when an SDK release renames a private hook they use.

:class:`~power_loop.providers._common.PreparedRequests` re-sends a request the SDK prepared
once, through private SDK names. A new SDK release may rename any of them. Each test here
simulates exactly that on the real, installed SDK: every reference the SDK's own code makes to
the name (attribute and global lookups, stores in ``__init__``, class and module attributes)
is moved to a new name, so the SDK keeps working while the old name is gone. The private
``_models`` module is hidden from imports. A hook may also keep its name but take other
arguments. A send must then still work through the SDK's public ``client.post``, look the same
on the wire as before, and map errors as before.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from power_loop import ConfigurationError, LLMRateLimitError, LLMStatusError
from power_loop.messages import UserMessage
from power_loop.providers.base import LLMRequest
from power_loop.testing import ScriptedServer, error_reply, text_reply

from .conftest import PROTOCOLS, ServiceFactory, make_service

SDKS = {"openai": "openai", "anthropic": "anthropic"}

# Every private SDK name PreparedRequests (providers/_common.py) relies on. These are required:
# without any of them, every request goes through the SDK's public ``post``.
REQUIRED_HOOKS = (
    "_prepare_options",
    "_build_request",
    "_prepare_request",
    "_make_status_error_from_response",
    "_client",
    "_idempotency_header",
    "FinalRequestOptions",  # a public class of the private ``_models`` module
)
# Optional: used when present (the send step, the "platform headers resolved" flag), or
# checked to be unset (per-request auth the SDK may offer).
OPTIONAL_HOOKS = ("_send_request", "_platform", "_workload_identity_auth", "_middleware", "_api_key_provider")
HOOKS = REQUIRED_HOOKS + OPTIONAL_HOOKS
SUFFIX = "_renamed_by_a_new_release"


def hi(text: str = "hi", **kwargs: Any) -> LLMRequest:
    return LLMRequest(messages=[UserMessage(content=text)], **kwargs)


# ---------------------------------------------------------------------------- renaming


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _renamed_code(code: types.CodeType, old: str, new: str) -> types.CodeType:
    consts = tuple(
        _renamed_code(c, old, new) if isinstance(c, types.CodeType) else new if c == old else c for c in code.co_consts
    )
    names = tuple(new if n == old else n for n in code.co_names)
    return code.replace(co_consts=consts, co_names=names)


def _functions(obj: Any, seen: set[int]) -> Iterator[types.FunctionType]:
    """Functions reachable from a class or module member: methods, properties, wrappers."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, types.FunctionType):
        yield obj
        wrapped = getattr(obj, "__wrapped__", None)
        if wrapped is not None:
            yield from _functions(wrapped, seen)
        for cell in obj.__closure__ or ():
            try:
                content = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if isinstance(content, types.FunctionType):
                yield from _functions(content, seen)
    elif isinstance(obj, (classmethod, staticmethod)):
        yield from _functions(obj.__func__, seen)
    elif isinstance(obj, property):
        for part in (obj.fget, obj.fset, obj.fdel):
            if part is not None:
                yield from _functions(part, seen)
    elif isinstance(obj, functools.cached_property):
        yield from _functions(obj.func, seen)


def _sdk_modules(sdk: str) -> list[types.ModuleType]:
    return [m for name, m in list(sys.modules.items()) if (name == sdk or name.startswith(sdk + ".")) and m]


def mentions(sdk: str, name: str) -> bool:
    """Whether the SDK's code or classes use ``name`` at all (older releases lack some hooks)."""
    seen: set[int] = set()
    for module in _sdk_modules(sdk):
        if name in vars(module):
            return True
        for member in list(vars(module).values()):
            if isinstance(member, type) and member.__module__.startswith(sdk):
                if name in vars(member):
                    return True
                funcs = [f for v in list(vars(member).values()) for f in _functions(v, seen)]
            else:
                funcs = list(_functions(member, seen))
            if any(name in c.co_names for f in funcs for c in _codes(f.__code__)):
                return True
    return False


def rename_in_sdk(monkeypatch: pytest.MonkeyPatch, sdk: str, old: str) -> None:
    """Simulate an SDK release in which the name ``old`` is called something else: the SDK's
    code, classes and modules use the new name, and nothing answers to the old one."""
    new = old + SUFFIX
    seen: set[int] = set()
    patched = 0
    for module in _sdk_modules(sdk):
        members = list(vars(module).items())
        for name, member in members:
            if name == old:
                monkeypatch.setattr(module, new, member, raising=False)
                monkeypatch.delattr(module, old)
            if isinstance(member, type) and member.__module__.startswith(sdk):
                if old in vars(member):
                    monkeypatch.setattr(member, new, vars(member)[old], raising=False)
                    monkeypatch.delattr(member, old)
                candidates = [f for v in list(vars(member).values()) for f in _functions(v, seen)]
            else:
                candidates = list(_functions(member, seen))
            for func in candidates:
                if not func.__module__ or not func.__module__.startswith(sdk):
                    continue
                if any(old in c.co_names or old in c.co_consts for c in _codes(func.__code__)):
                    monkeypatch.setattr(func, "__code__", _renamed_code(func.__code__, old, new))
                    patched += 1
    assert patched, f"{sdk} never mentions {old}: the rename simulated nothing"


def hide_models_module(monkeypatch: pytest.MonkeyPatch, sdk: str) -> None:
    """The private ``<sdk>._models`` module moved: importing it fails (the SDK keeps its
    already imported references)."""
    monkeypatch.setitem(sys.modules, f"{sdk}._models", None)  # type: ignore[arg-type]
    with pytest.raises(ImportError):
        importlib.import_module(f"{sdk}._models")


# ---------------------------------------------------------------------------- fixtures


_WARMED: set[str] = set()


@pytest.fixture(autouse=True)
async def _sdk_fully_imported() -> None:
    """One real send per SDK first, so every SDK module on the request path (some are imported
    lazily by the first request) is imported before a test renames names in them."""
    if _WARMED:
        return
    with ScriptedServer() as server:
        for protocol in PROTOCOLS:
            service = make_service(protocol, server)
            for stream in (True, False):
                await service.complete(hi(stream=stream))
                await service.complete(hi(stream=stream))
            await service.aclose()
    _WARMED.add("done")


def wire_headers(request: Any) -> dict[str, str]:
    """A request's headers, but the body length (bodies differ by their user text)."""
    return {k: v for k, v in request.headers.items() if k != "content-length"}


async def _reference_headers(protocol: str, server: ScriptedServer) -> dict[str, str]:
    """The headers of a request from an untouched SDK (through its public post)."""
    service = make_service(protocol, server, prepared_requests=False)
    server.push(text_reply("reference"))
    try:
        assert (await service.complete(hi())).message.text == "reference"
    finally:
        await service.aclose()
    return wire_headers(server.requests[-1])


# ---------------------------------------------------------------------------- tests


@pytest.mark.parametrize("hook", HOOKS)
async def test_a_renamed_private_hook_still_sends_correctly(
    scripted_server: ScriptedServer,
    protocol: str,
    hook: str,
    llm_factory: ServiceFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sdk = SDKS[protocol]
    reference = await _reference_headers(protocol, scripted_server)
    before = scripted_server.request_count
    if not mentions(sdk, hook):
        pytest.skip(f"this {sdk} release does not use {hook}")
    rename_in_sdk(monkeypatch, sdk, hook)

    scripted_server.push(
        text_reply("one"),
        text_reply("two"),
        error_reply(429, "slow down", retry_after=2),
        error_reply(400, "bad shape"),
        text_reply("three"),
        text_reply("four"),
    )
    llm = llm_factory(protocol, scripted_server)
    assert (await llm.complete(hi("a"))).message.text == "one"
    assert (await llm.complete(hi("b"))).message.text == "two"
    with pytest.raises(LLMRateLimitError) as limited:
        await llm.complete(hi("c"))
    assert limited.value.status_code == 429 and limited.value.retry_after == 2.0
    with pytest.raises(LLMStatusError) as rejected:
        await llm.complete(hi("d"))
    assert rejected.value.status_code == 400 and not rejected.value.retryable
    assert "bad shape" in str(rejected.value) and rejected.value.request_id == f"req_scripted_{before + 4}"
    assert (await llm.complete(hi("e", stream=False))).message.text == "three"
    assert (await llm.complete(hi("f"))).message.text == "four"

    if hook in REQUIRED_HOOKS:  # the prepared path gave way to the SDK's public post
        assert llm._holder._prepared is None  # type: ignore[attr-defined]
    sent = scripted_server.requests[before:]
    assert [r.last_user_text for r in sent] == ["a", "b", "c", "d", "e", "f"]
    assert [r.stream for r in sent] == [True, True, True, True, False, True]
    for request in sent:
        assert request.path == sent[0].path
        assert request.body["model"] == "test-model"
        assert wire_headers(request) == reference, f"request for {request.last_user_text!r} differs on the wire"


@pytest.mark.parametrize("hook", ["_prepare_options", "_build_request", "_prepare_request"])
async def test_a_private_hook_that_changed_shape_still_sends_correctly(
    scripted_server: ScriptedServer,
    protocol: str,
    hook: str,
    llm_factory: ServiceFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A release moves the hook to a new name and reuses the old one for something with other
    arguments: the name is still there, but calling it as before raises ``TypeError``."""
    sdk = SDKS[protocol]
    reference = await _reference_headers(protocol, scripted_server)
    before = scripted_server.request_count
    rename_in_sdk(monkeypatch, sdk, hook)

    def reshaped(self: Any, options: Any, *, attempt: int) -> Any:
        raise AssertionError("never called with the new arguments here")

    client_class = getattr(importlib.import_module(sdk), "AsyncAnthropic" if protocol == "anthropic" else "AsyncOpenAI")
    monkeypatch.setattr(client_class, hook, reshaped, raising=False)

    scripted_server.push(text_reply("one"), text_reply("two"), error_reply(429, "slow down"), text_reply("three"))
    llm = llm_factory(protocol, scripted_server)
    assert (await llm.complete(hi("a"))).message.text == "one"
    assert (await llm.complete(hi("b"))).message.text == "two"
    assert llm._holder._prepared is None  # type: ignore[attr-defined]
    with pytest.raises(LLMRateLimitError):
        await llm.complete(hi("c"))
    assert (await llm.complete(hi("d", stream=False))).message.text == "three"
    sent = scripted_server.requests[before:]
    assert [r.last_user_text for r in sent] == ["a", "b", "c", "d"]
    for request in sent:
        assert wire_headers(request) == reference


async def test_a_hidden_models_module_still_sends_correctly(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = await _reference_headers(protocol, scripted_server)
    before = scripted_server.request_count
    hide_models_module(monkeypatch, SDKS[protocol])
    scripted_server.push(text_reply("one"), text_reply("two"), error_reply(500, "boom"), text_reply("three"))
    llm = llm_factory(protocol, scripted_server)
    assert (await llm.complete(hi("a"))).message.text == "one"
    assert (await llm.complete(hi("b"))).message.text == "two"
    with pytest.raises(LLMStatusError) as failed:
        await llm.complete(hi("c"))
    assert failed.value.status_code == 500 and failed.value.retryable
    assert (await llm.complete(hi("d"))).message.text == "three"
    assert llm._holder._prepared is None  # type: ignore[attr-defined]
    for request in scripted_server.requests[before:]:
        assert wire_headers(request) == reference


async def test_the_prepared_path_is_used_while_every_hook_is_there(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    """The control for the tests above: untouched SDKs take the prepared path."""
    reference = await _reference_headers(protocol, scripted_server)
    scripted_server.push(text_reply("one"), text_reply("two"))
    llm = llm_factory(protocol, scripted_server)
    await llm.complete(hi("a"))
    await llm.complete(hi("b"))
    assert llm._holder._prepared is not None and llm._holder._prepared._templates  # type: ignore[attr-defined]
    assert wire_headers(scripted_server.requests[-1]) == reference


async def test_the_sdks_aiohttp_client_as_transport(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory
) -> None:
    """``http_transport="aiohttp"``: the SDK's own aiohttp-based client, prepared requests and
    error mapping unchanged."""
    pytest.importorskip("aiohttp")
    scripted_server.push(text_reply("one"), text_reply("two"), error_reply(429, "slow down"), text_reply("three"))
    llm = llm_factory(protocol, scripted_server, http_transport="aiohttp")
    assert (await llm.complete(hi("a"))).message.text == "one"
    assert (await llm.complete(hi("b", stream=False))).message.text == "two"
    with pytest.raises(LLMRateLimitError):
        await llm.complete(hi("c"))
    assert (await llm.complete(hi("d"))).message.text == "three"
    assert llm._holder._prepared is not None  # type: ignore[attr-defined]
    first, last = scripted_server.requests[0], scripted_server.requests[-1]
    assert first.headers == last.headers


def test_an_unknown_transport_is_refused_at_construction(scripted_server: ScriptedServer) -> None:
    with pytest.raises(ValueError, match="'native', 'httpx' or 'aiohttp'"):
        make_service("openai", scripted_server, http_transport="requests")


async def test_the_aiohttp_transport_without_its_extra_says_what_to_install(
    scripted_server: ScriptedServer, protocol: str, llm_factory: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without aiohttp the SDKs export a placeholder client that raises when built."""
    sdk = importlib.import_module(SDKS[protocol])

    class Missing:
        def __init__(self, **_options: Any) -> None:
            raise RuntimeError("To use the aiohttp client you must have installed the package with the `aiohttp` extra")

    monkeypatch.setattr(sdk, "DefaultAioHttpClient", Missing)
    llm = llm_factory(protocol, scripted_server, http_transport="aiohttp")
    with pytest.raises(ConfigurationError, match=r"pip install power-loop\[aiohttp\]") as info:
        await llm.complete(hi())
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("library_name", ["httpx", "httpx2"])
async def test_the_native_transport_speaks_the_library_of_its_sdk(
    scripted_server: ScriptedServer, library_name: str
) -> None:
    # An SDK built on one HTTP library while the other is installed too (an older SDK beside a
    # package that brings httpx2): the transport, the client and the raw response all belong
    # to the SDK's library, and a real request goes through.
    library = pytest.importorskip(library_name)
    from power_loop.providers._common import build_http_client, http_response_class, sdk_http_library

    class Client(library.AsyncClient):  # type: ignore[misc,name-defined]
        pass

    sdk = types.ModuleType(f"fake_sdk_on_{library_name}")
    sdk.DefaultAsyncHttpxClient = Client  # type: ignore[attr-defined]
    assert sdk_http_library(sdk) is library
    assert http_response_class(sdk) is library.Response
    scripted_server.push(text_reply("hello"))
    async with build_http_client(sdk, "native", 10.0) as client:
        assert isinstance(client, library.AsyncClient)
        response = await client.post(
            f"{scripted_server.openai_base_url}/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        )
        assert isinstance(response, library.Response) and response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "hello"
