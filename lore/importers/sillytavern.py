"""Import SillyTavern World Info and character cards into lore files, and export them back.

Formats read (detected from the content, not the file name):

* **World Info** JSON, SillyTavern's lorebook file: ``{"entries": {"0": {uid, key,
  keysecondary, comment, content, constant, selective, selectiveLogic, order,
  position, disable, excludeRecursion, preventRecursion, delayUntilRecursion,
  probability, useProbability, scanDepth, caseSensitive, matchWholeWords, ...}}}``
  (https://docs.sillytavern.app/usage/core-concepts/worldinfo/); ``entries`` may
  also be a list.
* **Character Card V2** (``spec: chara_card_v2``,
  https://github.com/malfoyslastname/character-card-spec-v2) and **V3**
  (``spec: chara_card_v3``, https://github.com/kwaroran/character-card-spec-v3),
  as JSON, as a PNG with the card base64-encoded in a ``ccv3`` or ``chara``
  ``tEXt``/``iTXt`` chunk (``ccv3`` preferred), or as a CHARX zip (``card.json``
  inside). A V1 card (fields at the root, no ``spec``) is read as V2.

Mapping (one Markdown file with YAML front matter per entry; see `lore.schema`):

* each World Info / character book entry -> one ``kind: lore`` entry: ``key`` /
  ``keys`` -> ``keys``; ``keysecondary`` / ``secondary_keys`` (array, or a comma
  string) -> ``secondary_keys`` when ``selective`` is on; ``selectiveLogic``
  (0 AND ANY, 1 NOT ALL, 2 NOT ANY, 3 AND ALL) -> ``selective_logic``;
  ``constant``; ``disable`` / ``!enabled`` -> ``disabled``; ``order`` /
  ``insertion_order`` -> ``order``; ``probability`` (when ``useProbability``);
  ``excludeRecursion`` / ``preventRecursion`` / ``delayUntilRecursion``;
  ``scanDepth``; ``caseSensitive``; ``matchWholeWords`` (null -> false, SillyTavern's
  default: keys match inside words); ``comment`` (or the first
  key) -> ``name`` (with ``name_is_key: false``); ``content`` -> the body. V3
  ``use_regex: true`` wraps each key as ``/key/``.
* a character -> a ``kind: npc`` entry: ``description`` -> ``npc.persona``,
  ``personality`` and ``mes_example`` -> ``npc.voice``, ``first_mes`` ->
  ``npc.greeting``, ``scenario`` -> the body. Its character book's entries get
  ``known_by: [<character id>]``: in SillyTavern a character's book is active only
  in that character's chats.

Nothing is lost: the original object (entry, card minus its book's entries, book
settings) is kept verbatim under ``st:`` in the front matter (the schema allows
extra fields), and `export_world_info` starts from it, overriding only the
mapped fields, so an untouched import exports to the same JSON values.

Not mapped (kept under ``st:`` only, because the sidecar has no equivalent):
``position`` (before/after character, author's note, @depth: placement here is
``prefix`` for constant entries and ``turn`` for the rest), ``depth``, ``role``,
inclusion ``group`` / ``groupOverride`` / ``groupWeight`` / ``useGroupScoring``,
timed effects ``sticky`` / ``cooldown`` / ``delay``, ``automationId``,
``vectorized``, ``match*`` (persona/description/scenario matching),
``triggers``, ``characterFilter``, the card's ``system_prompt``,
``post_history_instructions``, ``alternate_greetings``, ``group_only_greetings``,
``creator_notes``, ``assets`` and avatar images; ``{{char}}`` / ``{{user}}``
macros are kept verbatim in the text.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import struct
import unicodedata
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lore.loader import load_yaml
from lore.schema import LoreEntry, UnsupportedRegex, compile_regex_key, parse_regex_key

log = logging.getLogger(__name__)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LOGIC_FROM_ST = {0: "and_any", 1: "not_all", 2: "not_any", 3: "and_all"}
LOGIC_TO_ST = {v: k for k, v in LOGIC_FROM_ST.items()}
BOOK_FILE = "_book.yaml"


class ImportError_(ValueError):
    """A file that is not a World Info file or a character card (message names the file and why)."""


@dataclass
class ImportResult:
    """What one source file produced. ``entries`` counts lore entries (the NPC card excluded)."""

    source: Path
    kind: str  # world_info | card_v1 | card_v2 | card_v3
    folder: Path
    files: list[Path] = field(default_factory=list)
    entries: int = 0
    npc: str | None = None
    warnings: list[str] = field(default_factory=list)


# ---- reading sources -------------------------------------------------------


def png_text_chunks(data: bytes) -> dict[str, str]:
    """The ``tEXt``, ``zTXt`` and ``iTXt`` chunks of a PNG as keyword -> text (PNG spec, section 11.3.4).

    Raises:
        ImportError_: not a PNG, or a truncated chunk.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ImportError_("not a PNG file (bad signature)")
    out: dict[str, str] = {}
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ImportError_(f"truncated PNG chunk {ctype!r} at byte {pos}")
        pos += 12 + length
        try:
            if ctype == b"tEXt":
                key, _, text = body.partition(b"\0")
                out[key.decode("latin-1")] = text.decode("latin-1")
            elif ctype == b"zTXt":
                key, _, rest = body.partition(b"\0")
                out[key.decode("latin-1")] = _inflate(rest[1:]).decode("latin-1")
            elif ctype == b"iTXt":
                key, _, rest = body.partition(b"\0")
                if len(rest) < 2:
                    raise ValueError("no compression flag")
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _translated, _, text = rest.partition(b"\0")
                out[key.decode("latin-1")] = (_inflate(text) if compressed else text).decode("utf-8")
            elif ctype == b"IEND":
                break
        except (ValueError, zlib.error) as exc:  # UnicodeDecodeError is a ValueError
            raise ImportError_(f"unreadable PNG {ctype.decode('latin-1')} chunk at byte {pos - 12 - length}: {exc}") from None
    return out


