"""No-progress detection (``AgentLoopConfig.no_progress``).

Two signs that a run goes round in circles, counted over the run:

* the same tool call (same tool, same arguments, compared as parsed JSON) made
  ``repeat_limit`` times: before the batch runs, the repeated call is not run;
* ``repeat_limit`` rounds in a row with a call answered without running (arguments that do
  not parse or validate, an unknown tool).

``stop`` ends the run ``no_progress``; ``nudge`` tells the model once (in the repeated call's
result, or appended to the invalid calls' results) and stops the next time. Every call still
gets exactly one result.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from ..events import AgentEventType, NoProgressStatusPayload
from ..guards import NoProgressPolicy
from ..messages import ToolCall
from .state import Run
from .tool_batch import ToolOutcome

__all__ = ["Progress", "after_batch", "before_batch"]


@dataclass
class Progress:
    """What a run has done so far, for the policy."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    invalid_rounds: int = 0
    nudged: bool = False


def _key(call: ToolCall) -> tuple[str, str]:
    try:
        canonical = json.dumps(json.loads(call.arguments or "{}"), sort_keys=True, separators=(",", ":"))
    except ValueError:
        canonical = call.arguments or ""
    return call.name, canonical


def _progress(run: Run) -> Progress:
    if not isinstance(run.progress, Progress):
        run.progress = Progress()
    return run.progress


async def _report(run: Run, policy: NoProgressPolicy, reason: str, tool: str, repeats: int, action: str) -> None:
    await run.emitter.emit(
        AgentEventType.STATUS_CHANGED,
        NoProgressStatusPayload(reason=reason, tool_name=tool, repeats=repeats, action=action),
        round_index=run.round_index,
    )


async def before_batch(run: Run, calls: Sequence[ToolCall]) -> tuple[dict[str, ToolOutcome], bool]:
    """Count the turn's calls. Returns the calls answered without running (by id) and whether
    the run stops (then every call of the turn is among them)."""
    policy = run.config.no_progress
    if policy is None:
        return {}, False
    progress = _progress(run)
    repeated: list[ToolCall] = []
    for call in calls:
        key = _key(call)
        progress.calls[key] += 1
        if progress.calls[key] >= policy.repeat_limit:
            repeated.append(call)
    if not repeated:
        return {}, False
    first = repeated[0]
    times = progress.calls[_key(first)]
    if policy.action == "stop" or progress.nudged:
        await _report(run, policy, "repeated_call", first.name, times, "stop")
        note = f"[not run: no progress: {first.name} was called {times} times with the same arguments; the run stopped]"
        return {c.id: ToolOutcome(c, note, True, "skipped") for c in calls}, True
    progress.nudged = True
    await _report(run, policy, "repeated_call", first.name, times, "nudge")
    answered = {}
    for call in repeated:
        count = progress.calls[_key(call)]
        note = (
            f"[not run: you already called {call.name} with these exact arguments {count - 1} times and got its "
            "result each time. Calling it again will not change anything: use the results you have, try "
            "different arguments or another approach, or give your answer. Next time the run stops.]"
        )
        answered[call.id] = ToolOutcome(call, note, True, "skipped")
    return answered, False


async def after_batch(run: Run, outcomes: list[ToolOutcome]) -> bool:
    """Count a round whose calls were answered without running; whether the run stops (a
    nudge is appended to those answers instead, once)."""
    policy = run.config.no_progress
    if policy is None:
        return False
    progress = _progress(run)
    invalid = [i for i, o in enumerate(outcomes) if o.status == "failed" and not o.executed]
    if not invalid:
        progress.invalid_rounds = 0
        return False
    progress.invalid_rounds += 1
    if progress.invalid_rounds < policy.repeat_limit:
        return False
    tool = outcomes[invalid[0]].call.name
    if policy.action == "stop" or progress.nudged:
        await _report(run, policy, "invalid_arguments", tool, progress.invalid_rounds, "stop")
        return True
    progress.nudged = True
    await _report(run, policy, "invalid_arguments", tool, policy.repeat_limit, "nudge")
    note = (
        f"\n[note: {policy.repeat_limit} rounds in a row had tool calls that could not run. Read the error above "
        "and the tool's parameter schema, and send arguments that match it, or answer without the tool. "
        "Next time the run stops.]"
    )
    for i in invalid:
        o = outcomes[i]
        outcomes[i] = replace(o, content=o.content + note)
    return False
