"""The batch manifest: what was generated from what, and atomic writes.

``<out>/manifest.json`` maps quest id -> record of a finished item: its key
(sha256 of the components), the components (spec digest, digest of each lore
entry in the prompt, model fingerprint, settings digest, prompt template
version, generator version, seed), the output path and the sha256 of the output bytes.

Crash safety (kill -9 at any moment): every file is written with
`narrative.files.atomic_write` (a temporary file in the same folder, fsynced,
then ``os.replace``d over the target, and the folder fsynced). The output is written before its manifest
record, so the manifest never names an output that is not complete. An output
written but not yet recorded carries its key in ``meta.key`` and is adopted on
the next run without regenerating.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from narrative.files import atomic_write, head_tail_sha256

log = logging.getLogger(__name__)

MANIFEST_FORMAT = 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_digest(obj: object) -> str:
    """sha256 of the canonical JSON of `obj` (sorted keys, UTF-8)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def model_fingerprint(path: Path) -> str:
    """Identity of a GGUF file for manifest keys: `narrative.files.head_tail_sha256` salted with
    the file size (the size, then the first and last 16 MiB), as every manifest since format 1 has it."""
    return head_tail_sha256(path, salt=str(Path(path).stat().st_size).encode())


@dataclass
class Components:
    """Everything that shaped one item. `key` is the digest of all of it."""

    spec: str
    lore: dict[str, str]
    model: str
    settings: str
    prompt_version: str
    generator: str
    seed: int

    def as_dict(self) -> dict:
        return {
            "spec": self.spec,
            "lore": dict(sorted(self.lore.items())),
            "model": self.model,
            "settings": self.settings,
            "prompt_version": self.prompt_version,
            "generator": self.generator,
            "seed": self.seed,
        }

    @property
    def key(self) -> str:
        return canonical_digest(self.as_dict())


def reasons(old: dict | None, new: Components) -> list[str]:
    """Why an item must be generated, comparing a manifest record's components with `new`.

    Returns e.g. ``["new"]``, ``["spec changed"]``, ``["lore changed: kilnrow"]``,
    ``["model changed", "seed changed"]``; ``[]`` when nothing changed.
    """
    if old is None:
        return ["new"]
    why = []
    if old.get("spec") != new.spec:
        why.append("spec changed")
    old_lore = old.get("lore", {})
    changed = sorted(k for k in set(old_lore) | set(new.lore) if old_lore.get(k) != new.lore.get(k))
    if changed:
        why.append("lore changed: " + ", ".join(changed))
    if old.get("model") != new.model:
        why.append("model changed")
    if old.get("settings") != new.settings:
        why.append("settings changed")
    if old.get("prompt_version") != new.prompt_version:
        why.append("prompt template changed")
    if old.get("generator") != new.generator:
        why.append("generator changed")
    if old.get("seed") != new.seed:
        why.append("seed changed")
    return why


@dataclass
class Manifest:
    """The manifest of one output folder. `save` writes it atomically."""

    path: Path
    items: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        """Read `path`; a missing file is an empty manifest.

        A file that does not parse (written by hand, or by something other than
        `save`) is logged and treated as empty: every item is then checked against
        its output's ``meta.key`` and adopted or regenerated.
        """
        if not path.exists():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("items"), dict):
                raise ValueError(f"format {data.get('format')!r}, expected {MANIFEST_FORMAT}")
        except (ValueError, OSError) as exc:
            log.warning("%s: unreadable manifest (%s); starting from the outputs' own keys", path, exc)
            return cls(path)
        return cls(path, data["items"])

    def save(self) -> None:
        body = {"format": MANIFEST_FORMAT, "items": dict(sorted(self.items.items()))}
        atomic_write(self.path, (json.dumps(body, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))

    def record(self, quest_id: str, record: dict) -> None:
        """Add or replace one item's record and save."""
        self.items[quest_id] = record
        self.save()