def _inflate(data: bytes) -> bytes:
    """zlib-decompress a PNG text chunk, at most `MAX_CARD_JSON_BYTES` (a decompression bomb is refused)."""
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_CARD_JSON_BYTES)
    if d.unconsumed_tail:
        raise ValueError(f"it unpacks to more than {MAX_CARD_JSON_BYTES:,} bytes")
    return out


def png_with_text(png: bytes, chunks: dict[str, str]) -> bytes:
    """`png` with ``tEXt`` chunks added before ``IEND`` (how SillyTavern writes a card into its avatar)."""
    if not png.startswith(PNG_SIGNATURE):
        raise ImportError_("not a PNG file (bad signature)")
    end = png.rfind(b"IEND") - 4
    extra = b""
    for key, text in chunks.items():
        body = key.encode("latin-1") + b"\0" + text.encode("latin-1")
        extra += struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body) & 0xFFFFFFFF)
    return png[:end] + extra + png[end:]


MAX_CARD_JSON_BYTES = 64 << 20  # a CHARX card.json unpacked (cards with embedded assets keep them outside it)


def _json(data: bytes, what: str):
    """JSON from bytes (UTF-8, a BOM allowed). Raises ImportError_ starting with `what` when it is not
    JSON, not UTF-8, or nested too deeply for the decoder (RecursionError)."""
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ImportError_(f"{what}: {exc}") from None
    except RecursionError:
        raise ImportError_(f"{what}: nested too deeply") from None


def read_source(path: Path) -> tuple[str, dict]:
    """Read a World Info file or a card (JSON, PNG, CHARX) -> (kind, the JSON object).

    kind is ``world_info``, ``card_v1``, ``card_v2`` or ``card_v3``.

    Raises:
        ImportError_: unreadable, not JSON, or neither format (the message says which).
    """
    raw = path.read_bytes()
    if raw.startswith(PNG_SIGNATURE):
        chunks = png_text_chunks(raw)
        text = chunks.get("ccv3") or chunks.get("chara")
        if text is None:
            raise ImportError_(f"{path}: PNG has no 'ccv3' or 'chara' text chunk (not a character card)")
        try:
            data = base64.b64decode(text)
        except ValueError as exc:
            raise ImportError_(f"{path}: the card chunk is not base64 JSON: {exc}") from None
        obj = _json(data, f"{path}: the card chunk is not base64 JSON")
    elif raw.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                if "card.json" not in z.namelist():
                    raise ImportError_(f"{path}: CHARX zip without card.json")
                size = z.getinfo("card.json").file_size
                if size > MAX_CARD_JSON_BYTES:  # a zip bomb, or not a card
                    raise ImportError_(f"{path}: card.json unpacks to {size:,} bytes (limit {MAX_CARD_JSON_BYTES:,})")
                data = z.read("card.json")
        except (zipfile.BadZipFile, OSError, RuntimeError) as exc:  # RuntimeError: an encrypted member
            raise ImportError_(f"{path}: unreadable CHARX zip: {exc}") from None
        obj = _json(data, f"{path}: card.json is not JSON")
    else:
        obj = _json(raw, f"{path}: not JSON")
    if not isinstance(obj, dict):
        raise ImportError_(f"{path}: expected a JSON object, got {type(obj).__name__}")
    spec = obj.get("spec")
    if spec == "chara_card_v3":
        return "card_v3", obj
    if spec == "chara_card_v2":
        return "card_v2", obj
    if "entries" in obj and isinstance(obj["entries"], (dict, list)):
        return "world_info", obj
    if "name" in obj and ("description" in obj or "first_mes" in obj):
        return "card_v1", {"spec": "chara_card_v1", "data": obj}
    raise ImportError_(f"{path}: neither a World Info file (no 'entries') nor a character card (no 'spec' chara_card_v2/v3)")


