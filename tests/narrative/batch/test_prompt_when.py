"""Build-time quest prompts and state-gated lore (`when:`): no game state at build time, so a gated entry is
never pulled in by its keys; a spec that names it gets it."""

from __future__ import annotations

from pathlib import Path

import yaml

from lore.loader import load_catalog
from narrative.batch.prompt import select_lore
from narrative.batch.spec import parse_spec

ROOT = Path(__file__).resolve().parents[3]
LORE = ROOT / "samples" / "lore"


def spec_with(objective: str, lore: list[str] | None = None):
    doc = yaml.safe_load((ROOT / "samples" / "quests" / "harrows-lamp.yaml").read_text())
    doc["objective"] = objective
    if lore is not None:
        doc["lore"] = lore
    return parse_spec(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), Path("<test>"))


def test_a_gated_entry_is_not_triggered_by_its_keys_but_a_named_one_is_included():
    entries = load_catalog(LORE)
    gated = entries["heron-found"]
    assert gated.when is not None
    spec = spec_with("Ask around Lowmarket about The Heron Found and what was in the chests.")
    named, triggered = select_lore(spec, entries, 5000)
    assert "heron-found" not in {e.id for e in named + triggered}
    ungated = gated.model_copy(update={"when": None})
    named, triggered = select_lore(spec, {**entries, "heron-found": ungated}, 5000)
    assert "heron-found" in {e.id for e in triggered}  # the same entry without its condition is triggered: the key matches
    named, _ = select_lore(spec_with("Ask around Lowmarket.", lore=["heron-found"]), entries, 5000)
    assert "heron-found" in {e.id for e in named}  # named by the spec: included whatever its condition
