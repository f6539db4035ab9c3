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
dropped (reason ``budget``) and smaller ones after it may still fit, except an
entry named in the player's line or larger than the whole budget: that one is
trimmed to the leading sentences that fit (``Pick.full_tokens`` records its
whole cost). Recursion follows only entries that made it into the turn, so a
turn's cost does not grow with the lorebook (benchmarks/lore_scale.py).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from lore.index import LoreIndex
from lore.keywords import key_in, secondary_ok
from lore.schema import Kind, LoreEntry

if TYPE_CHECKING:
    from narrative.settings import LoreSettings

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
    ``full_tokens``: set when the entry was trimmed to fit the budget: the cost of the whole
    entry (``entry`` is then a copy holding the leading sentences that fit, ``tokens`` their cost).
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
    full_tokens: int | None = None


RRF_K = 60  # reciprocal rank fusion constant (Cormack, Clarke & Buettcher, SIGIR 2009)
SENTENCE = re.compile(r"(?<=[.!?])\s+")  # sentence boundary used to trim an entry that does not fit


@dataclass
class Selection:
    """The lore of one turn. ``budget`` and ``used`` are tokens of the turn's lore.

    ``present``: ids of entries passed as ``exclude`` (already in the conversation)
    that this turn triggered by key or similarity; they cost no budget.
    """

    prefix: list[Pick] = field(default_factory=list)
    turn: list[Pick] = field(default_factory=list)
    dropped: list[Pick] = field(default_factory=list)
    budget: int = 0
    used: int = 0
    present: list[str] = field(default_factory=list)

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
            ties go by embedding similarity. A ranking with weight 0 brings
            no entry in (issue 16: vector_weight 0 means no vector neighbours). Default 0.0 / 1.0: with the bundled SmolLM2
            embedder, BM25 first and embedding hits after it measured best
            (benchmarks/retrieval_quality.py --sweep: 84.5% vs 78.9% for equal
            weights over 71 cases); raise vector_weight with a real embedding model.
        min_partial_tokens: the least budget left for which an entry that does
            not fit whole is trimmed to its leading sentences (see `select`).
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
        min_partial_tokens: int = 64,
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
        self.min_partial_tokens = min_partial_tokens
        self._token_cache: dict[tuple[str, int, bool], int] = {}  # keyed by entry text: survives index changes
        # derived from one version of the index (see _follow_index)
        self._version = -1
        self._prefix_cache: dict[str, tuple[list[Pick], list[Pick]]] = {}
        self._triggers: dict[str, list[tuple[str, str]]] = {}
        self._deepest_scan = 0

    @classmethod
    def from_settings(cls, index: LoreIndex, count_tokens: TokenCounter, lore: "LoreSettings") -> "Retriever":
        """A retriever configured by `narrative.settings.LoreSettings` (every selection knob comes from there)."""
        return cls(
            index,
            count_tokens,
            token_budget=lore.token_budget,
            prefix_budget=lore.prefix_budget,
            vector_k=lore.vector_k,
            min_similarity=lore.min_similarity,
            scan_depth=lore.scan_depth,
            max_recursion=lore.max_recursion,
            vector_weight=lore.vector_weight,
            lexical_weight=lore.lexical_weight,
            min_partial_tokens=lore.min_partial_tokens,
        )

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

    def warm(self) -> int:
        """Count the tokens of every enabled entry now (the per-entry cache keeps them
        across index versions while an entry's text is unchanged), so the first turns
        after startup do not pay for tokenizing the entries they touch. Returns the
        number of entries counted; ~0.05 ms each with SmolLM2's tokenizer."""
        entries = [e for e in self.index.entries.values() if not e.disabled]
        for e in entries:
            self.tokens(e)
        return len(entries)

    # ---- prefix ----------------------------------------------------------

    def prefix(self, npc_id: str) -> list[Pick]:
        """Static lore for the NPC's stable prefix: card, scene (location, faction), constant and prefix entries.

        Deterministic for a given index (ties broken by id), so the prefix stays
        byte-stable across turns; cached until the index changes.

        Raises:
            UnknownNpc: `npc_id` is not an NPC in the index.
        """
        self._follow_index()
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

    def _follow_index(self) -> None:
        """Forget what was derived from an older version of the index: NPC prefixes,
        recursion targets, the deepest per-entry scan depth."""
        version = self.index.version
        if self._version != version:
            self._prefix_cache = {}
            self._triggers = {}
            self._deepest_scan = max((e.scan_depth or 0 for e in self.index.entries.values()), default=0)
            self._version = version

    def scan_depth_of(self, entry: LoreEntry) -> int:
        """Earlier lines scanned for the entry's keys: its own ``scan_depth``, else the retriever's."""
        return self.scan_depth if entry.scan_depth is None else entry.scan_depth

    def select(
        self,
        npc_id: str,
        line: str,
        history: Sequence[str] = (),
        exclude: set[str] | None = None,
        mode: Mode = "hybrid",
    ) -> Selection:
        """Select lore for one turn.

        Fills ``token_budget`` tier by tier (see the module docstring): keys in
        the line, keys in earlier lines, then recursion step by step, then
        similarity. Recursion scans only the text of entries that were
        included (SillyTavern scans the entries it activated, not the ones it
        had to leave out), so its cost is bounded by the budget, not by the
        size of the lorebook; the keys each entry's text contains are computed
        once per index version (`triggers`).

        An entry that does not fit whole is trimmed to whole sentences that fit
        (``Pick.full_tokens`` holds its whole cost) when it was named in the
        player's line or is larger than the whole budget (so it could never fit),
        provided at least ``min_partial_tokens`` are left; otherwise it is
        dropped (reason ``budget``) and smaller entries after it may still fit.

        Args:
            npc_id: who is spoken to.
            line: the player's line.
            history: earlier lines of the conversation, oldest first (the last
                ``scan_depth`` are scanned for keys).
            exclude: entry ids already in the conversation: not injected again and not
                charged to the budget; those this turn triggers are listed in `Selection.present`.
            mode: ``hybrid`` (default: keys, then vectors and BM25 fused), or ``keywords``,
                ``vectors`` or ``lexical`` (BM25) alone (for benchmarks).

        Raises:
            UnknownNpc: `npc_id` is not an NPC in the index.
        """
        npc = self.npc(npc_id)
        sel = Selection(prefix=self.prefix(npc_id), budget=self.token_budget)
        over = self.prefix_dropped(npc_id)
        already = set(exclude or ())
        skip = already | {p.entry.id for p in sel.prefix} | {p.entry.id for p in over}
        entries = self.index.entries
        taken: set[str] = set()  # ids included in the turn or dropped for budget
        dropped: dict[str, Pick] = {}
        ranked: list[Pick] = []  # every pick that reached the budget fill, in fill order

        def drop(e: LoreEntry, why: str, reason: str, **kw) -> None:
            if e.id not in dropped and e.id not in taken:
                dropped[e.id] = Pick(e, 0.0, why, self.tokens(e), reason, **kw)

        def fill(picks: list[Pick]) -> list[Pick]:
            """Add `picks` (one tier, ranked) to the turn while the budget lasts; returns those included."""
            added = []
            for p in picks:
                taken.add(p.entry.id)
                dropped.pop(p.entry.id, None)
                ranked.append(p)
                left = self.token_budget - sel.used
                if p.tokens <= left:
                    sel.used += p.tokens
                    sel.turn.append(p)
                    added.append(p)
                    continue
                part = None
                if (p.found_in == "line" or p.tokens > self.token_budget) and left >= self.min_partial_tokens:
                    part = self.trim(p.entry, left)
                if part is None:
                    sel.dropped.append(replace(p, reason=BUDGET))
                    continue
                entry, tokens = part
                p = replace(p, entry=entry, tokens=tokens, full_tokens=p.tokens)
                sel.used += tokens
                sel.turn.append(p)
                added.append(p)
            return added

        # similarity first: key-triggered picks carry their similarity too
        sims: dict[str, float] = {}
        bm25: dict[str, float] = {}
        fused: dict[str, float] = {}
        if mode != "keywords" and self.vector_k > 0:
            dense = self.index.nearest(line, self.vector_k) if mode in ("vectors", "hybrid") else []
            lexical = self.index.lexical.search(line, self.vector_k) if mode in ("lexical", "hybrid") else []
            sims = {eid: sim for eid, sim in dense if sim >= self.min_similarity}
            bm25 = dict(lexical)
            for weight, ranking in ((self.vector_weight, [eid for eid, _ in dense if eid in sims]), (self.lexical_weight, [eid for eid, _ in lexical])):
                if weight <= 0:
                    continue  # a ranking with weight 0 brings nothing in (it used to add its hits at score 0)
                for i, eid in enumerate(ranking):
                    fused[eid] = fused.get(eid, 0.0) + weight / (self.rrf_k + i + 1)

        def annotate(p: Pick) -> Pick:
            eid = p.entry.id
            if eid not in fused:
                return p
            return replace(p, score=fused[eid], similarity=sims.get(eid), lexical=bm25.get(eid))

        if mode != "vectors":
            direct, texts = self._direct(npc, line, list(history), skip, drop, already, sel.present)
            included = fill(sorted(map(annotate, direct), key=_rank))
            self._recurse(npc, line, texts, included, skip, taken, drop, fill, annotate)

        similar: list[Pick] = []
        for eid, score in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0])):
            e = entries.get(eid)
            if eid in already and e is not None and eid not in sel.present:
                sel.present.append(eid)
            if e is None or eid in skip or eid in taken or e.disabled or self.prefix_placed(e):
                continue
            if eid in dropped and (dropped[eid].reason != RECURSION or dropped[eid].step == 0):
                # a key hit vetoed by its own rules (secondary keys, probability, delay_until_recursion
                # for the player's words) stays out; one that recursion merely reached (past
                # max_recursion, or exclude_recursion) is a similarity hit like any other
                continue
            sim, lex = sims.get(eid), bm25.get(eid)
            why = f"vector:{sim:.3f}" if sim is not None else f"text:{lex:.2f}"
            if not knows(npc, e):
                drop(e, why, SCOPE, similarity=sim, lexical=lex)
                continue
            similar.append(Pick(e, score, why, self.tokens(e), similarity=sim, lexical=lex))
        fill(sorted(similar, key=_rank))

        n = len(ranked)
        rank_of = {p.entry.id: float(n - i) for i, p in enumerate(ranked)}
        sel.turn = [replace(p, score=rank_of[p.entry.id]) for p in sel.turn]
        sel.dropped = [replace(p, score=rank_of[p.entry.id]) for p in sel.dropped]
        sel.dropped.extend(sorted(dropped.values(), key=lambda p: (p.reason, p.entry.id)))
        sel.dropped.extend(over)
        return sel

    def trim(self, entry: LoreEntry, tokens: int) -> tuple[LoreEntry, int] | None:
        """The longest run of the entry's leading sentences whose rendering costs at most `tokens`.

        Returns a copy of the entry with the shortened text and its cost, or
        None when not even the first sentence fits. Binary search over sentence
        counts: O(log sentences) calls of the token counter.
        """
        sentences = SENTENCE.split(entry.text.strip())
        lo, hi, best = 1, len(sentences), None
        while lo <= hi:
            mid = (lo + hi) // 2
            part = entry.model_copy(update={"text": " ".join(sentences[:mid]) + " [...]"})
            cost = self.count_tokens(render_entry(part))
            if cost <= tokens:
                best, lo = (part, cost), mid + 1
            else:
                hi = mid - 1
        return best

    def triggers(self, entry: LoreEntry) -> list[tuple[str, str]]:
        """(entry id, key) of every entry whose primary key occurs in `entry`'s text, sorted by id.

        Cached per entry until the index changes (recursion asks for the same
        entries turn after turn; matching a long text costs ~0.1-1 ms at 10k entries).
        """
        self._follow_index()
        hit = self._triggers.get(entry.id)
        if hit is None:
            hit = self._triggers[entry.id] = sorted(self.index.keywords.match(entry.text).items())
        return hit

    def _consider(self, npc: LoreEntry, line: str, e: LoreEntry, key: str, step: int, found_in: str, window: str, drop) -> Pick | None:
        """A triggered entry's pick, or None after recording why it cannot be used."""
        why = f"key:{key}"
        reason = None
        if e.disabled:
            reason = DISABLED
        elif not knows(npc, e):
            reason = SCOPE
        elif not secondary_ok(e, window):
            reason = SECONDARY
        elif step < _delay(e) or (step > 0 and e.exclude_recursion):
            reason = RECURSION
        elif not roll(npc.id, line, e):
            reason = PROBABILITY
        if reason is not None:
            drop(e, why, reason, key=key, step=step, found_in=found_in)
            return None
        return Pick(e, 0.0, why, self.tokens(e), key=key, step=step, found_in=found_in)

    def _direct(self, npc: LoreEntry, line: str, history: list[str], skip: set[str], drop, already: set[str], present: list[str]) -> tuple[list[Pick], list[str]]:
        """Entries whose keys occur in the line or the scanned earlier lines (step 0), and the scanned texts (line first).

        Hits among `already` (entries in the conversation) are appended to `present` instead."""
        entries = self.index.entries
        kw = self.index.keywords
        self._follow_index()
        depth = max(self.scan_depth, self._deepest_scan)
        texts = [line] + [history[-d] for d in range(1, min(depth, len(history)) + 1)]
        hits: dict[str, tuple[str, int]] = {}  # entry id -> (key, lines back)
        for back, text in enumerate(texts):
            for eid, key in kw.match(text).items():
                if eid not in hits:
                    hits[eid] = (key, back)
        picks = []
        for eid, (key, back) in sorted(hits.items()):
            e = entries.get(eid)
            if e is None or self.prefix_placed(e):
                continue
            d = self.scan_depth_of(e)
            if back > d:
                continue
            if eid in already:
                present.append(eid)
                continue
            if eid in skip:
                continue
            window = "\n".join(texts[: d + 1])
            p = self._consider(npc, line, e, key, 0, "line" if back == 0 else f"history:{back}", window, drop)
            if p is not None:
                picks.append(p)
        return picks, texts

    def _recurse(self, npc: LoreEntry, line: str, texts: list[str], included: list[Pick], skip: set[str], taken: set[str], drop, fill, annotate) -> None:
        """Recursion: keys in the text of the entries included at the previous step trigger the next step."""
        entries = self.index.entries
        buffer = ""
        step = 0
        while included:
            step += 1
            sources = [p for p in included if not p.entry.prevent_recursion]
            if not sources:
                return
            buffer += "".join("\n" + p.entry.text for p in sources)
            picks: dict[str, Pick] = {}
            for source in sources:
                src = source.entry
                # a trimmed entry triggers only from the text that was injected
                targets = self.triggers(src) if source.full_tokens is None else sorted(self.index.keywords.match(src.text).items())
                for eid, key in targets:
                    e = entries.get(eid)
                    if e is None or eid in skip or eid in taken or eid in picks or self.prefix_placed(e):
                        continue
                    found_in = f"recursion:{src.id}"
                    if step > self.max_recursion:
                        if not e.disabled and knows(npc, e):
                            drop(e, f"key:{key}", RECURSION, key=key, step=step, found_in=found_in)
                        continue
                    d = self.scan_depth_of(e)
                    window = "\n".join(texts[: d + 1]) + "\n" + buffer
                    pick = self._consider(npc, line, e, key, step, found_in, window, drop)
                    if pick is not None:
                        picks[eid] = annotate(pick)
            if step > self.max_recursion:
                return
            included = fill(sorted(picks.values(), key=_rank))


def _rank(p: Pick) -> tuple:
    """Budget order within a fill: key tiers (line, history, recursion), insertion order, longer key, fused score, similarity."""
    if p.key is not None:
        tier = 0 if p.found_in == "line" else 1 if p.found_in.startswith("history") else 2
        return (tier, p.step, -p.entry.order, -len(p.key), -p.score, p.entry.id)
    return (3, 0, 0, 0, -p.score, -(p.similarity if p.similarity is not None else -2.0), p.entry.id)


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