# ---- helpers -----------------------------------------------------------------


def slug(text: str, limit: int = 40) -> str:
    """A lore id fragment: lower-case letters of any script, digits and '-' (max `limit` chars).

    Letters are kept as written (``Київ`` -> ``київ``, ``東京`` -> ``東京``), so ids stay
    readable in every language; a name with no letter or digit is spelt with its
    symbols' Unicode names (``🐉🔥`` -> ``dragon-fire``); ``x`` when nothing is left.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    s = re.sub(r"[\W_]+", "-", text).strip("-")[:limit].strip("-")
    if not s:
        names = [unicodedata.name(c, "") for c in text if unicodedata.category(c).startswith("S")]
        s = re.sub(r"[^a-z0-9]+", "-", " ".join(names).lower()).strip("-")[:limit].strip("-")
    return s or "x"


def _free_id(into: Path, base: str, source: str, marker: str) -> str:
    """`base`, or `base`-2, -3...: the first id whose folder is free or holds an earlier import of `source`.

    ``marker`` names the file in the folder that records its source (``{id}.md``
    for a card, `BOOK_FILE` for World Info), so importing another card or book
    with the same name never overwrites it, and re-importing one updates it.
    """
    n = 1
    while True:
        cand = base if n == 1 else f"{base}-{n}"
        mark = Path(into) / cand / marker.format(id=cand)
        if not mark.is_file() or _source_of(mark) == source:
            return cand
        n += 1


def _source_of(path: Path) -> str | None:
    """The ``file`` an earlier import recorded in `path` (a lore file's ``st:`` block, or ``_book.yaml``)."""
    text = path.read_text(encoding="utf-8")
    if text.startswith("---"):
        text = text.split("\n---", 1)[0].removeprefix("---")
    try:
        data = load_yaml(text) or {}
    except yaml.YAMLError:
        return None
    st = data.get("st", data) if isinstance(data, dict) else {}
    return st.get("file") if isinstance(st, dict) else None


def _keys(v: Any) -> list[str]:
    """Keys as a list: tolerate a comma string (seen in V2 exports) and None."""
    if v is None:
        return []
    if isinstance(v, str):
        return [k.strip() for k in v.split(",") if k.strip()]
    return [str(k) for k in v if str(k).strip()]


def _first(*vals: Any) -> Any:
    for v in vals:
        if v is not None:
            return v
    return None


def _wi_entries(obj: dict) -> list[dict]:
    """The entries of a World Info file or a character book, whether ``entries`` is a list or an object keyed by uid."""
    ents = obj.get("entries") or []
    if isinstance(ents, dict):
        return [e for e in ents.values() if isinstance(e, dict)]
    return [e for e in ents if isinstance(e, dict)]


def _usable(keys: list[str], skipped: list[tuple[str, str]] | None) -> list[str]:
    """`keys` less the ``/regex/`` keys Python cannot express; those go to `skipped` as (key, reason)."""
    out = []
    for k in keys:
        if parse_regex_key(k) is not None:
            try:
                compile_regex_key(k)
            except UnsupportedRegex as exc:
                if skipped is not None:
                    skipped.append((k, str(exc)))
                continue
        out.append(k)
    return out


def _entry_fields(e: dict, book: bool, skipped: list[tuple[str, str]] | None = None) -> dict:
    """Map one World Info entry (book=False) or character book entry (book=True) onto our schema's fields.

    Keys keep SillyTavern's meaning: a key is a regex only when written
    ``/pattern/flags``, whatever ``use_regex`` says (SillyTavern writes
    ``use_regex: true`` on every entry it embeds in a card and ignores it when
    matching). A regex key Python cannot express is left out and reported in
    `skipped`; it stays in ``st.entry``, so the export gives it back.
    """
    ext = (e.get("extensions") or {}) if book else {}
    if book:
        keys = _keys(e.get("keys"))
        secondary = _keys(e.get("secondary_keys"))
        logic = ext.get("selectiveLogic", 0)
        disabled = not e.get("enabled", True)
        order = e.get("insertion_order", 100)
        use_prob = ext.get("useProbability", True)
        prob = ext.get("probability")
        excl, prev, delay = ext.get("exclude_recursion"), ext.get("prevent_recursion"), ext.get("delay_until_recursion")
        scan, case, whole = ext.get("scan_depth"), _first(e.get("case_sensitive"), ext.get("case_sensitive")), ext.get("match_whole_words")
    else:
        keys = _keys(e.get("key"))
        secondary = _keys(e.get("keysecondary"))
        logic = e.get("selectiveLogic", 0)
        disabled = bool(e.get("disable", False))
        order = e.get("order", 100)
        use_prob = e.get("useProbability", True)
        prob = e.get("probability")
        excl, prev, delay = e.get("excludeRecursion"), e.get("preventRecursion"), e.get("delayUntilRecursion")
        scan, case, whole = e.get("scanDepth"), e.get("caseSensitive"), e.get("matchWholeWords")
    keys, secondary = _usable(keys, skipped), _usable(secondary, skipped)
    out: dict[str, Any] = {
        "kind": "lore",
        "name": (str(e.get("comment") or e.get("name") or "").strip().splitlines() or [""])[0][:120] or (keys[0] if keys else "untitled entry"),
        "name_is_key": False,
        "keys": keys,
    }
    if e.get("selective", True) and secondary:
        out["secondary_keys"] = secondary
        out["selective_logic"] = LOGIC_FROM_ST.get(int(logic or 0), "and_any")
    out["constant"] = bool(e.get("constant", False))
    out["disabled"] = disabled
    try:
        out["order"] = int(order if order is not None else 100)
    except (TypeError, ValueError):
        out["order"] = 100
    if use_prob and prob is not None and int(prob) < 100:
        out["probability"] = max(0, int(prob))
    if excl:
        out["exclude_recursion"] = True
    if prev:
        out["prevent_recursion"] = True
    if delay:
        out["delay_until_recursion"] = delay if isinstance(delay, int) and not isinstance(delay, bool) else True
    if isinstance(scan, int) and not isinstance(scan, bool):
        out["scan_depth"] = scan
    if isinstance(case, bool):
        out["case_sensitive"] = case
    # SillyTavern's default is substring matching (its "Match Whole Words" setting is off by default); ours is whole words
    out["match_whole_words"] = whole if isinstance(whole, bool) else False
    return out


def _dump(front: dict, body: str) -> str:
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=100) + "---\n" + body + ("\n" if body else "")


