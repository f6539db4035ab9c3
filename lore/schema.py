"""Validated lore entries: the schema of a designer's lore file.

A lore file is Markdown with YAML front matter (the format Jekyll, Hugo and
Obsidian use). The front matter holds the fields below; the Markdown body is
the entry's text. Field names follow SillyTavern's World Info where one exists
(``keys``, ``secondary_keys``, ``selective_logic``, ``constant``, ``disabled``,
``order``, ``position``), see https://docs.sillytavern.app/usage/core-concepts/worldinfo/
so writers' habits carry over.
"""

from __future__ import annotations

import re
from enum import Enum

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from lore.conditions import When
from lore.regex_guard import BoundedPattern, compile_key

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"
"""ASCII ids (quest and step ids of `narrative.batch.spec`)."""
ENTRY_ID = re.compile(r"[^\W_][\w.-]*")
"""A lore entry id: lower-case letters of any script, digits, '_', '.', '-', starting with a letter or digit
(``smokeglass``, ``київ``, ``東京``): ids of imported cards stay readable in their own language."""


class Kind(str, Enum):
    """What an entry describes. ``npc`` entries are NPC cards a client can talk to."""

    npc = "npc"
    place = "place"
    faction = "faction"
    event = "event"
    item = "item"
    creature = "creature"
    lore = "lore"


class SelectiveLogic(str, Enum):
    """How ``secondary_keys`` gate a primary-key match (SillyTavern World Info)."""

    and_any = "and_any"
    and_all = "and_all"
    not_any = "not_any"
    not_all = "not_all"


class Position(str, Enum):
    """Where a triggered entry is placed in the prompt.

    ``prefix``: in the byte-stable prefix (evaluated once per NPC).
    ``turn``: just before the player's line, in the turn that triggered it.
    """

    prefix = "prefix"
    turn = "turn"


class NpcCard(BaseModel):
    """The character fields of a ``kind: npc`` entry."""

    model_config = ConfigDict(extra="forbid")

    persona: str = Field(description="Who the NPC is: role, temperament, goals, in the third person.")
    voice: str = Field(description="How the NPC speaks: register, verbal tics, sentence length.")
    knows: list[str] = Field(default_factory=list, description="Facts the NPC knows and will share.")
    hides: list[str] = Field(default_factory=list, description="Facts the NPC knows but keeps hidden or deflects.")
    location: str | None = Field(default=None, description="Entry id of the place where the NPC is usually found.")
    faction: str | None = Field(default=None, description="Entry id of the NPC's faction.")
    greeting: str | None = Field(default=None, description="A first line the NPC may say.")


