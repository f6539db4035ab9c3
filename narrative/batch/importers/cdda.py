"""Cataclysm: Dark Days Ahead missions (``mission_definition`` JSON) -> quest specs + lore + reference text.

Source format: CDDA 0.F-3 ``data/json/npcs/**.json`` (see the corpus's SOURCE.md):
a mission has ``id``, ``name``, ``goal`` (``MGOAL_*``) with ``item``/``count``/
``destination``/``monster_*``/``goal_condition``, ``value`` (cents),
``urgent``, ``deadline_low``/``deadline_high``, ``followup``, and
``dialogue`` with the designers' lines per stage (describe, offer, accepted,
rejected, advice, inquire, success, success_lie, failure).

The spec gets only the game data (goal, item, reward, deadline, giver,
faction, chain); the dialogue goes to ``reference.json`` for the review page.
Stage mapping: offer<-offer, accept<-accepted, decline<-rejected,
in_progress<-inquire, complete<-success, advice<-advice, failure<-failure.
The giver is the NPC defined in the same file as the mission (CDDA keeps one
NPC per file with its missions); missions of the shared ``missiondef.json``
get a generic survivor. Lore written: one card per giver, one entry per
faction (its in-game description), one world entry.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from narrative.batch.importers.common import ImportResult, slug, words, write_lore, write_outputs
from narrative.batch.spec import Goal, QuestSpec

log = logging.getLogger(__name__)

STAGE_MAP = {"offer": "offer", "accepted": "accept", "rejected": "decline", "inquire": "in_progress", "success": "complete", "advice": "advice", "failure": "failure"}
"""CDDA dialogue key -> our stage."""

GOAL_KIND = {
    "MGOAL_FIND_ITEM": "fetch",
    "MGOAL_FIND_ANY_ITEM": "fetch",
    "MGOAL_CONDITION": "fetch",
    "MGOAL_GO_TO": "go_to",
    "MGOAL_GO_TO_TYPE": "go_to",
    "MGOAL_KILL_MONSTER": "kill",
    "MGOAL_KILL_MONSTER_SPEC": "kill",
    "MGOAL_KILL_MONSTER_TYPE": "kill",
    "MGOAL_ASSASSINATE": "kill",
    "MGOAL_FIND_MONSTER": "find",
    "MGOAL_FIND_NPC": "find",
    "MGOAL_RECRUIT_NPC_CLASS": "recruit",
    "MGOAL_RECRUIT_NPC": "recruit",
    "MGOAL_NULL": "talk",
}

WORLD = (
    "New England, some months after the Cataclysm: the dead walk, monsters roam, the government is gone, "
    "and the survivors trade, scavenge and barter for what is left. Money means little; trade goods, food, "
    "ammunition and medicine mean a lot. Survivors gather in refugee centers, ranches and fortified camps."
)
"""A neutral world summary written for the importer (not CDDA text)."""

GENERIC_GIVER = "cdda-survivor"


def _text(v: object) -> str:
    if isinstance(v, dict):
        return str(v.get("str") or v.get("str_sp") or "")
    return str(v or "")


def _load(src: Path) -> list[dict]:
    objs = []
    for f in sorted(src.rglob("*.json")):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s: skipped (%s)", f, exc)
            continue
        for o in data if isinstance(data, list) else [data]:
            if isinstance(o, dict):
                o["_file"] = f.relative_to(src).as_posix()
                objs.append(o)
    return objs


def _goal(m: dict) -> tuple[Goal, str]:
    kind = GOAL_KIND.get(m.get("goal", ""), "other")
    g = m.get("goal", "")
    target = None
    count = m.get("count") if isinstance(m.get("count"), int) and m.get("count", 0) > 0 else None
    if m.get("item"):
        target = words(m["item"])
    elif g == "MGOAL_CONDITION":
        cond = json.dumps(m.get("goal_condition", {}))
        items = [words(x) for x in __import__("re").findall(r'"u_has_item": "([^"]+)"', cond)]
        target = " or ".join(items) or None
    elif m.get("destination"):
        target = words(m["destination"])
    elif m.get("monster_species") or m.get("monster_type"):
        target = words(m.get("monster_species") or m.get("monster_type"))
        count = m.get("monster_kill_goal") or count
    elif m.get("recruit_class"):
        target = words(m["recruit_class"].removeprefix("NC_"))
    sentence = {
        "fetch": f"Bring the giver {count or ''} {target or 'the item they need'}",
        "go_to": f"Travel to {('a ' + target) if target else 'the marked location'}",
        "kill": f"Kill {count or ''} {target or 'the marked target'}",
        "find": f"Find {target or 'the marked target'}",
        "recruit": f"Recruit a {target or 'survivor'} to join the giver's people",
        "talk": "Talk to the giver",
    }.get(kind, "Do what the giver asks")
    return Goal(kind=kind, target=target, count=count), " ".join(sentence.split()) + "."


def convert(src: Path, out: Path, limit: int | None = 60) -> ImportResult:
    """Convert the CDDA corpus at `src` into ``out/specs``, ``out/lore`` and ``out/reference.json``.

    Missions without dialogue are skipped (nothing to compare with). Up to
    `limit` missions, in file then id order.

    Raises:
        FileNotFoundError: `src` does not exist.
    """
    if not src.is_dir():
        raise FileNotFoundError(f"CDDA corpus not found: {src}")
    objs = _load(src)
    classes = {o["id"]: o for o in objs if o.get("type") == "npc_class"}
    factions = {o["id"]: o for o in objs if o.get("type") == "faction"}
    npcs_by_file: dict[str, list[dict]] = {}
    for o in objs:
        if o.get("type") == "npc":
            npcs_by_file.setdefault(o["_file"], []).append(o)
    result = ImportResult(out)
    write_lore(out, "lore", "cataclysm", "the Cataclysm", WORLD, {"constant": True})
    write_lore(out, "npc", GENERIC_GIVER, "the survivor", "", {"npc": {"persona": "A survivor of the Cataclysm who asks the player for help.", "voice": "Plain, tired, direct."}})
    result.lore_files = 2
    written_npcs: set[str] = set()
    written_factions: set[str] = set()

    def faction_entry(fid: str) -> str | None:
        f = factions.get(fid)
        if not f or fid == "no_faction":
            return None
        eid = slug("faction-" + fid)
        if eid not in written_factions:
            write_lore(out, "faction", eid, _text(f.get("name")) or words(fid), _text(f.get("description")) or words(fid))
            written_factions.add(eid)
            result.lore_files += 1
        return eid

    def npc_entry(n: dict) -> tuple[str, str | None]:
        eid = slug("npc-" + n["id"])
        fid = faction_entry(n.get("faction", "")) if n.get("faction") else None
        if eid not in written_npcs:
            cls = classes.get(n.get("class", ""), {})
            name = n.get("name_unique") or (f"the {n['name_suffix']}" if n.get("name_suffix") else _text(cls.get("name")) or words(n["id"]))
            role = _text(cls.get("name")) or words(n.get("class", "survivor").removeprefix("NC_"))
            persona = f"{name}, a {role.lower()} among the survivors."
            if cls.get("job_description"):
                persona += f" Asked about their job, they say: {_text(cls['job_description'])}"
            card = {"persona": persona, "voice": "Plain and direct, shaped by months of survival."}
            if fid:
                card["faction"] = fid
            write_lore(out, "npc", eid, name, "", {"npc": card})
            written_npcs.add(eid)
            result.lore_files += 1
        return eid, fid

    missions = sorted((o for o in objs if o.get("type") == "mission_definition"), key=lambda o: (o["_file"], o["id"]))
    for m in missions:
        dialogue = m.get("dialogue") or {}
        ref_stages = {STAGE_MAP[k]: _text(v) for k, v in dialogue.items() if k in STAGE_MAP and _text(v).strip()}
        if "offer" not in ref_stages:
            result.skipped.append(f"{m['_file']}: {m['id']}: no offer dialogue")
            continue
        if limit is not None and len(result.specs) >= limit:
            break
        givers = [n for n in npcs_by_file.get(m["_file"], [])]
        giver, faction = (npc_entry(givers[0]) if givers else (GENERIC_GIVER, None))
        goal, objective = _goal(m)
        value = m.get("value")
        constraints = []
        if m.get("urgent"):
            constraints.append("The giver needs this urgently; their life or livelihood depends on it.")
        deadline = None
        if m.get("deadline_low") and m.get("deadline_high"):
            deadline = f"{m['deadline_low']} to {m['deadline_high']} days"
        stages = [s for s in ("offer", "accept", "decline", "in_progress", "complete", "advice", "failure") if s in ref_stages or s in ("offer", "accept", "decline", "complete")]
        qid = slug(m["id"].removeprefix("MISSION_"))
        spec = QuestSpec(
            id=qid,
            giver=giver,
            title=_text(m.get("name")) or None,
            objective=objective,
            factions=[faction] if faction else [],
            goal=goal,
            reward=f"trade goods worth about {value // 100} dollars" if isinstance(value, int) and value > 0 else None,
            deadline=deadline,
            constraints=constraints,
            leads_to=slug(m["followup"].removeprefix("MISSION_")) if m.get("followup") else None,
            tone="grim, practical, post-apocalyptic",
            stages=stages,
            source={"game": "cdda", "file": m["_file"], "id": m["id"]},
        )
        result.specs.append(spec)
        result.reference[qid] = {
            "game": "cdda",
            "source": f"{m['_file']}#{m['id']}",
            "title": _text(m.get("name")),
            "describe": _text(dialogue.get("describe")),
            "stages": ref_stages,
        }
    write_outputs(result)
    return result
