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

The NPC's knowledge scope (``known_by``) is a hard filter on both. So is an
entry's game-state condition (``when``, `lore.conditions`), checked against the
``state`` a turn passes: an entry whose ``when`` does not hold is never selected
(reason ``state``). A gated entry never enters a prefix, which must stay
byte-stable while the game state changes: one that would be prefix lore for the
NPC (its scene, a constant, a ``position: prefix`` entry) is instead a *standing*
entry of the turn, included in every turn while its condition holds, first in the
budget fill (as the prefix would have come first); a gated keyed entry triggers by
its keys as usual, only while its condition holds. Every entry
that was triggered (or found by similarity) but not used is reported in
`Selection.dropped` with its reason, so "not triggered" can be told from
"over budget" (see `lore.explain`).

Order of the turn's budget fill, in tiers: standing gated entries whose condition
holds (see above; none without a ``when``), entries whose key is in the player's
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from lore.index import LoreIndex
from lore.keywords import key_in, secondary_ok
from lore.render import render_entry
from lore.schema import Kind, LoreEntry
from lore.settings import LoreSettings

TokenCounter = Callable[[str], int]
Mode = Literal["hybrid", "keywords", "vectors", "lexical"]

# reasons an entry is in Selection.dropped
BUDGET = "budget"  # triggered, but the token budget was full
SCOPE = "scope"  # the NPC is outside the entry's known_by
PROBABILITY = "probability"  # the probability roll failed
RECURSION = "recursion"  # only reachable by recursion, and recursion may not trigger it (or depth limit)
SECONDARY = "secondary"  # a primary key matched but the secondary keys' logic failed
DISABLED = "disabled"  # a key matched a disabled entry
STATE = "state"  # the entry's `when` does not hold in the turn's game state


class UnknownNpc(KeyError):
    """The NPC id is not an enabled ``kind: npc`` entry in the index."""


