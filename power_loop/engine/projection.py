"""What a run adds to its system prompt beside the conversation: the skills section (read at
the run's start) and the runtime projection (computed every round).

Invariants:

* Nothing here is stored: both live in the run and end with it. What a projector showed is
  acknowledged (``acknowledge``) only after the model's answer to that round is committed,
  so an update is never marked seen by a model call that failed.
* No file or database I/O on the event loop: the skills folder is read in a worker thread,
  a projector's sync ``project`` runs in one too; a projector's ``aproject`` is awaited.
* A projector that reads runtime state (``reads_runtime_state``) is skipped for a session
  that never wrote any, so such runs pay nothing per round.
* A failing projector or an unreadable skills folder is logged and left out of the prompt;
  the run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from .._util import call_in_thread
from ..skills import SkillLoader
from .state import Run

__all__ = ["acknowledge_runtime", "load_skills", "project_runtime"]

log = logging.getLogger("power_loop.engine")


def _skills_section(skills_dir: str | os.PathLike[str]) -> str:
    loader = SkillLoader(skills_dir)
    for error in loader.errors:
        log.warning("skill left out: %s", error)
    return loader.build_system_prompt_section()


async def load_skills(run: Run) -> None:
    """Read the config's ``skills_dir`` (if any) into the run's skills section."""
    skills_dir = run.config.skills_dir
    if skills_dir is None:
        return
    try:
        run.skills_text = await asyncio.to_thread(_skills_section, skills_dir) or None
    except OSError as exc:
        log.warning("skills folder %s could not be read: %s", skills_dir, exc)


async def project_runtime(run: Run) -> None:
    """This round's runtime projection (``AgentLoopConfig.runtime_projectors``)."""
    projectors = run.config.runtime_projectors
    if not projectors:
        return
    store = run.rt.store
    context: dict[str, Any] = {"run_id": run.run_id, "scope": run.scope, "metadata": run.session.metadata}
    run.projection_context = context
    blocks: list[str] = []
    for projector in projectors:
        if getattr(projector, "reads_runtime_state", False) and not run.runtime_used:
            continue
        kwargs = {"store": store, "session_id": run.session_id, "round_index": run.round_index, "context": context}
        try:
            aproject = getattr(projector, "aproject", None)
            if aproject is not None:
                block = await aproject(**kwargs)
            else:
                block = await asyncio.to_thread(call_in_thread, "the runtime projector", projector.project, **kwargs)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("runtime projector %r failed; its block is left out of round %d", projector, run.round_index)
            continue
        if isinstance(block, str) and block.strip():
            blocks.append(block.strip())
    run.runtime_text = "\n\n".join(blocks) or None


async def acknowledge_runtime(run: Run) -> None:
    """Tell the projectors that the model's answer to this round's projection is stored
    (``acknowledge``: the background projector marks the updates it showed as seen)."""
    context, run.projection_context = run.projection_context, None
    if context is None:
        return
    for projector in run.config.runtime_projectors:
        acknowledge = getattr(projector, "acknowledge", None)
        if acknowledge is not None:
            await acknowledge(store=run.rt.store, session_id=run.session_id, context=context)