def _write_entry(folder: Path, eid: str, front: dict, content: str, st: dict) -> Path:
    if content != content.strip():
        st["content"] = content  # exact whitespace, for a lossless export
    front = {"id": eid, **front, "st": st}
    LoreEntry.model_validate({**front, "text": content.strip()})  # fail here, not at load time
    path = folder / f"{eid}.md"
    path.write_text(_dump(front, content.strip()), encoding="utf-8")
    return path


def _book_entries(folder: Path, prefix: str, entries: list[dict], book: bool, fmt: str, source: str, known_by: list[str], warnings: list[str]) -> list[Path]:
    files = []
    width = max(3, len(str(len(entries))))
    for i, e in enumerate(entries):
        skipped: list[tuple[str, str]] = []
        front = _entry_fields(e, book, skipped)
        for key, why in skipped:
            msg = f"{source}: entry {i} {front['name']!r}: key {key!r} skipped: {why}"
            log.warning(msg)
            warnings.append(msg)
        if known_by:
            front["known_by"] = list(known_by)
        eid = f"{prefix}-{i:0{width}d}-{slug(front['name'], 32)}"
        st = {"format": fmt, "file": source, "index": i, "entry": {k: v for k, v in e.items() if k != "content"}}
        files.append(_write_entry(folder, eid, front, str(e.get("content") or ""), st))
    return files


