"""Declarative agents: specs in YAML files, run by name through ``run_agent``.

Each ``*.yaml`` file of a directory declares one agent (name, role, tools, limits, lifecycle).
Loading is strict: an unknown key or a bad value stops the load with an error naming the file
and the field. ``register_spawn_agent(registry, specs=directory)`` lists the agents in the
``run_agent`` tool, so the model knows what it can call. The same specs run from host code
with ``run_agent_spec``.
"""

import asyncio
import tempfile
from pathlib import Path

from power_loop import (
    SpecValidationError,
    StatefulAgentLoop,
    ToolRegistry,
    create_llm_service_from_env,
    load_agent_specs,
    register_spawn_agent,
    run_agent_spec,
)

SPECS = {
    "summarizer.yaml": """\
name: summarizer
system_prompt: You summarize incident reports in one sentence.
tools: []
max_rounds: 2
lifecycle: linked
metadata: {team: sre}
""",
    "echo.yaml": """\
name: echo
system_prompt: You repeat what you are given.
tools: []
max_rounds: 1
""",
}


async def main() -> None:
    work = Path(tempfile.mkdtemp())
    specs_dir = work / "specs"
    specs_dir.mkdir()
    for name, text in SPECS.items():
        (specs_dir / name).write_text(text, encoding="utf-8")
    print("agents:", sorted(load_agent_specs(specs_dir)))

    (work / "broken.yaml").write_text("name: broken\nsystem_prompt: x\nmax_round: 3\n", encoding="utf-8")
    try:
        load_agent_specs(work)  # the typo `max_round` is refused, naming file and field
    except SpecValidationError as exc:
        print("refused:", exc)

    registry = register_spawn_agent(ToolRegistry(), specs=specs_dir)
    llm = create_llm_service_from_env(offline_fallback=True)
    async with StatefulAgentLoop(llm=llm, db_path=str(work / "agents.db"), tool_registry=registry) as loop:
        sid = await loop.new_session_async()
        result = await loop.send(
            'run_agent(spec="summarizer", input="Incident: the 02:00 deploy failed because the disk was full")',
            session_id=sid,
        )
        print(result.final_text)
        # The same spec from host code: 0.11's dict comes back.
        spec = load_agent_specs(specs_dir)["echo"]
        print(await run_agent_spec(spec, "The build is green again.", parent_loop=loop))


if __name__ == "__main__":
    asyncio.run(main())
