"""``StatefulAgentLoop``: the one object application code holds.

Every session lives in the store; ``await loop.send(text, session_id=sid)`` runs the model's
tool-calling rounds and returns a :class:`~power_loop.results.StatefulResult`. Different
sessions run concurrently; runs of one session serialize (an asyncio lock in this process, a
fenced lease across processes). Per-call ``tools`` and ``system_prompt`` apply to that call
only and are never stored.

The 0.11 sync conveniences (``new_session``, ``get_messages``, ``abort_pending``, ...) keep their
signatures and use a short-lived connection of their own; each has an ``*_async`` twin for
code on the event loop's hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from ._loop_approvals import ApprovalFacade
from ._loop_events import EventsFacade
from ._loop_timers import TimerFacade
from .cancellation import StopEventLike
from .compaction import resolve_compactor
from .config import AgentLoopConfig
from .engine.admission import Admission, AdmissionView
from .engine.capabilities import TEMPORARY_LOOP
from .engine.eventlog import EventLog
from .engine.history import HistoryCache
from .engine.prepare import normalize_input, resolve_system_prompt
from .engine.run import RunRequest, execute_run
from .engine.runtime import Runtime
from .engine.subagents import ChildTask, run_subagent
from .errors import SessionBusyError, SessionNotFoundError
from .events import AgentEventBus, AgentEventType, BaseEventPayload
from .hooks import AgentHooks
from .messages import message_to_dict
from .providers.base import LLMService
from .results import FollowUpQueued, StatefulResult, SubagentResult
from .store.factory import DB_URL_ENV, open_store
from .store.protocols import SessionStoreProtocol
from .store.rows import PendingState, SessionStatsRow, StoredMessage
from .store.sqlite import DEFAULT_DB_PATH
from .structured import ResponseFormatLike, resolve_response_format
from .tools.context import current_tool_context
from .tools.registry import ToolRegistry

__all__ = ["StatefulAgentLoop"]

T = TypeVar("T")


@runtime_checkable
class _ClosableLLM(Protocol):
    """A provider holding an HTTP client per event loop (the SDK-backed ones do)."""

    async def aclose(self) -> None: ...


@runtime_checkable
class _WarmableLLM(Protocol):
    """A provider with one-time work worth doing before the first call (the SDK import)."""

    async def warm_up(self) -> None: ...


def _new_session_id() -> str:
    return "sess_" + secrets.token_hex(12)


def _run_sync(coro: Coroutine[Any, Any, T], name: str, *, after: Callable[[], Awaitable[None]] | None = None) -> T:
    """Run ``coro`` in a fresh event loop; ``after`` releases what was bound to that loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:

        async def main() -> T:
            TEMPORARY_LOOP.set(True)  # this event loop ends with the call
            try:
                return await coro
            finally:
                if after is not None:
                    await after()

        return asyncio.run(main())
    coro.close()
    raise RuntimeError(
        f"{name}_sync() cannot be called from a running event loop (it would block it); "
        f"use `await loop.{name}(...)` instead"
    )


