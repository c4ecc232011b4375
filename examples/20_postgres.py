"""One store for many processes: PostgreSQL.

The loop is the same; only the store changes: ``StatefulAgentLoop(llm=..., store=open_store(url))``.
The URL comes from ``POWER_LOOP_DB_URL`` (``postgresql://user:password@host:5432/db``, and
``?schema=name`` to keep this application's tables in a schema of their own). Without it, this
example starts a throwaway local server (``power_loop.testing.TemporaryPostgres``: PostgreSQL's
server binaries must be installed, e.g. Debian's ``postgresql``) and removes it afterwards.

Two loops, as two processes of a service would, share a session: each send takes the session's
lease, so their runs never interleave, and the second loop reads what the first one wrote.
Needs ``pip install "power-loop[postgres]"``.
"""

import asyncio
import contextlib
import os
from collections.abc import Iterator

from power_loop import StatefulAgentLoop, create_llm_service_from_env, open_store


@contextlib.contextmanager
def database_url() -> Iterator[str]:
    url = os.environ.get("POWER_LOOP_DB_URL")
    if url:
        yield url
        return
    from power_loop.testing import TemporaryPostgres

    with TemporaryPostgres() as server:
        print("POWER_LOOP_DB_URL is not set: using a throwaway local PostgreSQL server")
        yield server.url


async def main() -> None:
    with database_url() as url:
        first_store, second_store = open_store(url), open_store(url)  # as two processes would
        llm = create_llm_service_from_env(offline_fallback=True)
        try:
            async with (
                StatefulAgentLoop(llm=llm, store=first_store) as first,
                StatefulAgentLoop(llm=llm, store=second_store) as second,
            ):
                sid = await first.new_session_async()
                replies = await asyncio.gather(
                    first.send("My name is Ada.", session_id=sid),
                    second.send("What is the weather like?", session_id=sid),
                )
                for reply in replies:
                    print("<", reply.final_text)
                answer = await second.send("What is my name?", session_id=sid)
                print("<", answer.final_text)
                messages = await second.get_messages_async(sid)
                print(f"{len(messages)} messages in session {sid}, stored in {second.store.path}")
        finally:
            await first_store.close()
            await second_store.close()


if __name__ == "__main__":
    asyncio.run(main())
