"""Select the lore for one dialogue turn: keyword triggers + vector similarity, scoped and budgeted.

Two placements (see `lore.schema.Position`):

* the **prefix** of an NPC (stable across turns): its own card, its location and
  faction, ``constant`` entries and ``position: prefix`` entries, filled by
  priority into ``prefix_budget`` tokens;
* the **turn**: entries whose keys occur in the player's line or the last
  ``scan_depth`` earlier lines (SillyTavern World Info semantics: whole words or
  substrings, case options, ``/regex/flags``, secondary keys with a selective
  logic, probability, recursion), then entries similar to the line: the
  ``vector_k`` nearest by embedding and the ``vector_k`` best by BM25 over
  entry text (`lore.lexical`), fused by reciprocal rank; filled by priority into
  ``token_budget`` tokens.

The NPC's knowledge scope (``known_by``) is a hard filter on both. Every entry
that was triggered (or found by similarity) but not used is reported in
`Selection.dropped` with its reason, so "not triggered" can be told from
"over budget" (see `lore.explain`).

Order of the turn's budget fill, in tiers: entries whose key is in the player's
line, then in earlier lines, then triggered by recursion (step 1, 2, ...), then entries found by
similarity only. Within a key tier: insertion order (``order``, higher first),
then the longer (more specific) matched key, then similarity to the line. So a
recursion-triggered entry never pushes out the entry the player named, and
``order`` decides among equally direct triggers. An entry that does not fit is
dropped (reason ``budget``) and smaller ones after it may still fit.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from lore.index import LoreIndex
from lore.keywords import key_in, secondary_ok
from lore.schema import Kind, LoreEntry

TokenCounter = Callable[[str], int]
Mode = Literal["hybrid", "keywords", "vectors", "lexical"]

# reasons an entry is in Selection.dropped
BUDGET = "budget"  # triggered, but the token budget was full
SCOPE = "scope"  # the NPC is outside the entry's known_by
PROBABILITY = "probability"  # the probability roll failed
RECURSION = "recursion"  # only reachable by recursion, and recursion may not trigger it (or depth limit)
SECONDARY = "secondary"  # a primary key matched but the secondary keys' logic failed
DISABLED = "disabled"  # a key matched a disabled entry


class UnknownNpc(KeyError):
    """The NPC id is not an enabled ``kind: npc`` entry in the index."""


@dataclass(frozen=True)
class Pick:
    """One selected (or dropped) entry.

    ``why``: 'card', 'constant', 'scene', 'prefix', 'key:<key>' or 'vector:<sim>'.
    ``score``: rank within its list (higher first), not comparable across lists.
    ``tokens``: the entry's cost in tokens of the dialogue model.
    ``reason``: for dropped entries, one of budget, scope, probability,
    recursion, secondary, disabled; '' for selected ones.
    ``key``: the primary key that matched (None for vector-only hits).
    ``similarity``: cosine similarity of its best chunk to the line, when it was among the nearest.
    ``step``: 0 when the conversation triggered it, n when an entry triggered at step n-1 did.
    ``found_in``: 'line', 'history:<n>' (n lines back), 'recursion:<entry id>', or '' (not by key).
    ``lexical``: BM25 score of the entry's text for the line, when it was among the best (`lore.lexical`).
    """

    entry: LoreEntry
    score: float
    why: str
    tokens: int
    reason: str = ""
    key: str | None = None
    similarity: float | None = None
    step: int = 0
    found_in: str = ""
    lexical: float | None = None


RRF_K = 60  # reciprocal rank fusion constant (Cormack, Clarke & Buettcher, SIGIR 2009)


@dataclass
class Selection:
    """The lore of one turn. ``budget`` and ``used`` are tokens of the turn's lore."""

    prefix: list[Pick] = field(default_factory=list)
    turn: list[Pick] = field(default_factory=list)
    dropped: list[Pick] = field(default_factory=list)
    budget: int = 0
    used: int = 0

    @property
    def ids(self) -> list[str]:
        return [p.entry.id for p in self.prefix + self.turn]


def knows(npc: LoreEntry, entry: LoreEntry) -> bool:
    """Scope filter: may `npc` know `entry`? Empty ``known_by`` is common knowledge.

    ``known_by`` names NPC ids, faction ids or tags; the NPC matches by its id,
    its ``npc.faction`` and its ``tags``.
    """
    if not entry.known_by or entry.id == npc.id:
        return True
    scope = {npc.id, *npc.tags}
    if npc.npc and npc.npc.faction:
        scope.add(npc.npc.faction)
    return bool(scope & set(entry.known_by))


