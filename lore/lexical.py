"""BM25 over lore entry text: the lexical half of similarity search.

A player's paraphrase rarely contains an entry's keys but often shares its
content words with the entry's text ("lamp fuel that burns blue" -> *bluewick
oil ... burns blue without smoke*). Small embedding models (the bundled
SmolLM2) miss many of those; BM25 (Robertson & Zaragoza, "The Probabilistic
Relevance Framework: BM25 and Beyond", 2009; k1 = 1.2, b = 0.75) catches them.
The retriever fuses its ranking with the vector ranking by reciprocal rank
fusion (Cormack et al., SIGIR 2009, k = 60).

Terms: lower-cased ``\\w+`` runs minus English stop words, with a plural ``s``
stripped. The index is updated entry by entry (hot reload). A query skips
terms found in more than ``max_postings`` entries (default 1000): in a large
lorebook they cost the most and, by their low IDF, weigh the least.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable

from lore.render import entry_document
from lore.schema import LoreEntry

_WORD = re.compile(r"[^\W_]+")
STOP = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between both but by
    can could did do does doing down during each few for from further had has have having he her here hers herself him
    himself his how i if in into is it its itself just me more most my myself no nor not now of off on once only or other
    our ours ourselves out over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which while who whom why will
    with would you your yours yourself yourselves ever really anything anyone anybody someone somebody something there's
    what's who's where's it's i'm you're don't tell know like get got make made one ones say said thing things""".split()  # noqa: SIM905 (a word list reads better as text)
)


def terms(text: str) -> list[str]:
    """Index terms of a text (lower-cased words, stop words removed, a plural 's' stripped)."""
    out = []
    for w in _WORD.findall(text.lower()):
        if w in STOP or len(w) < 2:
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


class Bm25Index:
    """BM25 scores of entries for a query; entries added and removed one by one."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, max_postings: int = 1000) -> None:
        self.k1 = k1
        self.b = b
        self.max_postings = max_postings  # terms in more entries are skipped: a per-turn cost bound (their IDF is low)
        self._post: dict[str, dict[str, int]] = {}  # term -> entry id -> term frequency
        self._len: dict[str, int] = {}  # entry id -> document length in terms
        self._terms: dict[str, Counter] = {}
        self._total = 0

    def __len__(self) -> int:
        return len(self._len)

    def rebuild(self, entries: Iterable[LoreEntry]) -> None:
        self._post, self._len, self._terms, self._total = {}, {}, {}, 0
        for e in entries:
            self.add(e)

    def add(self, entry: LoreEntry) -> None:
        self.remove(entry.id)
        if entry.disabled:
            return
        tf = Counter(terms(entry_document(entry) + " " + " ".join(entry.keys)))
        self._terms[entry.id] = tf
        n = sum(tf.values())
        self._len[entry.id] = n
        self._total += n
        for t, c in tf.items():
            self._post.setdefault(t, {})[entry.id] = c

    def remove(self, entry_id: str) -> None:
        tf = self._terms.pop(entry_id, None)
        if tf is None:
            return
        self._total -= self._len.pop(entry_id, 0)
        for t in tf:
            post = self._post.get(t)
            if post is not None:
                post.pop(entry_id, None)
                if not post:
                    del self._post[t]

    def search(self, text: str, k: int) -> list[tuple[str, float]]:
        """The `k` best entries for `text` as (entry id, BM25 score), best first; entries sharing no term are left out."""
        n = len(self._len)
        if n == 0 or k <= 0:
            return []
        avgdl = self._total / n
        scores: dict[str, float] = {}
        for t in set(terms(text)):
            post = self._post.get(t)
            if not post or len(post) > self.max_postings:
                continue
            idf = math.log(1 + (n - len(post) + 0.5) / (len(post) + 0.5))
            for eid, tf in post.items():
                denom = tf + self.k1 * (1 - self.b + self.b * self._len[eid] / avgdl)
                scores[eid] = scores.get(eid, 0.0) + idf * tf * (self.k1 + 1) / denom
        return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