class LoreEntry(BaseModel):
    """One lorebook entry, validated from a lore file's front matter and body.

    Raises:
        pydantic.ValidationError: on a missing or wrongly typed field; the loader
            turns it into ``path:line: message``.
    """

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, description="Unique id; defaults to the file name without extension. Lower-case letters (any script), digits, '_', '.', '-'.")
    kind: Kind
    name: str = Field(min_length=1, description="Display name; also a primary key for keyword matching.")
    keys: list[str] = Field(default_factory=list, description="Primary keys: words or phrases that trigger the entry; '/regex/flags' for a regex.")
    secondary_keys: list[str] = Field(default_factory=list, description="Secondary keys, combined by selective_logic.")
    selective_logic: SelectiveLogic = SelectiveLogic.and_any
    constant: bool = Field(default=False, description="Always injected, for every NPC that may know it.")
    disabled: bool = False
    order: int = Field(default=100, description="Insertion order / priority: higher is kept first when the token budget is short.")
    position: Position = Position.turn
    known_by: list[str] = Field(default_factory=list, description="Knowledge scope: NPC ids, faction ids or tags that know this; empty means common knowledge.")
    name_is_key: bool = Field(default=True, description="Whether the entry's name also triggers it as a primary key (imported SillyTavern entries: false).")
    case_sensitive: bool | None = Field(default=None, description="Keys match case-sensitively (SillyTavern caseSensitive); None uses the retriever default (false).")
    match_whole_words: bool | None = Field(default=None, description="Plain keys match whole words only (SillyTavern matchWholeWords); None uses the retriever default (true).")
    probability: int = Field(default=100, ge=0, le=100, description="Percent chance that a triggered entry is inserted (SillyTavern probability); rolled deterministically per (NPC, line, entry).")
    exclude_recursion: bool = Field(default=False, description="Cannot be triggered by the text of other triggered entries (SillyTavern excludeRecursion).")
    prevent_recursion: bool = Field(default=False, description="Its text does not trigger other entries (SillyTavern preventRecursion).")
    delay_until_recursion: bool | int = Field(default=False, description="Can only be triggered during recursion; an int n means at recursion step n or later (SillyTavern delayUntilRecursion).")
    scan_depth: int | None = Field(default=None, ge=0, description="Earlier lines scanned for this entry's keys; None uses the retriever's scan_depth (SillyTavern scanDepth).")
    tags: list[str] = Field(default_factory=list)
    npc: NpcCard | None = Field(default=None, description="Required when kind is npc.")
    when: When | None = Field(default=None, description="Game-state condition (`lore.conditions`): the entry is used only while it holds; never in an NPC's stable prefix. Ignored on NPC cards.")
    text: str = Field(default="", description="The Markdown body.")

    @field_validator("id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        if not ENTRY_ID.fullmatch(v) or v != v.lower():
            raise ValueError(f"id {v!r}: use lower-case letters (any script), digits, '_', '.' and '-', starting with a letter or digit")
        return v

    @field_validator("keys", "secondary_keys", mode="before")
    @classmethod
    def _split_comma_string(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("keys", "secondary_keys")
    @classmethod
    def _check_regex(cls, v: list[str]) -> list[str]:
        for key in v:
            if parse_regex_key(key) is not None:
                try:
                    compile_regex_key(key)
                except UnsupportedRegex as exc:
                    raise ValueError(f"bad regex key {key!r}: {exc}") from exc
        return v

    @model_validator(mode="after")
    def _npc_needs_card(self) -> LoreEntry:
        if self.kind == Kind.npc and self.npc is None:
            raise ValueError("kind 'npc' needs an 'npc' section (persona, voice, knows, hides)")
        if self.kind != Kind.npc and self.npc is not None:
            raise ValueError(f"'npc' section is only allowed on kind 'npc', not {self.kind.value!r}")
        return self

    @model_serializer(mode="wrap")
    def _omit_no_when(self, handler: SerializerFunctionWrapHandler) -> object:
        """Leave ``when`` out when unset: an ungated entry's JSON (catalog, chunk ids, batch digests) stays as it was."""
        data = handler(self)
        if isinstance(data, dict) and data.get("when") is None:
            data.pop("when", None)
        return data

    def gate(self) -> When | None:
        """The entry's ``when``, or None when it has none or is an NPC card (cards are never gated)."""
        return None if self.kind == Kind.npc else self.when

    def all_keys(self) -> list[str]:
        """Primary keys plus the entry's name (when ``name_is_key``), de-duplicated, in order."""
        seen: dict[str, None] = {}
        for k in ([self.name] if self.name_is_key else []) + self.keys:
            if k:
                seen.setdefault(k, None)
        return list(seen)


_REGEX_KEY = re.compile(r"^/([\w\W]+?)/([gimsuy]*)$")


def parse_regex_key(key: str) -> tuple[str, str] | None:
    """``/pattern/flags`` -> (pattern, flags), or None for a plain key.

    Same rule as SillyTavern's ``parseRegexFromString``: a key is a regex when it
    is ``/.../`` followed only by JavaScript flag letters (g, i, m, s, u, y).
    """
    m = _REGEX_KEY.match(key)
    return (m.group(1), m.group(2)) if m else None


def regex_flags(flags: str) -> int:
    """JavaScript regex flags -> Python ``re`` flags (``g``, ``u``, ``y`` have no Python meaning and are ignored)."""
    out = 0
    if "i" in flags:
        out |= re.IGNORECASE
    if "m" in flags:
        out |= re.MULTILINE
    if "s" in flags:
        out |= re.DOTALL
    return out


class UnsupportedRegex(ValueError):
    """A ``/regex/`` key that Python's ``re`` cannot express (the message says which part)."""


_PROPERTY = {  # Unicode property escapes Python's re can express, outside a [...] class (JavaScript \p{...} with the u flag)
    "L": r"[^\W\d_]", "Letter": r"[^\W\d_]", "Alphabetic": r"[^\W\d_]", "Alpha": r"[^\W\d_]",
    "N": r"\d", "Nd": r"\d", "Number": r"\d", "Decimal_Number": r"\d", "digit": r"\d",
    "White_Space": r"\s", "space": r"\s",
}
_PROPERTY_IN_CLASS = {"N": r"\d", "Nd": r"\d", "Number": r"\d", "Decimal_Number": r"\d", "digit": r"\d", "White_Space": r"\s", "space": r"\s"}
_NEGATED = {r"[^\W\d_]": r"[\W\d_]", r"\d": r"\D", r"\s": r"\S"}


def js_regex_to_python(pattern: str, flags: str = "") -> str:
    """A JavaScript regex source (as SillyTavern keys are written) -> the same pattern for Python's ``re``.

    Translated: named groups ``(?<name>...)`` -> ``(?P<name>...)``, backreferences
    ``\\k<name>`` -> ``(?P=name)``, ``\\u{...}`` code points, the empty classes ``[]`` and
    ``[^]``, and with the ``u``/``v`` flag the Unicode properties ``\\p{L}``, ``\\p{N}``,
    ``\\p{White_Space}`` (and their ``\\P`` negations). Without ``u``, ``\\p`` is a
    plain ``p`` as in JavaScript.

    Raises:
        UnsupportedRegex: other Unicode properties (``\\p{Sc}``, scripts), or a
            pattern Python rejects (variable-width lookbehind...).
    """
    unicode_mode = "u" in flags or "v" in flags
    out: list[str] = []
    i, n, in_class = 0, len(pattern), False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            d = pattern[i + 1]
            if d == "k" and not in_class and pattern.startswith("<", i + 2) and ">" in pattern[i + 3 :]:
                end = pattern.index(">", i + 3)
                out.append(f"(?P={pattern[i + 3 : end]})")
                i = end + 1
                continue
            if d in "pP" and pattern.startswith("{", i + 2) and "}" in pattern[i + 3 :]:
                end = pattern.index("}", i + 3)
                if not unicode_mode:
                    out.append(d)  # JavaScript without u: \p is the letter p
                    i += 2
                    continue
                name = pattern[i + 3 : end].removeprefix("General_Category=").removeprefix("gc=")
                table = _PROPERTY_IN_CLASS if in_class else _PROPERTY
                if name not in table:
                    raise UnsupportedRegex(f"\\{d}{{{name}}} (a Unicode property Python's re has no class for)")
                cls = table[name]
                out.append(cls if d == "p" else _NEGATED[cls])
                i = end + 1
                continue
            if d == "u" and pattern.startswith("{", i + 2) and "}" in pattern[i + 3 :]:
                end = pattern.index("}", i + 3)
                out.append(f"\\U{int(pattern[i + 3 : end], 16):08x}")
                i = end + 1
                continue
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if pattern.startswith("[^]", i):
            out.append(r"[\s\S]")
            i += 3
            continue
        if pattern.startswith("[]", i):
            out.append("(?!)")
            i += 2
            continue
        if c == "[":
            in_class = True
            out.append(c)
            if pattern.startswith("[^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i + 1):  # a leading ']' is literal in Python, but ends an empty class in JS
                raise UnsupportedRegex("a class starting with ']'")
            i += 1
            continue
        if pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
            out.append("(?P<")
            i += 3
            continue
        out.append(c)
        i += 1
    return "".join(out)


def compile_regex_key(key: str) -> BoundedPattern:
    """Compile a ``/pattern/flags`` key (JavaScript syntax, see `js_regex_to_python`) with a time
    budget per match (`lore.regex_guard.BoundedPattern`: a player's line cannot make it backtrack for minutes).

    Raises:
        UnsupportedRegex: not a regex key, or a pattern Python cannot express.
    """
    parsed = parse_regex_key(key)
    if parsed is None:
        raise UnsupportedRegex("not a /regex/ key")
    try:
        return compile_key(js_regex_to_python(parsed[0], parsed[1]), regex_flags(parsed[1]))
    except (re.error, ValueError, OverflowError) as exc:
        if isinstance(exc, UnsupportedRegex):
            raise
        raise UnsupportedRegex(str(exc)) from None
