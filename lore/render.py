"""Every rendering of a lorebook entry as text, side by side.

==================  ==============================================  ===========================
function            where the text goes                             used by
==================  ==============================================  ===========================
`render_entry`      a prompt, as prose (no markup for a model to    `lore.retrieve` (token
                    copy): dialogue (stable prefix, turn lore)      costs), `narrative.dialogue`,
                    and batch (a quest prompt's lore section)       `narrative.batch.prompt`
`entry_document`    the embedder and BM25 (what similarity sees)    `lore.index`, `lore.lexical`
==================  ==============================================  ===========================

Kept together so a change to what the model reads and a change to what
retrieval sees are made (and reviewed) in one place.
"""

from __future__ import annotations

import re

from lore.schema import LoreEntry

KIND_WORDS = {
    "npc": "a person", "place": "a place", "faction": "a group", "event": "an event",
    "item": "a thing", "creature": "a creature", "lore": "something people know",
}

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_RULE = re.compile(r"^\s*(?:-{3,}|\*{3,}|_{3,}|={3,})\s*$")
_FIELD = re.compile(r"^\s*[a-z_][a-z0-9_-]*\s*:\s*(?:\[.*\]|[\w./-]*)\s*$")  # `keys: [a, b]`, `kind: place`
_QUOTE = re.compile(r"^\s*>\s?")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS = re.compile(r"(\*\*|__|\*|_|`)(?=\S)(.+?)(?<=\S)\1")
_KIND_TAG = re.compile(r"\s*\((?:npc|place|faction|event|item|creature|lore)\)", re.IGNORECASE)
_END = re.compile(r"[.!?…:;]['\"”’)]*$")


def plain_text(markdown: str) -> str:
    """Markdown -> plain paragraphs: no headings, emphasis, links, list marks, quotes, rules or ``field: value`` lines.

    A heading or a list item becomes a sentence (a full stop is added when it
    has none); paragraphs stay separated by one blank line.
    """
    paragraphs: list[str] = []
    cur: list[str] = []

    def flush() -> None:
        if cur:
            paragraphs.append(" ".join(cur))
            cur.clear()

    for raw in markdown.replace("\r\n", "\n").split("\n"):
        line = raw.rstrip()
        if not line.strip() or _RULE.match(line) or line.strip().startswith("```"):
            flush()
            continue
        if _FIELD.match(line):
            continue
        m = _HEADING.match(line)
        if m:
            flush()
            cur.append(_sentence(_inline(m.group(1))))
            flush()
            continue
        if _BULLET.match(line):
            flush()
            cur.append(_sentence(_inline(_BULLET.sub("", line))))
            flush()
            continue
        cur.append(_inline(_QUOTE.sub("", line)).strip())
    flush()
    return "\n\n".join(p for p in paragraphs if p)


def _inline(text: str) -> str:
    text = _LINK.sub(r"\1", text)
    for _ in range(2):  # nested emphasis
        text = _EMPHASIS.sub(r"\2", text)
    text = _KIND_TAG.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def _sentence(text: str) -> str:
    return text if not text or _END.search(text) else text + "."


def render_entry(entry: LoreEntry, speaker: bool = False) -> str:
    """One lore entry as prose for a prompt (dialogue and batch).

    Small models copy the shape of their prompt: given ``## Sallow Lock (place)``
    they wrote headings and ``(place)`` tags into NPC lines and quest text
    (issue 16). So the name goes in a sentence ("About Sallow Lock, a place:")
    and the body's Markdown is reduced to text (`plain_text`).

    An NPC card's ``voice``, ``knows`` and ``hides`` appear only when that NPC
    is the `speaker`, so one NPC's secrets never reach another NPC's prompt;
    another NPC gets the public persona and body.

    Returns:
        Paragraphs separated by blank lines; no ``#`` headings, no ``(kind)``
        tags, no ``field:`` lines.
    """
    name = _inline(entry.name)
    if entry.npc is not None:
        c = entry.npc
        parts = [f"About {name}, {KIND_WORDS['npc']}: {_inline(c.persona)}"]
        if speaker:
            parts.append(f"How {name} speaks: {_inline(c.voice)}")
            if c.knows:
                parts.append(f"What {name} knows and will tell: " + " ".join(_sentence(_inline(k)) for k in c.knows))
            if c.hides:
                parts.append(f"What {name} keeps secret and never says outright: " + " ".join(_sentence(_inline(h)) for h in c.hides))
        body = plain_text(entry.text)
        return "\n\n".join(parts + ([body] if body else []))
    body = plain_text(entry.text)
    head = f"About {name}, {KIND_WORDS.get(entry.kind.value, 'something people know')}:"
    return f"{head} {body}" if body else _sentence(f"{name} is {KIND_WORDS.get(entry.kind.value, 'something people know')}")


def entry_document(entry: LoreEntry) -> str:
    """The text of an entry as it is embedded and injected: name, kind and body."""
    head = f"{entry.name} ({entry.kind.value})"
    if entry.npc is not None:
        card = entry.npc
        parts = [head, card.persona, entry.text]
        return "\n".join(p for p in parts if p)
    return f"{head}\n{entry.text}" if entry.text else head
