"""Converters on the real corpora (../shared/corpora; skipped where absent): CDDA missions and Flare quests
become valid specs whose lore exists, and the designers' dialogue never reaches a spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lore.loader import load_dir
from narrative.batch.importers import cdda, flare
from narrative.batch.prompt import build_prompt
from narrative.batch.spec import load_specs

CORPORA = Path(__file__).resolve().parents[4] / "shared" / "corpora"


def corpus(name: str) -> Path:
    if not (CORPORA / name).is_dir():
        pytest.skip(f"needs the shared corpus {CORPORA / name} (present on the team's machines only)")
    return CORPORA / name


def check_import(out: Path, minimum: int) -> tuple[list, dict]:
    specs, problems = load_specs(out / "specs")
    assert problems == []
    assert len(specs) >= minimum
    files, lore_problems = load_dir(out / "lore")
    assert lore_problems == []
    entries = {e.id: e for f in files for e in f.entries}
    reference = json.loads((out / "reference.json").read_text())
    for sf in specs:
        build_prompt(sf.spec, entries, 1200)  # every named entry exists; the giver is an npc
        spec_text = sf.path.read_text()
        prompt = build_prompt(sf.spec, entries, 1200)
        for stage, line in reference[sf.spec.id]["stages"].items():
            if len(line) > 25:  # short lines ("Thanks!") may coincide with anything
                assert line not in spec_text and line not in prompt.user and line not in prompt.system, (sf.spec.id, stage)
    return specs, reference


def test_cdda_missions_convert_without_the_designers_dialogue(tmp_path):
    result = cdda.convert(corpus("cdda_npcs_missions"), tmp_path, limit=60)
    specs, reference = check_import(tmp_path, 50)
    assert len(result.specs) == len(specs) == len(reference)
    kinds = {sf.spec.goal.kind for sf in specs}
    assert {"fetch", "kill"} <= kinds
    sample = reference[specs[0].spec.id]
    assert {"offer", "accept", "decline"} <= set(sample["stages"])
    extra = [sf.spec for sf in specs if "advice" in sf.spec.stages]
    assert extra, "CDDA advice lines need the advice stage"


def test_flare_quests_convert_with_steps(tmp_path):
    result = flare.convert(corpus("flare_empyrean_campaign"), tmp_path)
    specs, reference = check_import(tmp_path, 3)
    krolan = next(sf.spec for sf in specs if sf.spec.id == "krolan")
    assert krolan.giver == "npc-udana" and len(krolan.steps) == 3
    journal = reference["krolan"]["journal"]
    assert "Perdition Mines" in " ".join(journal.values())
    assert "Perdition Mines" not in (tmp_path / "specs" / "krolan.yaml").read_text()


def test_review_puts_our_text_beside_theirs(tmp_path):
    from narrative.batch.importers.review import write_review
    from narrative.batch.output import JournalEntry, QuestMeta, QuestText

    imp = tmp_path / "import"
    cdda.convert(corpus("cdda_npcs_missions"), imp, limit=3)
    spec = load_specs(imp / "specs")[0][0].spec
    quest = QuestText(
        id=spec.id, title="Boxes", summary="Someone wants boxes.",
        dialogue={s: f"Our {s} line about {spec.goal.target}." for s in spec.stages},
        journal=[JournalEntry(step=s, text="Bring the boxes.") for s in spec.journal_steps()],
        meta=QuestMeta(key="k", model="m", seed=1, prompt_version="v", attempt=1),
    )
    out = tmp_path / "out"
    (out / "quests").mkdir(parents=True)
    (out / "quests" / f"{spec.id}.json").write_bytes(quest.dump())
    page = write_review(out, imp).read_text()
    theirs = json.loads((imp / "reference.json").read_text())[spec.id]["stages"]["offer"]
    row = next(line for line in page.splitlines() if line.startswith("| offer |") and "Our offer" in line)
    assert theirs.replace("|", "\\|").strip() in row
    assert spec.goal.target in row.split("|")[4]  # the names column of our text
    assert "generated and compared: 1" in page and "not generated yet: 2" in page

    # a line that stops at the batch's character cap is 'cut' only when the review knows the cap
    stage = spec.stages[0]
    capped = quest.model_copy(update={"dialogue": {**quest.dialogue, stage: "Bring me the boxes and"}})
    (out / "quests" / f"{spec.id}.json").write_bytes(capped.dump())
    assert f"unfinished (dialogue.{stage})" in write_review(out, imp, tmp_path / "a.md").read_text()
    assert f"cut (dialogue.{stage})" in write_review(out, imp, tmp_path / "b.md", cap=22).read_text()
