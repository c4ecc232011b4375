"""The power_loop error tree.

Every exception power_loop raises on purpose is a :class:`PowerLoopError`. Provider SDK
exceptions are translated exactly once, in the provider module that caught them, and the
original is kept as ``__cause__``.

::

    PowerLoopError
    ├── ConfigurationError (also ValueError)      bad configuration or environment
    ├── SessionError                              something about one session
    │   ├── SessionNotFoundError (also KeyError)
    │   ├── SessionPendingError                   unanswered tool calls block a send
    │   │   └── ApprovalPendingError              ... some of them wait for a human's approval
    │   ├── SessionBusyError                      another run holds the session too long
    │   └── LeaseLostError                        this run was fenced out by another process
    ├── StoreError                                the session store itself (``path``: the file)
    │   ├── StoreFileGoneError                    the file was deleted, moved or replaced while open
    │   ├── StoreReadOnlyError                    the file or its directory cannot be written
    │   ├── StoreFullError                        the disk (or a size limit) is full
    │   ├── StoreCorruptError                     the file is not an SQLite database, or is damaged
    │   ├── StoreIOError                          the file could not be opened, read or written
    │   ├── StoreLockedError                      another connection held the write lock too long
    │   ├── SchemaVersionError                    file written by a newer power_loop
    │   └── CorruptRecordError                    a stored row cannot be decoded
    ├── LLMError                                  a model call failed
    │   ├── LLMTimeout                            the call (or the whole retry budget) timed out
    │   ├── LLMConnectionError                    network-level failure
    │   ├── LLMStatusError                        the provider answered with a 4xx/5xx
    │   │   ├── LLMRateLimitError                 429
    │   │   └── LLMServerError                    5xx
    │   ├── LLMResponseError                      the provider's answer could not be used
    │   └── LLMRetryExhausted                     every attempt failed
    ├── CancellationRequested                     a stop_event asked the run to stop
    ├── CompactionFailed
    ├── ToolError
    │   ├── ToolNotFound
    │   ├── ToolValidationError
    │   ├── ToolNotStarted (tools.threads)        no tool thread was free to start a sync call
    │   └── ToolRaisedBaseException (tools.threads)  a handler raised SystemExit, KeyboardInterrupt, ...
    ├── HookError                                 a hook raised or returned a directive its point does not honour
    ├── ApprovalError (also ValueError)           an approval token is unknown, of another session, or used
    ├── AgentSpecError                            an agent spec could not be loaded or used (``field``)
    │   └── SpecValidationError (also ValueError) a spec's content is invalid: unknown key, bad value
    ├── StructuredOutputError (also ValueError) a final answer does not parse or match its schema
    └── ControlSignal                             not a failure: a signal power_loop raises and catches itself
        └── HumanInputRequired (human)            a tool asked the user; the run pauses

Every message says what happened and what to do about it. A :class:`ControlSignal` never
reaches the host: it carries a decision out of code that cannot return one (a tool handler
asking the user, a transport giving up on a stale connection) to the power_loop code that
acts on it. The engine itself never uses exceptions for control flow: its steps return
their outcome.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "AgentSpecError",
    "ApprovalError",
    "ApprovalPendingError",
    "CancellationRequested",
    "CompactionFailed",
    "ConfigurationError",
    "ControlSignal",
    "CorruptRecordError",
    "HookError",
    "LLMConnectionError",
    "LLMError",
    "LLMRateLimitError",
    "LLMResponseError",
    "LLMRetryExhausted",
    "LLMServerError",
    "LLMStatusError",
    "LLMTimeout",
    "LeaseLostError",
    "PowerLoopError",
    "SchemaVersionError",
    "SessionBusyError",
    "SessionError",
    "SessionNotFoundError",
    "SessionPausedError",
    "SessionPendingError",
    "SpecValidationError",
    "StoreCorruptError",
    "StoreError",
    "StoreFileGoneError",
    "StoreFullError",
    "StoreIOError",
    "StoreLockedError",
    "StoreReadOnlyError",
    "StructuredOutputError",
    "ToolError",
    "ToolNotFound",
    "ToolValidationError",
]


class PowerLoopError(Exception):
    """Base class of every error power_loop raises on purpose."""


class ConfigurationError(PowerLoopError, ValueError):
    """Invalid configuration: a missing environment variable, a bad value, a bad combination."""


# --------------------------------------------------------------------------- sessions


class SessionError(PowerLoopError):
    """An operation on one session failed.

    Attributes:
        session_id: The session concerned.
    """

    def __init__(self, message: str, *, session_id: str) -> None:
        super().__init__(message)
        self.session_id = session_id


class SessionNotFoundError(SessionError, KeyError):
    """The session id is unknown (never created, or closed)."""

    def __init__(self, session_id: str) -> None:
        super().__init__(
            f"Session {session_id!r} not found. Create it with loop.new_session() "
            "(or new_session_async()) and use the id it returns.",
            session_id=session_id,
        )

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0])


class SessionPendingError(SessionError):
    """The session's last assistant message has tool calls without results.

    Attributes:
        session_id: The session concerned.
        assistant_seq: Store seq of the assistant message whose calls are unanswered.
        pending_tool_calls: The unanswered calls as OpenAI ``tool_calls[]`` dicts (``id``,
            ``type``, ``function``, as in 0.11) that also carry ``name``, ``arguments`` and
            ``status`` (the call's lifecycle state, e.g. ``running``) at the top level.
    """

    def __init__(
        self,
        session_id: str,
        *,
        assistant_seq: int,
        pending_tool_calls: Sequence[dict[str, Any]],
    ) -> None:
        names = ", ".join(f"{c.get('name')} ({c.get('id')})" for c in pending_tool_calls)
        super().__init__(
            f"Session {session_id!r} has {len(pending_tool_calls)} unanswered tool call(s) "
            f"from message seq {assistant_seq}: {names}. Choose one: "
            f"`await loop.resume({session_id!r})` runs them and continues; "
            f"`loop.abort_pending({session_id!r})` answers them with an aborted result; "
            "or pass `heal_pending=True` to send() to abort them and send at once.",
            session_id=session_id,
        )
        self.assistant_seq = assistant_seq
        self.pending_tool_calls = list(pending_tool_calls)


class ApprovalPendingError(SessionPendingError):
    """A send found tool calls waiting for a human's approval.

    Attributes:
        tokens: The tokens of the undecided approval requests.
    """

    def __init__(
        self,
        session_id: str,
        *,
        assistant_seq: int,
        pending_tool_calls: Sequence[dict[str, Any]],
        tokens: Sequence[str],
    ) -> None:
        super().__init__(session_id, assistant_seq=assistant_seq, pending_tool_calls=pending_tool_calls)
        self.tokens = list(tokens)
        listed = ", ".join(self.tokens)
        self.args = (
            f"Session {session_id!r} has {len(self.tokens)} tool call(s) waiting for approval (tokens: {listed}). "
            f"Decide each with `await loop.approve({session_id!r}, token, approved=True | False)` (the run then "
            "goes on), list them with `await loop.list_approvals()`, or pass `heal_pending=True` to send() to "
            "drop them (their calls are answered as aborted and the tokens stop working).",
        )


class SessionBusyError(SessionError):
    """Another run (in this or another process) held the session longer than the wait allows."""


class SessionPausedError(SessionError):
    """The session is paused (``loop.pause``): nothing runs on it until ``loop.resume``.

    Attributes:
        session_id: The session concerned.
        paused_at: When it was paused (ms since the epoch).
    """

    def __init__(self, session_id: str, *, paused_at: int) -> None:
        from datetime import datetime, timezone

        when = datetime.fromtimestamp(paused_at / 1000, timezone.utc).isoformat(timespec="seconds")
        super().__init__(
            f"Session {session_id!r} is paused (since {when}); nothing was stored. Call "
            f"`await loop.resume({session_id!r})` to continue its run, then send again.",
            session_id=session_id,
        )
        self.paused_at = paused_at


class LeaseLostError(SessionError):
    """This run lost its session lease to another process; its writes were refused."""


# --------------------------------------------------------------------------- store


class StoreError(PowerLoopError):
    """The session store failed or holds data this version cannot use.

    SQLite faults are translated once, in the store, into the subclasses below; the original
    ``sqlite3`` exception is kept as ``__cause__``. A failed transaction is rolled back:
    nothing of it is stored.

    Attributes:
        path: The database file concerned, when known.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class StoreFileGoneError(StoreError):
    """The database path no longer names the file the store opened.

    The file (or its directory) was deleted, moved or replaced while the store had it open.
    Writes made since went to the old, unreachable file; the operation that noticed it is
    reported as failed, never as done.
    """


class StoreReadOnlyError(StoreError):
    """The database file, its ``-wal``/``-shm`` files or its directory cannot be written."""


class StoreFullError(StoreError):
    """The disk, or a size limit on the file, is full; the transaction was rolled back."""


class StoreCorruptError(StoreError):
    """The file is not an SQLite database, or its pages are damaged."""


class StoreIOError(StoreError):
    """The operating system failed to open, read or write the database file."""


class StoreConnectionError(StoreError):
    """The store's database server cannot be reached, or refused the connection."""


class StoreLockedError(StoreError):
    """Another connection held the file's write lock longer than ``busy_timeout_s``."""


class SchemaVersionError(StoreError):
    """The database file was written by a newer power_loop than this one."""


class CorruptRecordError(StoreError):
    """A stored row could not be decoded.

    Attributes:
        session_id: Session of the row.
        seq: Message seq of the row, when the row is a message.
    """

    def __init__(self, message: str, *, session_id: str, seq: int | None = None) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.seq = seq


# --------------------------------------------------------------------------- LLM


class LLMError(PowerLoopError):
    """A model call failed.

    Attributes:
        provider: ``"openai"``, ``"anthropic"`` or another provider name.
        status_code: HTTP status when the provider answered, else None.
        retryable: Whether trying again may succeed (429, 5xx, timeouts, connection errors).
        request_id: The provider's request id when it sent one.
        retry_after: Seconds the provider asked us to wait (``Retry-After``), if any.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        provider: str | None = None,
        status_code: int | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status_code = status_code
        if retryable is not None:
            self.retryable = retryable
        self.request_id = request_id
        self.retry_after = retry_after


class LLMTimeout(LLMError):
    """The call, or the retry policy's ``total_timeout``, ran out of time.

    Constructed as in 0.11 (``LLMTimeout(elapsed=..., attempts=..., total_timeout=...)``, the
    message then written from those values) or with a message of its own.

    Attributes:
        elapsed: Seconds spent before giving up, when known.
        attempts: Requests made before giving up, when known.
        total_timeout: The retry policy's budget that ran out, when that is what ran out.
    """

    retryable = True

    def __init__(
        self,
        message: str | None = None,
        *,
        elapsed: float | None = None,
        attempts: int | None = None,
        total_timeout: float | None = None,
        provider: str | None = None,
        status_code: int | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        if message is None:
            limits = []
            if total_timeout is not None:
                limits.append(f"total_timeout={total_timeout:g}s")
            if attempts is not None:
                limits.append(f"attempts={attempts}")
            spent = f" after {elapsed:.2f}s" if elapsed is not None else ""
            shown = f" ({', '.join(limits)})" if limits else ""
            message = (
                f"model call timed out{spent}{shown}; raise LLMRetryPolicy.total_timeout "
                "(or the provider's timeout_s) for slow models"
            )
        super().__init__(
            message,
            provider=provider,
            status_code=status_code,
            retryable=retryable,
            request_id=request_id,
            retry_after=retry_after,
        )
        self.elapsed = elapsed
        self.attempts = attempts
        self.total_timeout = total_timeout


class LLMConnectionError(LLMError):
    """The provider could not be reached or dropped the connection."""

    retryable = True


class LLMStatusError(LLMError):
    """The provider answered with an error status. Only 429 and 5xx are retryable."""


class LLMRateLimitError(LLMStatusError):
    """HTTP 429: slow down (``retry_after`` says how long when the provider said)."""

    retryable = True


class LLMServerError(LLMStatusError):
    """HTTP 5xx or an error event inside a stream: the provider failed."""

    retryable = True


class LLMResponseError(LLMError):
    """The provider's response could not be understood (malformed events, a body that is
    neither an event stream nor an answer, bytes that are not UTF-8, ...).

    Attributes:
        usage: The token usage the provider reported before the fault (a ``Usage``; the call
            was billed), or None when none was seen.
    """

    usage: Any = None


class LLMRetryExhausted(LLMError):
    """Every attempt allowed by the retry policy failed.

    Attributes:
        attempts: How many requests were made.
        last_error: The error of the last attempt.
    """

    def __init__(self, message: str | None = None, *, attempts: int, last_error: BaseException) -> None:
        # 0.11 callers pass any exception as last_error and no message.
        if message is None:
            message = (
                f"model call failed after {attempts} attempt(s); last error: {type(last_error).__name__}: {last_error}"
            )
        super().__init__(
            message,
            provider=getattr(last_error, "provider", None),
            status_code=getattr(last_error, "status_code", None),
            retryable=False,
            request_id=getattr(last_error, "request_id", None),
        )
        self.attempts = attempts
        self.last_error = last_error


# --------------------------------------------------------------------------- run control


class CancellationRequested(PowerLoopError):
    """A stop_event or cancellation token asked the run to stop.

    Attributes:
        reason: The reason given to ``CancellationToken.cancel`` (or ``"cancelled"``).
    """

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(f"Run cancelled: {reason}")
        self.reason = reason


class CompactionFailed(PowerLoopError):
    """The context could not be compacted (the summary call failed or returned nothing)."""


class ToolError(PowerLoopError):
    """Base class of errors about tools: registry errors raised to the host, and the kernel's
    reasons a call failed that the model is told about (``ToolNotStarted``,
    ``ToolRaisedBaseException`` in :mod:`power_loop.tools.threads`)."""


class ToolNotFound(ToolError, KeyError):
    """No tool of that name is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "tool not found"


