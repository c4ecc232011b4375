"""Every result says what to do next: one table (``STATUS_GUIDE``) gives each ``RunStatus`` its
``resumable`` and ``recommended_action``; the docs show that same table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import power_loop
from power_loop import STATUS_GUIDE, StatefulResult, StatusGuide
from power_loop.results import RECOMMENDED_ACTIONS, RUN_STATUSES

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sessions.md"


@pytest.mark.parametrize("status", RUN_STATUSES)
def test_every_status_has_a_guide_and_results_follow_it(status: str) -> None:
    guide = STATUS_GUIDE[status]  # type: ignore[index]
    assert isinstance(guide, StatusGuide)
    assert guide.recommended_action in RECOMMENDED_ACTIONS
    assert guide.meaning.endswith(".") and len(guide.meaning) > 20
    # One rule, so a reader can rely on it: work goes on without a new message exactly when
    # the action is neither "none" nor "send".
    assert guide.resumable == (guide.recommended_action not in ("none", "send"))
    result = StatefulResult(session_id="s", status=status)  # type: ignore[arg-type]
    assert (result.resumable, result.recommended_action) == (guide.resumable, guide.recommended_action)


def test_the_guide_holds_exactly_the_statuses() -> None:
    assert list(STATUS_GUIDE) == list(RUN_STATUSES)
    assert {"paused", "awaiting_approval", "approval_expired", "no_progress"} <= set(RUN_STATUSES)
    with pytest.raises(TypeError):
        STATUS_GUIDE["completed"] = StatusGuide(True, "resume", "x")  # type: ignore[index]


def test_the_decisions() -> None:
    actions = {s: g.recommended_action for s, g in STATUS_GUIDE.items()}
    assert actions == {
        "completed": "none",
        "pending_tools": "resume",
        "waiting_for_input": "submit_input",
        "cancelled": "send",
        "hit_round_limit": "send",
        "budget_exceeded": "raise_budget",
        "degraded": "retry",
        "paused": "resume",
        "awaiting_approval": "approve",
        "approval_expired": "send",
        "no_progress": "send",
    }


def test_the_docs_show_the_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("### What to do next") :]
    rows = re.findall(r"^\| `(\w+)` \| (yes|no) \| `(\w+)` \| (.+?) \|$", section, flags=re.MULTILINE)
    documented = {status: (resumable == "yes", action, meaning) for status, resumable, action, meaning in rows}
    expected = {s: (g.resumable, g.recommended_action, g.meaning) for s, g in STATUS_GUIDE.items()}
    assert documented == expected
    calls = section[section.index("| action | call |") :].split("\n\n")[0]
    actions = set(re.findall(r"^\| `(\w+)` \| ", calls, flags=re.MULTILINE))
    assert actions == set(RECOMMENDED_ACTIONS)


def test_construction_is_unchanged() -> None:
    positional = StatefulResult("s", "completed", "hi", 1, [], [], {}, 0, "run_1", [], None)
    assert positional.ok and not positional.resumable and positional.recommended_action == "none"
    assert "resumable" not in StatefulResult.__dataclass_fields__
    assert {"STATUS_GUIDE", "StatusGuide", "RecommendedAction", "RunStatus"} <= set(power_loop.__all__)
