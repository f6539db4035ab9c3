"""``narrative lore check`` and ``narrative lore import/export`` through the real CLI entry point."""

from __future__ import annotations

import json

from app.cli import main
from tests.conftest import SAMPLES, need_corpora
from tests.lore.helpers import NPC, lore_file


def test_sample_world_checks_clean(capsys):
    assert main(["lore", "check", str(SAMPLES)]) == 0
    assert capsys.readouterr().out == ""


def test_each_problem_names_path_and_line(tmp_path, capsys):
    root = tmp_path / "lore"
    root.mkdir()
    (root / "guard.md").write_text(lore_file(kind="npc", name="Guard", npc={**NPC, "faction": "no-such-faction"}))
    (root / "secret.md").write_text(lore_file("The king is ill.", kind="lore", name="Secret", keys=["king"], known_by=["guard", "the-crown"]))
    (root / "rx.md").write_text(lore_file("x", kind="lore", name="Rx", keys=["ok", "/bad(/"]))
    (root / "nokeys.md").write_text(lore_file("x", kind="lore", name="Quiet", name_is_key=False))
    (root / "zz-dup.md").write_text(lore_file("x", id="secret", kind="lore", name="Again"))
    (root / "yaml.md").write_text("---\nkind: lore\nname: [unclosed\n---\nx\n")
    assert main(["lore", "check", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    expect = {
        f"{root / 'guard.md'}:7: error: npc.faction: 'no-such-faction' is not a faction id",
        f"{root / 'secret.md'}:8: error: known_by: 'the-crown' is not an NPC id, a faction id or a tag of any entry",
        f"{root / 'nokeys.md'}:1: error: keys: empty on a non-constant entry (it can only be found by similarity); add keys, or set constant: true",
        f"{root / 'zz-dup.md'}:2: error: duplicate id 'secret', already defined in {root / 'secret.md'}",
    }
    assert expect <= set(out), "\n".join(out)
    assert any(line.startswith(f"{root / 'rx.md'}:") and "bad regex key '/bad(/'" in line for line in out)
    assert any(line.startswith(f"{root / 'yaml.md'}:") and "YAML error" in line for line in out), out

    assert main(["lore", "check", str(root), "--json"]) == 1
    rows = json.loads(capsys.readouterr().out)
    assert {r["severity"] for r in rows} == {"error"} and len(rows) == len(out)
    assert all(set(r) == {"path", "line", "severity", "message"} for r in rows)


def test_cli_import_then_export_round_trip(tmp_path, capsys):
    corpora = need_corpora()
    src = corpora / "sillytavern_default_content" / "Eldoria.world_info.json"
    card = corpora / "sillytavern_default_content" / "Seraphina.chara_card_v2.json"
    assert main(["lore", "import", str(src), str(card), "--into", str(tmp_path / "lore")]) == 0
    assert "4 entries" in capsys.readouterr().out
    assert main(["lore", "check", str(tmp_path / "lore")]) == 0
    out = tmp_path / "back.json"
    assert main(["lore", "export", str(tmp_path / "lore" / "eldoria-world-info"), "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == json.loads(src.read_text())
    assert main(["lore", "import", str(tmp_path / "back.json"), str(SAMPLES / "README.md"), "--into", str(tmp_path / "x")]) == 1
