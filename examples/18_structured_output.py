"""Structured output: ask for a schema, get a validated value in ``result.output``.

``send(..., response_format=City)`` asks the provider's native JSON-schema mode for the
answer (OpenAI's ``response_format``, Anthropic's ``output_config.format``), validates the
final answer with the pydantic class, and gives the model one corrective round when the
answer does not match. Here a scripted model answers badly once, then correctly; with a real
provider, pass ``create_llm_service_from_env()`` as ``llm`` instead.
"""

import asyncio
import tempfile
from pathlib import Path

import pydantic

from power_loop import StatefulAgentLoop, StructuredOutputSpec, parse_structured
from power_loop.testing import ScriptedLLM, text_reply


class City(pydantic.BaseModel):
    name: str
    country: str
    population: int


async def main() -> None:
    llm = ScriptedLLM(
        [
            # First answer: fenced JSON with a population the schema refuses.
            text_reply('```json\n{"name": "Oslo", "country": "Norway", "population": "about 700k"}\n```'),
            # After the corrective message: a valid answer.
            text_reply('{"name": "Oslo", "country": "Norway", "population": 709037}'),
            # A second send with a plain JSON schema dict.
            text_reply('{"capital": "Oslo"}'),
        ]
    )
    with tempfile.TemporaryDirectory() as tmp:
        async with StatefulAgentLoop(llm=llm, db_path=str(Path(tmp) / "agent.db")) as loop:
            sid = await loop.new_session_async()
            result = await loop.send("Tell me about the capital of Norway.", sid, response_format=City)
            print(result.status, "after", result.rounds, "rounds:", repr(result.output))
            print("corrective message:", llm.requests[1].messages[-1].text.splitlines()[0])

            schema = {"type": "object", "properties": {"capital": {"type": "string"}}, "required": ["capital"]}
            spec = StructuredOutputSpec("capital", schema)
            second = await loop.send("And only the capital, please.", sid, response_format=spec)
            print(second.status, second.output)

    # parse_structured works on any text, as in 0.11.
    print(parse_structured('```json\n{"ok": true}\n```', schema={"type": "object", "required": ["ok"]}))


if __name__ == "__main__":
    asyncio.run(main())
