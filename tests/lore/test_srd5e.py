"""The D&D SRD converter on the real corpus: every source record becomes a valid lore file."""

import json

from lore.importers.srd5e import convert
from lore.loader import load_dir
from tests.conftest import need_corpora


def test_every_srd_record_converts_to_a_valid_entry(tmp_path):
    src = need_corpora() / "dnd5e_srd"
    counts = convert(src, tmp_path)
    n = {name: len(json.loads((src / f"5e-SRD-{name}.json").read_text())) for name in ("Races", "Subraces", "Traits", "Languages", "Alignments", "Monsters", "Backgrounds")}
    assert counts == {
        "lore": n["Races"] + n["Subraces"] + n["Traits"] + n["Languages"] + n["Alignments"],
        "creature": n["Monsters"],
        "npc": n["Backgrounds"],
    }
    files, problems = load_dir(tmp_path)
    assert problems == []
    entries = {e.id: e for f in files for e in f.entries}
    assert len(entries) == sum(counts.values())
    aboleth = entries["monster-aboleth"]
    assert aboleth.kind.value == "creature" and "Aboleth" in aboleth.keys and "telepath" in aboleth.text
    npc = entries["npc-acolyte"]
    assert npc.npc.knows and npc.npc.hides
    assert aboleth.model_extra["srd_source"] == "Monsters/aboleth"
