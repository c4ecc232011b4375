"""Context compaction: older turns fold into one summary; the store keeps every row.

A small ``context_window`` makes compaction happen after a few turns. The example prints the
context before and after each compaction, the summary message at its head, the stored rows
with and without ``include_compacted=True``, and what ``prune_compacted`` deletes.

The built-in offline model summarizes the user messages it is shown, so the compactor here
overrides ``DefaultCompactor.summarize`` to send it those messages (a real model reads the
transcript ``DefaultCompactor`` sends). Runs offline with the built-in model.
"""

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path

from power_loop import (
    AgentLoopConfig,
    CompactAfterCtx,
    DefaultCompactor,
    HookPoint,
    LLMRequest,
    Message,
    StatefulAgentLoop,
    UserMessage,
    create_llm_service_from_env,
)
from power_loop.compaction import SummaryCall

FACTS = [
    "My name is Ada.",
    "My city is Lyon.",
    "My plan is to learn Rust this winter.",
    "My dog is a beagle called Rex.",
    "My job is flying cargo planes.",
    "My favorite food is ratatouille.",
    "What is my favorite food?",
]


class UserFactsCompactor(DefaultCompactor):
    """DefaultCompactor's trigger and cut, with a summary request the offline model answers."""

    async def summarize(
        self, *, messages: Sequence[Message], previous_summary: str | None, complete: SummaryCall
    ) -> str:
        said = tuple(m for m in messages if isinstance(m, UserMessage))
        request = LLMRequest(
            messages=(*said, UserMessage(content="Please summarize.")), max_tokens=self.summary_max_tokens
        )
        response = await complete(request)  # the loop's model path: retries, events, usage
        new = response.message.text.strip()
        return f"{previous_summary}\n{new}" if previous_summary else new


def on_compacted(ctx: CompactAfterCtx) -> None:
    print(
        f"    compacted: {ctx.messages_before_count} -> {ctx.messages_after_count} messages, "
        f"~{ctx.before_tokens} -> ~{ctx.after_tokens} estimated tokens"
    )


def show(message: dict[str, object]) -> str:
    """One line per message (the summary's line breaks shown as ``|``)."""
    content = str(message.get("content", "")).replace("\n", " | ")
    return f"{message['role']}: {content}"


async def main() -> None:
    llm = create_llm_service_from_env(offline_fallback=True)
    db = str(Path(tempfile.mkdtemp()) / "compaction.db")
    config = AgentLoopConfig(
        system_prompt="You are a concise assistant.",
        context_window=200,  # tiny on purpose: compact from 0.5 * 200 estimated tokens
        compactor=UserFactsCompactor(trigger_ratio=0.5, keep_last_n=4),
    )
    async with StatefulAgentLoop(llm=llm, db_path=db, config=config) as loop:
        loop.hooks.register(HookPoint.COMPACT_AFTER, on_compacted)
        sid = await loop.new_session_async()
        for text in FACTS:
            before = len(await loop.get_messages_async(sid))
            result = await loop.send(text, session_id=sid)
            after = len(await loop.get_messages_async(sid))
            print(f"{text!r} -> {result.final_text!r}")
            print(f"    context: {before} -> {after} messages, {result.usage['calls']} model call(s)")

        context = await loop.get_messages_async(sid)
        print("\nContext the model sees next (summary first):")
        for message in context:
            print("  ", show(message))

        audit = await loop.get_messages_async(sid, include_compacted=True)
        rows = await loop.store.load_messages(sid, include_compacted=True)
        folded = [row.seq for row in rows if row.compacted]
        print(f"\nget_messages: {len(context)} (summary + tail); with include_compacted=True: {len(audit)} rows")
        print(f"  folded seqs: {folded}")

        deleted = await loop.prune_compacted_async(sid, keep_last=2)
        audit = await loop.get_messages_async(sid, include_compacted=True)
        unchanged = await loop.get_messages_async(sid) == context
        print(f"prune_compacted(keep_last=2) deleted {deleted} rows: {len(audit)} stored now")
        print(f"  context unchanged: {unchanged}")


if __name__ == "__main__":
    asyncio.run(main())
