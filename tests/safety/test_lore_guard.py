"""Lore as an attack surface (issue 13): regex keys that backtrack, entries that are huge.

A lore key comes from a designer or an imported card; the text it runs on comes from a player.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from app.cli import main
from lore.index import INDEX_FORMAT, chunk_entry
from lore.schema import Kind, LoreEntry
from tests.lore.helpers import lore_file

ROOT = Path(__file__).resolve().parents[2]

EVIL_MATCH = """
import time
from lore.keywords import KeywordIndex, key_in
from lore.schema import Kind, LoreEntry
e = LoreEntry(id="evil", kind=Kind.lore, name="Evil", keys=[{key!r}], name_is_key=False, text="x")
idx = KeywordIndex()
idx.rebuild([e])
t0 = time.perf_counter()
idx.match({text!r})
key_in(e, {key!r}, {text!r})
print(time.perf_counter() - t0)
"""


def _match_seconds(key: str, text: str, limit_s: float = 20.0) -> float:
    """Seconds matching `key` against `text` takes in a fresh process (a hung match would block this one)."""
    try:
        out = subprocess.run([sys.executable, "-c", EVIL_MATCH.format(key=key, text=text)], cwd=ROOT,
                             capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return float("inf")
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip())


def test_catastrophic_regex_key_is_bounded():
    """Found: /(a+)+$/ against 30 'a' and a 'b' hung keyword matching for minutes."""
    assert _match_seconds("/(a+)+$/", "a" * 30 + "b") < 5
    # a pattern the regex engine cannot short-cut either: the per-match time budget stops it
    assert _match_seconds("/(a|aa)+$/", "a" * 40 + "b") < 10


def test_bounded_regex_keys_still_match():
    from lore.keywords import KeywordIndex

    e = LoreEntry(id="rx", kind=Kind.lore, name="Rx", keys=["/smoke\\s*glass/i", "harbor"], text="x")
    idx = KeywordIndex()
    idx.rebuild([e])
    assert idx.match("Some SMOKE glass here") == {"rx": "/smoke\\s*glass/i"}
    assert idx.match("the harbor") == {"rx": "harbor"}
    assert idx.match("nothing") == {}


def test_lore_check_warns_about_nested_quantifiers(tmp_path, capsys):
    root = tmp_path / "lore"
    root.mkdir()
    (root / "evil.md").write_text(lore_file("x", kind="lore", name="Evil", keys=["/(a+)+$/", "/(\\w+\\s?)*!/", "/fine+/"]))
    main(["lore", "check", str(root)])
    out = capsys.readouterr().out
    assert "(a+)+$" in out and "nested quantifier" in out and "warning" in out
    assert "(\\\\w+\\\\s?)*!" in out or "(\\w+\\s?)*!" in out
    assert "fine+" not in out


def _big_entry(mb: float) -> LoreEntry:
    para = "The tide came in over the salt flats and the lamps were lit along the quay. " * 3
    n = int(mb * 1_000_000 / (len(para) + 2))
    return LoreEntry(id="huge", kind=Kind.lore, name="Huge", keys=["huge"], text="\n\n".join([para] * n))


def test_chunking_is_linear_and_ids_are_unchanged():
    """Found: chunking hashed the entry's whole JSON per chunk: 1 MB took 13 s, 5 MB never finished."""
    small = _big_entry(0.01)
    entry_json = small.model_dump_json()
    chunks = chunk_entry(small, "a.md", 200)
    for c in chunks:  # the ids a store indexed before this change still match (nothing re-embeds)
        text = c.text
        assert c.id == hashlib.sha256(f"{INDEX_FORMAT}\0a.md\0{entry_json}\0{c.seq}\0{text}".encode()).hexdigest()[:32]
    big = _big_entry(5.0)
    t0 = time.perf_counter()
    chunks = chunk_entry(big, "big.md", 200)
    took = time.perf_counter() - t0
    assert len(chunks) > 2000 and took < 10, took


def test_lore_check_warns_about_oversized_entries(tmp_path, capsys):
    root = tmp_path / "lore"
    root.mkdir()
    (root / "huge.md").write_text(lore_file("word " * 60_000, kind="lore", name="Huge", keys=["huge"]))
    (root / "fine.md").write_text(lore_file("A normal entry.", kind="lore", name="Fine", keys=["fine"]))
    main(["lore", "check", str(root)])
    out = capsys.readouterr().out
    assert f"{root / 'huge.md'}" in out and "words" in out and "warning" in out
    assert "fine.md" not in out
