"""Select the lore for one dialogue turn: keyword triggers + vector similarity, scoped and budgeted.

Two placements (see `lore.schema.Position`):

* the **prefix** of an NPC (stable across turns): its own card, constant entries,
  ``position: prefix`` entries, and the NPC's location and faction;
* the **turn**: entries whose keys appear in the player's line (or the last
  ``scan_depth`` lines), then the nearest chunks by embedding similarity,
  filled by score into ``token_budget`` tokens. Triggered entries that do not fit
  are reported in ``dropped``.

The NPC's knowledge scope (``known_by``) is a hard filter on both.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from lore.index import LoreIndex
from lore.schema import Kind, LoreEntry, SelectiveLogic

TokenCounter = Callable[[str], int]


class UnknownNpc(KeyError):
    """The NPC id is not an enabled ``kind: npc`` entry in the index."""


@dataclass(frozen=True)
class Pick:
    """One selected (or dropped) entry. ``why``: 'card', 'constant', 'scene', 'key:<key>' or 'vector:<sim>'."""

    entry: LoreEntry
    score: float
    why: str
    tokens: int


@dataclass
class Selection:
    prefix: list[Pick] = field(default_factory=list)
    turn: list[Pick] = field(default_factory=list)
    dropped: list[Pick] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [p.entry.id for p in self.prefix + self.turn]


@lru_cache(maxsize=8192)
def _key_regex(key: str) -> re.Pattern[str]:
    if len(key) > 2 and key.startswith("/") and key.rfind("/") > 0:
        end = key.rfind("/")
        flags = re.IGNORECASE if "i" in key[end + 1 :] else 0
        return re.compile(key[1:end], flags)
    return re.compile(rf"(?<!\w){re.escape(key)}(?!\w)", re.IGNORECASE)


def key_match(keys: Sequence[str], text: str) -> str | None:
    """The first key found in `text` (whole words, case-insensitive; ``/re/flags`` as a regex), or None."""
    for key in keys:
        if key and _key_regex(key).search(text):
            return key
    return None


def secondary_ok(entry: LoreEntry, text: str) -> bool:
    """Apply ``selective_logic`` over ``secondary_keys`` (SillyTavern semantics); True when there are none."""
    if not entry.secondary_keys:
        return True
    hits = [bool(_key_regex(k).search(text)) for k in entry.secondary_keys if k]
    logic = entry.selective_logic
    if logic == SelectiveLogic.and_any:
        return any(hits)
    if logic == SelectiveLogic.and_all:
        return all(hits)
    if logic == SelectiveLogic.not_any:
        return not any(hits)
    return not all(hits)  # not_all


def knows(npc: LoreEntry, entry: LoreEntry) -> bool:
    """Scope filter: may `npc` know `entry`? Empty ``known_by`` is common knowledge."""
    if not entry.known_by or entry.id == npc.id:
        return True
    scope = {npc.id, *npc.tags}
    if npc.npc and npc.npc.faction:
        scope.add(npc.npc.faction)
    return bool(scope & set(entry.known_by))


class Retriever:
    """Hybrid lore selection over a `LoreIndex`.

    Args:
        index: the lore index (catalog + vector store).
        count_tokens: the dialogue model's token counter (tokens of a string).
        token_budget: tokens of per-turn lore (entries over it are dropped, lowest score first).
        prefix_budget: tokens of static lore in an NPC's prefix.
        vector_k: nearest chunks fetched per turn.
        min_similarity: vector hits below this cosine similarity are ignored.
        scan_depth: earlier player lines scanned for keys.
    """

    def __init__(
        self,
        index: LoreIndex,
        count_tokens: TokenCounter,
        token_budget: int = 600,
        prefix_budget: int = 1500,
        vector_k: int = 8,
        min_similarity: float = 0.0,
        scan_depth: int = 2,
    ) -> None:
        self.index = index
        self.count_tokens = count_tokens
        self.token_budget = token_budget
        self.prefix_budget = prefix_budget
        self.vector_k = vector_k
        self.min_similarity = min_similarity
        self.scan_depth = scan_depth
        self._token_cache: dict[tuple[str, int], int] = {}

    def npc(self, npc_id: str) -> LoreEntry:
        """The NPC's card. Raises `UnknownNpc`."""
        entry = self.index.entries.get(npc_id)
        if entry is None or entry.kind != Kind.npc or entry.disabled:
            known = ", ".join(e.id for e in self.index.npcs()) or "none indexed"
            raise UnknownNpc(f"unknown NPC {npc_id!r} (known: {known})")
        return entry

    def tokens(self, entry: LoreEntry) -> int:
        key = (entry.id, hash(entry.text))
        if key not in self._token_cache:
            self._token_cache[key] = self.count_tokens(render_entry(entry, speaker=entry.kind == Kind.npc))
        return self._token_cache[key]

    def prefix(self, npc_id: str) -> list[Pick]:
        """Static lore for the NPC's stable prefix: card, scene (location, faction), constant and prefix entries.

        Deterministic for a given index, so the prefix stays byte-stable across turns.
        """
        npc = self.npc(npc_id)
        picks = [Pick(npc, 1e9, "card", self.tokens(npc))]
        scene = [x for x in (npc.npc.location, npc.npc.faction) if x] if npc.npc else []
        candidates: list[tuple[float, str, LoreEntry]] = []
        for eid in scene:
            e = self.index.entries.get(eid)
            if e and not e.disabled and knows(npc, e):
                candidates.append((1e6, "scene", e))
        for e in self.index.entries.values():
            if e.disabled or e.id == npc.id or e.id in scene or not knows(npc, e):
                continue
            if e.constant:
                candidates.append((1e3 + e.order, "constant", e))
            elif e.position.value == "prefix" and e.kind != Kind.npc:
                candidates.append((e.order, "prefix", e))
        candidates.sort(key=lambda c: (-c[0], c[2].id))
        used = 0
        for score, why, e in candidates:
            t = self.tokens(e)
            if used + t > self.prefix_budget:
                continue
            used += t
            picks.append(Pick(e, score, why, t))
        return picks

    def select(self, npc_id: str, line: str, history: Sequence[str] = (), exclude: set[str] | None = None) -> Selection:
        """Select lore for one turn.

        Args:
            npc_id: who is spoken to.
            line: the player's line.
            history: earlier player lines, oldest first (the last ``scan_depth`` are scanned for keys).
            exclude: entry ids already in the conversation (not injected again).

        Raises:
            UnknownNpc: `npc_id` is not an NPC in the index.
        """
        npc = self.npc(npc_id)
        sel = Selection(prefix=self.prefix(npc_id))
        skip = set(exclude or ()) | {p.entry.id for p in sel.prefix}
        recent = "\n".join(list(history)[-self.scan_depth :]) if self.scan_depth else ""
        scores: dict[str, tuple[float, str]] = {}
        for e in self.index.entries.values():
            if e.disabled or e.id in skip or not knows(npc, e):
                continue
            hit = key_match(e.all_keys(), line)
            where = 2.0
            if hit is None and recent:
                hit = key_match(e.all_keys(), recent)
                where = 1.0
            if hit is not None and secondary_ok(e, line + "\n" + recent):
                scores[e.id] = (where + e.order / 10000, f"key:{hit}")
        for eid, sim in self.index.nearest(line, self.vector_k):
            e = self.index.entries.get(eid)
            if e is None or e.disabled or eid in skip or not knows(npc, e) or sim < self.min_similarity:
                continue
            if eid in scores:
                s, why = scores[eid]
                scores[eid] = (s + sim, why)
            else:
                scores[eid] = (sim, f"vector:{sim:.3f}")
        ranked = sorted(scores.items(), key=lambda kv: (-kv[1][0], kv[0]))
        used = 0
        for eid, (score, why) in ranked:
            e = self.index.entries[eid]
            t = self.tokens(e)
            pick = Pick(e, score, why, t)
            if used + t <= self.token_budget:
                used += t
                sel.turn.append(pick)
            elif why.startswith("key:"):
                sel.dropped.append(pick)  # triggered but over budget: reported, not silently lost
        return sel


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
