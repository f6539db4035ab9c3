"""``lore why``: included entries with the reason, dropped ones with the rule that stopped them, token costs."""

from __future__ import annotations

from lore.explain import diagnose, explain, format_explanation
from tests.lore.helpers import NPC, world


def test_explain_tells_not_triggered_from_over_budget(tmp_path):
    words = " ".join(["lore"] * 40)
    r = world(tmp_path, {
        "inn": {"kind": "npc", "name": "Innkeeper", "npc": NPC},
        "rule": {"kind": "lore", "name": "House Rule", "text": "No brawls.", "constant": True},
        "ale": {"kind": "lore", "name": "Ale", "text": f"Brown ale. {words}", "keys": ["ale"], "name_is_key": False, "order": 200},
        "cellar": {"kind": "lore", "name": "Cellar", "text": f"The ale is kept below. {words}", "keys": ["ale", "cellar"], "name_is_key": False},
        "plot": {"kind": "lore", "name": "Plot", "text": "The ale is poisoned.", "keys": ["ale"], "known_by": ["duke"], "name_is_key": False},
        "duke": {"kind": "npc", "name": "Duke", "npc": NPC},
        "weather": {"kind": "lore", "name": "Weather", "text": "It rains.", "keys": ["rain"], "name_is_key": False},
    }, token_budget=60)
    d = explain(r, "inn", "One ale, please.")
    inc = {x["entry"]: x for x in d["included"]}
    assert inc["inn"]["why"] == "card" and inc["rule"]["why"] == "constant" and inc["rule"]["placement"] == "prefix"
    assert inc["ale"]["why"] == "key:ale" and inc["ale"]["placement"] == "turn" and inc["ale"]["tokens"] > 40
    drop = {x["entry"]: x["reason"] for x in d["dropped"]}
    assert drop == {"cellar": "budget", "plot": "scope"}
    assert d["used"] == inc["ale"]["tokens"] <= d["budget"] == 60
    assert inc["ale"]["source"] == "ale.md"

    text = format_explanation(d)
    assert "turn lore" in text and "budget   cellar" in text and "scope    plot" in text

    why_cellar = diagnose(r, "inn", "One ale, please.", "cellar")
    assert why_cellar[0].startswith("triggered (key:ale) but dropped: budget")
    why_weather = diagnose(r, "inn", "One ale, please.", "weather")
    assert any(w.startswith("not triggered by keys: none of ['rain']") for w in why_weather)
    assert any("scope: known_by ['duke']" in w for w in diagnose(r, "inn", "One ale, please.", "plot"))
    assert diagnose(r, "inn", "hi", "nothing")[0].startswith("'nothing' is not in the index")


def test_diagnose_of_an_entry_triggered_by_recursion_says_so(tmp_path):
    entries = {
        "rebels": {"kind": "lore", "name": "Rebels", "text": "The rebels meet at the mill.", "keys": ["rebels"], "name_is_key": False},
        "mill": {"kind": "lore", "name": "Mill", "text": "The mill grinds grain.", "keys": ["mill"], "name_is_key": False},
    }
    why = diagnose(world(tmp_path / "1", entries), "tester", "who are the rebels?", "mill")
    assert why[0].startswith("included in the turn (key:mill, recursion:rebels)")
    assert not any(w.startswith("not triggered by keys") for w in why), why  # it was: by recursion
    assert any("in the text of 'rebels' (recursion step 1)" in w for w in why), why
    why = diagnose(world(tmp_path / "2", entries, max_recursion=0), "tester", "who are the rebels?", "mill")
    assert why[0] == "triggered (key:mill) but dropped: recursion" and any("recursion step 1" in w for w in why), why


def test_lore_why_on_an_empty_index_says_how_to_fill_it(tmp_path, capsys):
    from app.cli import main

    rc = main(["lore", "why", "--state-dir", str(tmp_path / "state"), "--words", "--npc", "odile-brask", "who runs the docks?"])
    err = capsys.readouterr().err
    assert rc == 2 and "unknown NPC 'odile-brask'" in err
    assert "no NPC is indexed" in err and "--lore DIR" in err and "narrative lore index DIR" in err, err


def test_lore_query_counts_the_dialogue_models_tokens(sample_state, capsys):
    from app.cli import main
    from app.settings import load_settings
    from narrative.llm import LlamaModel

    args = ["lore", "query", "--state-dir", str(sample_state), "--npc", "odile-brask", "Tell me about smokeglass."]
    assert main(args) == 0
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()}
    card = rows["odile-brask"]
    assert card[0] == "prefix" and card[-1] == "tokens", card
    assert main(args + ["--words"]) == 0
    words = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert words["odile-brask"][-1] == "words" and words["odile-brask"][-2] != card[-2]
    from lore.index import LoreIndex
    from lore.render import render_entry

    entry = LoreIndex(sample_state, lambda texts: [[0.0]] * len(texts)).entries["odile-brask"]
    assert int(card[-2]) == LlamaModel(load_settings().dialogue_model).count_tokens(render_entry(entry, speaker=True))