# ---- import --------------------------------------------------------------------


def import_file(path: Path, into: Path) -> ImportResult:
    """Convert one World Info file or character card into lore files under `into`/<slug>/.

    Returns:
        What was written; ``entries`` counts lorebook entries (equal to the source's entry count).

    Raises:
        ImportError_: not a recognised format.
        pydantic.ValidationError: an entry cannot be represented (e.g. a regex key Python cannot compile).
    """
    path = Path(path)
    kind, obj = read_source(path)
    base = path.name.split(".")[0]
    warnings: list[str] = []
    if kind == "world_info":
        prefix = _free_id(into, slug(path.name.removesuffix(".json")), path.name, BOOK_FILE)
        folder = Path(into) / prefix
        folder.mkdir(parents=True, exist_ok=True)
        entries = _wi_entries(obj)
        book = {k: v for k, v in obj.items() if k != "entries"}
        (folder / BOOK_FILE).write_text(
            yaml.safe_dump({"format": "world_info", "file": path.name, "book": book}, sort_keys=False, allow_unicode=True), encoding="utf-8"
        )
        files = _book_entries(folder, prefix, entries, False, "world_info", path.name, [], warnings)
        return ImportResult(path, kind, folder, files, len(files), warnings=warnings)

    data = obj.get("data") if isinstance(obj.get("data"), dict) else obj
    name = str(data.get("name") or base)
    npc_id = _free_id(into, slug(name), path.name, "{id}.md")
    folder = Path(into) / npc_id
    folder.mkdir(parents=True, exist_ok=True)
    book = data.get("character_book") if isinstance(data.get("character_book"), dict) else None
    card = json.loads(json.dumps(obj))  # deep copy
    cdata = card.get("data") if isinstance(card.get("data"), dict) else card
    if book is not None:
        cdata["character_book"] = {k: v for k, v in book.items() if k != "entries"}
    voice = "\n\n".join(s for s in (str(data.get("personality") or "").strip(), str(data.get("mes_example") or "").strip()) if s)
    persona = str(data.get("description") or "").strip() or str(data.get("personality") or "").strip() or name
    npc: dict[str, Any] = {"persona": persona, "voice": voice}
    if data.get("first_mes"):
        npc["greeting"] = str(data["first_mes"])
    front = {"kind": "npc", "name": name, "npc": npc}
    scenario = str(data.get("scenario") or "")
    files = [_write_entry(folder, npc_id, front, scenario, {"format": kind, "file": path.name, "card": card})]
    n = 0
    if book is not None:
        entries = _wi_entries(book)
        files += _book_entries(folder, npc_id, entries, True, "character_book", path.name, [npc_id], warnings)
        n = len(entries)
    return ImportResult(path, kind, folder, files, n, npc_id, warnings)


# ---- export --------------------------------------------------------------------

def book_entry_to_world_info(e: dict, index: int) -> dict:
    """A character book entry -> a World Info entry, field for field as SillyTavern's ``convertCharacterBook``."""
    ext = e.get("extensions") or {}
    return {
        "uid": index,
        "key": _keys(e.get("keys")),
        "keysecondary": _keys(e.get("secondary_keys")),
        "comment": e.get("comment") or "",
        "content": e.get("content") or "",
        "constant": bool(e.get("constant", False)),
        "selective": bool(e.get("selective", False)),
        "order": e.get("insertion_order", 100),
        "position": ext.get("position", 0 if e.get("position", "before_char") == "before_char" else 1),
        "excludeRecursion": ext.get("exclude_recursion", False),
        "preventRecursion": ext.get("prevent_recursion", False),
        "delayUntilRecursion": ext.get("delay_until_recursion", False),
        "disable": not e.get("enabled", True),
        "addMemo": bool(e.get("comment")),
        "displayIndex": ext.get("display_index", index),
        "probability": ext.get("probability", 100),
        "useProbability": ext.get("useProbability", True),
        "depth": ext.get("depth", 4),
        "selectiveLogic": ext.get("selectiveLogic", 0),
        "group": ext.get("group", ""),
        "groupOverride": ext.get("group_override", False),
        "groupWeight": ext.get("group_weight", 100),
        "scanDepth": ext.get("scan_depth"),
        "caseSensitive": _first(e.get("case_sensitive"), ext.get("case_sensitive")),
        "matchWholeWords": ext.get("match_whole_words"),
        "useGroupScoring": ext.get("use_group_scoring"),
        "automationId": ext.get("automation_id", ""),
        "role": ext.get("role", 0),
        "vectorized": ext.get("vectorized", False),
        "sticky": ext.get("sticky"),
        "cooldown": ext.get("cooldown"),
        "delay": ext.get("delay"),
        "extensions": ext,
    }


