"""``ScriptedLLM``: an in-process model that answers from a script.

It implements the same :class:`~power_loop.providers.base.LLMService` protocol as the real
providers, records every request, streams text through the callbacks and raises the same
errors a provider would for scripted failures, so agents can be tested without HTTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterable

from ..messages import AssistantMessage
from ..providers._common import status_error
from ..providers.base import LLMRequest, LLMResponse, StreamCallbacks
from .script import Rule, ScriptedReply, ScriptedRequest, ScriptExhausted, prompt_chars

__all__ = ["ScriptedLLM"]


class ScriptedLLM:
    """A scripted, in-process model.

    Args:
        script: Replies consumed one per call, in order.
        rule: A function answering any request; used when the script is empty.
        model: Reported model name.
        max_retries: What the engine may retry when no retry policy is configured.
        context_window: Reported context window.

    Attributes:
        requests: Every request received, in order.
        calls: Number of ``complete`` calls (including failed ones).
    """

    provider = "scripted"

    def __init__(
        self,
        script: Iterable[ScriptedReply] = (),
        *,
        rule: Rule | None = None,
        model: str = "scripted-model",
        max_retries: int = 0,
        context_window: int | None = 128_000,
    ) -> None:
        self._script: deque[ScriptedReply] = deque(script)
        self._lock = threading.Lock()
        self.rule = rule
        self.model = model
        self.max_retries = max_retries
        self.context_window = context_window
        self.requests: list[LLMRequest] = []
        self.calls = 0

    def push(self, *replies: ScriptedReply) -> None:
        """Append replies to the script."""
        with self._lock:
            self._script.extend(replies)

    @property
    def remaining(self) -> int:
        """Replies not yet consumed."""
        return len(self._script)

    def _next(self, request: LLMRequest) -> ScriptedReply:
        with self._lock:
            if self._script:
                return self._script.popleft()
        if self.rule is not None:
            return self.rule(_as_scripted(request))
        raise ScriptExhausted(f"ScriptedLLM: no reply left for call #{self.calls} and no rule set")

    async def complete(self, request: LLMRequest, *, callbacks: StreamCallbacks | None = None) -> LLMResponse:
        """Answer with the next scripted reply."""
        self.calls += 1
        self.requests.append(request)
        reply = self._next(request)
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.status is not None:
            raise status_error(
                reply.error_message,
                provider=self.provider,
                status=reply.status,
                request_id=f"scripted_{self.calls}",
                headers={"retry-after": str(reply.retry_after)} if reply.retry_after is not None else None,
            )
        if callbacks and callbacks.on_stream_start:
            callbacks.on_stream_start()
        if callbacks and reply.reasoning and callbacks.on_reasoning_delta:
            for piece in reply.chunks(reply.reasoning):
                callbacks.on_reasoning_delta(piece)
        for piece in reply.chunks():
            if reply.chunk_delay_s:
                await asyncio.sleep(reply.chunk_delay_s)
            if callbacks and callbacks.on_text_delta:
                callbacks.on_text_delta(piece)
        if callbacks and callbacks.on_stream_end:
            callbacks.on_stream_end()
        message = AssistantMessage(content=reply.text, tool_calls=reply.tool_calls, reasoning=reply.reasoning)
        return LLMResponse(
            message=message,
            usage=reply.usage_for(prompt_chars(_as_scripted(request))),
            finish_reason=reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop"),
            model=request.model or self.model,
            request_id=f"scripted_{self.calls}",
        )


def _as_scripted(request: LLMRequest) -> ScriptedRequest:
    return ScriptedRequest(
        protocol="inprocess",
        messages=list(request.messages),
        system_prompt=request.system_prompt,
        tools=[t.name for t in request.tools],
        model=request.model,
        stream=request.stream,
        response_format=request.response_format,
        max_tokens=request.max_tokens,
    )
