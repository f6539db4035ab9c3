"""Every rendering of a lorebook entry as text, side by side.

==================  ==============================================  ===========================
function            where the text goes                             used by
==================  ==============================================  ===========================
`render_entry`      a prompt: dialogue (stable prefix, turn lore)   `lore.retrieve` (token
                    and batch (a quest prompt's lore section)       costs), `narrative.dialogue`,
                                                                    `narrative.batch.prompt`
`entry_document`    the embedder and BM25 (what similarity sees)    `lore.index`, `lore.lexical`
==================  ==============================================  ===========================

Kept together so a change to what the model reads and a change to what
retrieval sees are made (and reviewed) in one place.
"""

from __future__ import annotations

from lore.schema import LoreEntry


def render_entry(entry: LoreEntry, speaker: bool = False) -> str:
    """An entry as it appears in a prompt (Markdown-ish, one block).

    An NPC card shows its ``voice``, ``knows`` and ``hides`` only when that NPC is
    the `speaker`; another NPC's card shows only its public persona and body, so
    one NPC's secrets never reach another NPC's prompt.
    """
    if entry.npc is not None:
        c = entry.npc
        lines = [f"## {entry.name}", c.persona]
        if speaker:
            lines.append(f"Voice: {c.voice}")
            if c.knows:
                lines.append("Knows: " + " ".join(c.knows))
            if c.hides:
                lines.append("Keeps secret (never reveals directly): " + " ".join(c.hides))
        if entry.text:
            lines.append(entry.text)
        return "\n".join(lines)
    return f"## {entry.name} ({entry.kind.value})\n{entry.text}"


def entry_document(entry: LoreEntry) -> str:
    """The text of an entry as it is embedded and injected: name, kind and body."""
    head = f"{entry.name} ({entry.kind.value})"
    if entry.npc is not None:
        card = entry.npc
        parts = [head, card.persona, entry.text]
        return "\n".join(p for p in parts if p)
    return f"{head}\n{entry.text}" if entry.text else head
