"""Lore enters a prompt as prose (issue 16): no Markdown heading, (kind) tag or front-matter syntax for a model to copy."""

from __future__ import annotations

import re

from lore.loader import load_dir
from lore.render import plain_text
from lore.render import render_entry as entry_prose
from lore.schema import LoreEntry
from tests.conftest import SAMPLES

MARKUP = re.compile(r"(?m)^\s*#|\((?:npc|place|faction|event|item|creature|lore)\)|^\s*[a-z_]+:\s|\*\*|^\s*-{3,}\s*$|^\s*[-*]\s")


def test_every_sample_entry_renders_without_markup():
    files, problems = load_dir(SAMPLES)
    assert not problems
    for f in files:
        for e in f.entries:
            for speaker in (False, True):
                text = entry_prose(e, speaker=speaker)
                assert not MARKUP.search(text), (e.id, MARKUP.search(text).group(0))
                assert e.name in text


def test_markdown_in_a_body_becomes_sentences():
    body = "## History\nFounded in **3 AS** by [survivors](http://x).\n\n- They wear grey\n- They never fight\n\nkeys: [a, b]\n---\n> A saying"
    assert plain_text(body) == "History.\n\nFounded in 3 AS by survivors.\n\nThey wear grey.\n\nThey never fight.\n\nA saying"
    e = LoreEntry(id="lock", kind="place", name="Sallow Lock", text="Sallow Lock (place) stands at the end of the canal.")
    assert entry_prose(e) == "About Sallow Lock, a place: Sallow Lock stands at the end of the canal."


def test_an_npc_shows_its_secrets_only_to_itself():
    e = LoreEntry(id="o", kind="npc", name="Odile", text="She keeps the inn.",
                  npc={"persona": "An innkeeper.", "voice": "Curt.", "knows": ["The lock opens at dawn"], "hides": ["She leads the smugglers"]})
    other, own = entry_prose(e), entry_prose(e, speaker=True)
    assert "smugglers" not in other and "Curt" not in other and "An innkeeper." in other and "She keeps the inn." in other
    assert "What Odile keeps secret and never says outright: She leads the smugglers." in own
    assert "How Odile speaks: Curt." in own
