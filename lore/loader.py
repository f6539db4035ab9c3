"""Read lore files (Markdown with YAML front matter) into validated `LoreEntry` objects.

Every problem is reported as a `LoreProblem` naming ``path:line`` so a designer
can jump to it; one broken file never stops the others from loading.
"""

from __future__ import annotations

import hashlib
import logging
import re
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


_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$\n?", re.S | re.M)


def _field_line(front: str, loc: tuple) -> int:
    """Best-effort 1-based line (within the file) of the field at pydantic location `loc`."""
    lines = front.splitlines()
    start = 0
    found = 0
    for part in loc:
        if not isinstance(part, str):
            continue
        pat = re.compile(rf"^\s*-?\s*{re.escape(part)}\s*:")
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
    m = _FRONT.match(text)
    if not m:
        raise LoreFileError([LoreProblem(path, 1, "missing YAML front matter: the file must start with a '---' line and close it with another '---'")])
    front = m.group(1)
    body = text[m.end() :].strip()
    try:
        data = yaml.load(front, Loader=_YamlLoader) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 2 if mark is not None else 1
        problem = getattr(exc, "problem", None) or str(exc)
        raise LoreFileError([LoreProblem(path, line, f"YAML error: {problem}")]) from None
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
            loc = tuple(err["loc"])
            field = ".".join(str(p) for p in loc) or "entry"
            problems.append(LoreProblem(path, _field_line(front, loc), f"{field}: {err['msg']}"))
        raise LoreFileError(problems) from None


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


def load_file(path: Path, root: Path) -> LoreFile:
    """Load and validate one file.

    Raises:
        LoreFileError: unreadable, not UTF-8, or invalid.
    """
    try:
        raw = path.read_bytes()
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
