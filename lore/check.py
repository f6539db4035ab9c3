"""``narrative lore check DIR``: validate a lore folder the way CI and a designer's editor need it.

Each problem is a `lore.loader.LoreProblem` printed as ``path:line: severity: message``.
Errors: YAML errors, schema violations (including a ``/regex/`` key that does
not compile), duplicate ids, an unknown NPC / faction / tag in a ``known_by``
scope, an unknown ``npc.location`` / ``npc.faction``, a non-constant entry with
no keys at all, a field written twice in one front matter, a bad ``when``
condition (unknown operator, a value of the wrong type, a bad state key: see
`lore.conditions`). Warnings: an entry with an empty body, a ``when`` on an NPC
card (cards are never gated: it is ignored). Regex keys are JavaScript syntax (as in SillyTavern),
translated for Python (`lore.schema.js_regex_to_python`); one that cannot be
translated is an error naming the part.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lore.loader import _FRONT, LoreProblem, _field_line, load_dir, normalize_text
from lore.schema import Kind, LoreEntry, parse_regex_key


def _front(path: Path) -> str:
    try:
        m = _FRONT.match(normalize_text(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError):
        return ""
    return m.group(1) if m else ""


def _line_of_value(front: str, field: str, value: str) -> int:
    """1-based file line of `value` inside the front-matter field `field` (falls back to the field's line)."""
    start = _field_line(front, (field,))
    lines = front.splitlines()
    for i in range(max(0, start - 2), len(lines)):
        if i > start - 2 and re.match(r"^[A-Za-z_][\w-]*\s*:", lines[i]):
            break  # the next top-level field
        if re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", lines[i]):
            return i + 2
    return start


def check_dir(root: Path) -> list[LoreProblem]:
    """All problems of the lore folder `root`, sorted by path and line.

    Raises:
        FileNotFoundError: `root` is not a folder.
    """
    files, problems = load_dir(Path(root))
    entries: list[tuple[Path, LoreEntry]] = [(f.path, e) for f in files for e in f.entries]
    ids = {e.id: e for _, e in entries}
    npcs = {e.id for _, e in entries if e.kind == Kind.npc}
    factions = {e.id for _, e in entries if e.kind == Kind.faction}
    tags = {t for _, e in entries for t in e.tags}
    scope_names = npcs | factions | tags
    for path, e in entries:
        front = _front(path)
        for name in e.known_by:
            if name not in scope_names:
                problems.append(LoreProblem(path, _line_of_value(front, "known_by", name), f"known_by: {name!r} is not an NPC id, a faction id or a tag of any entry"))
        if e.npc is not None:
            for fld, want, kinds in (("location", e.npc.location, None), ("faction", e.npc.faction, factions)):
                if want and (want not in ids or (kinds is not None and want not in kinds)):
                    problems.append(LoreProblem(path, _line_of_value(front, fld, want), f"npc.{fld}: {want!r} is not {'a faction' if kinds is not None else 'an entry'} id"))
        if e.kind != Kind.npc and not e.constant and e.position.value != "prefix" and not e.all_keys():
            problems.append(LoreProblem(path, _field_line(front, ("keys",)), "keys: empty on a non-constant entry (it can only be found by similarity); add keys, or set constant: true"))
        if e.kind == Kind.npc and e.when is not None:
            problems.append(LoreProblem(path, _field_line(front, ("when",)), "when: an NPC card is never gated, so this condition is ignored; put a when on the lore entries it should gate", "warning"))
        if not e.text.strip() and e.kind != Kind.npc:
            problems.append(LoreProblem(path, 0, "empty body: the entry injects only its name", "warning"))
    for path, e in entries:
        problems.extend(_regex_risks(path, e))
        problems.extend(_oversized(path, e))
    return sorted(problems, key=lambda p: (str(p.path), p.line, p.message))


OVERSIZED_WORDS = 5000
"""Words over which an entry is reported: it alone takes ~6,500 tokens of a turn's lore budget
(a few hundred by default), so it is cut or crowds everything else out; split it into entries."""


def _regex_risks(path: Path, e: LoreEntry) -> list[LoreProblem]:
    """Warnings for ``/regex/`` keys with nested quantifiers (catastrophic backtracking on player text)."""
    from lore.regex_guard import MATCH_BUDGET_S, nested_quantifier

    out = []
    front = None
    for fld in ("keys", "secondary_keys"):
        for key in getattr(e, fld):
            parsed = parse_regex_key(key)
            part = nested_quantifier(parsed[0]) if parsed else None
            if part:
                front = _front(path) if front is None else front
                out.append(LoreProblem(path, _line_of_value(front, fld, key[:20]),
                                       f"{fld}: {key!r} has a nested quantifier {part!r}: matching can take exponential time on some lines "
                                       f"(each match stops after {MATCH_BUDGET_S * 1000:.0f} ms and counts as no match); rewrite it without nesting",
                                       "warning"))
    return out


def _oversized(path: Path, e: LoreEntry) -> list[LoreProblem]:
    """A warning for an entry far over the recommended size (`OVERSIZED_WORDS`)."""
    n = len(e.text.split())
    if n <= OVERSIZED_WORDS:
        return []
    return [LoreProblem(path, 0, f"entry {e.id!r} has {n} words (recommended: under {OVERSIZED_WORDS}): it cannot fit a turn's lore budget; split it into several entries", "warning")]


def problems_json(problems: list[LoreProblem]) -> str:
    """Problems as a JSON array of {path, line, severity, message} (for CI annotations)."""
    return json.dumps([{"path": str(p.path), "line": p.line, "severity": p.severity, "message": p.message} for p in problems], indent=2)
