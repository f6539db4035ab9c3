"""Batch text-quality post-checks (issue 16): wrong language, instruction echo, markup/garbage, repetition fail an item.

Inputs are shortened from what the bundled SmolLM2 wrote for the sample quests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from narrative.batch.checks import QUALITY_CHECKS, check_quest, failing_reasons
from narrative.batch.output import QuestMeta, validate_generation
from narrative.batch.spec import parse_spec

META = QuestMeta(key="k", model="m", seed=1, prompt_version="v", attempt=1)
GOOD = "Carry this barrel of bluewick oil to the lock before the toll-men wake, and do not let it spill on the way."


def spec(**kw):
    base = "id: q\ngiver: odile-brask\nobjective: Carry the barrel.\nstages: [offer, accept]\n"
    return parse_spec(base + "".join(f"{k}: {json.dumps(v)}\n" for k, v in kw.items()), Path("q.yaml"))


def quest(offer: str, s=None):
    s = s or spec()
    doc = {
        "title": "The Oil Run",
        "summary": "Odile wants a barrel of oil carried to the lock before dawn.",
        "dialogue": {"offer": offer, "accept": "Good. Off you go then, and mind the water."},
        "journal": {"started": "I took the barrel from the inn.", "finished": "I delivered the barrel to the lock."},
    }
    return validate_generation(json.dumps(doc), s, META)


def quality(q, s=None, prompt=None) -> dict[str, str]:
    return {f.check: f.field for f in check_quest(q, s or spec(), set(), prompt=prompt) if f.check in QUALITY_CHECKS}


def test_a_clean_english_quest_has_no_quality_findings():
    assert quality(quest(GOOD)) == {}


@pytest.mark.parametrize(
    "offer, check",
    [
        ("Bonjour, je voudrais que tu portes ce tonneau jusqu'à l'écluse avant l'aube, s'il te plaît.", "language"),
        ("Привіт, віднеси цю бочку до шлюзу до світанку, будь ласка, і не розлий.", "language"),
        ("Quest giver: Odile Brask. Objective: Carry the barrel. Write the quest as JSON.", "instruction_echo"),
        ("As an AI language model, I cannot carry barrels, but here is the quest for you.", "instruction_echo"),
        ("## Sallow Lock (place)\nSallow Lock stands at the southern end of the Sallow Canal.", "markup"),
        ("Take this to Bram Tolley (npc) at the lock, pet, and be quick about it.", "markup"),
        ("{\"offer\": {{{ }}} [[ ]] {\"x\": {}} }}} ]]] {{ {{ }} \\\\ // ## @@ ~~ ^^", "markup"),
        ("the barrel the barrel the barrel the barrel the barrel to the lock the barrel", "repetition"),
    ],
)
def test_bad_text_fails_the_item(offer, check):
    found = quality(quest(offer))
    assert found.get(check) == "dialogue.offer", found
    assert check in failing_reasons(check_quest(quest(offer), spec(), set()))


def test_instruction_echo_catches_copied_prompt_text():
    prompt = "Odile Brask keeps the Cracked Bellows and she says every barrel that passes the lock must be inspected first."
    offer = "Well, every barrel that passes the lock must be inspected first, so hurry along now."
    assert quality(quest(offer), prompt=prompt) == {"instruction_echo": "dialogue.offer"}
    assert quality(quest(offer)) == {}  # without the prompt, only instruction phrases are caught


def test_the_spec_language_decides():
    s = spec(language="uk")
    q = quest("Привіт, віднеси цю бочку до шлюзу до світанку, будь ласка, і не розлий.", s)
    assert "language" not in {f.check for f in check_quest(q, s, set()) if f.field == "dialogue.offer"}
    assert "language" in {f.check for f in check_quest(quest(GOOD, s), s, set()) if f.field == "dialogue.offer"}


def test_the_report_lists_each_reason_with_a_count(tmp_path):
    from narrative.batch.checks import Finding
    from narrative.batch.report import write_batch_report
    from narrative.batch.generator import Attempt, ItemResult
    from narrative.batch.report import BatchSummary

    def f(check: str) -> Finding:
        return Finding("q", "dialogue.offer", check, "error", "x")

    def att(n: int) -> Attempt:
        return Attempt(n, n, None, [], None, 10, 10, 1.0, 1.0)

    items = [
        ItemResult("a", "ok", attempts=[att(1)]),
        ItemResult("b", "flagged", findings=[f("language"), f("markup")], attempts=[att(1), att(2), att(3)]),
        ItemResult("c", "failed", findings=[f("markup")], attempts=[att(1), att(2)], error="1 error findings left (strict)"),
        ItemResult("d", "failed", attempts=[att(1)], error="attempt 1: not JSON"),
    ]
    summary = BatchSummary(items=items, plan=[], wall_s=1.0, spec_problems=[], orphans=[])
    write_batch_report(tmp_path, summary, None)
    head = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert head["reasons"] == {"markup": 2, "invalid output": 1, "language": 1} and head["retried"] == 2
    md = (tmp_path / "report.md").read_text()
    assert "| markup | 2 |" in md and "2 items retried." in md
