"""The paraphrase question set (tests/data/retrieval_paraphrases.yaml) really avoids each entry's words (issue 16)."""

from __future__ import annotations

from pathlib import Path

import yaml

from lore.keywords import KeywordIndex
from lore.loader import load_dir
from lore.retrieve import knows
from tests.conftest import ROOT, SAMPLES


def test_no_paraphrase_names_its_entry_or_a_key():
    cases = yaml.safe_load((ROOT / "tests" / "data" / "retrieval_paraphrases.yaml").read_text(encoding="utf-8"))["cases"]
    files, problems = load_dir(Path(SAMPLES))
    assert not problems
    entries = {e.id: e for f in files for e in f.entries}
    kw = KeywordIndex()
    kw.rebuild(entries.values())
    assert len(cases) >= 30
    for c in cases:
        e = entries[c["expect"]]
        assert c["expect"] not in kw.match(c["line"]), (c["line"], kw.match(c["line"])[c["expect"]])
        assert knows(entries[c["npc"]], e), c
        npc = entries[c["npc"]].npc
        assert c["expect"] not in (npc.location, npc.faction) and not e.constant and e.position.value != "prefix", c
