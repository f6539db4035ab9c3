"""Keyword matching for lorebook entries: which entries' keys occur in a text.

A regex per key per turn is too slow for a large lorebook (10,000 entries with a
few keys each is ~30,000 regex scans per scanned line). Plain whole-word keys are
therefore indexed by their first normalized word (lower-cased ``\\w+`` runs): a
text is split into its words once, the words select a few candidate keys, and
only those candidates are confirmed with the exact pattern. Keys that cannot be
indexed that way (``/regex/flags`` keys, substring keys with
``match_whole_words: false``, keys with no word character) are scanned one by
one; a lorebook normally has few of them.

Key semantics follow SillyTavern World Info
(https://docs.sillytavern.app/usage/core-concepts/worldinfo/): keys are
case-insensitive unless ``case_sensitive``; plain keys match whole words unless
``match_whole_words`` is false (then any substring matches); ``/pattern/flags``
is a regular expression in JavaScript syntax, translated for Python by
`lore.schema.js_regex_to_python` (flags ``i``, ``m``, ``s`` honoured).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from lore.regex_guard import BoundedPattern
from lore.schema import LoreEntry, SelectiveLogic, compile_regex_key, parse_regex_key

NO_SPACE_SCRIPTS = (
    "\u0e00-\u0eff"  # Thai, Lao
    "\u0f00-\u0fff"  # Tibetan
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3005\u3007\u3021-\u3029\u3031-\u3035\u303b\u303c"  # CJK iteration marks and numerals
    "\u3040-\u30ff\u31f0-\u31ff"  # Hiragana, Katakana
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs
    "\uff66-\uff9f"  # half-width Katakana
    "\U00020000-\U0003ffff"  # CJK ideographs, supplementary planes
)
"""Scripts written without spaces between words. Their letters never count as word characters
at a key's edge, so ``東京`` matches in ``東京に行きたい``: SillyTavern's whole-word rule uses
JavaScript's ASCII ``\\W``, under which any such letter is a boundary. Letters of spaced scripts
(Latin, Cyrillic, Greek, Hangul...) stay word characters, so ``Київ`` is not found inside ``Київська``."""

WORD = re.compile(rf"[^\W{NO_SPACE_SCRIPTS}]+")
"""A word for bucketing keys and texts: a run of word characters of spaced scripts."""
_EDGE_BEFORE = rf"(?<![^\W{NO_SPACE_SCRIPTS}])"
_EDGE_AFTER = rf"(?![^\W{NO_SPACE_SCRIPTS}])"

DEFAULT_CASE_SENSITIVE = False
DEFAULT_WHOLE_WORDS = True


@lru_cache(maxsize=65536)
def key_pattern(key: str, case_sensitive: bool, whole_words: bool) -> re.Pattern[str] | BoundedPattern:
    """The compiled pattern of one key under the given options (cached).

    Raises:
        lore.schema.UnsupportedRegex: a ``/regex/`` key Python cannot express (the schema rejects those on load).
    """
    if parse_regex_key(key) is not None:
        return compile_regex_key(key)  # JavaScript syntax translated, a time budget per match (lore.regex_guard)
    flags = 0 if case_sensitive else re.IGNORECASE
    if whole_words:
        return re.compile(rf"{_EDGE_BEFORE}{re.escape(key)}{_EDGE_AFTER}", flags)
    return re.compile(re.escape(key), flags)


def entry_options(entry: LoreEntry) -> tuple[bool, bool]:
    """(case_sensitive, whole_words) of an entry, with the defaults filled in."""
    cs = DEFAULT_CASE_SENSITIVE if entry.case_sensitive is None else entry.case_sensitive
    ww = DEFAULT_WHOLE_WORDS if entry.match_whole_words is None else entry.match_whole_words
    return cs, ww


def key_in(entry: LoreEntry, key: str, text: str) -> bool:
    """Whether one key of `entry` occurs in `text`, under the entry's options."""
    if not key:
        return False
    return key_pattern(key, *entry_options(entry)).search(text) is not None