class ToolValidationError(ToolError, ValueError):
    """Tool arguments do not match the tool's schema."""


class SubagentRefused(ToolError):
    """A sub-agent was not started: the depth limit is reached, or the spawn asked for tools
    the calling agent does not have. The message tells the model what to do instead."""


class HookError(PowerLoopError):
    """A hook handler raised, or returned a directive its hook point does not honour."""


class ApprovalError(PowerLoopError, ValueError):
    """An approval could not be decided: the token is unknown, belongs to another session, or
    was used already (a token decides once; a ``precheck`` that failed replaced it with a fresh
    one, listed by ``loop.list_approvals()``).

    Attributes:
        token: The token given.
        session_id: The session given.
    """

    def __init__(self, message: str, *, token: str, session_id: str) -> None:
        super().__init__(message)
        self.token = token
        self.session_id = session_id


class AgentSpecError(PowerLoopError):
    """An agent spec could not be loaded or used: a missing directory, an unreadable file,
    two files declaring the same agent name.

    Attributes:
        field: The spec field concerned (``"max_rounds"``, ``"metadata.owner"``), or None when
            the problem is not about one field.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class SpecValidationError(AgentSpecError, ValueError):
    """A declarative spec is invalid: an unknown key, a missing or badly typed value, text
    that does not parse. The message names the field (and the file, when there is one)."""


class StructuredOutputError(PowerLoopError, ValueError):
    """The model's output does not parse or does not match the requested schema.

    Args:
        reason: What is wrong: ``empty``, ``invalid_json``, ``not_an_object`` or
            ``schema_mismatch``.
        raw_text: The model's text as received.
        detail: Where and how it is wrong (the parser's or the validator's words).
    """

    _WORDS = {
        "empty": "the answer is empty",
        "invalid_json": "the answer is not valid JSON",
        "not_an_object": "the answer is not a JSON object",
        "schema_mismatch": "the answer does not match the schema",
    }

    def __init__(self, *, reason: str, raw_text: str, detail: str = "") -> None:
        words = self._WORDS.get(reason, reason)
        super().__init__(f"{words}: {detail}" if detail else words)
        self.reason = reason
        self.raw_text = raw_text
        self.detail = detail


# --------------------------------------------------------------------------- signals


class ControlSignal(PowerLoopError):
    """Base class of the signals power_loop raises and catches itself (not failures).

    A subclass carries a decision out of code that cannot return it (a tool handler calling
    ``request_user_input``, a provider transport retrying on a fresh connection) to the
    power_loop code that acts on it. Catching ``PowerLoopError`` around such code catches
    these too: re-raise a ``ControlSignal`` you did not mean to handle.
    """