@dataclass(frozen=True)
class Pick:
    """One selected (or dropped) entry.

    ``why``: 'card', 'constant', 'scene', 'prefix', 'key:<key>', 'vector:<sim>', 'text:<bm25>', or for a
    gated entry that would have been prefix lore and is a standing entry of the turn instead,
    'when:constant', 'when:scene' or 'when:prefix'.
    ``score``: rank within its list (higher first), not comparable across lists.
    ``tokens``: the entry's cost in tokens of the dialogue model.
    ``reason``: for dropped entries, one of budget, scope, state, probability,
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

    Every selection knob comes from `lore.settings.LoreSettings` (the sidecar's
    ``[lore]`` settings), so a retriever built without settings selects
    exactly as the sidecar does; keyword `overrides` replace single fields
    (validated like the settings: a bad value raises ``pydantic.ValidationError``).

    Args:
        index: the lore index (catalog + keyword index + vector store).
        count_tokens: the dialogue model's token counter (tokens of a string).
        settings: the knobs (default: ``LoreSettings()``). The ones used here:
            ``token_budget`` (tokens of per-turn lore; entries over it are
            dropped, reason ``budget``), ``prefix_budget`` (static lore in an
            NPC's prefix besides its card), ``vector_k``, ``min_similarity``,
            ``scan_depth`` (an entry's own ``scan_depth`` overrides it),
            ``max_recursion`` (SillyTavern's "Max Recursion Steps"; 0 disables),
            ``vector_weight``/``lexical_weight`` (the weighted reciprocal rank
            fusion of the embedding and BM25 rankings: an entry scores
            sum(weight / (rrf_k + rank)) over the two, rank from 1; ties go by
            embedding similarity; a ranking with weight 0 brings no entry in)
            and ``min_partial_tokens`` (the least budget left for
            which an entry that does not fit whole is trimmed, see `select`).
        rrf_k: the fusion constant (Cormack, Clarke & Buettcher, SIGIR 2009: 60).
    """

    def __init__(
        self,
        index: LoreIndex,
        count_tokens: TokenCounter,
        settings: LoreSettings | None = None,
        *,
        rrf_k: int = RRF_K,
        **overrides: object,
    ) -> None:
        s = settings or LoreSettings()
        if overrides:
            s = LoreSettings.model_validate({**s.model_dump(), **overrides})
        self.index = index
        self.count_tokens = count_tokens
        self.token_budget = s.token_budget
        self.prefix_budget = s.prefix_budget
        self.vector_k = s.vector_k
        self.min_similarity = s.min_similarity
        self.scan_depth = s.scan_depth
        self.max_recursion = s.max_recursion
        self.vector_weight = s.vector_weight
        self.lexical_weight = s.lexical_weight
        self.rrf_k = rrf_k
        self.min_partial_tokens = s.min_partial_tokens
        self._token_cache: dict[tuple[str, int, bool], int] = {}  # keyed by entry text: survives index changes
        # derived from one version of the index (see _follow_index)
        self._version = -1
        self._prefix_cache: dict[str, tuple[list[Pick], list[Pick], list[tuple[float, str, LoreEntry]]]] = {}
        self._triggers: dict[str, list[tuple[str, str]]] = {}
        self._deepest_scan = 0

    @classmethod
    def from_settings(cls, index: LoreIndex, count_tokens: TokenCounter, lore: LoreSettings) -> Retriever:
        """A retriever configured by `lore` (the same as ``Retriever(index, count_tokens, lore)``)."""
        return cls(index, count_tokens, lore)

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
        byte-stable across turns; cached until the index changes. An entry with a
        ``when`` is never in it, whatever the game state (see `standing`).

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
        gated = [c for c in candidates if c[2].gate() is not None]
        used = 0
        over: list[Pick] = []
        for score, why, e in candidates:
            if e.gate() is not None:
                continue
            t = self.tokens(e)
            if used + t > self.prefix_budget:
                over.append(Pick(e, score, why, t, BUDGET))
                continue
            used += t
            picks.append(Pick(e, score, why, t))
        self._prefix_cache[npc_id] = (picks, over, gated)
        return list(picks)

    def prefix_dropped(self, npc_id: str) -> list[Pick]:
        """Prefix-placed entries (scene, constant, ``position: prefix``) that did not fit ``prefix_budget`` (reason ``budget``)."""
        self.prefix(npc_id)
        return list(self._prefix_cache[npc_id][1])

    def standing(self, npc_id: str) -> list[tuple[float, str, LoreEntry]]:
        """Gated entries that would be prefix lore for the NPC: (score, why, entry), prefix order.

        ``why`` is 'scene', 'constant' or 'prefix' as in `prefix`. They are never in
        the prefix (it stays byte-stable while the game state changes); each turn
        includes those whose ``when`` holds, as if always triggered, and drops the
        others (reason ``state``). Cached with the prefix until the index changes.

        Raises:
            UnknownNpc: `npc_id` is not an NPC in the index.
        """
        self.prefix(npc_id)
        return list(self._prefix_cache[npc_id][2])

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
        *,
        state: Mapping[str, object] | None = None,
    ) -> Selection:
        """Select lore for one turn.

        Fills ``token_budget`` tier by tier (see the module docstring): standing
        gated entries whose condition holds, keys in the line, keys in earlier
        lines, then recursion step by step, then similarity. Recursion scans only the text of entries that were
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
            state: the game's state map for this turn (key -> str, int, float or bool; see
                `lore.conditions`); None is the empty state. An entry whose ``when`` does not
                hold is not selected (dropped, reason ``state``); entries without a ``when``
                are unaffected. Values are not validated here (`lore.conditions.validate_state`
                is for the boundary): a value of another type simply equals nothing.

        Raises:
            UnknownNpc: `npc_id` is not an NPC in the index.
        """
        turn = _Turn(self, self.npc(npc_id), line, history, exclude, state)
        turn.fill(turn.standing_hits())
        if mode != "keywords" and self.vector_k > 0:
            turn.rank_similar(dense=mode in ("vectors", "hybrid"), lexical=mode in ("lexical", "hybrid"))
        if mode != "vectors":
            turn.recurse(turn.fill(turn.key_hits()))
        turn.fill(turn.similar_hits())
        return turn.result()

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


