"""The review page: our generated text beside the designers' own, stage by stage (Markdown).

Input: a batch output folder (``quests/<id>.json``, ``report.json``) and an
import folder (``specs/``, ``reference.json`` from `narrative.batch.importers`).
Per quest: the spec's objective, then a table per stage with both texts, their
lengths in characters, and which names from the spec (the giver's and
factions' lore names, goal target) each text uses. Ends with totals: quests
compared, failures, findings by check, mean lengths per stage.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from narrative.batch.checks import check_quest, lore_vocabulary
from narrative.batch.manifest import atomic_write
from narrative.batch.output import QuestText
from narrative.batch.spec import load_specs


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").strip() or "-"


def _spec_names(spec, lore_names: dict[str, str]) -> list[str]:
    names = [lore_names.get(i, i) for i in spec.referenced_ids()]
    if spec.goal and spec.goal.target:
        names.append(spec.goal.target)
    return [n.removeprefix("the ") for n in names if n]


def _uses(text: str, names: list[str]) -> str:
    hits = [n for n in names if re.search(rf"(?<!\w){re.escape(n)}(?!\w)", text, re.I)]
    return ", ".join(hits) or "-"


def write_review(out: Path, import_dir: Path, report: Path | None = None, cap: int | None = None) -> Path:
    """Write the review page (default ``<out>/review.md``) and return its path.

    `cap` is the character cap the batch ran with (``narrative batch --max-chars``):
    the post-checks need it to tell a text cut at its limit (``cut``) from one
    that merely does not end a sentence (``unfinished``).

    Raises:
        FileNotFoundError: ``reference.json`` or the specs folder is missing.
    """
    from lore.loader import load_dir

    reference = json.loads((import_dir / "reference.json").read_text(encoding="utf-8"))
    specs = {sf.spec.id: sf.spec for sf in load_specs(import_dir / "specs")[0]}
    lore_names: dict[str, str] = {}
    vocab: set[str] = set()
    if (import_dir / "lore").is_dir():
        files, _ = load_dir(import_dir / "lore")
        lore_names = {e.id: e.name for f in files for e in f.entries}
        vocab = lore_vocabulary([e for f in files for e in f.entries])
    batch = {}
    if (out / "report.json").exists():
        batch = {i["quest"]: i for i in json.loads((out / "report.json").read_text())["items"]}
    lengths: dict[str, dict[str, list[int]]] = defaultdict(lambda: {"ours": [], "theirs": []})
    status = Counter()
    checks = Counter()
    body: list[str] = []
    for qid in sorted(reference):
        ref, spec = reference[qid], specs.get(qid)
        path = out / "quests" / f"{qid}.json"
        item = batch.get(qid, {})
        if not path.exists():
            status["failed" if item.get("status") == "failed" else "not generated"] += 1
            if item.get("status") == "failed":
                body += [f"## {qid}: FAILED", "", f"{item.get('error')}", ""]
            continue
        quest = QuestText.model_validate_json(path.read_bytes())
        status["generated"] += 1
        names = _spec_names(spec, lore_names) if spec else []
        body += [f"## {qid}: {quest.title}", "", f"*Source*: `{ref.get('source')}`. *Their title*: {ref.get('title')}. "
                 f"*Objective given to the model*: {spec.objective if spec else '?'} *Names in the spec*: {', '.join(names) or '-'}", ""]
        body += ["| stage | ours | len | names | theirs | len | names |", "|---|---|---|---|---|---|---|"]
        for stage, theirs in ref["stages"].items():
            ours = quest.dialogue.get(stage, "")
            lengths[stage]["ours"].append(len(ours)) if ours else None
            lengths[stage]["theirs"].append(len(theirs))
            body.append(f"| {stage} | {_cell(ours)} | {len(ours)} | {_uses(ours, names)} | {_cell(theirs)} | {len(theirs)} | {_uses(theirs, names)} |")
        body += ["", f"*Our summary*: {quest.summary}", ""]
        body += ["*Our journal*: " + " / ".join(f"[{e.step}] {e.text}" for e in quest.journal), ""]
        fnd = [f.to_dict() for f in check_quest(quest, spec, vocab | lore_vocabulary([], spec), cap)] if spec else []
        for f in fnd:
            checks[(f["check"], f["severity"])] += 1
        if fnd:
            body += ["*Post-check findings*: " + "; ".join(f"{f['severity']} {f['check']} ({f['field']}): {f['message']}" for f in fnd), ""]
    compared = status["generated"]
    head = ["# Review: generated quest text beside the designers' text", "",
            f"Quests in the reference: {len(reference)}; generated and compared: {compared}; "
            f"failed (no valid text after retries, in the last run): {status['failed']}; not generated yet: {status['not generated']}.",
            "Post-check findings are computed here, on the files as they are (see narrative/batch/checks.py)"
            + (f", with the batch's {cap}-character cap." if cap else "."), ""]
    if compared + status["failed"]:
        head.append(f"Failure rate (no valid text after retries): {status['failed'] / (compared + status['failed']):.0%}.")
        head.append("")
    if checks:
        head += ["| check | severity | findings |", "|---|---|---|"] + [f"| {c} | {s} | {n} |" for (c, s), n in sorted(checks.items())] + [""]
    head += ["| stage | mean chars ours | mean chars theirs | n |", "|---|---|---|---|"]
    for stage, L in lengths.items():
        if L["ours"]:
            head.append(f"| {stage} | {sum(L['ours']) / len(L['ours']):.0f} | {sum(L['theirs']) / len(L['theirs']):.0f} | {len(L['ours'])} |")
    head.append("")
    path = report or out / "review.md"
    atomic_write(path, "\n".join(head + body).encode("utf-8"))
    return path
