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

Text-quality checks (issue 16): each fails the item (error), so it is retried
with the next seed up to ``retries`` and, when every attempt has it, the item is
not a clean ``ok``:

* ``language`` (error): a text of 6+ words not in the spec's ``language``
  (default ``en``): for English, under 6% common English function words, or
  letters mostly outside the Latin script; for other languages, letters mostly
  outside that language's script (`LANGUAGE_SCRIPTS`).
* ``instruction_echo`` (error): a text that repeats the writer's instructions:
  an instruction phrase (``as an AI``, ``quest giver:``, ``objective:``,
  ``in JSON``...), or 8+ consecutive words of the prompt when it is given.
* ``markup`` (error): Markdown or lore-file syntax in a text (a ``#`` heading,
  ``**bold**``, a ``(place)`` kind tag after a name, a ``key: value`` front-matter
  line, ``---``), or more than 8% of its characters outside letters, digits,
  spaces and ordinary punctuation (brace and symbol garbage).
* ``repetition`` (error): a word 3-gram three times or more in one text, or
  over 30% of its 4-grams repeats (a model stuck in a loop).
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


QUALITY_CHECKS = frozenset({"language", "instruction_echo", "markup", "repetition"})
"""Checks of text a designer would not keep: an item whose best attempt still has one failed (see `failing_reasons`)."""

LANGUAGE_SCRIPTS = {  # language code -> a regex of the letters of its script
    "en": r"[A-Za-z]", "fr": r"[A-Za-zÀ-ÿŒœ]", "de": r"[A-Za-zÄÖÜäöüß]", "es": r"[A-Za-zÁÉÍÑÓÚÜáéíñóúü]",
    "it": r"[A-Za-zÀ-ÿ]", "pt": r"[A-Za-zÀ-ÿ]", "pl": r"[A-Za-zĄĆĘŁŃÓŚŹŻąćęłńóśźż]",
    "ru": r"[\u0400-\u04ff]", "uk": r"[\u0400-\u04ff]", "el": r"[\u0370-\u03ff]",
    "ja": r"[\u3040-\u30ff\u4e00-\u9fff]", "zh": r"[\u4e00-\u9fff]", "ko": r"[\uac00-\ud7af\u1100-\u11ff]",
    "th": r"[\u0e00-\u0e7f]", "ar": r"[\u0600-\u06ff]", "he": r"[\u0590-\u05ff]",
}
ENGLISH_FUNCTION_WORDS = frozenset(
    """the a an and or but of to in on at by for with from as is are was were be been it its he she they them his her their
    you your we our i me my this that these those there here not no do does did have has had will would can could
    should must may might what who where when why how which if then than so up out into over about all some any
    one two just only very more most""".split()
)
INSTRUCTION_PHRASES = (
    "as an ai", "language model", "you are a writer", "write the text", "write a quest", "quest giver:", "objective:",
    "working title:", "factions involved:", "other people involved:", "step 1 [", "reward:", "deadline:",
    "in json", "json object", "the quest spec", "never invent", "placeholders, templates", "# lore",
)
_MARKUP = [
    (re.compile(r"(?m)^\s*#{1,6}\s+\S"), "a Markdown heading"),
    (re.compile(r"\*\*[^*]+\*\*|__[^_]+__"), "bold markup"),
    (re.compile(r"\((?:npc|place|faction|event|item|creature|lore)\)", re.I), "a lore kind tag"),
    (re.compile(r"(?m)^\s*(?:id|kind|name|keys|known_by|tags|npc|persona|voice|knows|hides)\s*:\s"), "a front-matter field"),
    (re.compile(r"(?m)^\s*-{3,}\s*$"), "a '---' rule"),
    (re.compile(r"```"), "a code fence"),
]
_ORDINARY = re.compile(r"[\w\s.,;:!?'\"’‘“”()\-–—…]")


def language_problem(text: str, language: str) -> str | None:
    """Why `text` is not in `language` (a code of `LANGUAGE_SCRIPTS`), or None. Texts under 6 words pass."""
    words = re.findall(r"\w+", text)
    if len(words) < 6:
        return None
    letters = [c for c in text if c.isalpha()]
    script = LANGUAGE_SCRIPTS.get(language)
    if script is not None and letters:
        inside = sum(1 for c in letters if re.match(script, c))
        if inside / len(letters) < 0.8:
            return f"only {100 * inside // len(letters)}% of its letters are in the {language!r} script"
    if language == "en":
        share = sum(1 for w in words if w.lower() in ENGLISH_FUNCTION_WORDS) / len(words)
        if share < 0.06:
            return f"only {100 * share:.0f}% common English words"
    return None


def _echo(text: str, prompt: str | None) -> str | None:
    low = " ".join(text.lower().split())
    for phrase in INSTRUCTION_PHRASES:
        if phrase in low:
            return f"repeats the instruction {phrase!r}"
    if prompt:
        words = re.findall(r"\w+", low)
        grams = {" ".join(words[i : i + 8]) for i in range(len(words) - 7)}
        pw = re.findall(r"\w+", prompt.lower())
        for i in range(len(pw) - 7):
            g = " ".join(pw[i : i + 8])
            if g in grams:
                return f"copies the prompt: {g!r}"
    return None


def _markup(text: str) -> str | None:
    for rx, what in _MARKUP:
        m = rx.search(text)
        if m:
            return f"{what}: {m.group(0).strip()[:40]!r}"
    if len(text) >= 20:
        odd = sum(1 for c in text if not _ORDINARY.match(c))
        if odd / len(text) > 0.08:
            return f"{100 * odd // len(text)}% of its characters are symbols or braces"
    return None


def _repetition(text: str) -> str | None:
    words = [w.lower() for w in re.findall(r"\w+", text)]
    tri: dict[str, int] = {}
    for i in range(len(words) - 2):
        g = " ".join(words[i : i + 3])
        tri[g] = tri.get(g, 0) + 1
    worst = max(tri.items(), key=lambda kv: kv[1], default=("", 0))
    if worst[1] >= 3:
        return f"{worst[0]!r} {worst[1]} times"
    quads = [" ".join(words[i : i + 4]) for i in range(len(words) - 3)]
    if len(quads) >= 10:
        repeated = len(quads) - len(set(quads))
        if repeated / len(quads) > 0.3:
            return f"{100 * repeated // len(quads)}% of its 4-word runs repeat"
    return None


def failing_reasons(findings: Iterable["Finding"]) -> list[str]:
    """The `QUALITY_CHECKS` an item's findings fail, sorted: the reasons a report gives for a failed item."""
    return sorted({f.check for f in findings if f.check in QUALITY_CHECKS and f.severity == "error"})


def check_quest(quest: QuestText, spec: QuestSpec, vocabulary: set[str], cap: int | None = None, prompt: str | None = None) -> list[Finding]:
    """All findings for one quest, in field order then check order.

    Args:
        prompt: the prompt's text (system and user), for the ``instruction_echo``
            check's 8-word overlap; without it only instruction phrases are caught.
    """
    out: list[Finding] = []
    texts = quest.texts()
    language = getattr(spec, "language", None) or "en"

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
        if not kept:
            for check, why in (("language", language_problem(text, language)), ("instruction_echo", _echo(text, prompt)),
                               ("markup", _markup(text)), ("repetition", _repetition(text))):
                if why:
                    add(field, check, "error", why)
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
