"""`narrative batch` without ``--lore-files``: the lore comes from the chromadb index, synced from the
lore folder first (`app.runtime.sync_lore`, what the CLI does). Real parts: the bundled SmolLM2 as the batch
model and as the embedder, a chromadb store on disk, one spec and a three-file lore folder.

Checks what only the index path does: the folder is indexed into the store before generating; an
edited entry is re-indexed and regenerates the quest that uses it; a lore file that breaks keeps its
last indexed version in use (the files-only path would lose the entry and fail the quest).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from narrative.batch.output import QuestText
from lore.loader import load_catalog as read_lore_files
from narrative.batch.generator import BatchOptions
from narrative.batch.runner import run_batch


def batch(specs, out, s, options, **kw):
    """`narrative batch` without --lore-files: sync the index (`app.runtime.sync_lore`), then run."""
    from app.runtime import sync_lore

    return run_batch(specs, out, s.batch_model, options, sync_lore(s), **kw)

ROOT = Path(__file__).resolve().parents[3]
LORE = ROOT / "samples" / "lore"
FILES = ["npcs/odile-brask.md", "places/lowmarket.md", "creatures/ember-eel.md"]
SPEC = """\
id: eel-errand
giver: odile-brask
location: lowmarket
objective: Fetch a basket of ember-eels from the Lowmarket stalls for the inn's pie.
stages: [offer, complete]
"""
OPTIONS = BatchOptions(max_chars=24, max_tokens=200, retries=0, lore_budget=200, quality_gate=False)  # about the index, not the text


@pytest.fixture
def world(tmp_path):
    lore = tmp_path / "lore"
    for rel in FILES:
        (lore / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(LORE / rel, lore / rel)
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "eel-errand.yaml").write_text(SPEC)
    from app.settings import load_settings

    s = load_settings(state_dir=tmp_path / "state")
    s.lore.dir = lore
    s.batch_model.n_threads = 1
    s.batch_model.n_seq_max = 1
    return s, lore, specs, tmp_path / "out"


def indexed(s):
    """The entries in the chromadb store under ``s.state_dir``, read back by a fresh index object."""
    from app.runtime import open_index

    index, _ = open_index(s)
    return index, dict(index.entries)


def test_batch_syncs_the_lore_index_then_reindexes_edits_and_keeps_the_last_good_entry(world):
    s, lore, specs, out = world

    first = batch(specs, out, s, OPTIONS, progress=False)  # sync the index, as the CLI does
    assert first.failed == 0 and first.generated == 1, [(r.quest_id, r.error) for r in first.items]
    q = QuestText.model_validate_json((out / "quests" / "eel-errand.json").read_bytes())
    assert list(q.dialogue) == ["offer", "complete"]
    index, entries = indexed(s)
    assert {"odile-brask", "lowmarket", "ember-eel"} <= set(entries)
    assert index.nearest("eel pie", 3), "the store holds no vectors"

    again = batch(specs, out, s, OPTIONS, progress=False)
    assert again.count("skipped") == 1 and again.generated == 0

    # an edit reaches the store and regenerates the quest that uses the entry
    place = lore / "places" / "lowmarket.md"
    place.write_text(place.read_text() + "\nA new smokehouse opened by the ladders.\n")
    dry = batch(specs, out, s, OPTIONS, progress=False, dry_run=True)
    assert [(it.action, it.reasons) for it in dry.plan] == [("generate", ["lore changed: lowmarket"])]
    assert "smokehouse" in indexed(s)[1]["lowmarket"].text
    third = batch(specs, out, s, OPTIONS, progress=False)
    assert third.generated == 1 and third.items[0].reasons == ["lore changed: lowmarket"]

    # a broken file: the index keeps its last good version, so the quest stays up to date
    giver = lore / "npcs" / "odile-brask.md"
    giver.write_text(giver.read_text().replace("kind: npc", "kind: [npc"))
    assert "odile-brask" not in read_lore_files(lore)  # the files-only path loses the entry ...
    kept = batch(specs, out, s, OPTIONS, progress=False, dry_run=True)
    assert [it.action for it in kept.plan] == ["skip"] and kept.failed == 0  # ... the index path does not
