"""Regex lore keys with a time budget, and the shapes that make a regex backtrack.

A ``/regex/`` key is written by a designer or comes with an imported card; the
text it runs on comes from a player. Python's ``re`` backtracks without bound:
``/(a+)+$/`` against 30 ``a`` and a ``b`` takes minutes, each extra character
doubling the time. Keys are therefore compiled with the ``regex`` module (same
syntax as ``re`` in its default VERSION0 mode, and it short-cuts many such
patterns by itself) and every match gets a time budget (`MATCH_BUDGET_S`): a
match that runs out counts as no match and is logged once per key.

google-re2 would give linear time outright, but it refuses lookarounds and
backreferences, which SillyTavern keys use; a budget keeps the ST syntax.
"""

from __future__ import annotations

import logging
import re

import regex

log = logging.getLogger(__name__)

MATCH_BUDGET_S = 0.05
"""Seconds one regex key may spend on one text (``regex``'s ``timeout``; checked as the match runs)."""

_NESTED = re.compile(r"\((?:[^()\\]|\\.)*?[+*}](?:[^()\\]|\\.)*\)(?:[+*]|\{\d*,\d*\})")
"""A group holding a quantifier, itself quantified: ``(a+)+``, ``(\\w+\\s?)*``, ``(x*){2,}``."""


class BoundedPattern:
    """A compiled regex key whose `search` never runs longer than `budget_s`."""

    def __init__(self, pattern: str, flags: int, budget_s: float = MATCH_BUDGET_S) -> None:
        try:
            self._rx = regex.compile(pattern, flags | regex.VERSION0)
        except regex.error as exc:
            raise re.error(str(exc)) from None
        self.pattern = pattern
        self.budget_s = budget_s
        self._warned = False

    def search(self, text: str):
        """The first match in `text`, or None (also when the time budget runs out)."""
        try:
            return self._rx.search(text, timeout=self.budget_s)
        except TimeoutError:
            if not self._warned:
                self._warned = True
                log.warning("regex key /%s/ ran out of its %.0f ms budget on a %d-character text: counted as no match "
                            "(nested quantifiers? see `narrative lore check`)", self.pattern, self.budget_s * 1000, len(text))
            return None


def compile_key(pattern: str, flags: int) -> BoundedPattern:
    """Compile a ``/regex/`` key's pattern (``re`` flags) with a per-match time budget.

    Raises:
        re.error: the pattern does not compile.
    """
    return BoundedPattern(pattern, flags)


def nested_quantifier(pattern: str) -> str | None:
    """The part of `pattern` that quantifies a quantified group (catastrophic backtracking), or None."""
    m = _NESTED.search(pattern)
    return m.group(0) if m else None
