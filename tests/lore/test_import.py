"""SillyTavern imports on the real files in ../shared/corpora: counts, round trip, PNG / CHARX containers, odd fields."""

from __future__ import annotations

import base64
import json
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

from lore.importers.sillytavern import (
    ImportError_,
    export_world_info,
    import_file,
    png_text_chunks,
    png_with_text,
    read_book_settings,
    read_source,
)
from lore.loader import load_dir
from tests.conftest import need_corpora


def corpus_files() -> list[Path]:
    root = need_corpora()
    return sorted(p for d in ("sillytavern_default_content", "tavern_kit_fixtures") for p in (root / d).glob("*.json"))


def source_entries(kind: str, obj: dict) -> list[dict]:
    if kind == "world_info":
        ents = obj["entries"]
        return list(ents.values()) if isinstance(ents, dict) else list(ents)
    book = obj["data"].get("character_book") or {}
    return list(book.get("entries") or [])


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG (IHDR, IDAT, IEND), built by hand."""

    def chunk(t: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")


def test_every_corpus_file_imports_with_matching_counts(tmp_path):
    files = corpus_files()
    assert len(files) >= 5
    for src in files:
        kind, obj = read_source(src)
        res = import_file(src, tmp_path / "out")
        assert res.entries == len(source_entries(kind, obj)), src
        assert len(res.files) == res.entries + (0 if kind == "world_info" else 1)
    loaded, problems = load_dir(tmp_path / "out")
    assert problems == []
    by_id = {e.id: e for f in loaded for e in f.entries}
    assert by_id["seraphina"].kind.value == "npc" and "Seraphina" in by_id["seraphina"].npc.persona
    assert by_id["seraphina"].npc.greeting.startswith("*You wake")
    assert by_id["diana"].text.startswith("You encounter Diana")  # V3 scenario -> body
    book = [e for e in by_id.values() if e.id.startswith("seraphina-")]
    assert len(book) == 4 and all(e.known_by == ["seraphina"] for e in book)  # a card's book is the character's knowledge
    assert by_id["world-one-lorebook-000-dragon"].keys == ["dragon"]  # uid as a string, only key + content


@pytest.mark.parametrize("name", ["Eldoria.world_info.json", "world_one.lorebook.json"])
def test_world_info_round_trip_is_lossless(tmp_path, name):
    src = next(p for p in corpus_files() if p.name == name)
    res = import_file(src, tmp_path)
    loaded, problems = load_dir(res.folder)
    assert problems == []
    out = export_world_info([e for f in loaded for e in f.entries], read_book_settings(res.folder))
    original = json.loads(src.read_text(encoding="utf-8"))
    assert out == original  # keys, content, order, constant and every unmapped field


@pytest.mark.parametrize("name", ["Seraphina.chara_card_v2.json", "ccv3_st_export_like.json"])
def test_character_book_exports_to_world_info(tmp_path, name):
    src = next(p for p in corpus_files() if p.name == name)
    book = json.loads(src.read_text(encoding="utf-8"))["data"]["character_book"]["entries"]
    res = import_file(src, tmp_path)
    loaded, _ = load_dir(res.folder)
    out = export_world_info([e for f in loaded for e in f.entries])
    got = list(out["entries"].values())
    assert [(g["key"], g["content"], g["order"], g["constant"]) for g in got] == [
        (b["keys"], b["content"], b["insertion_order"], b["constant"]) for b in book
    ]


def test_edits_in_the_lore_file_reach_the_export(tmp_path):
    src = next(p for p in corpus_files() if p.name == "Eldoria.world_info.json")
    res = import_file(src, tmp_path)
    f = sorted(res.folder.glob("*.md"))[1]
    f.write_text(f.read_text().replace("constant: false", "constant: true").replace("order: 100", "order: 7"))
    loaded, _ = load_dir(res.folder)
    out = export_world_info([e for x in loaded for e in x.entries])
    assert (out["entries"]["1"]["constant"], out["entries"]["1"]["order"]) == (True, 7)
    assert out["entries"]["0"]["constant"] is False


def test_png_and_charx_containers(tmp_path):
    src = next(p for p in corpus_files() if p.name == "ccv3_st_export_like.json")
    card = src.read_text(encoding="utf-8")
    b64 = base64.b64encode(card.encode("utf-8")).decode("ascii")
    v2 = json.loads(card)
    v2["spec"], v2["data"]["name"] = "chara_card_v2", "Diana Two"
    png = png_with_text(tiny_png(), {"chara": base64.b64encode(json.dumps(v2).encode()).decode(), "ccv3": b64})
    assert set(png_text_chunks(png)) == {"chara", "ccv3"}
    (tmp_path / "diana.png").write_bytes(png)
    kind, obj = read_source(tmp_path / "diana.png")
    assert kind == "card_v3" and obj["data"]["name"] == "Diana"  # ccv3 wins over chara
    (tmp_path / "v2.png").write_bytes(png_with_text(tiny_png(), {"chara": base64.b64encode(json.dumps(v2).encode()).decode()}))
    assert read_source(tmp_path / "v2.png")[1]["data"]["name"] == "Diana Two"
    with zipfile.ZipFile(tmp_path / "diana.charx", "w") as z:
        z.writestr("card.json", card)
        z.writestr("assets/icon/main.png", tiny_png())
    res = import_file(tmp_path / "diana.charx", tmp_path / "out")
    assert res.kind == "card_v3" and res.entries == 1 and res.npc == "diana"
    (tmp_path / "plain.png").write_bytes(tiny_png())
    with pytest.raises(ImportError_, match="no 'ccv3' or 'chara'"):
        read_source(tmp_path / "plain.png")


def test_spec_inconsistencies_are_tolerated(tmp_path):
    card = {
        "spec": "chara_card_v3",
        "spec_version": "3.0",
        "data": {
            "name": "Odd",
            "description": "Odd one.",
            "character_book": {
                "entries": [
                    {"id": "7", "keys": "alpha, beta", "secondary_keys": "gamma,delta", "selective": True, "content": "A.", "insertion_order": 3, "enabled": True, "extensions": {"selectiveLogic": 3}},
                    {"id": 8, "keys": ["x+"], "use_regex": True, "content": "B.", "insertion_order": 1, "enabled": False, "extensions": {}},
                ]
            },
        },
    }
    (tmp_path / "odd.json").write_text(json.dumps(card))
    res = import_file(tmp_path / "odd.json", tmp_path / "out")
    loaded, problems = load_dir(res.folder)
    assert problems == []
    by_id = {e.id: e for f in loaded for e in f.entries}
    a, b = by_id["odd-000-alpha"], by_id["odd-001-x"]
    assert a.keys == ["alpha", "beta"] and a.secondary_keys == ["gamma", "delta"] and a.selective_logic.value == "and_all"
    assert b.keys == ["x+"] and b.disabled  # use_regex does not make a plain key a regex (SillyTavern ignores it)
    out = export_world_info(list(by_id.values()))
    assert [e["key"] for e in out["entries"].values()] == [["alpha", "beta"], ["x+"]]


def test_not_a_card(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(ImportError_, match="neither a World Info"):
        read_source(tmp_path / "x.json")