def key_match(keys: Sequence[str], text: str) -> str | None:
    """The first of `keys` found in `text` with default options (whole words, case-insensitive), or None."""
    probe = LoreEntry(id="probe", kind=Kind.lore, name="probe")
    for key in keys:
        if key_in(probe, key, text):
            return key
    return None


def roll(npc_id: str, line: str, entry: LoreEntry) -> bool:
    """The probability roll of a triggered entry: deterministic per (NPC, line, entry), so `lore why` reproduces a turn."""
    if entry.probability >= 100:
        return True
    if entry.probability <= 0:
        return False
    h = int.from_bytes(hashlib.blake2b(f"{npc_id}\0{line}\0{entry.id}".encode(), digest_size=4).digest(), "big")
    return h % 100 < entry.probability


def _delay(entry: LoreEntry) -> int:
    """The first recursion step at which the entry may trigger (0: any time)."""
    d = entry.delay_until_recursion
    if d is True:
        return 1
    if d is False or d is None:
        return 0
    return max(0, int(d))


class Retriever:
    """Hybrid lore selection over a `LoreIndex`.

    Args:
        index: the lore index (catalog + keyword index + vector store).
        count_tokens: the dialogue model's token counter (tokens of a string).
        token_budget: tokens of per-turn lore (entries over it are dropped, reason ``budget``).
        prefix_budget: tokens of static lore in an NPC's prefix, besides its card.
        vector_k: nearest chunks fetched per turn.
        min_similarity: vector hits below this cosine similarity are ignored.
        scan_depth: earlier lines scanned for keys (an entry's own ``scan_depth`` overrides it).
        max_recursion: recursion steps (entries triggered by the text of triggered
            entries); 0 disables recursion. SillyTavern's "Max Recursion Steps".
        vector_weight, lexical_weight, rrf_k: weighted reciprocal rank fusion of
            the embedding ranking and the BM25 ranking: an entry scores
            sum(weight / (rrf_k + rank)) over the two rankings (rank from 1);
            ties (and entries found by one ranking with weight 0) go by
            embedding similarity. Default 0.0 / 1.0: with the bundled SmolLM2
            embedder, BM25 first and embedding hits after it measured best
            (benchmarks/retrieval_quality.py --sweep: 84.5% vs 78.9% for equal
            weights over 71 cases); raise vector_weight with a real embedding model.
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
        max_recursion: int = 2,
        vector_weight: float = 0.0,
        lexical_weight: float = 1.0,
        rrf_k: int = RRF_K,
    ) -> None:
        self.index = index
        self.count_tokens = count_tokens
        self.token_budget = token_budget
        self.prefix_budget = prefix_budget
        self.vector_k = vector_k
        self.min_similarity = min_similarity
        self.scan_depth = scan_depth
        self.max_recursion = max_recursion
        self.vector_weight = vector_weight
        self.lexical_weight = lexical_weight
        self.rrf_k = rrf_k
        self._token_cache: dict[tuple[str, int, bool], int] = {}
        self._prefix_cache: dict[str, tuple[list[Pick], list[Pick]]] = {}
        self._prefix_version = -1

    def npc(self, npc_id: str) -> LoreEntry:
        """The NPC's card. Raises `UnknownNpc`."""
        entry = self.index.entries.get(npc_id)
        if entry is None or entry.kind != Kind.npc or entry.disabled:
            known = ", ".join(e.id for e in self.index.npcs()) or "none indexed"
            raise UnknownNpc(f"unknown NPC {npc_id!r} (known: {known})")
        return entry

    def tokens(self, entry: LoreEntry, speaker: bool = False) -> int:
        """Tokens of the entry as rendered into a prompt (`render_entry`), cached per entry text."""
        key = (entry.id, hash((entry.name, entry.text, entry.npc.model_dump_json() if entry.npc else "")), speaker)
        if key not in self._token_cache:
            self._token_cache[key] = self.count_tokens(render_entry(entry, speaker=speaker))
        return self._token_cache[key]

    # ---- prefix ----------------------------------------------------------

    def prefix(self, npc_id: str) -> list[Pick]:
        """Static lore for the NPC's stable prefix: card, scene (location, faction), constant and prefix entries.

        Deterministic for a given index (ties broken by id), so the prefix stays
        byte-stable across turns; cached until the index changes.

        Raises:
            UnknownNpc: `npc_id` is not an NPC in the index.
        """
        if self._prefix_version != self.index.version:
            self._prefix_cache = {}
            self._prefix_version = self.index.version
        cached = self._prefix_cache.get(npc_id)
        if cached is not None:
            return list(cached[0])
        npc = self.npc(npc_id)
        picks = [Pick(npc, 1e9, "card", self.tokens(npc, speaker=True))]
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
        over: list[Pick] = []
        for score, why, e in candidates:
            t = self.tokens(e)
            if used + t > self.prefix_budget:
                over.append(Pick(e, score, why, t, BUDGET))
                continue
            used += t
            picks.append(Pick(e, score, why, t))
        self._prefix_cache[npc_id] = (picks, over)
        return list(picks)

    def prefix_dropped(self, npc_id: str) -> list[Pick]:
        """Prefix-placed entries (scene, constant, ``position: prefix``) that did not fit ``prefix_budget`` (reason ``budget``)."""
        self.prefix(npc_id)
        return list(self._prefix_cache[npc_id][1])

    @staticmethod
    def prefix_placed(entry: LoreEntry) -> bool:
        """Whether the entry belongs in a prefix (constant or ``position: prefix``), never in a turn."""
        return entry.constant or (entry.position.value == "prefix" and entry.kind != Kind.npc)

    # ---- turn ------------------------------------------------------------

    def _max_scan_depth(self) -> int:
        if getattr(self, "_depth_version", None) != self.index.version:
            self._depth = max((e.scan_depth or 0 for e in self.index.entries.values()), default=0)
            self._depth_version = self.index.version
        return self._depth

    def select(
        self,
        npc_id: str,
        line: str,
        history: Sequence[str] = (),
        exclude: set[str] | None = None,
        mode: Mode = "hybrid",
    ) -> Selection:
        """Select lore for one turn.

        Args:
            npc_id: who is spoken to.
            line: the player's line.
            history: earlier lines of the conversation, oldest first (the last
                ``scan_depth`` are scanned for keys).
            exclude: entry ids already in the conversation (not injected again, not reported).
            mode: ``hybrid`` (default: keys, then vectors and BM25 fused), or ``keywords``,
                ``vectors`` or ``lexical`` (BM25) alone (for benchmarks).

        Raises:
            UnknownNpc: `npc_id` is not an NPC in the index.
        """
        npc = self.npc(npc_id)
        sel = Selection(prefix=self.prefix(npc_id), budget=self.token_budget)
        over = self.prefix_dropped(npc_id)
        skip = set(exclude or ()) | {p.entry.id for p in sel.prefix} | {p.entry.id for p in over}
        entries = self.index.entries
        found: dict[str, Pick] = {}  # entry id -> triggered pick (before budget)
        dropped: dict[str, Pick] = {}

        def drop(e: LoreEntry, why: str, reason: str, **kw) -> None:
            if e.id not in dropped and e.id not in found:
                dropped[e.id] = Pick(e, 0.0, why, self.tokens(e), reason, **kw)

        if mode != "vectors":
            self._trigger(npc, line, list(history), skip, found, drop)

        if mode != "keywords" and self.vector_k > 0:
            dense = self.index.nearest(line, self.vector_k) if mode in ("vectors", "hybrid") else []
            lexical = self.index.lexical.search(line, self.vector_k) if mode in ("lexical", "hybrid") else []
            sims = {eid: sim for eid, sim in dense if sim >= self.min_similarity}
            bm25 = dict(lexical)
            fused: dict[str, float] = {}  # reciprocal rank fusion (k = 60) of the dense and the lexical ranking
            for weight, ranking in ((self.vector_weight, [eid for eid, _ in dense if eid in sims]), (self.lexical_weight, [eid for eid, _ in lexical])):
                for i, eid in enumerate(ranking):
                    fused[eid] = fused.get(eid, 0.0) + weight / (self.rrf_k + i + 1)
            for eid, score in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0])):
                e = entries.get(eid)
                if e is None or eid in skip or e.disabled or self.prefix_placed(e):
                    continue
                sim, lex = sims.get(eid), bm25.get(eid)
                why = f"vector:{sim:.3f}" if sim is not None else f"text:{lex:.2f}"
                if eid in found:
                    p = found[eid]
                    found[eid] = Pick(p.entry, score, p.why, p.tokens, key=p.key, similarity=sim, step=p.step, found_in=p.found_in, lexical=lex)
                    continue
                if eid in dropped:
                    continue
                if not knows(npc, e):
                    drop(e, why, SCOPE, similarity=sim, lexical=lex)
                    continue
                found[eid] = Pick(e, score, why, self.tokens(e), similarity=sim, lexical=lex)

        def rank(p: Pick) -> tuple:
            if p.key is not None:
                tier = 0 if p.found_in == "line" else 1 if p.found_in.startswith("history") else 2
                return (tier, p.step, -p.entry.order, -len(p.key), -p.score, p.entry.id)
            return (3, 0, 0, 0, -p.score, -(p.similarity if p.similarity is not None else -2.0), p.entry.id)

        ranked = sorted(found.values(), key=rank)
        n = len(ranked)
        for i, p in enumerate(ranked):
            p = Pick(p.entry, float(n - i), p.why, p.tokens, "", p.key, p.similarity, p.step, p.found_in, p.lexical)
            if sel.used + p.tokens <= self.token_budget:
                sel.used += p.tokens
                sel.turn.append(p)
            else:
                sel.dropped.append(Pick(p.entry, p.score, p.why, p.tokens, BUDGET, p.key, p.similarity, p.step, p.found_in, p.lexical))
        sel.dropped.extend(sorted(dropped.values(), key=lambda p: (p.reason, p.entry.id)))
        sel.dropped.extend(over)
        return sel

    def _trigger(self, npc: LoreEntry, line: str, history: list[str], skip: set[str], found: dict[str, Pick], drop) -> None:
        """Keyword triggers over the conversation, then recursion over triggered entries' text."""
        entries = self.index.entries
        kw = self.index.keywords
        depth = max(self.scan_depth, self._max_scan_depth())
        texts = [line] + [history[-d] for d in range(1, min(depth, len(history)) + 1)]
        hits: dict[str, tuple[str, int]] = {}  # entry id -> (key, lines back)
        for back, text in enumerate(texts):
            for eid, key in kw.match(text).items():
                if eid not in hits:
                    hits[eid] = (key, back)

        def window(e: LoreEntry) -> str:
            d = self.scan_depth if e.scan_depth is None else e.scan_depth
            return "\n".join(texts[: d + 1])

        def consider(e: LoreEntry, key: str, step: int, found_in: str, extra: str) -> bool:
            """True when the entry is activated (added to `found`)."""
            why = f"key:{key}"
            if e.disabled:
                drop(e, why, DISABLED, key=key, step=step, found_in=found_in)
                return False
            if not knows(npc, e):
                drop(e, why, SCOPE, key=key, step=step, found_in=found_in)
                return False
            if not secondary_ok(e, window(e) + "\n" + extra):
                drop(e, why, SECONDARY, key=key, step=step, found_in=found_in)
                return False
            if step < _delay(e):
                drop(e, why, RECURSION, key=key, step=step, found_in=found_in)
                return False
            if step > 0 and e.exclude_recursion:
                drop(e, why, RECURSION, key=key, step=step, found_in=found_in)
                return False
            if not roll(npc.id, line, e):
                drop(e, why, PROBABILITY, key=key, step=step, found_in=found_in)
                return False
            found[e.id] = Pick(e, 0.0, why, self.tokens(e), key=key, step=step, found_in=found_in)
            return True

        new: list[LoreEntry] = []
        for eid, (key, back) in sorted(hits.items()):
            e = entries.get(eid)
            if e is None or eid in skip or self.prefix_placed(e):
                continue
            d = self.scan_depth if e.scan_depth is None else e.scan_depth
            if back > d:
                continue
            if consider(e, key, 0, "line" if back == 0 else f"history:{back}", ""):
                new.append(e)

        step = 0
        buffer = ""
        while new:
            step += 1
            sources = [e for e in new if not e.prevent_recursion]
            new = []
            if not sources:
                break
            for src in sources:
                text = src.text
                buffer += "\n" + text
                for eid, key in sorted(kw.match(text).items()):
                    e = entries.get(eid)
                    if e is None or eid in skip or eid in found or self.prefix_placed(e):
                        continue
                    if step > self.max_recursion:
                        if not e.disabled and knows(npc, e):
                            drop(e, f"key:{key}", RECURSION, key=key, step=step, found_in=f"recursion:{src.id}")
                        continue
                    if consider(e, key, step, f"recursion:{src.id}", buffer):
                        new.append(e)
            if step > self.max_recursion:
                break


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