def _pending_dict(state: PendingState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {
        "assistant_seq": state.assistant_seq,
        "round_index": state.round_index,
        "tool_call_ids": [c.tool_call_id for c in state.calls],
        "tool_calls": [c.to_dict() for c in state.calls],
        "statuses": {c.tool_call_id: c.status for c in state.calls},
        "pending_interactions": [dict(i) for i in state.interactions],
        "approvals": [a.to_dict() for a in state.approvals],
    }


def _message_dicts(stored: Sequence[StoredMessage]) -> list[dict[str, Any]]:
    return [message_to_dict(s.message) for s in stored]


class StatefulAgentLoop(TimerFacade, ApprovalFacade, EventsFacade):
    """A durable, multi-session agent loop.

    Args:
        llm: The model provider (see ``create_llm_service_from_env``).
        store: A session store; when None one is opened (and owned) at ``db_path``.
        db_path: Where the owned store keeps its data: an SQLite file, or a database URL
            (``postgresql://...``, ``sqlite:///...``; see :func:`~power_loop.open_store`).
            Left at its default, the environment variable ``POWER_LOOP_DB_URL``, when set,
            names it instead.
        config: Loop configuration.
        tool_registry: Tools the model may call (narrowed per call with ``tools=``).
        hooks: Hook handlers (each loop gets its own when None).
        event_bus: Event bus (each loop gets its own when None).

    Use as ``async with StatefulAgentLoop(...) as loop:`` to open and close the store, or call
    ``await loop.aclose()`` (``loop.close()`` from sync code) when done.
    """

    def __init__(
        self,
        *,
        llm: LLMService,
        store: SessionStoreProtocol | None = None,
        db_path: str = DEFAULT_DB_PATH,
        config: AgentLoopConfig | None = None,
        tool_registry: ToolRegistry | None = None,
        hooks: AgentHooks | None = None,
        event_bus: AgentEventBus | None = None,
    ) -> None:
        if llm is None:
            raise TypeError("StatefulAgentLoop needs llm=...; see create_llm_service_from_env()")
        self.llm = llm
        self._owns_store = store is None
        if store is None:
            if db_path == DEFAULT_DB_PATH and os.environ.get(DB_URL_ENV):
                db_path = os.environ[DB_URL_ENV]
            store = open_store(db_path)
        self.store: SessionStoreProtocol = store
        self.config = config or AgentLoopConfig()
        self.tool_registry = tool_registry
        self._hooks = hooks if hooks is not None else AgentHooks()
        self._bus = event_bus if event_bus is not None else AgentEventBus()
        self._rt = Runtime(
            store=self.store,
            llm=llm,
            config=self.config,
            hooks=self._hooks,
            bus=self._bus,
            registry=tool_registry,
            histories=HistoryCache(self.config.history_cache_size, self.config.history_cache_hot),
            compactor=resolve_compactor(self.config.compactor),
            facade=self,
            event_log=EventLog(self.store) if self.config.persist_events else None,
            admission=Admission.from_config(self.config),
        )
        self._warming: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"StatefulAgentLoop(llm={self.llm!r}, store={self.store!r})"

    @property
    def hooks(self) -> AgentHooks:
        """This loop's hooks."""
        return self._hooks

    @property
    def event_bus(self) -> AgentEventBus:
        """This loop's event bus."""
        return self._bus

    @property
    def admission(self) -> AdmissionView:
        """What waits for this loop's ``max_concurrent_runs`` and ``rate_limit`` (live counts)."""
        return AdmissionView(self._rt.admission)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> StatefulAgentLoop:
        """Open the store (done automatically on first use) and start warming the provider up.

        A provider with a ``warm_up()`` coroutine (the SDK-backed ones: it imports the SDK in a
        worker thread) gets it started in the background, owned by this loop, so the first
        send does not wait for it.
        """
        await self.store.open()
        if self._warming is None and isinstance(self.llm, _WarmableLLM):
            self._warming = asyncio.get_running_loop().create_task(self._warm_up(self.llm))
        return self

    @staticmethod
    async def _warm_up(llm: _WarmableLLM) -> None:
        # A failed warm-up is not an error of its own: the first call does the same work
        # and reports what went wrong there.
        with contextlib.suppress(Exception):
            await llm.warm_up()

    async def aclose(self) -> None:
        """Store the event log's waiting events, then close an owned store."""
        warming, self._warming = self._warming, None
        if warming is not None and not warming.done():
            warming.cancel()  # the import itself finishes in its thread; only the wait stops
            if warming.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await warming
        await self._rt.cancel_tasks()  # background sub-agents: resumed later, by any process
        await self._flush_events()  # the ends of the runs just cancelled included
        self._rt.histories.clear()
        self._rt.close()  # the tool threads; never waits for a stuck sync handler
        if self._owns_store:
            await self.store.close()

    def close(self) -> None:
        """Close an owned store (sync; inside a running event loop the close is scheduled)."""
        warming, self._warming = self._warming, None
        if warming is not None and not warming.done() and not warming.get_loop().is_closed():
            warming.cancel()
        self._rt.cancel_tasks_nowait()
        self._rt.histories.clear()
        self._rt.close()
        waiting = self._rt.event_log is not None and self._rt.event_log.waiting
        if not self._owns_store and not waiting:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            asyncio.run(self._flush_then_close())
            return
        if self._owns_store:  # the event log's own task, on this running loop, stores what waits
            self.store.close_nowait()

    async def _flush_then_close(self) -> None:
        await self._flush_events()
        if self._owns_store:
            await self.store.close()

    async def __aenter__(self) -> StatefulAgentLoop:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------ sessions

    def new_session(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        session_id: str | None = None,
    ) -> str:
        """Create a session and return its id (``"sess_" + 24 hex``, or ``session_id``)."""
        sid = _check_session_id(session_id) if session_id is not None else _new_session_id()
        self.store.create_session_sync(sid, metadata=metadata, system_prompt=system_prompt)
        return sid

    async def new_session_async(
        self,
        *,
        metadata: Mapping[str, Any] | None = None,
        system_prompt: str | None = None,
        session_id: str | None = None,
    ) -> str:
        """Async twin of :meth:`new_session`."""
        sid = _check_session_id(session_id) if session_id is not None else _new_session_id()
        await self.store.create_session(sid, metadata=metadata, system_prompt=system_prompt)
        return sid

    def close_session(self, session_id: str, *, cascade: bool = True) -> int:
        """Delete a session (and its linked sub-agent sessions); return how many were deleted."""
        self._rt.histories.drop(session_id)
        self._rt.event_seqs.pop(session_id, None)
        return self.store.delete_session_sync(session_id, cascade=cascade)

    async def close_session_async(self, session_id: str, *, cascade: bool = True) -> int:
        """Async twin of :meth:`close_session`."""
        self._rt.histories.drop(session_id)
        self._rt.event_seqs.pop(session_id, None)
        return await self.store.delete_session(session_id, cascade=cascade)

    def resolve_system_prompt(self, *, session_id: str | None = None) -> str:
        """The system prompt a send would use (session > config > built-in default)."""
        session_prompt = None
        if session_id is not None:
            row = self.store.get_session(session_id)
            if row is None:
                raise SessionNotFoundError(session_id)
            session_prompt = row.system_prompt
        return resolve_system_prompt(call_prompt=None, session_prompt=session_prompt, config=self.config)

    # ------------------------------------------------------------------ runs

    async def send(
        self,
        user_input: str | dict[str, Any],
        session_id: str,
        *,
        stop_event: StopEventLike | None = None,
        tools: Sequence[str] | ToolRegistry | None = None,
        system_prompt: str | None = None,
        heal_pending: bool = False,
        response_format: ResponseFormatLike | None = None,
    ) -> StatefulResult:
        """Send a user message and run the session until the model answers.

        Args:
            user_input: Text, or a user message dict (``{"content": [...parts]}`` for images).
            session_id: The session (from :meth:`new_session`).
            stop_event: Cooperative cancellation: a ``CancellationToken``, ``asyncio.Event``,
                ``threading.Event`` or a callable.
            tools: Tool names narrowing the registry for this call, or a ``ToolRegistry``.
            system_prompt: System prompt for this call only.
            heal_pending: Answer unanswered tool calls with an aborted result first.
            response_format: Ask for structured output: a ``StructuredOutputSpec``, a pydantic
                model class or a JSON schema dict (None: ``AgentLoopConfig.response_format``).
                The provider's native JSON-schema mode is requested; the final answer is
                validated, corrected once if invalid, and parsed into ``result.output``. Two
                invalid answers end the run ``degraded``. See docs/structured-output.md.

        Raises:
            SessionNotFoundError: Unknown session (before any model call).
            SessionPendingError: Unanswered tool calls and not ``heal_pending``.
            SessionBusyError: Another run held the session longer than ``session_wait_s``.
            TypeError, ValueError: Malformed input, ``tools`` or ``response_format``.
            HookError, LeaseLostError: The run failed before its end was committed. A hook or
                event subscriber failing after that commit is reported in the result's
                ``post_commit_errors`` instead, so an error here always means the run did not
                complete as reported.

        Cancelling the awaiting task records the run as cancelled and releases the session
        before ``CancelledError`` propagates, wherever the cancellation lands.
        """
        message = normalize_input(user_input, max_chars=self.config.max_input_chars)
        fmt = resolve_response_format(response_format) if response_format is not None else None
        return await execute_run(
            self._rt,
            RunRequest(
                session_id=session_id,
                kind="send",
                message=message,
                stop_event=stop_event,
                tools=tools,
                system_prompt=system_prompt,
                heal_pending=heal_pending,
                response_format=fmt,
            ),
        )

    async def run_subagent(
        self,
        task: str,
        *,
        parent_session_id: str | None = None,
        spawn_tool_call_id: str | None = None,
        system_prompt: str | None = None,
        name: str = "subagent",
        tools: Sequence[str] | None = None,
        max_rounds: int | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        model: str | None = None,
        lifecycle: str = "ephemeral",
        metadata: Mapping[str, Any] | None = None,
    ) -> SubagentResult:
        """Run ``task`` in a new sub-agent session and return its answer.

        Called from a tool running in a run of this loop, the child belongs to that run (as
        with ``ctx.subagents.run``): it inherits its cancellation and budget, its tokens count
        in the run's usage, and it may use only tools the run's round was offered.
        ``parent_session_id`` and ``spawn_tool_call_id`` are then taken from the call.

        From host code, the child hangs under ``parent_session_id`` (or under no session),
        with the loop's tools narrowed to ``tools``. With both ``parent_session_id`` and
        ``spawn_tool_call_id``, calling again after a crash finds the child the first call
        started: its stored answer, or the child resumed from where it stopped.

        Args:
            task: The child's first user message.
            system_prompt: The child's system prompt (a built-in sub-agent prompt when None).
            name: A label recorded in the child's metadata and events.
            tools: Tool names the child may use.
            max_rounds, max_tokens, temperature: The child's limits (the loop's when None).
            model: Another model of the loop's provider, or the key of a service in
                ``AgentLoopConfig.llm_services``.
            lifecycle: ``ephemeral`` (deleted once answered), ``linked`` (deleted with its
                parent) or ``detached`` (kept).
            metadata: Metadata of the child session.

        Raises:
            SubagentRefused: The depth limit (``AgentLoopConfig.max_subagent_depth``) is
                reached, or ``tools`` asks for more than the calling run has.
            SessionNotFoundError: ``parent_session_id`` does not exist.
            ValueError: An unknown tool name or lifecycle.
        """
        ctx = current_tool_context()
        if ctx is not None and ctx.loop is self and ctx.capabilities is not None and ctx.capabilities.subagents:
            return await ctx.capabilities.subagents.run(
                task,
                system_prompt=system_prompt,
                name=name,
                tools=tools,
                max_rounds=max_rounds,
                max_tokens=max_tokens,
                temperature=temperature,
                model=model,
                lifecycle=lifecycle,
                metadata=metadata,
            )
        child = ChildTask(
            task, system_prompt, name, tools, max_rounds, max_tokens, temperature, model, lifecycle, metadata
        )

        async def publish(session_id: str, event_type: AgentEventType, data: BaseEventPayload) -> None:
            await self.publish_session_event(session_id, event_type, data, source="subagent")

        return await run_subagent(
            self._rt,
            execute_run,
            child,
            parent_session_id=parent_session_id,
            spawn_tool_call_id=spawn_tool_call_id,
            publish=publish,
        )

    def send_sync(self, user_input: str | dict[str, Any], session_id: str, **kwargs: Any) -> StatefulResult:
        """Blocking :meth:`send` for scripts (raises inside a running event loop)."""
        return _run_sync(self.send(user_input, session_id, **kwargs), "send", after=self._close_loop_clients)

    async def follow_up(
        self,
        user_input: str | dict[str, Any],
        session_id: str,
        *,
        stop_event: StopEventLike | None = None,
        tools: Sequence[str] | ToolRegistry | None = None,
        system_prompt: str | None = None,
        response_format: ResponseFormatLike | None = None,
    ) -> StatefulResult | FollowUpQueued:
        """Steer a running session, or send to an idle one.

        While a run holds the session (in any process), the message is stored in the session's
        inbox and the run picks it up at its next round boundary or before it would complete
        (several are merged into one ``<follow_up>`` message); returns ``FollowUpQueued``. A
        run that ends otherwise (cancelled, a limit, a hook ``BREAK``, an error, waiting for
        input) leaves it in the inbox for the session's next run. Otherwise this is
        :meth:`send` (``response_format`` applies only then: a queued message joins the
        running run, which keeps its own format).
        """
        if response_format is not None:
            resolve_response_format(response_format)  # a bad value fails before anything is stored
        message = normalize_input(user_input, max_chars=self.config.max_input_chars)
        content = message.content if isinstance(message.content, str) else message_to_dict(message)["content"]
        depth = await self.store.enqueue(session_id, content, kind="follow_up", only_if_busy=True)
        if depth is not None:
            return FollowUpQueued(session_id=session_id, queue_depth=depth)
        return await self.send(
            user_input,
            session_id,
            stop_event=stop_event,
            tools=tools,
            system_prompt=system_prompt,
            response_format=response_format,
        )

    def follow_up_sync(
        self, user_input: str | dict[str, Any], session_id: str, **kwargs: Any
    ) -> StatefulResult | FollowUpQueued:
        """Blocking :meth:`follow_up`."""
        return _run_sync(self.follow_up(user_input, session_id, **kwargs), "follow_up", after=self._close_loop_clients)

    async def _close_loop_clients(self) -> None:
        """Store the event log's waiting events and close the provider's HTTP client of the
        current (temporary) event loop, so neither outlives the loop (each ``*_sync`` call runs
        in a fresh one)."""
        await self._flush_events()
        if isinstance(self.llm, _ClosableLLM):
            with contextlib.suppress(Exception):
                await self.llm.aclose()

    async def resume(
        self, session_id: str, *, stop_event: StopEventLike | None = None, lift_pause: bool = True
    ) -> StatefulResult:
        """Run the session's unanswered tool calls (reusing results of calls that finished),
        then continue the run. With nothing pending, runs one more round. On a paused session
        (:meth:`pause`) it lifts the pause, in the same transaction that starts the run; with
        ``lift_pause=False`` (what ``TimerRunner`` does for a background sub-agent whose
        process died) a paused session raises ``SessionPausedError`` instead."""
        if lift_pause:
            self._rt.pauses.pop(session_id, None)
        request = RunRequest(session_id=session_id, kind="resume", stop_event=stop_event, lift_pause=lift_pause)
        return await execute_run(self._rt, request)

    async def pause(self, session_id: str) -> bool:
        """Pause a session, durably: a run going on (in this process or any other) ends with
        status ``paused`` at its next round boundary, the history consistent, and until
        :meth:`resume` nothing else runs it (``send``, ``submit_input`` and timer wake-ups
        raise or wait with :class:`~power_loop.errors.SessionPausedError`; follow-ups and
        wake-ups stay queued for the resumed run). Pausing a paused session changes nothing.

        Returns:
            True when a run held the session (it stops at its next round boundary), False
            when it was idle.

        Raises:
            SessionNotFoundError: Unknown session.
        """
        running = await self.store.pause_session(session_id)
        self._rt.pauses[session_id] = int(time.time() * 1000)
        return running

    async def submit_input(
        self, session_id: str, interaction_id: str, value: Any, *, stop_event: StopEventLike | None = None
    ) -> StatefulResult:
        """Answer a ``request_user_input`` question; the value becomes that tool call's result.

        Raises:
            ValueError: No open question has that id in the session.
            SessionBusyError: A run held the session longer than ``session_wait_s``.
        """
        import json

        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        still_open = await self._when_free(lambda: self.store.answer_interaction(session_id, interaction_id, text))
        if still_open:
            pending = await self.store.get_pending(session_id)
            return StatefulResult(
                session_id=session_id,
                status="waiting_for_input",
                pending_tool_calls=[c.to_dict() for c in pending.calls] if pending else [],
                pending_interactions=list(still_open),
                usage={},
            )
        return await execute_run(
            self._rt, RunRequest(session_id=session_id, kind="submit_input", stop_event=stop_event)
        )

    def abort_pending(self, session_id: str, *, reason: str = "aborted") -> int:
        """Answer every unresolved tool call with ``<aborted: reason>`` (calls that finished
        keep their real result); return how many calls were answered.

        Raises:
            SessionBusyError: A run (in any process) holds the session; its calls may still be
                running. Stop it first (``stop_event``) or wait for it to end. (A crashed
                process's hold ends ``lease_ttl_s`` after its last renewal;
                :meth:`abort_pending_async` waits for that.)
        """
        self._rt.histories.drop(session_id)
        return self.store.abort_pending_sync(session_id, reason)

    async def abort_pending_async(self, session_id: str, *, reason: str = "aborted") -> int:
        """Async twin of :meth:`abort_pending`. While a run holds the session it waits, up to
        ``AgentLoopConfig.session_wait_s``, for the session to be free (a crashed process's
        hold ends when its lease expires) before raising ``SessionBusyError``."""
        self._rt.histories.drop(session_id)
        return await self._when_free(lambda: self.store.abort_pending(session_id, reason))

    async def _when_free(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run a store call that refuses a held session, retrying while it is held (bounded by
        ``session_wait_s``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.session_wait_s
        delay = 0.02
        while True:
            try:
                return await call()
            except SessionBusyError:
                left = deadline - loop.time()
                if left <= 0:
                    raise
            await asyncio.sleep(min(delay, left))
            delay = min(delay * 2, 0.5)

    async def prune_compacted_async(
        self, session_id: str | None = None, *, older_than_s: float | None = None, keep_last: int | None = None
    ) -> int:
        """Delete folded (compacted) message rows kept for audit; return how many were deleted.

        Args:
            session_id: One session, or None for every session.
            older_than_s: Delete folded rows older than this many seconds.
            keep_last: Always keep this many of the most recent folded rows per session (with
                ``older_than_s``, a row goes only when it is both old enough and not among them).

        The context the model sees (summary + later messages) is never affected.
        """
        if older_than_s is None and keep_last is None:
            raise ValueError("give older_than_s and/or keep_last")
        if keep_last is not None and keep_last < 0:
            raise ValueError("keep_last must be >= 0")
        cutoff = None if older_than_s is None else int((time.time() - older_than_s) * 1000)
        return await self.store.prune_compacted(session_id, older_than_ms=cutoff, keep_last=keep_last)

    def prune_compacted(
        self, session_id: str | None = None, *, older_than_s: float | None = None, keep_last: int | None = None
    ) -> int:
        """Blocking :meth:`prune_compacted_async` (raises inside a running event loop)."""
        return _run_sync(
            self.prune_compacted_async(session_id, older_than_s=older_than_s, keep_last=keep_last), "prune_compacted"
        )

    # ------------------------------------------------------------------ reading

    def get_messages(self, session_id: str, *, include_compacted: bool = False) -> list[dict[str, Any]]:
        """The session's context as OpenAI-shaped dicts: the compaction summary (a system
        message) and the messages after it; with ``include_compacted``, every stored message
        including folded ones (the audit view)."""
        self._require(session_id)
        return _message_dicts(self.store.load_messages_sync(session_id, include_compacted=include_compacted))

    async def get_messages_async(self, session_id: str, *, include_compacted: bool = False) -> list[dict[str, Any]]:
        """Async twin of :meth:`get_messages`."""
        if await self.store.get_session_async(session_id) is None:
            raise SessionNotFoundError(session_id)
        return _message_dicts(await self.store.load_messages(session_id, include_compacted=include_compacted))

    def get_pending(self, session_id: str) -> dict[str, Any] | None:
        """Unanswered tool calls (``assistant_seq``, ``round_index``, ``tool_call_ids``,
        ``tool_calls``, ``statuses``, ``pending_interactions``, ``approvals``: the undecided
        approval requests as dicts), or None."""
        self._require(session_id)
        return _pending_dict(self.store.get_pending_sync(session_id))

    async def get_pending_async(self, session_id: str) -> dict[str, Any] | None:
        """Async twin of :meth:`get_pending`."""
        if await self.store.get_session_async(session_id) is None:
            raise SessionNotFoundError(session_id)
        return _pending_dict(await self.store.get_pending(session_id))

    def get_session_stats(self, session_id: str) -> SessionStatsRow | None:
        """Aggregates of a session, or None before its first finished send."""
        return self.store.get_stats_sync(session_id)

    async def get_session_stats_async(self, session_id: str) -> SessionStatsRow | None:
        """Async twin of :meth:`get_session_stats`."""
        return await self.store.get_stats(session_id)

    def list_session_stats(self) -> list[SessionStatsRow]:
        """Stats of every session, most recently active first."""
        return self.store.list_stats_sync()

    async def list_session_stats_async(self) -> list[SessionStatsRow]:
        """Async twin of :meth:`list_session_stats`."""
        return await self.store.list_stats()

    def explain_sync(self, session_id: str) -> str:
        """Blocking :meth:`explain` (raises inside a running event loop)."""
        return _run_sync(self.explain(session_id), "explain")

    def _require(self, session_id: str) -> None:
        if self.store.get_session(session_id) is None:
            raise SessionNotFoundError(session_id)


def _check_session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or not session_id.strip() or len(session_id) > 200:
        raise ValueError("session_id must be a non-empty string of at most 200 characters")
    return session_id
