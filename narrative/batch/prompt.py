"""The prompt for one quest: the lore the spec names, then the spec, as chat turns.

`PROMPT_VERSION` is part of every manifest key: change it whenever the text
below changes, so every quest is regenerated with the new template.
Lore is budgeted in approximate tokens (words x 1.3), not the model's
tokenizer, so the prompt, and therefore the manifest key, can be computed
without loading the model (``--dry-run``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from lore.render import render_entry
from lore.retrieve import key_match
from lore.schema import LoreEntry
from narrative.batch.spec import STAGE_HELP, QuestSpec

PROMPT_VERSION = "quest-prompt-2"

TOKENS_PER_WORD = 1.3
"""Rough English BPE ratio (SmolLM2 / Qwen tokenizers give 1.2-1.4 on the sample lore)."""


class UnknownEntry(KeyError):
    """The spec names an entry id that the lore index does not have (or has disabled).

    ``loc``: the YAML path of the spec field that names it, e.g. ``("lore", 0)``.
    """

    def __init__(self, message: str, loc: tuple = ()) -> None:
        super().__init__(message)
        self.loc = loc


def _field_of(spec: QuestSpec, eid: str) -> tuple:
    """The YAML path of the first spec field naming entry `eid`."""
    if eid == spec.giver:
        return ("giver",)
    if eid == spec.location:
        return ("location",)
    for name in ("factions", "npcs", "lore"):
        ids = getattr(spec, name)
        if eid in ids:
            return (name, ids.index(eid))
    for i, step in enumerate(spec.steps):
        if step.location == eid:
            return ("steps", i, "location")
    return ()


@dataclass(frozen=True)
class QuestPrompt:
    """System and user text, and the lore entries they include (named first, then keyword-triggered)."""

    system: str
    user: str
    lore_ids: tuple[str, ...]
    named_ids: tuple[str, ...]


def approx_tokens(text: str) -> int:
    return int(len(text.split()) * TOKENS_PER_WORD) + 1


def spec_text(spec: QuestSpec) -> str:
    """All designer text of a spec that keyword triggers are matched against."""
    parts = [spec.objective, spec.reward or "", spec.notes or "", *spec.constraints, *(s.objective for s in spec.steps)]
    if spec.goal and spec.goal.target:
        parts.append(spec.goal.target)
    return "\n".join(p for p in parts if p)


def select_lore(spec: QuestSpec, entries: Mapping[str, LoreEntry], budget: int) -> tuple[list[LoreEntry], list[LoreEntry]]:
    """(named, triggered): entries the spec names by id, then entries whose keys occur in the spec text.

    Named entries are always included; triggered ones (highest ``order`` first,
    then id) while the approximate token `budget` lasts. An entry with a ``when``
    (game-state condition, `lore.conditions`) is never triggered: build time has no
    game state, so what holds only in some states stays out unless a spec names it.

    Raises:
        UnknownEntry: a named id is missing or disabled (the message lists the id and the field).
    """
    named: list[LoreEntry] = []
    for eid in spec.referenced_ids():
        e = entries.get(eid)
        if e is None or e.disabled:
            loc = _field_of(spec, eid)
            state = "is disabled" if e is not None else "is not in the lore"
            raise UnknownEntry(f"{'.'.join(map(str, loc))}: quest {spec.id!r} names lore entry {eid!r}, which {state}", loc)
        named.append(e)
    if named[0].npc is None:
        raise UnknownEntry(f"giver: quest {spec.id!r}: giver {spec.giver!r} is a {named[0].kind.value}, not an npc entry", ("giver",))
    used = sum(approx_tokens(render_entry(e, speaker=e.id == spec.giver)) for e in named)
    text = spec_text(spec)
    hits = [e for e in entries.values()
            if not e.disabled and e.when is None and e.id not in {n.id for n in named} and key_match(e.all_keys(), text)]
    hits.sort(key=lambda e: (-e.order, e.id))
    triggered: list[LoreEntry] = []
    for e in hits:
        t = approx_tokens(render_entry(e))
        if used + t > budget:
            continue
        used += t
        triggered.append(e)
    return named, triggered


LANGUAGE_NAMES = {
    "en": "English", "fr": "French", "de": "German", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "nl": "Dutch", "pl": "Polish", "uk": "Ukrainian", "ru": "Russian", "ja": "Japanese", "zh": "Chinese",
    "ko": "Korean", "th": "Thai", "tr": "Turkish", "ar": "Arabic",
}
"""ISO 639-1 code -> the language's English name, as the prompt says it (other codes are written as given)."""