_FIELDS = [  # our field -> World Info field, for the fields mapped one to one
    ("constant", "constant"),
    ("disabled", "disable"),
    ("order", "order"),
    ("exclude_recursion", "excludeRecursion"),
    ("prevent_recursion", "preventRecursion"),
    ("delay_until_recursion", "delayUntilRecursion"),
    ("scan_depth", "scanDepth"),
    ("case_sensitive", "caseSensitive"),
    ("match_whole_words", "matchWholeWords"),
]


def entry_to_world_info(entry: LoreEntry, index: int) -> dict:
    """One lore entry -> a World Info entry.

    An imported entry starts from its original object (``st.entry``) and only
    the fields whose value differs from what the import derived are overridden,
    so an untouched import exports to the same values. Other entries get the
    full World Info field set; their name is also a key when ``name_is_key``,
    and ``matchWholeWords`` is written explicitly because SillyTavern's default
    (substring) differs from ours (whole words).
    """
    defaults = LoreEntry(id="x", kind="lore", name="x")
    st = (entry.model_extra or {}).get("st") or {}
    src = st.get("entry") if isinstance(st.get("entry"), dict) else None
    fmt = st.get("format")
    if src is not None and fmt in ("world_info", "character_book"):
        book = fmt == "character_book"
        out = json.loads(json.dumps(src)) if not book else book_entry_to_world_info(src, index)
        if book:
            out["content"] = src.get("content") or ""
        was = _entry_fields(src, book)
        keys = list(entry.keys)
        if keys != was["keys"]:
            out["key"] = keys
        sec = (list(entry.secondary_keys), entry.selective_logic.value if entry.secondary_keys else None)
        if sec != (was.get("secondary_keys", []), was.get("selective_logic")):
            out["keysecondary"] = sec[0]
            out["selective"] = bool(sec[0])
            out["selectiveLogic"] = LOGIC_TO_ST[entry.selective_logic.value]
        for ours, theirs in _FIELDS:
            cur = getattr(entry, ours)
            if cur != was.get(ours, getattr(defaults, ours)):
                out[theirs] = cur
        if entry.probability != was.get("probability", 100):
            out["probability"] = entry.probability
            out["useProbability"] = True
        if entry.name != was["name"]:
            out["comment"] = entry.name  # renamed in the lore file: the name is the memo
        raw = st.get("content")
        original = raw if isinstance(raw, str) else str(out.get("content") or "")
        if original.strip() != entry.text:
            out["content"] = entry.text
        elif isinstance(raw, str):
            out["content"] = raw
        return out
    out = {
        "uid": index,
        "key": entry.all_keys(),
        "keysecondary": list(entry.secondary_keys),
        "comment": entry.name,
        "content": entry.text,
        "constant": entry.constant,
        "selective": bool(entry.secondary_keys),
        "selectiveLogic": LOGIC_TO_ST[entry.selective_logic.value],
        "order": entry.order,
        "position": 0,
        "disable": entry.disabled,
        "excludeRecursion": entry.exclude_recursion,
        "preventRecursion": entry.prevent_recursion,
        "delayUntilRecursion": entry.delay_until_recursion,
        "probability": entry.probability,
        "useProbability": True,
        "scanDepth": entry.scan_depth,
        "caseSensitive": entry.case_sensitive,
        "matchWholeWords": True if entry.match_whole_words is None else entry.match_whole_words,
    }
    return out


def export_world_info(entries: list[LoreEntry], book: dict | None = None) -> dict:
    """Lore entries -> one World Info JSON object (``{"entries": {"<uid>": {...}}, ...book settings}``).

    NPC cards are left out (a World Info file has no characters). Entries keep
    the order they were imported in (``st.index``), then follow by id. Imported
    uids are kept; other entries get the next free integer uid.
    """
    lore = [e for e in entries if e.kind.value != "npc"]

    def pos(e: LoreEntry) -> tuple:
        st = (e.model_extra or {}).get("st") or {}
        return (str(st.get("file", "")), int(st.get("index", 1 << 30)), e.id)

    lore.sort(key=pos)
    out_entries: dict[str, dict] = {}
    used: set[str] = set()
    converted = [entry_to_world_info(e, i) for i, e in enumerate(lore)]
    next_uid = 0
    for wi in converted:
        uid = wi.get("uid")
        if uid is None or str(uid) in used:
            while str(next_uid) in used:
                next_uid += 1
            wi["uid"] = uid = next_uid
        used.add(str(uid))
        out_entries[str(uid)] = wi
    out = {"entries": out_entries}
    for k, v in (book or {}).items():
        out.setdefault(k, v)
    return out


