"""Read lore files (Markdown with YAML front matter) into validated `LoreEntry` objects.

Every problem is reported as a `LoreProblem` naming ``path:line`` so a designer
can jump to it; one broken file never stops the others from loading.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

from lore.schema import LoreEntry

log = logging.getLogger(__name__)

LORE_SUFFIXES = (".md", ".markdown")
_YamlLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built in: ~10x faster on big folders
SKIPPED_NAMES = {"readme.md", "license.md", "source.md"}


@dataclass(frozen=True)
class LoreProblem:
    """One problem in one file. ``line`` is 1-based; 0 when the whole file is at fault."""

    path: Path
    line: int
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.severity}: {self.message}"


@dataclass(frozen=True)
class LoreFile:
    """A lore file that parsed and validated. ``digest`` is the sha256 of its bytes."""

    path: Path
    rel: str
    digest: str
    entries: tuple[LoreEntry, ...]


class LoreFileError(Exception):
    """A file that cannot be loaded; ``problems`` lists each issue with its line."""

    def __init__(self, problems: list[LoreProblem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = problems


_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$\n?", re.DOTALL | re.MULTILINE)
_YAML11_BOOLS = {"yes", "no", "on", "off", "true", "false", "y", "n"}


class GuardedLoader(_YamlLoader):  # type: ignore[misc, valid-type]
    """PyYAML's safe loader that refuses alias bombs and self-referring aliases (`_check_expansion`), and
    turns a value Python cannot build (a date 2024-13-45) into a ``yaml.YAMLError`` like any other."""

    _guard_root = None

    def get_single_node(self):
        root = self._guard_root = super().get_single_node()
        if root is not None:
            _check_expansion(root)
        return root

    def get_single_data(self):
        try:
            return super().get_single_data()
        except (ValueError, OverflowError) as exc:  # raised while constructing: no mark of its own
            mark = self._guard_root.start_mark if self._guard_root is not None else None
            raise yaml.constructor.ConstructorError(None, None, f"{exc} (quote the value to keep it as text)", mark) from None


def load_yaml(text: str):
    """`yaml.safe_load` for text from designers and the internet (lore front matter, quest specs):
    aliases that expand past `MAX_YAML_VALUES` values or refer to themselves raise
    ``yaml.composer.ComposerError`` (a ``yaml.YAMLError``) with the offending node's mark."""
    loader = GuardedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


