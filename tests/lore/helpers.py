"""Helpers for lore unit tests: write a small lore folder, index it on a real chromadb store.

`FakeHashEmbedder` is a fake (a unit-test stand-in for the llama.cpp embedder):
bag-of-words vectors hashed into 64 dimensions, unit-normed, so texts that share
words are near each other. Tests of vector retrieval quality use the real model.
"""

from __future__ import annotations

import hashlib
import math
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import yaml

from lore.index import LoreIndex
from lore.retrieve import Retriever

NPC = {"persona": "A test NPC.", "voice": "Plain."}


class FakeHashEmbedder:
    """Fake embedder for unit tests: hashed bag of lower-cased words, 64 dimensions, unit norm."""

    dim = 64

    def __call__(self, texts: Sequence[str]) -> list[list[float]]:
        out = []
        for t in texts:
            v = [0.0] * self.dim
            for w in re.findall(r"\w+", t.lower()):
                h = int.from_bytes(hashlib.blake2b(w.encode(), digest_size=4).digest(), "big")
                v[h % self.dim] += 1.0
            n = math.sqrt(sum(x * x for x in v)) or 1.0
            out.append([x / n for x in v] if any(v) else [1.0 / math.sqrt(self.dim)] * self.dim)
        return out


def lore_file(text: str = "", **front) -> str:
    """A lore file's text: YAML front matter from `front`, then the body."""
    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n" + textwrap.dedent(text).strip() + "\n"


def write_world(root: Path, entries: dict[str, dict]) -> Path:
    """Write `{id: {front matter..., 'text': body}}` as ROOT/<id>.md files."""
    root.mkdir(parents=True, exist_ok=True)
    for eid, spec in entries.items():
        spec = dict(spec)
        body = spec.pop("text", "")
        spec.setdefault("id", eid)
        (root / f"{eid}.md").write_text(lore_file(body, **spec))
    return root


def world(tmp_path: Path, entries: dict[str, dict], **retriever) -> Retriever:
    """Index `entries` (plus an NPC 'tester' unless given) and return a Retriever counting words as tokens."""
    entries = dict(entries)
    entries.setdefault("tester", {"kind": "npc", "name": "Tester", "npc": NPC})
    root = write_world(tmp_path / "lore", entries)
    index = LoreIndex(tmp_path / "state", FakeHashEmbedder())
    report = index.sync(root)
    assert not report.problems, report.problems
    retriever.setdefault("vector_k", 0)
    retriever.setdefault("token_budget", 600)  # the budgets these tests were written for (the Retriever's defaults then)
    retriever.setdefault("prefix_budget", 1500)
    retriever.setdefault("vector_weight", 0.0)  # these tests rank similarity by BM25 alone (the fake embedder's vectors mean nothing)
    return Retriever(index, lambda t: len(t.split()), **retriever)
