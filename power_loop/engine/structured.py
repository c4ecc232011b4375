"""Structured output: checking a run's final answer against its ``response_format``.

:func:`check_final_answer` runs when the model answers without tool calls in a run that asked
for structured output, before the answer and the end of the run commit:

* valid: the parsed value goes to ``run.output`` and the run completes as usual;
* invalid, first time: the answer commits together with a user message naming exactly what
  was wrong (one transaction), and the run goes on with one more round;
* invalid again: the answer, a kernel note and the end of the run commit together; the run
  ends ``degraded`` with ``[degraded: structured output ...]`` and an ``llm_degraded`` event
  (reason ``invalid_output``). Nothing is raised: the session is left consistent and usable.

At most :data:`MAX_CORRECTIONS` corrective rounds per run; they count as rounds (``max_rounds``
and budgets apply to them as to any round).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import StructuredOutputError
from ..events import AgentEventType, LlmDegradedPayload
from ..messages import AssistantMessage, UserMessage
from ..store.rows import Append, WriteOp
from .history import DEGRADED_NAME
from .outcome import CONTINUE, End, StepOutcome
from .state import Run, on_append
from .tool_round import round_end, tools_present

__all__ = ["CORRECTION_NAME", "MAX_CORRECTIONS", "check_final_answer"]

MAX_CORRECTIONS = 1
"""Corrective rounds a run gets after an invalid structured answer."""

CORRECTION_NAME = "structured_output"
"""``name`` of the user message asking the model to correct its answer."""


async def check_final_answer(run: Run, assistant: AssistantMessage, ops: Sequence[WriteOp]) -> StepOutcome | None:
    """Validate ``assistant`` (a final answer) against the run's format.

    Returns None when it is valid (``run.output`` is set; the caller commits the end as
    usual). Otherwise commits ``ops`` with what follows and returns :data:`CONTINUE` (a
    corrective round) or the committed ``degraded`` end.
    """
    fmt = run.response_format
    assert fmt is not None
    try:
        run.output = fmt.validate(assistant.text)
        return None
    except StructuredOutputError as exc:
        error = exc
    if run.output_corrections < MAX_CORRECTIONS:
        run.output_corrections += 1
        ask = UserMessage(content=fmt.correction(error), name=CORRECTION_NAME)
        ask = await on_append(run.rt, run.session_id, run.round_index, ask)
        await run.writer.write([*ops, Append([ask], run_id=run.run_id)])
        await tools_present(run, 0)
        await round_end(run, has_tools=False, text=assistant.text)
        return CONTINUE
    return await _invalid_output(run, error, ops, assistant.text)


async def _invalid_output(run: Run, error: StructuredOutputError, ops: Sequence[WriteOp], text: str) -> End:
    answers = run.output_corrections + 1
    final = f"[degraded: structured output invalid after {answers} answers — {str(error)[:300]}]"
    await run.emitter.emit(
        AgentEventType.LLM_DEGRADED,
        LlmDegradedPayload(
            reason="invalid_output", attempts=answers, error_type=type(error).__name__, error_message=str(error)
        ),
        round_index=run.round_index,
    )
    # Named, so it stays in the history for the application but out of every model request.
    note = await on_append(run.rt, run.session_id, run.round_index, AssistantMessage(content=final, name=DEGRADED_NAME))
    finish = run.finish_op("degraded", final_text=final)
    await run.writer.write([*ops, Append([note], run_id=run.run_id), finish])
    await run.after_commit(tools_present(run, 0), "round_tools_present event")
    await run.after_commit(round_end(run, has_tools=False, text=text), "round end")
    return End("degraded", final, reason="invalid_output", committed=True)
