"""Lore as an attack surface (issue 13): regex keys that backtrack, entries that are huge.

A lore key comes from a designer or an imported card; the text it runs on comes from a player.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def _bomb(levels: int, width: int = 9) -> str:
    """Front matter lines of a YAML alias bomb: `width`**`levels` strings from a few hundred bytes."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines)


def test_yaml_alias_bomb_is_refused_with_its_line_and_the_other_files_load(tmp_path, capsys):
    """Found: unknown front-matter fields are kept on the entry, and nine lines of aliases
    (9**9 strings) passed `lore check`; indexing serializes the entry (model_dump_json): gigabytes."""
    from lore.loader import load_dir

    root = tmp_path / "lore"
    root.mkdir()
    (root / "bomb.md").write_text(f"---\nid: bomb\nkind: place\nname: Bomb\n{_bomb(9)}\n---\nA place.\n")
    (root / "loop.md").write_text("---\nid: loop\nkind: place\nname: Loop\nx: &a [1, *a]\n---\nA place.\n")
    (root / "fine.md").write_text("---\nid: fine\nkind: place\nname: Fine\nshared: &s [a, b]\nagain: *s\n---\nA place.\n")
    t = time.perf_counter()
    files, problems = load_dir(root)
    assert time.perf_counter() - t < 5
    assert [f.rel for f in files] == ["fine.md"]  # ordinary aliases still work
    by_file = {p.path.name: p for p in problems}
    assert set(by_file) == {"bomb.md", "loop.md"}
    assert by_file["bomb.md"].line == 10 and "alias bomb" in by_file["bomb.md"].message  # l5: 9**6 values > 100,000
    assert "refers to the value that contains it" in by_file["loop.md"].message
    assert main(["lore", "check", str(root)]) != 0
    assert "bomb.md:10" in capsys.readouterr().out


def test_quest_spec_alias_bomb_is_a_spec_error_not_a_hang(tmp_path):
    """Found: `narrative batch` on a quest spec with nine lines of aliases did not finish in 60 s."""
    from narrative.batch.spec import load_specs

    root = tmp_path / "quests"
    root.mkdir()
    (root / "q1.yaml").write_text("id: q1\n" + _bomb(9) + "\ntitle: *l8\n")
    good = sorted((ROOT / "samples" / "quests").glob("*.yaml"))[0]
    (root / good.name).write_bytes(good.read_bytes())  # other specs are unaffected
    t = time.perf_counter()
    specs, problems = load_specs(root)
    assert time.perf_counter() - t < 5
    assert len(problems) == 1 and "q1.yaml:7: YAML error: aliases expand" in problems[0]
    assert len(specs) == 1


def test_hostile_cards_are_clear_import_errors(tmp_path, capsys):
    """Found: a World Info file nested 100,000 deep ended `narrative lore import` with a RecursionError
    traceback; a CHARX zip or a PNG's zTXt chunk was unpacked whatever its size, and a broken zip or
    zTXt raised BadZipFile / zlib.error."""
    import zipfile

    deep = tmp_path / "deep.json"
    deep.write_text('{"entries": ' + "[" * 100_000 + "]" * 100_000 + "}")
    bomb = tmp_path / "bomb.charx"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("card.json", b" " * (65 << 20))  # 65 MiB of spaces: ~65 KB zipped
    broken = tmp_path / "broken.charx"
    broken.write_bytes(b"PK\x03\x04 not really a zip")

    def png(ctype: bytes, body: bytes) -> bytes:
        import struct
        import zlib

        chunk = lambda t, b: struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b) & 0xFFFFFFFF)  # noqa: E731
        return b"\x89PNG\r\n\x1a\n" + chunk(ctype, body) + chunk(b"IEND", b"")

    import zlib

    ztxt_bomb = tmp_path / "bomb.png"  # a zTXt chunk of ~65 KB that inflates to 65 MiB
    ztxt_bomb.write_bytes(png(b"zTXt", b"chara\0\0" + zlib.compress(b"A" * (65 << 20), 9)))
    ztxt_bad = tmp_path / "bad.png"
    ztxt_bad.write_bytes(png(b"zTXt", b"chara\0\0not zlib at all"))
    for f, expected in ((deep, "not JSON: nested too deeply"), (bomb, "card.json unpacks to 68,157,440 bytes"),
                        (broken, "unreadable CHARX zip"), (ztxt_bomb, "unreadable PNG zTXt chunk at byte 8: it unpacks to more than 67,108,864 bytes"),
                        (ztxt_bad, "unreadable PNG zTXt chunk at byte 8")):
        assert main(["lore", "import", str(f), "--into", str(tmp_path / "out")]) != 0
        err = capsys.readouterr().err
        assert f"error: {f}: {expected}" in err, err
        assert "Traceback" not in err