class _StrictLoader(GuardedLoader):
    """The guarded loader, noting every field written twice in one mapping (PyYAML silently keeps the last).

    ``duplicates`` lists (dotted field, 0-based line, 0-based line of the first) after a load.
    """

    def __init__(self, stream) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[str, int, int]] = []
        self._root = None

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[object, int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                line = key_node.start_mark.line
                first = seen.setdefault(key_node.value, line)
                if first != line:
                    self.duplicates.append((".".join([*(_path_to(self._root, node) or []), key_node.value]), line, first))
        return super().construct_mapping(node, deep=deep)

    def get_single_node(self):
        self._root = super().get_single_node()
        return self._root


MAX_YAML_VALUES = 100_000  # values in a front matter once aliases are expanded (a lore entry holds tens)


def _check_expansion(root) -> None:
    """Refuse front matter whose aliases expand past `MAX_YAML_VALUES` values ("billion laughs": nine
    lines of ``&a [*b, *b, ...]`` make 10^9 strings, which the index would serialize) or refer to
    themselves. Counts each node once per path that reaches it, in time linear in the nodes written.

    Raises:
        yaml.composer.ComposerError: with the mark of the offending node.
    """
    total: dict[int, int] = {}
    stack: list[tuple[object, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            if isinstance(node, yaml.MappingNode):
                kids = [n for pair in node.value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                kids = node.value
            else:
                kids = []
                v = node.value
                if not node.style and len(v) > 4000 and v.lstrip("+-").replace("_", "").isdigit():
                    # Python refuses int() of more than 4,300 digits with a ValueError that names no line
                    raise yaml.composer.ComposerError(None, None, f"a number of {len(v):,} digits (write it as text: quote it)", node.start_mark)
            n = 1 + sum(total[id(k)] for k in kids)
            if n > MAX_YAML_VALUES:
                raise yaml.composer.ComposerError(
                    None, None, f"aliases expand this value to more than {MAX_YAML_VALUES:,} values (an alias bomb?)", node.start_mark)
            total[key] = n
            continue
        if key in total:
            continue
        if key in open_:
            raise yaml.composer.ComposerError(None, None, "an alias refers to the value that contains it", node.start_mark)
        open_.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            stack.extend((n, False) for pair in node.value for n in pair if id(n) not in total)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((n, False) for n in node.value if id(n) not in total)


def _path_to(node, target, names: tuple[str, ...] = ()) -> list[str] | None:
    """Field names from `node` down to the mapping `target` (for messages like ``npc.persona``); None when absent."""
    if node is target:
        return list(names)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found = _path_to(value, target, (*names, str(key.value)))
            if found is not None:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for value in node.value:
            found = _path_to(value, target, names)
            if found is not None:
                return found
    return None


def normalize_text(text: str) -> str:
    """A lore file's text as its author meant it: no byte order mark, ``\n`` line ends (CRLF and CR editors)."""
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _field_line(front: str, loc: tuple) -> int:
    """Best-effort 1-based line (within the file) of the field at pydantic location `loc`."""
    lines = front.splitlines()
    start = 0
    found = 0
    for part in loc:
        if not isinstance(part, str):
            continue
        pat = re.compile(rf"^\s*-?\s*([\"']?){re.escape(part)}\1\s*:")  # a key may be quoted ("quest.heron":)
        for i in range(start, len(lines)):
            if pat.match(lines[i]):
                found = i + 1
                start = i + 1
                break
        else:
            break
    return found + 1 if found else 1  # +1 for the opening '---' line


def parse_lore_text(text: str, path: Path, default_id: str) -> LoreEntry:
    """Parse one lore file's text.

    Raises:
        LoreFileError: no front matter, bad YAML (with its line) or a schema
            violation (with the line of the offending field).
    """
    text = normalize_text(text)
    m = _FRONT.match(text)
    if not m:
        raise LoreFileError([LoreProblem(path, 1, "missing YAML front matter: the file must start with a '---' line and close it with another '---'")])
    front = m.group(1)
    body = text[m.end() :].strip()
    try:
        loader = _StrictLoader(front)
        try:
            data = loader.get_single_data() or {}
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise LoreFileError([LoreProblem(path, line, f"YAML error: {problem}")]) from None
    if loader.duplicates:  # +2: 0-based, and the opening '---' line
        raise LoreFileError([
            LoreProblem(path, line + 2, f"duplicate field {name!r} (first at line {first + 2}): YAML keeps only the last one")
            for name, line, first in loader.duplicates
        ])
    if not isinstance(data, dict):
        raise LoreFileError([LoreProblem(path, 2, f"front matter must be a mapping of fields, got {type(data).__name__}")])
    if "text" in data:
        raise LoreFileError([LoreProblem(path, _field_line(front, ("text",)), "'text' comes from the Markdown body, not the front matter")])
    data.setdefault("id", default_id)
    data["text"] = body
    try:
        return LoreEntry.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if p != "[key]")  # a mapping key that failed: pydantic appends '[key]'
            field = ".".join(str(p) for p in loc) or "entry"
            msg = f"{field}: {err['msg']}"
            if isinstance(err.get("input"), bool) and err["type"] == "string_type":
                word = _bool_word(front, loc, err["input"])
                msg += f'; YAML reads an unquoted {word} as a boolean: write it in quotes ("{word}")'
            problems.append(LoreProblem(path, _field_line(front, loc), msg))
        raise LoreFileError(problems) from None


def _bool_word(front: str, loc: tuple, value: bool) -> str:
    """The word the author wrote for a YAML 1.1 boolean at `loc` (``NO``, ``yes``, ``on``...), best effort."""
    line = front.splitlines()[max(0, _field_line(front, loc) - 2)] if front else ""
    words = [w for w in re.findall(r"[A-Za-z]+", line.partition(":")[2]) if w.lower() in _YAML11_BOOLS]
    index = next((p for p in reversed(loc) if isinstance(p, int)), None)
    if index is not None and index < len(words):
        return words[index]
    want = {"yes", "on", "true", "y"} if value else {"no", "off", "false", "n"}
    return next((w for w in words if w.lower() in want), "yes" if value else "no")


def lore_paths(root: Path) -> list[Path]:
    """All lore files under `root`, sorted, skipping README/LICENSE/SOURCE and hidden folders."""
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in LORE_SUFFIXES or p.name.lower() in SKIPPED_NAMES:
            continue
        if any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        out.append(p)
    return out


def _read_regular(path: Path, limit: int) -> bytes:
    """Up to `limit` bytes of `path` if it is a regular file. Opened without blocking (O_NONBLOCK where
    the OS has it) and checked after opening, so a FIFO or device named ``*.md`` in a lore folder is
    refused instead of blocking the reader (and every turn waiting on the lore) until someone writes.

    Raises:
        OSError: cannot be opened, or not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError("not a regular file (a FIFO, device or socket)")
        return f.read(limit)


MAX_LORE_FILE_BYTES = 16 << 20  # one entry per file; `lore check` already warns past 5,000 words (~30 KB)


def load_file(path: Path, root: Path) -> LoreFile:
    """Load and validate one file.

    Raises:
        LoreFileError: unreadable, over `MAX_LORE_FILE_BYTES`, not UTF-8, or invalid.
    """
    try:
        raw = _read_regular(path, MAX_LORE_FILE_BYTES + 1)
        if len(raw) > MAX_LORE_FILE_BYTES:
            raise LoreFileError([LoreProblem(path, 0, f"over {MAX_LORE_FILE_BYTES >> 20} MiB: a lore file holds one entry (split it)")])
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoreFileError([LoreProblem(path, 0, f"cannot read: {exc}")]) from None
    entry = parse_lore_text(text, path, default_id=path.stem.lower())
    return LoreFile(path=path, rel=path.relative_to(root).as_posix(), digest=hashlib.sha256(raw).hexdigest(), entries=(entry,))


def load_dir(root: Path) -> tuple[list[LoreFile], list[LoreProblem]]:
    """Load every lore file under `root`.

    Returns:
        (files that loaded, problems). A file with a problem is left out; the
        others load. Duplicate ids across files are reported on the later file.

    Raises:
        FileNotFoundError: `root` is not a directory.
    """
    if not root.is_dir():
        raise FileNotFoundError(f"lore folder not found: {root}")
    files: list[LoreFile] = []
    problems: list[LoreProblem] = []
    seen: dict[str, Path] = {}
    for path in lore_paths(root):
        try:
            lf = load_file(path, root)
        except LoreFileError as exc:
            problems.extend(exc.problems)
            continue
        dup = [e.id for e in lf.entries if e.id in seen]
        if dup:
            problems.append(LoreProblem(path, 2, f"duplicate id {dup[0]!r}, already defined in {seen[dup[0]]}"))
            continue
        for e in lf.entries:
            seen[e.id] = path
        files.append(lf)
    return files, problems


def load_catalog(root: Path) -> dict[str, LoreEntry]:
    """The lore catalog (entry id -> entry) straight from the files under `root`, without the vector index.

    For jobs that only need the catalog (the batch with ``--lore-files``): no
    embedding, which takes minutes for a fresh index on 2 busy cores. Files
    with problems are logged and left out (the index would keep their last
    good version instead).

    Raises:
        FileNotFoundError: `root` is not a folder.
    """
    files, problems = load_dir(root)
    for p in problems:
        log.warning("%s", p)
    return {e.id: e for f in files for e in f.entries}
