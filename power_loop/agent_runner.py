"""``AgentRunner``: bracket a piece of agent work as a *session* for hooks and events.

A loop's own runs open and close a session around every ``send``. ``AgentRunner`` gives the
same bracket to work that is not a loop run (a custom ``@phase`` pipeline, a batch of
sends, a job of your own), so hooks and subscribers see it begin and end::

    runner = AgentRunner(event_bus=bus, hooks=hooks)
    with runner.session() as sid:                  # sync code
        ...
    async with runner.session_async() as sid:      # async code
        ...

Invariants:

* Entering publishes ``session_started`` and then runs the ``SESSION_START`` hooks; leaving
  runs the ``SESSION_END`` hooks and then publishes ``session_ended``. This is the order of
  the loop's own runs. Both events carry the session id, ``source="runner"`` and one
  ``run_id`` per bracket.
* Every ``session_started`` is followed by exactly one ``session_ended``, whatever fails:
  the block, a hook, or a subscriber.
* ``reason`` (in ``SessionEndCtx`` and ``SessionEndedPayload``) is ``"completed"`` (status
  ``completed``) or, when the block raised, ``"error: <exception type>"`` (status
  ``failed``). The block's exception always propagates unchanged. A failure while closing
  a failed block is logged (logger ``power_loop.agent_runner``), never raised in its place.
* A ``SESSION_START`` failure (a hook raising ``HookError``, a subscriber raising) closes
  the session with that error as the reason and is then raised: the block does not run. A
  ``SESSION_END`` failure after a block that completed is raised once ``session_ended``
  is published.
* The runner holds no history: the contexts' ``messages`` are empty and changes to them
  have no effect. Both points honour no directive but CONTINUE.
* No ambient state: the bus and hooks are the runner's own (new ones when not given), and
  the runner keeps nothing between brackets, so brackets may overlap.
* ``session_async`` awaits async hooks and subscribers in line. ``session`` never blocks
  an event loop: sync hooks run in line; async hooks run in a private event loop when none
  is running in the thread. Inside a running loop, async hooks make ``session`` raise a
  ``RuntimeError`` that names ``session_async``, before anything is published. Events go
  through :meth:`AgentEventBus.publish`, which runs async subscribers to completion
  without a running loop and schedules them as bus-owned tasks inside one (await
  :meth:`AgentEventBus.drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator

from .events import AgentEvent, AgentEventBus, AgentEventType, SessionEndedPayload, SessionStartedPayload
from .hooks import AgentHooks, BaseHookCtx, HookPoint, SessionEndCtx, SessionStartCtx
from .store._compat import new_session_id

__all__ = ["AgentRunner"]

log = logging.getLogger("power_loop.agent_runner")

_SOURCE = "runner"


class AgentRunner:
    """Opens and closes sessions for hooks and events around work you run yourself.

    Args:
        event_bus: Where ``session_started`` and ``session_ended`` are published (a new bus
            when None).
        hooks: Whose ``SESSION_START`` and ``SESSION_END`` handlers run (a new registry when
            None).

    Attributes:
        event_bus: The bus events go to.
        hooks: The hook registry that runs.
    """

    def __init__(self, *, event_bus: AgentEventBus | None = None, hooks: AgentHooks | None = None) -> None:
        self.event_bus = event_bus if event_bus is not None else AgentEventBus()
        self.hooks = hooks if hooks is not None else AgentHooks()

    @contextlib.contextmanager
    def session(self, *, session_id: str | None = None) -> Iterator[str]:
        """A sync context manager bracketing its block as a session; yields the session id.

        Args:
            session_id: The session to announce (a new ``"sess_" + 24 hex`` id when None).

        Raises:
            ValueError: ``session_id`` is empty, blank or longer than 200 characters.
            RuntimeError: Called inside a running event loop while a ``SESSION_START`` or
                ``SESSION_END`` handler is async (use :meth:`session_async`).
            HookError: A hook raised (see the module's invariants for when).
        """
        sid = _session_id(session_id)
        for point in (HookPoint.SESSION_START, HookPoint.SESSION_END):
            self._refuse_async_in_running_loop(point)
        run_id = _run_id()
        try:
            self.event_bus.publish(_started(sid, run_id))
            self._run_hook(HookPoint.SESSION_START, SessionStartCtx(session_id=sid))
        except BaseException as exc:
            self._close(sid, run_id, exc)
            raise
        try:
            yield sid
        except BaseException as exc:
            self._close(sid, run_id, exc)
            raise
        self._close(sid, run_id, None)

    @contextlib.asynccontextmanager
    async def session_async(self, *, session_id: str | None = None) -> AsyncIterator[str]:
        """An async context manager bracketing its block as a session; yields the session id.

        Hooks and subscribers may be sync or async; async ones are awaited in line.

        Args:
            session_id: The session to announce (a new ``"sess_" + 24 hex`` id when None).

        Raises:
            ValueError: ``session_id`` is empty, blank or longer than 200 characters.
            HookError: A hook raised (see the module's invariants for when).
        """
        sid = _session_id(session_id)
        run_id = _run_id()
        try:
            await self.event_bus.publish_async(_started(sid, run_id))
            await self.hooks.run_typed_async(HookPoint.SESSION_START, SessionStartCtx(session_id=sid))
        except BaseException as exc:
            await self._close_async(sid, run_id, exc)
            raise
        try:
            yield sid
        except BaseException as exc:
            await self._close_async(sid, run_id, exc)
            raise
        await self._close_async(sid, run_id, None)

    # ----------------------------------------------------------------- closing

    def _close(self, sid: str, run_id: str, error: BaseException | None) -> None:
        ctx = _end_ctx(sid, error)
        problem: Exception | None = None
        try:
            self._run_hook(HookPoint.SESSION_END, ctx)
        except Exception as exc:
            problem = exc
        try:
            self.event_bus.publish(_ended(sid, run_id, ctx))
        except Exception as exc:
            problem = exc if problem is None else problem
        _settle(sid, problem, error)

    async def _close_async(self, sid: str, run_id: str, error: BaseException | None) -> None:
        ctx = _end_ctx(sid, error)
        problem: Exception | None = None
        try:
            await self.hooks.run_typed_async(HookPoint.SESSION_END, ctx)
        except Exception as exc:
            problem = exc
        try:
            await self.event_bus.publish_async(_ended(sid, run_id, ctx))
        except Exception as exc:
            problem = exc if problem is None else problem
        _settle(sid, problem, error)

    # ----------------------------------------------------------------- sync hooks

    def _refuse_async_in_running_loop(self, point: HookPoint) -> None:
        if self.hooks.has_async(point) and _loop_is_running():
            raise RuntimeError(
                f"AgentRunner.session() cannot run the async {point.value} hooks inside a running event "
                "loop (it would block it); use `async with runner.session_async() as sid:` instead"
            )

    def _run_hook(self, point: HookPoint, ctx: BaseHookCtx) -> None:
        if not self.hooks.has_async(point):
            self.hooks.run_typed(point, ctx)
            return
        # Re-checked here: a handler may have been registered while the block ran.
        self._refuse_async_in_running_loop(point)
        asyncio.run(self.hooks.run_typed_async(point, ctx))


def _session_id(session_id: str | None) -> str:
    if session_id is None:
        return new_session_id()
    if not isinstance(session_id, str) or not session_id.strip() or len(session_id) > 200:
        raise ValueError("session_id must be a non-empty string of at most 200 characters")
    return session_id


def _run_id() -> str:
    return "run_" + secrets.token_hex(8)


def _loop_is_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _started(sid: str, run_id: str) -> AgentEvent:
    return AgentEvent(
        AgentEventType.SESSION_STARTED, data=SessionStartedPayload(run_id=run_id), session_id=sid, source=_SOURCE
    )


def _end_ctx(sid: str, error: BaseException | None) -> SessionEndCtx:
    if error is None:
        return SessionEndCtx(session_id=sid, reason="completed", status="completed")
    return SessionEndCtx(session_id=sid, reason=f"error: {type(error).__name__}", status="failed")


def _ended(sid: str, run_id: str, ctx: SessionEndCtx) -> AgentEvent:
    payload = SessionEndedPayload(reason=ctx.reason, status=ctx.status, run_id=run_id)
    return AgentEvent(AgentEventType.SESSION_ENDED, data=payload, session_id=sid, source=_SOURCE)


def _settle(sid: str, problem: Exception | None, error: BaseException | None) -> None:
    """Raise what went wrong while closing, unless the block's own error is on its way out."""
    if problem is None:
        return
    if error is None:
        raise problem
    log.error("closing session %s after %s failed", sid, type(error).__name__, exc_info=problem)
