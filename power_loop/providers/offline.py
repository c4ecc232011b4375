"""A built-in, deterministic, offline model for demos and examples.

It is not intelligent. It follows a few fixed rules so that examples and ``power-loop demo``
run end to end with no provider configured:

1. After tool results, it reports them: ``"<tool> returned: <result>"``.
2. When the user writes an offered tool's name with call syntax, ``get_weather(city="Paris")``
   or ``add(2, 3)``, it calls that tool with those arguments (every such call written in the
   message, in one turn, in the order written). When the message contains an
   arithmetic expression and a tool with an ``expression`` parameter is offered, it calls it.
3. ``"my <thing> is <value>"`` is acknowledged; ``"what is my <thing>?"`` is answered from the
   conversation.
4. A request to summarize gets a summary of the user's messages.
5. Anything else is echoed back.

Responses stream word by word and report usage estimated at four characters per token.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

from ..messages import AssistantMessage, Message, ToolCall, ToolResultMessage, Usage, UserMessage, content_text
from ..tools.definition import ToolDefinition
from .base import LLMRequest, LLMResponse, StreamCallbacks

__all__ = ["OfflineLLM"]

_FACT = re.compile(r"\bmy ([a-z][a-z ]{0,40}?) (?:is|are) ([^.!?\n]+)", re.IGNORECASE)
_QUESTION = re.compile(r"\bwhat(?: is|'s| are) my ([a-z][a-z ]{0,40}?)\s*\??$", re.IGNORECASE)
_ARITHMETIC = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?(?:\s*[-+*/]\s*\d+(?:\.\d+)?)+)")


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)


class OfflineLLM:
    """A rule-based stand-in model that needs no network (see the module docs).

    Args:
        delay_s: Pause before answering, to make streaming visible in demos.
    """

    provider = "offline"
    max_retries = 0

    def __init__(self, *, model: str = "power-loop-offline", delay_s: float = 0.0, context_window: int = 32_768):
        self.model = model
        self.delay_s = delay_s
        self.context_window: int | None = context_window

    def __repr__(self) -> str:
        return f"OfflineLLM(model={self.model!r})"

    async def complete(self, request: LLMRequest, *, callbacks: StreamCallbacks | None = None) -> LLMResponse:
        """Answer ``request`` by the rules in the module docs."""
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        message = self._answer(request)
        if callbacks and callbacks.on_stream_start:
            callbacks.on_stream_start()
        if callbacks and callbacks.on_text_delta and message.text:
            for word in re.findall(r"\S+\s*", message.text):
                callbacks.on_text_delta(word)
        if callbacks and callbacks.on_stream_end:
            callbacks.on_stream_end()
        prompt_chars = len(request.system_prompt or "") + sum(len(content_text(m.content)) for m in request.messages)
        out_chars = len(message.text) + sum(len(c.arguments) + len(c.name) for c in message.tool_calls)
        usage = Usage.of_call(
            prompt_tokens=max(1, prompt_chars // 4), completion_tokens=_estimate_tokens(" " * out_chars)
        )
        return LLMResponse(
            message=message,
            usage=usage,
            finish_reason="tool_calls" if message.tool_calls else "stop",
            model=self.model,
        )

    def _answer(self, request: LLMRequest) -> AssistantMessage:
        messages = list(request.messages)
        if not messages:
            return AssistantMessage(content="Hello! (offline model: nothing to answer yet)")
        last = messages[-1]
        if isinstance(last, ToolResultMessage):
            return AssistantMessage(content=_report_results(messages))
        text = content_text(last.content).strip() if isinstance(last, UserMessage) else ""
        written = _written_calls(text, request.tools, len(messages))
        if written:  # a call the user wrote out comes first
            return AssistantMessage(content="", tool_calls=written)
        if "summar" in text.lower() or "summar" in (request.system_prompt or "").lower()[-200:]:
            return AssistantMessage(content=_summary(messages))
        call = _tool_call(text, request.tools, len(messages))
        if call is not None:
            return AssistantMessage(content="", tool_calls=(call,))
        return AssistantMessage(content=_reply(text, messages))


def _report_results(messages: Sequence[Message]) -> str:
    results: list[str] = []
    for message in reversed(messages):
        if not isinstance(message, ToolResultMessage):
            break
        results.append(f"{message.name or 'the tool'} returned: {content_text(message.content)}")
    return "; ".join(reversed(results)) + "."


def _summary(messages: Sequence[Message]) -> str:
    said = [content_text(m.content).strip() for m in messages if isinstance(m, UserMessage)]
    said = [s for s in said if s and "summar" not in s.lower()]
    if not said:
        return "Summary: nothing has been discussed yet."
    return "Summary of the conversation so far: the user said " + "; ".join(f'"{s[:120]}"' for s in said[-20:]) + "."


def _reply(text: str, messages: Sequence[Message]) -> str:
    question = _QUESTION.search(text)
    if question:
        thing = question.group(1).strip().lower()
        for message in reversed(messages[:-1]):
            if isinstance(message, UserMessage):
                for fact in _FACT.finditer(content_text(message.content)):
                    if fact.group(1).strip().lower() == thing:
                        return f"Your {thing} is {fact.group(2).strip()}."
        return f"I don't know your {thing} yet. Tell me and I will remember it."
    statement = _FACT.search(text)
    if statement:
        return f"Noted: your {statement.group(1).strip().lower()} is {statement.group(2).strip()}."
    if re.match(r"^(hi|hello|hey)\b", text, re.IGNORECASE):
        return "Hello! I am the built-in offline model. Configure POWER_LOOP_* to talk to a real one."
    if not text:
        return "(offline model) I have nothing new to add."
    return f"(offline model) You said: {text}"


def _written_calls(text: str, tools: Sequence[ToolDefinition], position: int) -> tuple[ToolCall, ...]:
    """Every offered tool written with call syntax, in the order written (overlaps skipped)."""
    if not text or not tools:
        return ()
    found: list[tuple[int, int, ToolDefinition, str]] = []
    for tool in tools:
        for match in re.finditer(rf"\b{re.escape(tool.name)}\s*\((.*?)\)", text, re.DOTALL):
            found.append((match.start(), match.end(), tool, match.group(1)))
    calls: list[ToolCall] = []
    end = -1
    for start, stop, tool, source in sorted(found, key=lambda f: f[0]):
        if start < end:
            continue  # inside the arguments of a call taken already
        end = stop
        call_id = f"call_offline_{position}" + (f"_{len(calls)}" if calls else "")
        calls.append(ToolCall(id=call_id, name=tool.name, arguments=json.dumps(_parse_args(source, tool))))
    return tuple(calls)


def _tool_call(text: str, tools: Sequence[ToolDefinition], position: int) -> ToolCall | None:
    if not text or not tools:
        return None
    expression = _ARITHMETIC.search(text)
    if expression:
        for tool in tools:
            if "expression" in tool.parameters.get("properties", {}):
                args = {"expression": expression.group(1)}
                return ToolCall(id=f"call_offline_{position}", name=tool.name, arguments=json.dumps(args))
    for tool in tools:
        if not tool.parameters.get("required") and re.search(rf"\b{re.escape(tool.name)}\b", text):
            return ToolCall(id=f"call_offline_{position}", name=tool.name, arguments="{}")
    return None


def _parse_args(source: str, tool: ToolDefinition) -> dict[str, Any]:
    source = source.strip()
    if source.startswith("{"):
        try:
            value = json.loads(source)
            return value if isinstance(value, dict) else {}
        except ValueError:
            return {}
    try:
        call = ast.parse(f"f({source})", mode="eval").body
    except SyntaxError:
        return {}
    if not isinstance(call, ast.Call):
        return {}
    names = list(tool.parameters.get("properties", {}))
    args: dict[str, Any] = {}
    try:
        for name, node in zip(names, call.args, strict=False):
            args[name] = ast.literal_eval(node)
        for keyword in call.keywords:
            if keyword.arg:
                args[keyword.arg] = ast.literal_eval(keyword.value)
    except ValueError:
        return {}
    return args
