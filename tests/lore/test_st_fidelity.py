"""SillyTavern imports keep what the author meant (issue 16): key forms, odd card shapes, non-ASCII names, card export.

Each test is one finding of issue 16, written from the smallest input that showed it.
Real chromadb and the real `Retriever`; the embedder is `FakeHashEmbedder` (a fake).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from lore.importers.sillytavern import export_world_info, import_file, read_source
from lore.index import LoreIndex
from lore.loader import load_dir
from lore.retrieve import Retriever
from tests.lore.helpers import NPC, FakeHashEmbedder, lore_file


def write_json(path: Path, obj: dict) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def card(name: str, entries=None, spec: str = "chara_card_v2") -> dict:
    data = {"name": name, "description": f"{name} is someone."}
    if entries is not None:
        data["character_book"] = {"entries": entries}
    return {"spec": spec, "spec_version": "2.0" if spec.endswith("v2") else "3.0", "data": data}


def retriever(folder: Path, state: Path) -> Retriever:
    index = LoreIndex(state, FakeHashEmbedder())
    report = index.sync(folder)
    assert not report.problems, report.problems
    return Retriever(index, lambda t: len(t.split()), token_budget=10_000, vector_k=0)


def loaded(folder: Path) -> dict:
    files, problems = load_dir(folder)
    assert problems == [], problems
    return {e.id: e for f in files for e in f.entries}


def test_use_regex_on_a_card_book_keeps_plain_keys_plain(tmp_path):
    # SillyTavern writes use_regex: true on every entry it embeds in a card; a key is a regex only when written /.../flags
    src = write_json(tmp_path / "s.json", card("S", [
        {"keys": ["valdris"], "content": "x", "enabled": True, "insertion_order": 100, "use_regex": True},
        {"keys": ["/drag(on|in)/i"], "content": "y", "enabled": True, "insertion_order": 100, "use_regex": True},
    ]))
    res = import_file(src, tmp_path / "lore")
    by_id = loaded(res.folder)
    assert by_id["s-000-valdris"].keys == ["valdris"]
    r = retriever(res.folder, tmp_path / "state")
    assert "s-000-valdris" in [p.entry.id for p in r.select("s", "What is Valdris?").turn]
    assert "s-001-drag-on-in-i" in [p.entry.id for p in r.select("s", "a DRAGIN!").turn]
    out = export_world_info(list(by_id.values()))
    assert [e["key"] for e in out["entries"].values()] == [["valdris"], ["/drag(on|in)/i"]]  # same meaning back in SillyTavern


def test_card_book_entries_as_an_object_are_imported(tmp_path):
    src = write_json(tmp_path / "o.json", {"spec": "chara_card_v2", "data": {
        "name": "O", "description": "d",
        "character_book": {"entries": {"0": {"keys": ["alpha"], "content": "A.", "enabled": True, "insertion_order": 1},
                                        "1": {"keys": ["beta"], "content": "B.", "enabled": True, "insertion_order": 2}}}}})
    res = import_file(src, tmp_path / "lore")
    assert res.entries == 2
    assert sorted(e.keys[0] for e in loaded(res.folder).values() if e.kind.value == "lore") == ["alpha", "beta"]


def test_cards_without_ascii_names_get_distinct_readable_ids(tmp_path):
    ids = []
    for i, name in enumerate(["東京", "Київ", "🐉🔥", "Київ"]):
        res = import_file(write_json(tmp_path / f"c{i}.json", card(name)), tmp_path / "lore")
        ids.append(res.npc)
    assert len(set(ids)) == 4, ids  # the second Київ is another card: it never overwrites the first
    assert "x" not in ids and all(i.strip("-0123456789") for i in ids)
    assert ids[0] == "東京" and ids[1] == "київ" and ids[2] == "dragon-fire"
    by_id = loaded(tmp_path / "lore")
    assert {by_id[i].name for i in ids} == {"東京", "Київ", "🐉🔥"}
    # importing the same file again updates it in place (no new copy)
    again = import_file(tmp_path / "c1.json", tmp_path / "lore")
    assert again.npc == ids[1]


def test_world_info_js_only_regex_keys_translate_or_skip_per_entry(tmp_path):
    src = write_json(tmp_path / "js.json", {"entries": {
        "0": {"uid": 0, "key": ["/(?<word>drag)on\\k<word>/i"], "content": "named group", "comment": "Named"},
        "1": {"uid": 1, "key": ["/\\p{L}+ville/u"], "content": "letters", "comment": "Letters"},
        "2": {"uid": 2, "key": ["/\\p{Sc}\\d+/u", "price"], "content": "currency", "comment": "Money"},
        "3": {"uid": 3, "key": ["/(?<=a+)b/"], "content": "lookbehind", "comment": "Behind"},
    }})
    res = import_file(src, tmp_path / "lore")
    assert res.entries == 4
    assert any("Money" in w and "\\p{Sc}" in w for w in res.warnings), res.warnings
    # a variable-width lookbehind: Python's re refuses it; the keys' engine (the regex module, lore.regex_guard) runs it
    assert not any("Behind" in w for w in res.warnings), res.warnings
    (tmp_path / "lore" / "tester.md").write_text(lore_file(kind="npc", name="Tester", npc=NPC))
    r = retriever(tmp_path / "lore", tmp_path / "state")

    def hits(line: str) -> set[str]:
        return {p.entry.name for p in r.select("tester", line).turn}

    assert hits("DRAGONdrag") == {"Named"}
    assert hits("welcome to Émerville") == {"Letters"}
    assert hits("what is the price?") == {"Money"}  # the untranslatable key is skipped, the other key still works
    assert hits("aab") == {"Behind"}
    # the export gives SillyTavern its keys back as written
    out = export_world_info(list(loaded(res.folder).values()))
    assert out["entries"]["2"]["key"] == ["/\\p{Sc}\\d+/u", "price"]
    assert out["entries"]["0"]["key"] == ["/(?<word>drag)on\\k<word>/i"]


def test_export_cards_v2_v3_json_and_png_round_trip(tmp_path):
    from lore.importers.sillytavern import export_card, png_text_chunks

    src = write_json(tmp_path / "s.json", card("Sera", [
        {"keys": ["forest"], "content": "The forest.", "enabled": True, "insertion_order": 5, "use_regex": True, "extensions": {}},
    ]))
    res = import_file(src, tmp_path / "lore")
    entries = list(loaded(res.folder).values())
    v2 = export_card(entries, "sera", spec="v2")
    assert v2 == json.loads(src.read_text())  # untouched import -> the same card
    v3 = export_card(entries, "sera", spec="v3")
    assert v3["spec"] == "chara_card_v3" and v3["data"]["character_book"]["entries"][0]["keys"] == ["forest"]
    png = export_card(entries, "sera", spec="v3", png=True)
    chunks = png_text_chunks(png)
    assert json.loads(base64.b64decode(chunks["ccv3"])) == v3 and json.loads(base64.b64decode(chunks["chara"]))["spec"] == "chara_card_v2"
    (tmp_path / "back.png").write_bytes(png)
    kind, obj = read_source(tmp_path / "back.png")
    assert kind == "card_v3" and obj == v3

    # a hand-written NPC (no st: block) exports too, with the lore it may know as its book
    from lore.schema import LoreEntry
    npc = LoreEntry(id="odile", kind="npc", name="Odile", npc={"persona": "An innkeeper.", "voice": "Curt.", "greeting": "Well?"}, text="At the inn.")
    secret = LoreEntry(id="heron", kind="lore", name="Heron Job", keys=["heron"], known_by=["odile"], text="They sank it.")
    other = LoreEntry(id="fog", kind="lore", name="Fog", keys=["fog"], known_by=["someone-else"], text="Fog.")
    out = export_card([npc, secret, other], "odile", spec="v2")
    d = out["data"]
    assert (d["name"], d["description"], d["first_mes"], d["scenario"]) == ("Odile", "An innkeeper.", "Well?", "At the inn.")
    assert [e["keys"] for e in d["character_book"]["entries"]] == [["Heron Job", "heron"]]


def test_every_corpus_card_exports_back_to_itself(tmp_path):
    from lore.importers.sillytavern import export_card
    from tests.conftest import need_corpora

    root = need_corpora()
    cards = [p for d in ("sillytavern_default_content", "tavern_kit_fixtures") for p in sorted((root / d).glob("*.json"))]
    n = 0
    for src in cards:
        kind, obj = read_source(src)
        if kind not in ("card_v2", "card_v3"):
            continue
        res = import_file(src, tmp_path / "lore")
        got = export_card(list(loaded(res.folder).values()), res.npc, spec=kind[-2:])
        book = obj["data"].get("character_book")
        if book is not None and isinstance(book.get("entries"), dict):
            book["entries"] = list(book["entries"].values())  # exported as a list, the form the spec names
        assert got == obj, src
        n += 1
    assert n >= 2


def test_cli_exports_an_npc_as_a_png_card(tmp_path, capsys):
    from app.cli import main

    src = write_json(tmp_path / "s.json", card("Sera", [{"keys": ["forest"], "content": "The forest.", "enabled": True, "insertion_order": 5}]))
    assert main(["lore", "import", str(src), "--into", str(tmp_path / "lore")]) == 0
    out = tmp_path / "sera.png"
    assert main(["lore", "export", str(tmp_path / "lore"), "--card", "sera", "--spec", "v3", "--out", str(out)]) == 0
    kind, obj = read_source(out)
    assert kind == "card_v3" and obj["data"]["character_book"]["entries"][0]["keys"] == ["forest"]
