"""``background_run`` and ``check_background``: shell commands that outlive the tool call.

``background_run`` starts a command in the workspace of the call's runtime environment
(through its shell backend, as ``bash`` does) and returns at once with the command's id; the
command runs in the loop's process while the conversation goes on. Its end (status, exit code,
the end of its output) is stored in the session store and shown to the model at its next round
by :class:`~power_loop.projectors.BackgroundRuntimeProjector`; ``check_background`` reports
one command or all of them at any time.

Invariants:

* A command is recorded in the store before it starts, with the identity of the process
  running it and its deadline: after a crash or a restart it is reported ``lost``, never
  forgotten (and on the same machine its process group is stopped).
* A command's process group is killed when its time limit passes or its loop closes
  (recorded ``timed_out`` / ``killed``). A ``*_sync`` call, whose event loop ends with it,
  refuses to start one.
* At most :data:`MAX_RUNNING_PER_SESSION` commands of a session run at once: the count and
  the insert are one transaction.
* What ``check_background`` reports is marked seen only if the command has not changed
  since it was read.
* Outside a run of a ``StatefulAgentLoop``, or with no runtime environment bound, the tools
  answer with an error message, never an exception the model cannot read.
"""

from __future__ import annotations

from ..store.rows import BackgroundTaskRow
from .context import ToolContext, current_tool_context
from .definition import FunctionTool, ToolDefinition
from .runtime_env import shell_target

__all__ = [
    "MAX_BACKGROUND_TIMEOUT_S",
    "LIST_ENDED",
    "MAX_RUNNING_PER_SESSION",
    "background_run",
    "background_tools",
    "check_background",
]

MAX_BACKGROUND_TIMEOUT_S = 6 * 3600
"""The longest time limit a background command may ask for, in seconds."""
MAX_RUNNING_PER_SESSION = 8
"""Background commands a session may have running at once."""
LIST_ENDED = 20
"""Ended commands ``check_background`` lists (the latest); older ones are counted."""


def _context(tool: str) -> ToolContext | str:
    ctx = current_tool_context()
    if ctx is None or ctx.capabilities is None:
        return f"Error: {tool} only works inside an agent session run by StatefulAgentLoop."
    return ctx


def _describe(row: BackgroundTaskRow, *, full: bool) -> str:
    state = row.status
    if row.return_code is not None and row.status != "running":
        state += f", exit code {row.return_code}"
    line = f"{row.task_id} ({state}): {row.command}"
    tail = (row.output_tail or "").strip()
    if full and tail:
        return f"{line}\noutput (end):\n{tail}"
    if full and row.status == "running":
        return f"{line}\n(still running; its output is shown when it ends)"
    return line


async def background_run(command: str, timeout: int = 1800) -> str:
    """Start a shell command in the workspace in the background and return its id at once.

    Use it for long commands (builds, test suites, servers' checks). When the command ends,
    its status and the end of its output are shown to you; check_background reports it
    meanwhile.

    Args:
        command: The command line (run by bash in the workspace).
        timeout: Seconds before the command and its children are killed (1 to 21600).
    """
    ctx = _context("background_run")
    if isinstance(ctx, str):
        return ctx
    workspace, backend = shell_target()
    limit = min(max(int(timeout), 1), MAX_BACKGROUND_TIMEOUT_S)
    try:
        row = await ctx.background.start(
            command, workspace_dir=str(workspace), backend=backend, timeout_s=limit, max_running=MAX_RUNNING_PER_SESSION
        )
    except (ValueError, RuntimeError) as exc:
        return f"Error: {exc}"
    if isinstance(row, list):
        ids = ", ".join(t.task_id for t in row)
        return (
            f"Error: {len(row)} background commands are already running ({ids}); wait for one to end "
            "(check_background) before starting another."
        )
    return (
        f"Started background command {row.task_id}: {command}\n"
        f"It runs for at most {limit}s. Its result is shown to you when it ends; "
        f'check_background(task_id="{row.task_id}") reports it meanwhile.'
    )


async def check_background(task_id: str | None = None) -> str:
    """Report background commands: one in full (status, exit code, end of its output), or
    a line for each of the session's commands.

    Args:
        task_id: The command to report; omit it to list them all.
    """
    ctx = _context("check_background")
    if isinstance(ctx, str):
        return ctx
    if task_id:
        row = await ctx.background.get(str(task_id))
        if row is None:
            known = ", ".join(t.task_id for t in await ctx.background.tasks()) or "none"
            return f"Error: no background command {task_id!r} in this session (known: {known})."
        await ctx.background.mark_seen([row])
        return _describe(row, full=True)
    rows = await ctx.background.tasks()
    if not rows:
        return "No background commands in this session."
    # The running ones and the latest ended ones; older ended ones are only counted.
    running = [r for r in rows if r.status == "running"]
    ended = [r for r in rows if r.status != "running"]
    shown_ended = ended[-LIST_ENDED:]
    await ctx.background.mark_seen(shown_ended)
    lines = [_describe(r, full=False) for r in [*running, *shown_ended]]
    if len(ended) > LIST_ENDED:
        lines.append(f"({len(ended) - LIST_ENDED} older ended commands not listed; ask for one by its id)")
    return "\n".join(lines)


def background_tools() -> list[FunctionTool]:
    """``background_run`` and ``check_background``, ready to register."""
    return [
        FunctionTool(ToolDefinition.from_function(background_run), background_run),
        FunctionTool(ToolDefinition.from_function(check_background), check_background),
    ]
