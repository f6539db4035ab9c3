"""Idempotent indexing on a real chromadb store: skip unchanged, update one file, survive a broken file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lore.index import LoreIndex
from lore.loader import load_dir
from tests.conftest import SAMPLES

SUBSET = ["npcs/odile-brask.md", "places/cracked-bellows.md", "factions/reedcutters.md", "items/smokeglass.md", "events/vent-nine-cold.md"]


@pytest.fixture
def lore_dir(tmp_path: Path) -> Path:
    root = tmp_path / "lore"
    for rel in SUBSET:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / rel, root / rel)
    return root


def chunk_ids_by_source(index: LoreIndex) -> dict[str, set[str]]:
    return index._existing_by_source()


def test_sample_world_is_valid():
    files, problems = load_dir(SAMPLES)
    assert problems == []
    kinds = [e.kind.value for f in files for e in f.entries]
    assert kinds.count("npc") >= 6 and len(kinds) - kinds.count("npc") >= 20


def test_reindex_unchanged_edit_one_break_one_delete_one(tmp_path, lore_dir, embedder):
    index = LoreIndex(tmp_path / "state", embedder)
    first = index.sync(lore_dir)
    total = len(index)
    assert first.added == total > 0 and first.skipped == 0 and not first.problems

    again = index.sync(lore_dir)
    assert (again.added, again.deleted, again.files_changed) == (0, 0, 0)
    assert again.skipped == total

    before = chunk_ids_by_source(index)
    f = lore_dir / "items/smokeglass.md"
    f.write_text(f.read_text() + "\nSmokeglass rings when struck twice.\n")
    edited = index.sync(lore_dir)
    after = chunk_ids_by_source(index)
    assert edited.files_changed == 1
    assert edited.deleted == len(before["items/smokeglass.md"])
    assert edited.added == len(after["items/smokeglass.md"])
    for src in before:
        if src != "items/smokeglass.md":
            assert after[src] == before[src], f"{src} was touched by an edit of another file"
    assert "rings when struck twice" in index._col.get(ids=sorted(after["items/smokeglass.md"]))["documents"][-1]

    broken = lore_dir / "places/cracked-bellows.md"
    good_ids = after["places/cracked-bellows.md"]
    broken.write_text(broken.read_text().replace("kind: place", "kind: [place"))
    bad = index.sync(lore_dir)
    assert len(bad.problems) == 1
    problem = bad.problems[0]
    assert problem.path == broken and problem.line > 1 and "YAML" in problem.message
    assert str(problem).startswith(f"{broken}:{problem.line}:")
    assert chunk_ids_by_source(index)["places/cracked-bellows.md"] == good_ids  # last good version stays in service
    assert "cracked-bellows" in index.entries and len(index.entries) == len(SUBSET)

    (lore_dir / "events/vent-nine-cold.md").unlink()
    gone = index.sync(lore_dir)
    assert gone.files_removed == 1 and "vent-nine-cold" not in index.entries
    assert "events/vent-nine-cold.md" not in chunk_ids_by_source(index)


def test_schema_error_names_file_and_line(tmp_path, embedder):
    root = tmp_path / "lore"
    root.mkdir()
    (root / "ok.md").write_text("---\nkind: item\nname: Brass Key\nkeys: [key]\n---\nA key.\n")
    (root / "bad.md").write_text("---\nkind: item\nname: Lamp\norder: lots\n---\nA lamp.\n")
    (root / "npc.md").write_text("---\nkind: npc\nname: Nobody\n---\nNo card.\n")
    index = LoreIndex(tmp_path / "state", embedder)
    report = index.sync(root)
    msgs = sorted(str(p) for p in report.problems)
    assert any(m.startswith(f"{root / 'bad.md'}:4:") and "order" in m for m in msgs), msgs
    assert any(m.startswith(f"{root / 'npc.md'}:") and "npc" in m for m in msgs), msgs
    assert set(index.entries) == {"ok"}


def test_changing_the_embedder_re_embeds_everything_and_says_so(tmp_path):
    from lore.index import LoreIndex
    from tests.lore.helpers import FakeHashEmbedder, write_world

    class OtherFake(FakeHashEmbedder):
        """A second fake embedder (another 'model'): 32 dimensions."""

        dim = 32

    root = write_world(tmp_path / "lore", {"a": {"kind": "lore", "name": "A", "text": "Alpha."}, "b": {"kind": "lore", "name": "B", "text": "Beta."}})
    first = LoreIndex(tmp_path / "state", FakeHashEmbedder())
    assert first.sync(root).added == 2 and first.reindex_reason is None
    again = LoreIndex(tmp_path / "state", FakeHashEmbedder())
    assert again.reindex_reason is None and again.sync(root).skipped == 2  # same model: nothing re-embedded
    other = LoreIndex(tmp_path / "state", OtherFake())
    assert other.reindex_reason is not None and "FakeHashEmbedder" in other.reindex_reason and "OtherFake" in other.reindex_reason
    assert set(other.entries) == {"a", "b"} and other.nearest("Alpha.", 1) == []  # opening only reads: no mixed vectors, nothing dropped yet
    assert other.sync(root).added == 2 and other.reindex_reason is None
    assert [eid for eid, _ in other.nearest("Alpha.", 1)] == ["a"]  # 32-dim vectors now, no dimension clash
