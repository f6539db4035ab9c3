"""Convert the D&D 5e SRD 5.1 JSON (5e-bits/5e-database, MIT / SRD under CC-BY-4.0) into lore files.

    python -m lore.importers.srd5e ../shared/corpora/dnd5e_srd --into build/srd-lore

Mapping (one Markdown file per entry, front matter as in ``samples/lore/README.md``):

* races, subraces, racial traits, languages, alignments -> ``kind: lore``
* monsters -> ``kind: creature`` (type, size, alignment, senses, languages,
  special abilities and actions as prose; stat numbers are left out: they are
  rules, not lore an NPC would speak of)
* each background (the SRD has one, the Acolyte) -> ``kind: npc``: persona from
  the background's feature, voice from its first personality trait, ``knows``
  from its ideals and bonds, ``hides`` from its flaws. The SRD has no characters,
  so this NPC is the one the converted world can be talked to through.

Every file records its origin in ``srd_source`` (file and ``index``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ATTRIBUTION = "System Reference Document 5.1 by Wizards of the Coast LLC, CC-BY-4.0, via 5e-bits/5e-database (MIT)"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _names(refs: list[dict] | None) -> list[str]:
    return [r["name"] for r in refs or [] if isinstance(r, dict) and "name" in r]


def _desc(value) -> str:
    if isinstance(value, list):
        return "\n\n".join(str(v) for v in value)
    return str(value or "")


def _write(out: Path, folder: str, front: dict, body: str) -> Path:
    path = out / folder / f"{front['id']}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100) + "---\n" + body.strip() + "\n"
    path.write_text(text, encoding="utf-8")
    return path


def _load(src: Path, name: str) -> list[dict]:
    path = src / f"5e-SRD-{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (expected the 5e-database JSON files)")
    return json.loads(path.read_text(encoding="utf-8"))


def convert(src: Path, out: Path) -> dict[str, int]:
    """Write lore files for the SRD folder `src` into `out`; returns counts per kind.

    Raises:
        FileNotFoundError: a 5e-SRD-*.json file is missing.
    """
    counts = {"lore": 0, "creature": 0, "npc": 0}

    for race in _load(src, "Races"):
        body = "\n\n".join(
            x for x in (race.get("alignment"), race.get("age"), race.get("size_description"), race.get("language_desc")) if x
        )
        traits = _names(race.get("traits"))
        if traits:
            body += "\n\nRacial traits: " + ", ".join(traits) + "."
        plural = race["name"] + ("ves" if race["name"].endswith("f") else "s")
        front = {"id": f"race-{race['index']}", "kind": "lore", "name": race["name"], "keys": [race["name"], plural], "tags": ["race"], "srd_source": f"Races/{race['index']}"}
        _write(out, "races", front, body)
        counts["lore"] += 1

    for sub in _load(src, "Subraces"):
        front = {"id": f"subrace-{sub['index']}", "kind": "lore", "name": sub["name"], "keys": [sub["name"]], "tags": ["race"], "srd_source": f"Subraces/{sub['index']}"}
        _write(out, "races", front, _desc(sub.get("desc")) + f"\n\nA subrace of the {sub['race']['name']}.")
        counts["lore"] += 1

    for trait in _load(src, "Traits"):
        races = ", ".join(_names(trait.get("races")) + _names(trait.get("subraces")))
        front = {"id": f"trait-{trait['index']}", "kind": "lore", "name": trait["name"], "keys": [trait["name"]], "tags": ["trait"], "srd_source": f"Traits/{trait['index']}"}
        _write(out, "traits", front, _desc(trait.get("desc")) + (f"\n\nFound among: {races}." if races else ""))
        counts["lore"] += 1

    for lang in _load(src, "Languages"):
        speakers = ", ".join(lang.get("typical_speakers") or [])
        body = f"{lang['name']} is a {lang.get('type', '').lower()} language"
        body += f", written in the {lang['script']} script" if lang.get("script") else ", with no script of its own"
        body += f". Typical speakers: {speakers}." if speakers else "."
        front = {"id": f"language-{lang['index']}", "kind": "lore", "name": f"{lang['name']} (language)", "keys": [lang["name"]], "tags": ["language"], "srd_source": f"Languages/{lang['index']}"}
        _write(out, "languages", front, body)
        counts["lore"] += 1

    for al in _load(src, "Alignments"):
        front = {"id": f"alignment-{al['index']}", "kind": "lore", "name": al["name"], "keys": [al["name"]], "tags": ["alignment"], "srd_source": f"Alignments/{al['index']}"}
        _write(out, "alignments", front, _desc(al.get("desc")))
        counts["lore"] += 1

    for mon in _load(src, "Monsters"):
        kind = mon.get("type", "creature")
        head = f"The {mon['name']} is a {mon.get('size', '').lower()} {kind}"
        if mon.get("subtype"):
            head += f" ({mon['subtype']})"
        head += f", usually {mon.get('alignment', 'unaligned')}."
        parts = [head]
        if mon.get("languages"):
            parts.append(f"Languages: {mon['languages'].rstrip('.')}.")
        if mon.get("desc"):
            parts.append(_desc(mon["desc"]))
        for group in ("special_abilities", "actions", "legendary_actions"):
            for item in mon.get(group) or []:
                if item.get("desc"):
                    parts.append(f"{item['name']}: {item['desc']}")
        keys = [mon["name"]]
        if mon["name"].lower() != mon["index"].replace("-", " "):
            keys.append(mon["index"].replace("-", " "))
        front = {"id": f"monster-{mon['index']}", "kind": "creature", "name": mon["name"], "keys": keys, "tags": ["monster", _slug(kind)], "srd_source": f"Monsters/{mon['index']}"}
        _write(out, "monsters", front, "\n\n".join(parts))
        counts["creature"] += 1

    for bg in _load(src, "Backgrounds"):
        feature = bg.get("feature") or {}

        def options(key: str, bg: dict = bg) -> list[str]:
            opt = (bg.get(key) or {}).get("from") or {}
            out_ = []
            for o in opt.get("options") or []:
                out_.append(o.get("string") or o.get("desc") or "")
            return [x for x in out_ if x]

        traits, ideals, bonds, flaws = options("personality_traits"), options("ideals"), options("bonds"), options("flaws")
        name = f"{bg['name']} of the Temple" if bg["index"] == "acolyte" else bg["name"]
        persona = (
            f"{name}, a keeper of the temple's lore who has spent a life in the service of the gods. "
            f"{feature.get('name', '')}: {_desc(feature.get('desc')).split(chr(10))[0]}"
        )
        front = {
            "id": f"npc-{bg['index']}",
            "kind": "npc",
            "name": name,
            "keys": [bg["name"], "temple", "priest"],
            "tags": ["srd"],
            "npc": {
                "persona": persona,
                "voice": traits[0] if traits else "Calm and formal.",
                "knows": ideals[:3] + bonds[:2] + ["The races, peoples, tongues and monsters of the world, as the temple's books record them."],
                "hides": flaws[:2],
            },
            "srd_source": f"Backgrounds/{bg['index']}",
        }
        _write(out, "npcs", front, f"An {bg['name'].lower()} who answers travellers' questions about the peoples and creatures of the world.")
        counts["npc"] += 1

    (out / "SOURCE.md").write_text(f"Converted by lore/importers/srd5e.py from {src}.\n\n{ATTRIBUTION}\n", encoding="utf-8")
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="folder with the 5e-SRD-*.json files")
    ap.add_argument("--into", type=Path, required=True, help="output lore folder")
    args = ap.parse_args(argv)
    try:
        counts = convert(args.src, args.into)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {sum(counts.values())} lore files into {args.into}: {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