class _Turn:
    """One turn's selection (`Retriever.select`), in named steps over shared state.

    Steps, in order: `standing_hits` (gated would-be prefix lore whose condition holds) -> `fill`,
    `rank_similar` (embedding and BM25 rankings, fused),
    `key_hits` (keys in the line and scanned history, step 0) -> `fill`,
    `recurse` (keys in the text of included entries, step by step) -> `fill`,
    `similar_hits` (similarity-only entries) -> `fill`, then `result`.
    """

    def __init__(
        self, r: Retriever, npc: LoreEntry, line: str, history: Sequence[str], exclude: set[str] | None, state: Mapping[str, object] | None = None
    ) -> None:
        self.r = r
        self.npc = npc
        self.line = line
        self.history = list(history)
        self.state: Mapping[str, object] = state if state is not None else {}
        self.sel = Selection(prefix=r.prefix(npc.id), budget=r.token_budget)
        self.over = r.prefix_dropped(npc.id)
        self.standing = r.standing(npc.id)
        self.already = set(exclude or ())
        self.skip = self.already | {p.entry.id for p in self.sel.prefix} | {p.entry.id for p in self.over} | {e.id for _, _, e in self.standing}
        self.taken: set[str] = set()  # ids included in the turn or dropped for budget
        self.dropped: dict[str, Pick] = {}  # ids dropped before the budget fill, with the reason
        self.ranked: list[Pick] = []  # every pick that reached the budget fill, in fill order
        self.sims: dict[str, float] = {}  # cosine similarity of the nearest entries
        self.bm25: dict[str, float] = {}  # BM25 score of the best entries
        self.fused: dict[str, float] = {}  # weighted reciprocal rank fusion of the two
        self.texts: list[str] = [line]  # the texts scanned for keys, the line first

    def allowed(self, e: LoreEntry) -> bool:
        """Whether the entry's ``when`` holds in this turn's state (always, for an entry without one)."""
        gate = e.gate()
        return gate is None or gate.holds(self.state)

    def mark_present(self, eid: str) -> None:
        """Note that an entry already in the conversation was triggered again (once per turn)."""
        if eid not in self.sel.present:
            self.sel.present.append(eid)

    def drop(self, e: LoreEntry, why: str, reason: str, **kw) -> None:
        """Record that `e` was triggered but cannot be used (first reason wins)."""
        if e.id not in self.dropped and e.id not in self.taken:
            self.dropped[e.id] = Pick(e, 0.0, why, self.r.tokens(e), reason, **kw)

    def fill(self, picks: list[Pick]) -> list[Pick]:
        """Add `picks` (one tier) to the turn in `_rank` order while the budget lasts; returns those included."""
        r, sel = self.r, self.sel
        added = []
        for p in sorted(picks, key=_rank):
            self.taken.add(p.entry.id)
            self.dropped.pop(p.entry.id, None)
            self.ranked.append(p)
            left = r.token_budget - sel.used
            if p.tokens <= left:
                sel.used += p.tokens
                sel.turn.append(p)
                added.append(p)
                continue
            part = None
            if (p.found_in == "line" or p.tokens > r.token_budget) and left >= r.min_partial_tokens:
                part = r.trim(p.entry, left)
            if part is None:
                sel.dropped.append(replace(p, reason=BUDGET))
                continue
            entry, tokens = part
            p = replace(p, entry=entry, tokens=tokens, full_tokens=p.tokens)
            sel.used += tokens
            sel.turn.append(p)
            added.append(p)
        return added

    def standing_hits(self) -> list[Pick]:
        """Step 0: gated entries that would be prefix lore for the NPC (`Retriever.standing`), as if always
        triggered: included while their condition holds, else dropped (reason ``state``)."""
        picks = []
        for score, why, e in self.standing:
            why = f"when:{why}"
            if not self.allowed(e):
                self.drop(e, why, STATE)
            elif e.id in self.already:
                self.mark_present(e.id)
            else:
                picks.append(Pick(e, score, why, self.r.tokens(e)))
        return picks

    def rank_similar(self, dense: bool, lexical: bool) -> None:
        """Step 1: the ``vector_k`` nearest entries by embedding and the best by BM25, fused by weighted rank."""
        r = self.r
        near = r.index.nearest(self.line, r.vector_k) if dense else []
        best = r.index.lexical.search(self.line, r.vector_k) if lexical else []
        self.sims = {eid: sim for eid, sim in near if sim >= r.min_similarity}
        self.bm25 = dict(best)
        for weight, ranking in ((r.vector_weight, [eid for eid, _ in near if eid in self.sims]), (r.lexical_weight, [eid for eid, _ in best])):
            if weight <= 0:
                continue  # a ranking with weight 0 brings nothing in (it used to add its hits at score 0)
            for i, eid in enumerate(ranking):
                self.fused[eid] = self.fused.get(eid, 0.0) + weight / (r.rrf_k + i + 1)

    def annotate(self, p: Pick) -> Pick:
        """`p` with its fused score, similarity and BM25 score when similarity found it too."""
        eid = p.entry.id
        if eid not in self.fused:
            return p
        return replace(p, score=self.fused[eid], similarity=self.sims.get(eid), lexical=self.bm25.get(eid))

    def consider(self, e: LoreEntry, key: str, step: int, found_in: str, window: str) -> Pick | None:
        """A triggered entry's pick, or None after recording why it cannot be used."""
        why = f"key:{key}"
        reason = None
        if e.disabled:
            reason = DISABLED
        elif not knows(self.npc, e):
            reason = SCOPE
        elif not self.allowed(e):
            reason = STATE
        elif not secondary_ok(e, window):
            reason = SECONDARY
        elif step < _delay(e) or (step > 0 and e.exclude_recursion):
            reason = RECURSION
        elif not roll(self.npc.id, self.line, e):
            reason = PROBABILITY
        if reason is not None:
            self.drop(e, why, reason, key=key, step=step, found_in=found_in)
            return None
        return self.annotate(Pick(e, 0.0, why, self.r.tokens(e), key=key, step=step, found_in=found_in))

    def key_hits(self) -> list[Pick]:
        """Step 2: entries whose keys occur in the line or the scanned earlier lines (step 0).

        Hits among the entries already in the conversation go to ``Selection.present`` instead."""
        r = self.r
        entries = r.index.entries
        r._follow_index()
        depth = max(r.scan_depth, r._deepest_scan)
        h = self.history
        self.texts = [self.line] + [h[-d] for d in range(1, min(depth, len(h)) + 1)]
        hits: dict[str, tuple[str, int]] = {}  # entry id -> (key, lines back)
        for back, text in enumerate(self.texts):
            for eid, key in r.index.keywords.match(text).items():
                if eid not in hits:
                    hits[eid] = (key, back)
        picks = []
        for eid, (key, back) in sorted(hits.items()):
            e = entries.get(eid)
            if e is None or r.prefix_placed(e):
                continue
            d = r.scan_depth_of(e)
            if back > d:
                continue
            if eid in self.already:
                if self.allowed(e):
                    self.mark_present(eid)
                continue
            if eid in self.skip:
                continue
            window = "\n".join(self.texts[: d + 1])
            p = self.consider(e, key, 0, "line" if back == 0 else f"history:{back}", window)
            if p is not None:
                picks.append(p)
        return picks

    def recurse(self, included: list[Pick]) -> None:
        """Step 3: keys in the text of the entries included at the previous step trigger the next step."""
        r = self.r
        entries = r.index.entries
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
                targets = r.triggers(src) if source.full_tokens is None else sorted(r.index.keywords.match(src.text).items())
                for eid, key in targets:
                    e = entries.get(eid)
                    if e is None or eid in self.skip or eid in self.taken or eid in picks or r.prefix_placed(e):
                        continue
                    found_in = f"recursion:{src.id}"
                    if step > r.max_recursion:
                        if not e.disabled and knows(self.npc, e):
                            self.drop(e, f"key:{key}", RECURSION if self.allowed(e) else STATE, key=key, step=step, found_in=found_in)
                        continue
                    d = r.scan_depth_of(e)
                    window = "\n".join(self.texts[: d + 1]) + "\n" + buffer
                    pick = self.consider(e, key, step, found_in, window)
                    if pick is not None:
                        picks[eid] = pick
            if step > r.max_recursion:
                return
            included = self.fill(list(picks.values()))

    def similar_hits(self) -> list[Pick]:
        """Step 4: entries found by similarity alone (not triggered, not vetoed by their own rules)."""
        r = self.r
        entries = r.index.entries
        similar: list[Pick] = []
        for eid, score in sorted(self.fused.items(), key=lambda kv: (-kv[1], kv[0])):
            e = entries.get(eid)
            if eid in self.already and e is not None and self.allowed(e):
                self.mark_present(eid)
            if e is None or eid in self.skip or eid in self.taken or e.disabled or r.prefix_placed(e):
                continue
            if eid in self.dropped and (self.dropped[eid].reason != RECURSION or self.dropped[eid].step == 0):
                # a key hit vetoed by its own rules (secondary keys, probability, delay_until_recursion
                # for the player's words) stays out; one that recursion merely reached (past
                # max_recursion, or exclude_recursion) is a similarity hit like any other
                continue
            sim, lex = self.sims.get(eid), self.bm25.get(eid)
            why = f"vector:{sim:.3f}" if sim is not None else f"text:{lex:.2f}"
            if not knows(self.npc, e):
                self.drop(e, why, SCOPE, similarity=sim, lexical=lex)
                continue
            if not self.allowed(e):
                self.drop(e, why, STATE, similarity=sim, lexical=lex)
                continue
            similar.append(Pick(e, score, why, r.tokens(e), similarity=sim, lexical=lex))
        return similar

    def result(self) -> Selection:
        """Step 5: scores become fill ranks; dropped entries listed (budget in fill order, then by reason, then prefix overflow)."""
        sel = self.sel
        n = len(self.ranked)
        rank_of = {p.entry.id: float(n - i) for i, p in enumerate(self.ranked)}
        sel.turn = [replace(p, score=rank_of[p.entry.id]) for p in sel.turn]
        sel.dropped = [replace(p, score=rank_of[p.entry.id]) for p in sel.dropped]
        sel.dropped.extend(sorted(self.dropped.values(), key=lambda p: (p.reason, p.entry.id)))
        sel.dropped.extend(self.over)
        return sel


def _rank(p: Pick) -> tuple:
    """Budget order within a fill: key tiers (line, history, recursion), insertion order, longer key, fused score, similarity."""
    if p.key is not None:
        tier = 0 if p.found_in == "line" else 1 if p.found_in.startswith("history") else 2
        return (tier, p.step, -p.entry.order, -len(p.key), -p.score, p.entry.id)
    return (3, 0, 0, 0, -p.score, -(p.similarity if p.similarity is not None else -2.0), p.entry.id)
