"""Flare (Empyrean Campaign) quests -> quest specs + lore + reference text.

Source format: Flare 1.14 ``mods/empyrean_campaign`` text files (INI-like).
A quest file has ``name=``, ``complete_status=`` and ``[quest]`` blocks, each
with ``requires_status``/``requires_not_status`` and the designers'
``quest_text=`` (the journal line for that stage). NPC files have ``name=``
("Udana, Metalworker") and ``[dialog]`` blocks whose ``set_status=`` starts
quests and whose ``him=``/``her=``/``you=`` lines are the designers' dialogue.

The spec gets the quest name, the giver (the NPC whose dialog sets the quest's
first status) and one step per ``[quest]`` block, described only by its status
ids (e.g. ``emp_krolan_key`` -> "krolan key"): the designers' quest_text and
dialog lines go to ``reference.json`` (journal per step; the giver's lines as
``offer``), never into a spec. This is thin input by construction: Flare's
quest design lives in that text.
"""

from __future__ import annotations

import re
from pathlib import Path

from narrative.batch.importers.common import ImportResult, slug, write_lore, write_outputs
from narrative.batch.spec import QuestSpec, Step

WORLD = (
    "A fantasy world of dungeons, crypts and harbors. Perdition Harbor is a port town; adventurers fight undead, "
    "goblins and worse for gold and lost relics."
)
"""A neutral world summary written for the importer (not Flare text)."""


def _blocks(text: str) -> tuple[dict[str, list[str]], list[tuple[str, dict[str, list[str]]]]]:
    head: dict[str, list[str]] = {}
    blocks: list[tuple[str, dict[str, list[str]]]] = []
    cur = head
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            cur = {}
            blocks.append((m.group(1), cur))
            continue
        if "=" in line:
            k, v = line.split("=", 1)
            cur.setdefault(k.strip(), []).append(v.strip())
    return head, blocks


def _statuses(values: list[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def convert(src: Path, out: Path, limit: int | None = None) -> ImportResult:
    """Convert the Flare corpus at `src` into ``out/specs``, ``out/lore`` and ``out/reference.json``.

    Raises:
        FileNotFoundError: `src` has no ``quests`` folder.
    """
    if not (src / "quests").is_dir():
        raise FileNotFoundError(f"Flare corpus not found (no quests/ folder): {src}")
    npcs = {}
    for f in sorted((src / "npcs").glob("*.txt")):
        head, blocks = _blocks(f.read_text(encoding="utf-8", errors="replace"))
        name = (head.get("name") or [f.stem])[0]
        starts = {s for kind, b in blocks if kind == "dialog" for s in _statuses(b.get("set_status", []))}
        lines = [ln for kind, b in blocks if kind == "dialog" for ln in b.get("him", []) + b.get("her", [])]
        npcs[f.stem] = (name, starts, lines)
    result = ImportResult(out)
    write_lore(out, "lore", "flare-world", "the world", WORLD, {"constant": True})
    result.lore_files = 1
    written: set[str] = set()
    for qf in sorted((src / "quests").glob("*.txt")):
        if limit is not None and len(result.specs) >= limit:
            break
        head, blocks = _blocks(qf.read_text(encoding="utf-8", errors="replace"))
        qname = (head.get("name") or [qf.stem])[0]
        stages = [b for kind, b in blocks if kind == "quest"]
        if not stages:
            result.skipped.append(f"{qf.name}: no [quest] blocks")
            continue
        first = _statuses(stages[0].get("requires_status", []))
        giver_key = next((k for k, (_, starts, _) in npcs.items() if set(first) & starts), None)
        if giver_key is None:
            result.skipped.append(f"{qf.name}: no NPC starts {first}")
            continue
        gname, _, glines = npcs[giver_key]
        gid = slug("npc-" + giver_key)
        if gid not in written:
            person, _, role = gname.partition(",")
            write_lore(out, "npc", gid, person.strip(), "", {"npc": {"persona": f"{person.strip()}, {role.strip() or 'a local'}.", "voice": "Plain, a little formal."}})
            written.add(gid)
            result.lore_files += 1
        steps, journal = [], {}
        for i, b in enumerate(stages, 1):
            req = _statuses(b.get("requires_status", []))
            label = req[-1] if req else f"stage-{i}"
            sid = slug(f"{i}-{label}")
            what = re.sub(r"^emp[_ ]", "", label).replace("_", " ")
            steps.append(Step(id=sid, objective=f"Stage {i} of '{qname}' (game status: {what})."))
            journal[sid] = " ".join(b.get("quest_text", []))
        qid = slug(qf.stem.split("_", 1)[-1])
        spec = QuestSpec(
            id=qid, giver=gid, title=qname, objective=f"Complete the quest '{qname}' for {gname}.", steps=steps,
            tone="classic fantasy adventure", stages=["offer", "accept", "in_progress", "complete"],
            source={"game": "flare", "file": qf.relative_to(src).as_posix()},
        )
        result.specs.append(spec)
        result.reference[qid] = {"game": "flare", "source": qf.relative_to(src).as_posix(), "title": qname,
                                 "stages": {"offer": " ".join(glines[:5])}, "journal": journal}
    write_outputs(result)
    return result