# ---- card export -----------------------------------------------------------------

_BOOK_FROM_WI = [  # World Info field -> (character book field, inside "extensions"?)
    ("key", "keys", False), ("keysecondary", "secondary_keys", False), ("comment", "comment", False),
    ("content", "content", False), ("constant", "constant", False), ("selective", "selective", False),
    ("order", "insertion_order", False), ("position", "position", True), ("excludeRecursion", "exclude_recursion", True),
    ("preventRecursion", "prevent_recursion", True), ("delayUntilRecursion", "delay_until_recursion", True),
    ("displayIndex", "display_index", True), ("probability", "probability", True), ("useProbability", "useProbability", True),
    ("depth", "depth", True), ("selectiveLogic", "selectiveLogic", True), ("group", "group", True),
    ("groupOverride", "group_override", True), ("groupWeight", "group_weight", True), ("scanDepth", "scan_depth", True),
    ("caseSensitive", "case_sensitive", True), ("matchWholeWords", "match_whole_words", True),
    ("useGroupScoring", "use_group_scoring", True), ("automationId", "automation_id", True), ("role", "role", True),
    ("vectorized", "vectorized", True), ("sticky", "sticky", True), ("cooldown", "cooldown", True), ("delay", "delay", True),
]


def _apply_wi(book_entry: dict, wi: dict, fields: set[str] | None = None) -> dict:
    """Write World Info values `wi` (all, or only `fields`) onto a character book entry, field for field."""
    ext = book_entry.setdefault("extensions", {})
    for theirs, ours, in_ext in _BOOK_FROM_WI:
        if theirs not in wi or (fields is not None and theirs not in fields):
            continue
        (ext if in_ext else book_entry)[ours] = wi[theirs]
        if theirs == "position":
            book_entry["position"] = "before_char" if wi[theirs] == 0 else "after_char"
    if "disable" in wi and (fields is None or "disable" in fields):
        book_entry["enabled"] = not wi["disable"]
    return book_entry


def book_entry(entry: LoreEntry, index: int) -> dict:
    """One lore entry -> a character book entry (Character Card V2/V3 ``character_book.entries[]``).

    An entry imported from a character book starts from its original object and
    takes only the fields that were edited since, so an untouched import exports
    to the same entry. Others are converted field for field from their World Info
    form (`entry_to_world_info`), as SillyTavern's ``convertWorldInfoToCharacterBook``.
    """
    wi = entry_to_world_info(entry, index)
    st = (entry.model_extra or {}).get("st") or {}
    src = st.get("entry") if isinstance(st.get("entry"), dict) else None
    if src is not None and st.get("format") == "character_book":
        out = json.loads(json.dumps(src))
        raw = st.get("content")
        out["content"] = raw if isinstance(raw, str) else src.get("content", "")
        base = book_entry_to_world_info({**src, "content": out["content"]}, index)
        changed = {k for k, v in wi.items() if base.get(k) != v and k not in ("uid", "extensions")}
        return _apply_wi(out, wi, changed)
    out = {"id": index, "keys": [], "secondary_keys": [], "comment": "", "content": "", "constant": False,
           "selective": False, "insertion_order": 100, "enabled": True, "position": "before_char", "use_regex": True, "extensions": {}}
    return _apply_wi(out, wi)