def secondary_ok(entry: LoreEntry, text: str) -> bool:
    """Apply ``selective_logic`` over ``secondary_keys`` in `text` (SillyTavern semantics).

    AND ANY: at least one secondary key present; AND ALL: all present;
    NOT ANY: none present; NOT ALL: at least one absent. True when there are no
    secondary keys.
    """
    keys = [k for k in entry.secondary_keys if k]
    if not keys:
        return True
    hits = [key_in(entry, k, text) for k in keys]
    logic = entry.selective_logic
    if logic == SelectiveLogic.and_any:
        return any(hits)
    if logic == SelectiveLogic.and_all:
        return all(hits)
    if logic == SelectiveLogic.not_any:
        return not any(hits)
    return not all(hits)  # not_all


class KeywordIndex:
    """Primary keys of many entries, matched against a text in time ~ (words in the text + candidate keys).

    Entries are added and removed one by one (hot reload re-indexes one file);
    buckets are replaced, never mutated in place, so a reader in another thread
    always sees a consistent list.
    """

    def __init__(self) -> None:
        self._by_word: dict[str, tuple[tuple[str, int, str], ...]] = {}  # first word -> (entry id, key rank, key)
        self._scan: tuple[tuple[str, int, str, str | None], ...] = ()  # keys matched one by one (+ lower-cased literal, None for regex keys)
        self._placed: dict[str, list[str | None]] = {}  # entry id -> bucket word per key (None: scan list)
        self._entries: dict[str, LoreEntry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def rebuild(self, entries: Iterable[LoreEntry]) -> None:
        """Replace everything with `entries` (disabled ones included: the retriever reports them)."""
        by_word: dict[str, list[tuple[str, int, str]]] = {}
        scan: list[tuple[str, int, str, str | None]] = []
        placed: dict[str, list[str | None]] = {}
        stored: dict[str, LoreEntry] = {}
        for e in entries:
            stored[e.id] = e
            placed[e.id] = self._place(e, by_word, scan)
        self._by_word = {w: tuple(v) for w, v in by_word.items()}
        self._scan = tuple(scan)
        self._placed = placed
        self._entries = stored

    @staticmethod
    def _place(e: LoreEntry, by_word: dict[str, list], scan: list) -> list[str | None]:
        _, whole = entry_options(e)
        where: list[str | None] = []
        for rank, key in enumerate(e.all_keys()):
            words = WORD.findall(key.lower())
            if whole and words and parse_regex_key(key) is None:
                by_word.setdefault(words[0], []).append((e.id, rank, key))
                where.append(words[0])
            else:
                scan.append((e.id, rank, key, None if parse_regex_key(key) is not None else key.lower()))
                where.append(None)
        return where

    def remove(self, entry_id: str) -> None:
        """Forget one entry's keys (no-op when unknown)."""
        where = self._placed.pop(entry_id, None)
        self._entries.pop(entry_id, None)
        if where is None:
            return
        for w in set(where):
            if w is None:
                self._scan = tuple(x for x in self._scan if x[0] != entry_id)
            else:
                left = tuple(x for x in self._by_word.get(w, ()) if x[0] != entry_id)
                if left:
                    self._by_word[w] = left
                else:
                    self._by_word.pop(w, None)

    def add(self, entry: LoreEntry) -> None:
        """Index one entry's keys (replacing an entry of the same id)."""
        self.remove(entry.id)
        by_word: dict[str, list] = {}
        scan: list = []
        self._placed[entry.id] = self._place(entry, by_word, scan)
        self._entries[entry.id] = entry
        for w, items in by_word.items():
            self._by_word[w] = self._by_word.get(w, ()) + tuple(items)
        if scan:
            self._scan = self._scan + tuple(scan)

    def match(self, text: str) -> dict[str, str]:
        """Entry id -> the first of its primary keys (in key order) that occurs in `text`."""
        if not text:
            return {}
        best: dict[str, tuple[int, str]] = {}
        entries = self._entries
        for word in set(WORD.findall(text.lower())):
            for eid, rank, key in self._by_word.get(word, ()):
                if eid in best and best[eid][0] <= rank:
                    continue
                e = entries.get(eid)
                if e is not None and key_pattern(key, *entry_options(e)).search(text):
                    best[eid] = (rank, key)
        lower = text.lower()
        for eid, rank, key, literal in self._scan:
            if eid in best and best[eid][0] <= rank:
                continue
            if literal is not None and literal not in lower:
                continue  # a literal key absent from the text (cheap C-level check before any regex)
            e = entries.get(eid)
            if e is not None and key_pattern(key, *entry_options(e)).search(text):
                best[eid] = (rank, key)
        return {eid: key for eid, (_, key) in best.items()}
