"""Store operations written once, offered twice: awaitable and blocking.

A store operation is declared as a method that takes the public parameters and returns the
transaction to run (``TxFn``: a function of one :class:`~.protocols.Tx`)::

    @store_op(tx=False)
    def get_stats(self, session_id: str) -> TxFn[SessionStatsRow | None]:
        \"\"\"Stats of a session, or None before its first finished run.\"\"\"
        return lambda c: _sql.get_stats(c, session_id)

    get_stats_sync = get_stats.blocking()

``store.get_stats(sid)`` is then a coroutine function running that transaction on the writer
connection's worker thread (``store._call``), and ``store.get_stats_sync(sid)`` runs it on a
short-lived connection in the calling thread (``store._call_sync``).

Guarantees:

* One signature, one docstring, one body per operation. mypy checks both twins' call sites
  and return types through ``ParamSpec``; ``inspect.signature`` shows the declared parameters.
* The declared method runs in the caller before any I/O (argument checks raise there, as in
  a hand-written method); the transaction it returns is the only thing sent to the database.
* No cost per call beyond a hand-written method: when the class is created, each name is
  bound to a plain function (``async def`` for the awaitable twin), so attribute access is
  an ordinary method lookup, and the awaitable twin awaits ``_call`` directly: no task and
  no extra hop.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

from .protocols import Tx

__all__ = ["BlockingOp", "StoreOp", "TxFn", "store_op"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

TxFn = Callable[[Tx], R]
"""One transaction's work, run on the connection's own thread."""

_BLOCKING_NOTE = "Blocking twin of :meth:`{name}`: one transaction on a short-lived connection\nin the calling thread."


class _Calls(Protocol):
    """What a store offers its operations: the two ways to run one transaction."""

    async def _call(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...

    def _call_sync(self, fn: Callable[[Tx], T], *, tx: bool = True) -> T: ...


Prepare = Callable[Concatenate[Any, P], TxFn[R]]


def _signature(prepare: Callable[..., Any]) -> tuple[inspect.Signature, dict[str, Any]]:
    """The declared signature and annotations, with the result type instead of ``TxFn[...]``."""
    annotations = dict(prepare.__annotations__)
    result = annotations.get("return", inspect.Signature.empty)
    if isinstance(result, str) and result.startswith("TxFn[") and result.endswith("]"):
        result = result[len("TxFn[") : -1]
    annotations["return"] = result
    return inspect.signature(prepare).replace(return_annotation=result), annotations


def _name(fn: Callable[..., Any], owner: type, name: str, doc: str | None, sig: inspect.Signature) -> None:
    fn.__name__ = name
    fn.__qualname__ = f"{owner.__qualname__}.{name}"
    fn.__module__ = owner.__module__
    fn.__doc__ = doc
    fn.__signature__ = sig  # type: ignore[attr-defined]


class StoreOp(Generic[P, R]):
    """The awaitable twin of a store operation (see the module docstring).

    Args:
        prepare: The declared method: public parameters in, the transaction out.
        tx: Run inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (writes); False for a read.
    """

    def __init__(self, prepare: Prepare[P, R], *, tx: bool) -> None:
        self.prepare = prepare
        self.tx = tx
        self.name = prepare.__name__
        self.doc = inspect.getdoc(prepare)

        async def run(store: _Calls, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return await store._call(prepare(store, *args, **kwargs), tx=tx)

        self.fn = run

    def blocking(self) -> BlockingOp[P, R]:
        """The blocking twin: the same operation on a short-lived connection."""
        return BlockingOp(self)

    def __set_name__(self, owner: type, name: str) -> None:
        sig, self.fn.__annotations__ = _signature(self.prepare)
        _name(self.fn, owner, name, self.doc, sig)
        self.name = name
        # From here on the attribute is the plain coroutine function: no descriptor call per use.
        setattr(owner, name, self.fn)

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, R]]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __get__(self, instance: object | None, owner: type[Any]) -> Any:
        return self.fn if instance is None else self.fn.__get__(instance, owner)


class BlockingOp(Generic[P, R]):
    """The blocking twin of a :class:`StoreOp`; its docstring names the awaitable one."""

    def __init__(self, op: StoreOp[P, R]) -> None:
        self.op = op
        prepare, tx = op.prepare, op.tx

        def run(store: _Calls, /, *args: P.args, **kwargs: P.kwargs) -> R:
            return store._call_sync(prepare(store, *args, **kwargs), tx=tx)

        self.fn = run

    def __set_name__(self, owner: type, name: str) -> None:
        op = self.op
        sig, self.fn.__annotations__ = _signature(op.prepare)
        summary, _, rest = (op.doc or "").partition("\n\n")
        note = _BLOCKING_NOTE.format(name=op.prepare.__name__)
        doc = "\n\n".join(part for part in (summary, note, rest) if part)
        _name(self.fn, owner, name, doc, sig)
        setattr(owner, name, self.fn)

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> Callable[Concatenate[Any, P], R]: ...

    @overload
    def __get__(self, instance: object, owner: type[Any]) -> Callable[P, R]: ...

    def __get__(self, instance: object | None, owner: type[Any]) -> Any:
        return self.fn if instance is None else self.fn.__get__(instance, owner)


def store_op(*, tx: bool = True) -> Callable[[Prepare[P, R]], StoreOp[P, R]]:
    """Declare a store operation once; ``.blocking()`` on the result gives its blocking twin.

    Args:
        tx: True (the default) for a write transaction (``BEGIN IMMEDIATE``, file checks
            before and after); False for a read.
    """

    def declare(prepare: Prepare[P, R]) -> StoreOp[P, R]:
        return StoreOp(prepare, tx=tx)

    return declare