def export_card(entries: list[LoreEntry], npc_id: str, spec: str = "v2", png: bytes | bool = False) -> dict | bytes:
    """An NPC and the lore only it may know -> a SillyTavern character card.

    The card's book holds the entries whose ``known_by`` names the NPC (as an
    import writes a card's own book), in their imported order. An imported card
    starts from its original object (``st.card``) and takes the NPC's edited
    fields: ``name``, ``npc.persona`` -> ``description``, ``npc.voice`` ->
    ``personality`` (``mes_example`` is dropped when the voice was edited),
    ``npc.greeting`` -> ``first_mes``, the body -> ``scenario``.

    Args:
        spec: ``v2`` (``chara_card_v2``) or ``v3`` (``chara_card_v3``).
        png: False for the card as a JSON object; True (a 1x1 image) or PNG
            bytes for the card inside that image: ``chara`` holds the V2 card and,
            for ``v3``, ``ccv3`` the V3 card (what SillyTavern writes).

    Raises:
        KeyError: `npc_id` is not an NPC among `entries`.
    """
    by_id = {e.id: e for e in entries}
    npc = by_id.get(npc_id)
    if npc is None or npc.npc is None:
        raise KeyError(f"{npc_id!r} is not an NPC entry")
    st = (npc.model_extra or {}).get("st") or {}
    card = json.loads(json.dumps(st["card"])) if isinstance(st.get("card"), dict) else {}
    if not isinstance(card.get("data"), dict):
        card = {"data": card} if card else {"data": {}}
    data = card["data"]
    derived = _npc_fields(data) if st.get("card") else {}
    ours = {"name": npc.name, "description": npc.npc.persona, "voice": npc.npc.voice, "first_mes": npc.npc.greeting or "", "scenario": npc.text}
    for fld in ("name", "description", "first_mes", "scenario"):
        if ours[fld] != derived.get(fld):
            data[fld] = ours[fld]
    if ours["voice"] != derived.get("voice"):
        data["personality"], data["mes_example"] = ours["voice"], ""
    for fld, default in (("personality", ""), ("mes_example", ""), ("creator_notes", ""), ("system_prompt", ""),
                         ("post_history_instructions", ""), ("alternate_greetings", []), ("tags", []), ("creator", ""),
                         ("character_version", ""), ("extensions", {})):
        if not st.get("card"):  # a hand-written NPC gets the full V2 field set; an imported card keeps its own
            data.setdefault(fld, default)

    def order(e: LoreEntry) -> tuple:
        est = (e.model_extra or {}).get("st") or {}
        return (0 if est.get("format") == "character_book" else 1, int(est.get("index", 1 << 30)), e.id)

    book = sorted((e for e in entries if e.kind.value != "npc" and npc_id in e.known_by), key=order)
    if book or "character_book" in data:
        cb = data.get("character_book") if isinstance(data.get("character_book"), dict) else {"name": f"{npc.name}'s lore", "extensions": {}}
        cb["entries"] = [book_entry(e, i) for i, e in enumerate(book)]
        data["character_book"] = cb
    v2 = {**card, "spec": "chara_card_v2", "spec_version": "2.0", "data": data}
    v3 = {**card, "spec": "chara_card_v3", "spec_version": "3.0", "data": {**data, "group_only_greetings": data.get("group_only_greetings", [])}}
    if st.get("format") in ("card_v2", "card_v1") and card.get("spec") == "chara_card_v2":
        v2 = card  # keep the original key order and spec_version
    elif st.get("format") == "card_v3":
        v3 = card
    out = v3 if spec == "v3" else v2
    if png is False:
        return out
    image = png if isinstance(png, bytes) else _blank_png()
    chunks = {"chara": base64.b64encode(json.dumps(v2, ensure_ascii=False).encode("utf-8")).decode("ascii")}
    if spec == "v3":
        chunks["ccv3"] = base64.b64encode(json.dumps(v3, ensure_ascii=False).encode("utf-8")).decode("ascii")
    return png_with_text(image, chunks)


def _npc_fields(data: dict) -> dict:
    """What `import_file` derives from a card's data, under the names `export_card` compares."""
    voice = "\n\n".join(s for s in (str(data.get("personality") or "").strip(), str(data.get("mes_example") or "").strip()) if s)
    persona = str(data.get("description") or "").strip() or str(data.get("personality") or "").strip() or str(data.get("name") or "")
    return {"name": str(data.get("name") or ""), "description": persona, "voice": voice, "first_mes": str(data.get("first_mes") or ""), "scenario": str(data.get("scenario") or "").strip()}


def _blank_png() -> bytes:
    """A valid 1x1 grey PNG, the image of a card exported without one."""

    def chunk(t: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")


def read_book_settings(folder: Path) -> dict:
    """Book-level World Info settings saved by an import (``_book.yaml``), or {}."""
    p = Path(folder) / BOOK_FILE
    if not p.is_file():
        return {}
    data = load_yaml(p.read_text(encoding="utf-8")) or {}
    return dict(data.get("book") or {})
