"""Post-checks on a generated quest: what can be checked mechanically, as findings for a writer.

Checks (``Finding.check``):

* ``placeholder`` (error): template leakage: ``{{name}}``, ``{name}``, ``<tag>``,
  ``[NAME]``, ``TODO``/``TBD``/``FIXME``/``XXX``, ``lorem ipsum``, ``%s``, ``$var``.
* ``must_mention`` (error): a ``must_mention`` phrase appears nowhere (case-insensitive).
* ``forbidden`` (error): a ``forbid`` phrase appears (whole words, case-insensitive).
* ``keep_line`` (error): a ``keep_lines`` text is not verbatim in its field.
* ``unknown_name`` (warning): a capitalized word that is not in the lore catalog
  (names, keys, texts) nor in the spec: likely an invented person or place.
* ``cut`` (warning): a text that stops at its character limit mid-sentence.
* ``unfinished`` (warning): dialogue, summary or journal text not ending in sentence punctuation.
* ``duplicate`` (warning): the same text in two fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from lore.schema import LoreEntry
from narrative.batch.output import QuestText, limit_for
from narrative.batch.spec import QuestSpec


@dataclass(frozen=True)
class Finding:
    """One post-check result. ``field``: ``title``, ``summary``, ``dialogue.<stage>``, ``journal.<step>`` or ``*``."""

    quest: str
    field: str
    check: str
    severity: str  # "error" | "warning"
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


PLACEHOLDERS = [
    (re.compile(r"\{\{[^}]*\}\}|\{[A-Za-z_][A-Za-z0-9_]*\}"), "template braces"),
    (re.compile(r"<[A-Za-z_/][^<>]{0,40}>"), "angle-bracket tag"),
    (re.compile(r"\[[A-Z][A-Z0-9 _'-]{1,30}\]"), "bracketed placeholder"),
    (re.compile(r"\b(TODO|TBD|FIXME|XXX)\b"), "to-do marker"),
    (re.compile(r"lorem ipsum", re.I), "lorem ipsum"),
    (re.compile(r"%[sd]\b|\$\{?[A-Za-z_]\w*"), "format variable"),
]

_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")
_CAP = re.compile(r"(?<![\w'’-])([A-Z][a-z]+(?:['’-][A-Za-z]+)*)")
_SENTENCE_END = re.compile(r"""[.!?…]["'”’)\]]*\s*$""")

COMMON_CAPITALIZED = frozenset(
    """i i'm i'll i've i'd a an the and but or so yet if then when while where what who whom whose which why how
    yes no not oh ah aye well now here there this that these those it it's its you you're you'll your yours we we're
    our us they they're their them he she his her him my me mine do does did don't can can't will won't would
    should could must may might be been is are was were go come take bring find get let look listen please thanks
    thank good fine right sure very just only still even also after before once first last next one two three
    four five six ten some any all every each no none nothing something someone anyone everyone hello hey
    dear sir madam lord lady mister mistress old young north south east west monday sunday god gods
    quest reward journal offer accept decline complete""".split()
)
"""Words that start sentences or are capitalized by habit; never reported as unknown names."""


def lore_vocabulary(entries: Iterable[LoreEntry], spec: QuestSpec | None = None) -> set[str]:
    """Lower-cased words that may appear capitalized: every word of the lore catalog and the spec."""
    vocab: set[str] = set()
    for e in entries:
        parts = [e.name, e.text, *e.keys, *e.secondary_keys, *e.tags]
        if e.npc is not None:
            parts += [e.npc.persona, e.npc.voice, *e.npc.knows, *e.npc.hides, e.npc.greeting or ""]
        for p in parts:
            vocab.update(w.lower() for w in _WORD.findall(p))
    if spec is not None:
        vocab.update(w.lower() for w in _WORD.findall(spec.model_dump_json()))
    return vocab


def _names_in(text: str) -> list[str]:
    return [m.group(1) for m in _CAP.finditer(text)]


def _contains(text: str, phrase: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.I) is not None


def check_quest(quest: QuestText, spec: QuestSpec, vocabulary: set[str], cap: int | None = None) -> list[Finding]:
    """All findings for one quest, in field order then check order."""
    out: list[Finding] = []
    texts = quest.texts()

    def add(field: str, check: str, severity: str, message: str) -> None:
        out.append(Finding(spec.id, field, check, severity, message))

    for field, text in texts.items():
        kept = field.split(".")[-1] in spec.keep_lines and field != "journal"
        for rx, what in PLACEHOLDERS:
            m = rx.search(text)
            if m and not kept:
                add(field, "placeholder", "error", f"{what}: {m.group(0)!r}")
        for phrase in spec.forbid:
            if _contains(text, phrase):
                add(field, "forbidden", "error", f"uses forbidden {phrase!r}")
        unknown = sorted({n for n in _names_in(text) if n.lower() not in vocabulary and n.lower() not in COMMON_CAPITALIZED})
        if unknown and not kept:
            add(field, "unknown_name", "warning", "not in the lore or spec: " + ", ".join(unknown))
        if kept:
            continue
        kind, name = ("title", "title") if field == "title" else ("summary", "summary") if field == "summary" else (
            ("journal", "journal") if field.startswith("journal.") else ("dialogue", field.split(".", 1)[1])
        )
        limit = limit_for(spec, name, kind, cap)
        ends = bool(_SENTENCE_END.search(text))
        if len(text) >= limit - 1 and not ends:
            add(field, "cut", "warning", f"stops at the {limit}-character limit mid-sentence")
        elif field != "title" and not ends:
            add(field, "unfinished", "warning", f"does not end a sentence: ...{text[-30:]!r}")
    everything = "\n".join(texts.values())
    for phrase in spec.must_mention:
        if not _contains(everything, phrase):
            add("*", "must_mention", "error", f"{phrase!r} is never mentioned")
    for key, line in spec.keep_lines.items():
        field = key if key in ("title", "summary") else f"dialogue.{key}"
        if texts.get(field) != line:
            add(field, "keep_line", "error", "hand-written line not kept verbatim")
    seen: dict[str, str] = {}
    for field, text in texts.items():
        norm = " ".join(text.lower().split())
        if norm in seen:
            add(field, "duplicate", "warning", f"same text as {seen[norm]}")
        else:
            seen[norm] = field
    return out


def errors(findings: Iterable[Finding]) -> int:
    return sum(1 for f in findings if f.severity == "error")