def language_name(code: str) -> str:
    return LANGUAGE_NAMES.get(code, code)


def _names(ids: list[str], entries: Mapping[str, LoreEntry]) -> str:
    return ", ".join(entries[i].name for i in ids)


def build_prompt(spec: QuestSpec, entries: Mapping[str, LoreEntry], lore_budget: int) -> QuestPrompt:
    """The prompt text for `spec`. Deterministic for the same spec, entries and budget.

    Raises:
        UnknownEntry: see `select_lore`.
    """
    named, triggered = select_lore(spec, entries, lore_budget)
    giver = named[0]
    blocks = [render_entry(e, speaker=e.id == spec.giver) for e in named + triggered]
    system = (
        f"You are a writer for a video game. You write the text of one quest as JSON, in {language_name(spec.language)}.\n"
        "Use only people, places and factions named in the lore below or in the quest spec; never invent new names. "
        "Never write placeholders, templates or notes to the developer.\n\n"
        "What the world's lore says:\n\n" + "\n\n".join(blocks)
    )
    lines = [f"Quest giver: {giver.name}"]
    if spec.title:
        lines.append(f"Working title: {spec.title}")
    if spec.location:
        lines.append(f"Location: {entries[spec.location].name}")
    if spec.factions:
        lines.append(f"Factions involved: {_names(spec.factions, entries)}")
    if spec.npcs:
        lines.append(f"Other people involved: {_names(spec.npcs, entries)}")
    lines.append(f"Objective: {spec.objective}")
    if spec.goal:
        g = spec.goal
        lines.append(f"Goal: {g.kind.replace('_', ' ')}" + (f" {g.count} x" if g.count else "") + (f" {g.target}" if g.target else ""))
    for i, step in enumerate(spec.steps, 1):
        where = f" (at {entries[step.location].name})" if step.location else ""
        lines.append(f"Step {i} [{step.id}]: {step.objective}{where}")
    if spec.reward:
        lines.append(f"Reward: {spec.reward}")
    if spec.deadline:
        lines.append(f"Deadline: {spec.deadline}")
    if spec.follows:
        lines.append(f"Follows the quest: {spec.follows}")
    if spec.tone:
        lines.append(f"Tone: {spec.tone}")
    if spec.notes:
        lines.append(f"Notes: {spec.notes}")
    if spec.constraints:
        lines.append("Rules:\n" + "\n".join(f"- {c}" for c in spec.constraints))
    if spec.must_mention:
        lines.append("Must mention somewhere: " + "; ".join(spec.must_mention))
    if spec.forbid:
        lines.append("Never use these words: " + "; ".join(spec.forbid))
    if spec.keep_lines:
        lines.append("Hand-written lines, used word for word:\n" + "\n".join(f"- {k}: {v}" for k, v in spec.keep_lines.items()))
    what = [
        "Write the JSON fields:",
        "- title: the quest's name, a few words",
        "- summary: two sentences for the quest log, third person",
    ]
    what += [f"- dialogue.{s}: {giver.name} speaking to the player in the first person; {STAGE_HELP[s]}" for s in spec.stages]
    if spec.steps:
        what += [f"- journal.{s.id}: the player's journal entry for step '{s.id}', one or two sentences" for s in spec.steps]
    else:
        what += ["- journal.started: the player's journal entry when the quest starts", "- journal.finished: the journal entry when it is done"]
    user = "\n".join(lines) + "\n\n" + "\n".join(what)
    return QuestPrompt(system=system, user=user, lore_ids=tuple(e.id for e in named + triggered), named_ids=tuple(e.id for e in named))