def test_a_lore_file_over_16_mib_is_refused_without_reading_it_whole(tmp_path):
    from lore.loader import MAX_LORE_FILE_BYTES, load_dir

    root = tmp_path / "lore"
    root.mkdir()
    (root / "huge.md").write_text("---\nid: huge\nkind: place\nname: Huge\n---\n" + "x" * MAX_LORE_FILE_BYTES)
    (root / "fine.md").write_text("---\nid: fine\nkind: place\nname: Fine\n---\nA place.\n")
    files, problems = load_dir(root)
    assert [f.rel for f in files] == ["fine.md"]
    assert len(problems) == 1 and problems[0].path.name == "huge.md" and "over 16 MiB" in problems[0].message


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_fifo_named_like_a_lore_file_is_refused_not_waited_on(tmp_path):
    """Found: `mkfifo lore/items/trap.md` in a served lore folder: the hot reload opened it on the decode
    worker and blocked, and every `say` and `lore.query` waited with it until something wrote to the pipe."""
    import threading

    from lore.loader import LoreFileError, load_file

    root = tmp_path / "lore"
    root.mkdir()
    os.mkfifo(root / "trap.md")
    out: list = []

    def read() -> None:
        try:
            load_file(root / "trap.md", root)
        except LoreFileError as exc:
            out.append(exc)

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "load_file blocked on a FIFO"
    assert out and "not a regular file" in str(out[0])


def test_yaml_values_python_cannot_build_are_errors_naming_the_file(tmp_path):
    """Found: `priority: <5,000 digits>` (Python refuses int() past 4,300 digits) or a date like 2024-13-45
    ended `lore check` and `batch` with a ValueError traceback naming no file, and no other file's problems."""
    from lore.loader import load_dir
    from narrative.batch.spec import SpecError, parse_spec

    root = tmp_path / "lore"
    root.mkdir()
    (root / "big.md").write_text("---\nid: big\nkind: place\nname: Big\npriority: " + "9" * 5000 + "\n---\nA place.\n")
    (root / "date.md").write_text("---\nid: date\nkind: place\nname: Date\nwritten: 2024-13-45\n---\nA place.\n")
    (root / "fine.md").write_text("---\nid: fine\nkind: place\nname: Fine\n---\nA place.\n")
    files, problems = load_dir(root)
    assert [f.rel for f in files] == ["fine.md"]
    msgs = {p.path.name: (p.line, p.message) for p in problems}
    assert msgs["big.md"][0] == 5 and "5,000 digits" in msgs["big.md"][1]
    assert "month must be in 1..12" in msgs["date.md"][1]
    for text, expected in (("id: q1\nseed: " + "9" * 5000 + "\n", "q1.yaml:2: YAML error: a number of 5,000 digits"),
                           ("id: q1\nwritten: 2024-13-45\n", "q1.yaml:1: YAML error: month must be in 1..12")):
        with pytest.raises(SpecError) as exc:
            parse_spec(text, Path("q1.yaml"))
        assert expected in str(exc.value)
