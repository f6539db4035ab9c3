"""Shared parts of the quest importers: writing specs, lore files and the reference text."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from narrative.batch.manifest import atomic_write
from narrative.batch.spec import QuestSpec


def slug(text: str) -> str:
    """An entry/quest id from any text: lower case, [a-z0-9-], at most 60 chars."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s or "x")[:60].strip("-")


def words(game_id: str) -> str:
    """A game-data id as words: ``MGOAL_FIND_ITEM`` -> ``find item``, ``bandages_box`` -> ``bandages box``."""
    return re.sub(r"[_\s]+", " ", game_id).strip().lower()


@dataclass
class ImportResult:
    """What a converter wrote. ``reference``: quest id -> the designers' own text (never in a spec)."""

    out: Path
    specs: list[QuestSpec] = field(default_factory=list)
    lore_files: int = 0
    skipped: list[str] = field(default_factory=list)
    reference: dict[str, dict] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"{len(self.specs)} specs -> {self.out / 'specs'}, {self.lore_files} lore files -> {self.out / 'lore'}, "
            f"reference text -> {self.out / 'reference.json'}; {len(self.skipped)} skipped"
        )


def write_lore(out: Path, kind: str, entry_id: str, name: str, body: str, extra: dict | None = None) -> None:
    """One lore file (Markdown + YAML front matter, `lore.schema.LoreEntry`) under ``out/lore/<kind>s/``."""
    front = {"id": entry_id, "kind": kind, "name": name, **(extra or {})}
    text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n" + body.strip() + "\n"
    atomic_write(out / "lore" / f"{kind}s" / f"{entry_id}.md", text.encode("utf-8"))


def write_outputs(result: ImportResult) -> None:
    """Write every spec to ``specs/<id>.yaml`` and the reference text to ``reference.json``.

    Each spec is validated (`QuestSpec`) before it is written. The reference file
    holds the designers' dialogue, which must never reach a spec or a prompt.
    """
    for spec in result.specs:
        data = spec.model_dump(mode="json", exclude_defaults=True)
        data = {"id": spec.id, **{k: v for k, v in data.items() if k != "id"}}
        atomic_write(result.out / "specs" / f"{spec.id}.yaml", yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100).encode("utf-8"))
    atomic_write(result.out / "reference.json", (json.dumps(result.reference, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
