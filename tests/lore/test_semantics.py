"""Lorebook entry semantics (SillyTavern World Info names): triggers, selective logic, scope, recursion, budget.

Real chromadb on disk and the real `Retriever`; the embedder is `FakeHashEmbedder`
(a fake, see tests/lore/helpers.py) and vectors are off unless a test turns them on.
"""

from __future__ import annotations

import pytest

from lore.keywords import KeywordIndex
from lore.retrieve import BUDGET, DISABLED, PROBABILITY, RECURSION, SCOPE, SECONDARY
from lore.schema import Kind, LoreEntry
from tests.lore.helpers import NPC, world


def lore(name: str, text: str = "Some lore.", **kw) -> dict:
    return {"kind": "lore", "name": name, "text": text, **kw}


def turn_ids(sel) -> list[str]:
    return [p.entry.id for p in sel.turn]


def dropped(sel) -> dict[str, str]:
    return {p.entry.id: p.reason for p in sel.dropped}


def test_plain_keys_whole_words_and_case(tmp_path):
    r = world(tmp_path, {
        "cat": lore("Feline", keys=["cat"], name_is_key=False),
        "sub": lore("Sub", keys=["cat"], match_whole_words=False, name_is_key=False),
        "cs": lore("Case", keys=["Moon"], case_sensitive=True, name_is_key=False),
        "ci": lore("NoCase", keys=["Moon"], name_is_key=False),
        "phrase": lore("Phrase", keys=["magical forest"], name_is_key=False),
    })
    assert set(turn_ids(r.select("tester", "I love concatenation"))) == {"sub"}
    assert set(turn_ids(r.select("tester", "My CAT sleeps."))) == {"cat", "sub"}
    assert set(turn_ids(r.select("tester", "the moon is up"))) == {"ci"}
    assert set(turn_ids(r.select("tester", "the Moon is up"))) == {"ci", "cs"}
    assert turn_ids(r.select("tester", "a magical  forest")) == []  # a phrase key is matched as written
    assert turn_ids(r.select("tester", "The Magical Forest!")) == ["phrase"]


def test_regex_keys_and_name_as_key(tmp_path):
    r = world(tmp_path, {
        "rx": lore("Rx", keys=["/dragon(s|kin)?\\b/i"], name_is_key=False),
        "rxcase": lore("RxCase", keys=["/^Halt/"], name_is_key=False),
        "named": lore("Brass Key"),
    })
    assert turn_ids(r.select("tester", "DRAGONKIN attack")) == ["rx"]
    assert turn_ids(r.select("tester", "halt there")) == []
    assert turn_ids(r.select("tester", "Halt there")) == ["rxcase"]
    sel = r.select("tester", "where is the brass key?")
    assert turn_ids(sel) == ["named"] and sel.turn[0].key == "Brass Key" and sel.turn[0].why == "key:Brass Key"


@pytest.mark.parametrize(
    "logic, line, fires",
    [
        ("and_any", "the king and the crown", True),
        ("and_any", "the king alone", False),
        ("and_all", "the king, the crown and the throne", True),
        ("and_all", "the king and the crown", False),
        ("not_any", "the king alone", True),
        ("not_any", "the king and the throne", False),
        ("not_all", "the king and the crown", True),
        ("not_all", "the king, the crown and the throne", False),
    ],
)
def test_selective_logic(tmp_path, logic, line, fires):
    r = world(tmp_path, {"secret": lore("Secret", keys=["king"], secondary_keys=["crown", "throne"], selective_logic=logic, name_is_key=False)})
    sel = r.select("tester", line)
    assert (turn_ids(sel) == ["secret"]) is fires
    if not fires:
        assert dropped(sel) == {"secret": SECONDARY}


def test_constant_disabled_and_scan_depth(tmp_path):
    r = world(tmp_path, {
        "always": lore("Always", constant=True, keys=["never-said"]),
        "off": lore("Off", keys=["lamp"], disabled=True, name_is_key=False),
        "deep": lore("Deep", keys=["harbour"], scan_depth=3, name_is_key=False),
        "shallow": lore("Shallow", keys=["harbour", "ship"], name_is_key=False),
    }, scan_depth=1)
    sel = r.select("tester", "hello", ["the lamp", "the harbour", "a boat", "nothing"])
    assert [p.entry.id for p in sel.prefix] == ["tester", "always"] and sel.prefix[1].why == "constant"
    assert turn_ids(sel) == ["deep"] and sel.turn[0].found_in == "history:3"
    sel = r.select("tester", "hello the lamp", [])
    assert dropped(sel) == {"off": DISABLED} and turn_ids(sel) == []
    assert turn_ids(r.select("tester", "ship ahoy", ["harbour"])) == ["shallow", "deep"]  # the line first, then history
    assert turn_ids(r.select("tester", "ahoy", ["harbour", "x"])) == ["deep"]  # 2 lines back: past scan_depth 1


def test_scope_is_a_hard_filter(tmp_path):
    r = world(tmp_path, {
        "guard": {"kind": "npc", "name": "Guard", "tags": ["watch"], "npc": {**NPC, "faction": "crown"}},
        "inn": {"kind": "npc", "name": "Innkeeper", "npc": NPC},
        "crown": lore("The Crown Guard", kind="faction"),
        "kings-secret": lore("King's Secret", keys=["king"], known_by=["crown"], name_is_key=False),
        "watch-code": lore("Watch Code", keys=["password"], known_by=["watch"], name_is_key=False),
        "inn-gossip": lore("Gossip", keys=["king", "password"], known_by=["inn"], name_is_key=False),
    })
    assert turn_ids(r.select("guard", "tell me about the king")) == ["kings-secret"]
    sel = r.select("inn", "tell me about the king's password")
    assert turn_ids(sel) == ["inn-gossip"]
    assert dropped(sel) == {"kings-secret": SCOPE, "watch-code": SCOPE}
    assert turn_ids(r.select("guard", "the password?")) == ["watch-code"]


def test_vector_hits_respect_scope(tmp_path):
    r = world(tmp_path, {
        "inn": {"kind": "npc", "name": "Innkeeper", "npc": NPC},
        "plot": lore("Plot", "the duke poisons the river wells at night", keys=["zzz"], known_by=["someone-else"], name_is_key=False),
    }, vector_k=4)
    sel = r.select("inn", "who poisons the river wells at night?")
    assert "plot" not in sel.ids and dropped(sel)["plot"] == SCOPE and dropped(sel)["plot"] and sel.dropped[0].similarity > 0.5


def test_recursion_controls(tmp_path):
    entries = {
        "a": lore("A", "The rebels hide in the old mill.", keys=["rebels"], name_is_key=False),
        "b": lore("B", "The mill belongs to the miller's guild.", keys=["mill"], name_is_key=False),
        "c": lore("C", "The guild pays the captain.", keys=["guild"], name_is_key=False),
        "d": lore("D", "The captain is loyal.", keys=["captain"], name_is_key=False),
    }
    r = world(tmp_path / "1", entries, max_recursion=2)
    sel = r.select("tester", "who are the rebels?")
    assert turn_ids(sel) == ["a", "b", "c"]
    assert [(p.entry.id, p.step, p.found_in) for p in sel.turn] == [("a", 0, "line"), ("b", 1, "recursion:a"), ("c", 2, "recursion:b")]
    assert dropped(sel) == {"d": RECURSION}  # depth limit reached

    r = world(tmp_path / "2", {**entries, "a": {**entries["a"], "prevent_recursion": True}})
    assert turn_ids(r.select("tester", "who are the rebels?")) == ["a"]

    r = world(tmp_path / "3", {**entries, "b": {**entries["b"], "exclude_recursion": True}})
    sel = r.select("tester", "who are the rebels?")
    assert turn_ids(sel) == ["a"] and dropped(sel) == {"b": RECURSION}
    assert turn_ids(r.select("tester", "the mill?")) == ["b", "c", "d"]

    r = world(tmp_path / "4", {**entries, "b": {**entries["b"], "delay_until_recursion": True}})
    sel = r.select("tester", "the mill?")
    assert "b" not in sel.ids and dropped(sel)["b"] == RECURSION
    assert turn_ids(r.select("tester", "who are the rebels?")) == ["a", "b", "c"]


def test_probability_is_deterministic(tmp_path):
    r = world(tmp_path, {
        "never": lore("Never", keys=["omen"], probability=0, name_is_key=False),
        "half": lore("Half", keys=["omen"], probability=50, name_is_key=False),
    })
    outcomes = []
    for i in range(40):
        sel = r.select("tester", f"an omen number {i}")
        assert dropped(sel).get("never") == PROBABILITY
        assert sel.ids == r.select("tester", f"an omen number {i}").ids  # same line, same roll
        outcomes.append("half" in sel.ids)
    assert 5 < sum(outcomes) < 35


def test_budget_overflow_is_reported_by_priority(tmp_path):
    words = " ".join(["lore"] * 30)
    r = world(tmp_path, {
        "low": lore("Low", words, keys=["storm"], order=10, name_is_key=False),
        "high": lore("High", words, keys=["storm"], order=500, name_is_key=False),
        "mid": lore("Mid", words, keys=["storm"], order=100, name_is_key=False),
        "tiny": lore("Tiny", "short", keys=["storm"], order=1, name_is_key=False),
    }, token_budget=80)  # rendered as prose: 35 "tokens" (words) per big entry, 6 for the tiny one: two big + tiny fit, a third big does not
    sel = r.select("tester", "a storm is coming")
    assert turn_ids(sel) == ["high", "mid", "tiny"][:2] + ["tiny"]
    assert dropped(sel) == {"low": BUDGET}
    assert sel.used <= 80 and sel.used == sum(p.tokens for p in sel.turn)
    assert sel.dropped[0].tokens == r.tokens(sel.dropped[0].entry) > 30


def test_an_entry_named_in_the_line_is_trimmed_to_whole_sentences_that_fit(tmp_path):
    sentences = [f"Fact number {i} about the aboleth is here." for i in range(19)] + ["It dreams of the abyss."]
    r = world(tmp_path, {
        "small": lore("Small", "The lake is deep and cold.", keys=["lake"], order=200, name_is_key=False),
        "aboleth": lore("Aboleth", " ".join(sentences), keys=["aboleth"], name_is_key=False),
        "abyss": lore("Abyss", "Dark.", keys=["abyss"], name_is_key=False),
    }, token_budget=60, min_partial_tokens=20)
    sel = r.select("tester", "what lives in the lake, an aboleth?")
    # the abyss is named only in the part of the aboleth that was cut: recursion does not see it
    assert turn_ids(sel) == ["small", "aboleth"] and not sel.dropped
    small, part = sel.turn
    whole = r.tokens(r.index.entries["aboleth"])
    assert part.full_tokens == whole > 60 and part.tokens <= 60 - small.tokens and sel.used <= 60
    kept = part.entry.text.removesuffix(" [...]")
    n = len(kept.split(". "))
    assert kept == " ".join(sentences[:n]) and 1 <= n < 20  # whole leading sentences only
    assert r.tokens(part.entry) == part.tokens  # its cost is the cost of what is injected

    # too little room left: dropped for budget, never trimmed below min_partial_tokens
    r2 = world(tmp_path / "2", {
        "small": lore("Small", "The lake is deep and cold.", keys=["lake"], order=200, name_is_key=False),
        "aboleth": lore("Aboleth", " ".join(sentences), keys=["aboleth"], name_is_key=False),
    }, token_budget=60, min_partial_tokens=55)
    sel = r2.select("tester", "what lives in the lake, an aboleth?")
    assert turn_ids(sel) == ["small"] and dropped(sel) == {"aboleth": BUDGET}
    assert sel.dropped[0].full_tokens is None and sel.dropped[0].tokens == whole


def test_an_entry_only_reached_by_recursion_is_dropped_whole_not_trimmed(tmp_path):
    words = " ".join(["lore"] * 50) + "."
    entries = {
        "oil": lore("Oil", "Blue oil is sold at the exchange.", keys=["oil"], name_is_key=False),
        "exchange": lore("Exchange", f"The exchange is busy. {words}", keys=["exchange"], name_is_key=False),
    }
    r = world(tmp_path, entries, token_budget=60, min_partial_tokens=5)
    assert r.tokens(r.index.entries["exchange"]) <= 60  # it could fit alone, so it waits for a turn with room
    sel = r.select("tester", "where can I buy oil?")
    assert turn_ids(sel) == ["oil"] and dropped(sel) == {"exchange": BUDGET}
    # larger than the whole budget: it could never fit, so it is trimmed into what is left
    r = world(tmp_path / "2", entries, token_budget=40, min_partial_tokens=5)
    sel = r.select("tester", "where can I buy oil?")
    assert turn_ids(sel) == ["oil", "exchange"] and sel.turn[1].full_tokens > 40
    assert sel.turn[1].entry.text == "The exchange is busy. [...]"


def test_recursion_scans_only_entries_that_made_it_into_the_turn(tmp_path):
    big = " ".join(["lore"] * 40) + " The smugglers know the captain."
    r = world(tmp_path, {
        "a": lore("A", "The rebels meet at the mill.", keys=["rebels"], order=200, name_is_key=False),
        "mill": lore("Mill", "The mill grinds grain.", keys=["mill"], name_is_key=False),
        "huge": lore("Huge", big, keys=["rebels"], order=1, name_is_key=False),
        "captain": lore("Captain", "The captain is loyal.", keys=["captain"], name_is_key=False),
    }, token_budget=30, min_partial_tokens=1000)
    sel = r.select("tester", "tell me about the rebels")
    assert turn_ids(sel) == ["a", "mill"]
    assert dropped(sel) == {"huge": BUDGET}  # captain is only in huge's text: not triggered, not reported
    assert r.triggers(r.index.entries["huge"]) == [("captain", "captain")]  # cached recursion targets
    assert r.triggers(r.index.entries["a"]) == [("a", "rebels"), ("huge", "rebels"), ("mill", "mill")]


def test_lore_already_in_the_conversation_costs_no_budget(tmp_path):
    words = " ".join(["lore"] * 30)
    r = world(tmp_path, {
        "first": lore("First", words, keys=["storm"], order=200, name_is_key=False),
        "second": lore("Second", words, keys=["storm"], order=100, name_is_key=False),
    }, token_budget=40)
    sel = r.select("tester", "a storm is coming")
    assert turn_ids(sel) == ["first"] and dropped(sel) == {"second": BUDGET} and sel.present == []
    sel = r.select("tester", "a storm is coming", exclude={"first"})
    assert turn_ids(sel) == ["second"] and not sel.dropped
    assert sel.present == ["first"] and sel.used == sel.turn[0].tokens  # triggered again, not charged


def test_keyword_index_add_remove_matches_rebuild():
    def e(i: str, keys: list[str], **kw) -> LoreEntry:
        return LoreEntry(id=i, kind=Kind.lore, name=i, keys=keys, name_is_key=False, **kw)

    idx = KeywordIndex()
    idx.rebuild([e("a", ["red fox"]), e("b", ["fox"]), e("c", ["/f.x/"]), e("d", ["ox"], match_whole_words=False)])
    text = "The red fox and the ox"
    assert idx.match(text) == {"a": "red fox", "b": "fox", "c": "/f.x/", "d": "ox"}
    idx.remove("b")
    idx.remove("c")
    idx.add(e("a", ["wolf"]))
    assert idx.match(text) == {"d": "ox"}
    assert idx.match("a WOLF") == {"a": "wolf"}


def test_the_named_entry_beats_a_higher_order_recursion_hit(tmp_path):
    words = " ".join(["lore"] * 30)
    r = world(tmp_path, {
        "oil": lore("Oil", f"Blue oil is sold at the exchange. {words}", keys=["oil"], name_is_key=False),
        "exchange": lore("Exchange", words, keys=["exchange"], order=500, name_is_key=False),
    }, token_budget=45)
    sel = r.select("tester", "where can I buy oil?")
    assert turn_ids(sel) == ["oil"] and dropped(sel) == {"exchange": BUDGET}


def test_imported_sillytavern_entries_keep_substring_matching(tmp_path):
    from lore.importers.sillytavern import import_file
    from lore.index import LoreIndex
    from lore.retrieve import Retriever
    from tests.conftest import need_corpora
    from tests.lore.helpers import FakeHashEmbedder

    res = import_file(need_corpora() / "sillytavern_default_content" / "Seraphina.chara_card_v2.json", tmp_path / "lore")
    index = LoreIndex(tmp_path / "state", FakeHashEmbedder())
    assert not index.sync(res.folder).problems
    r = Retriever(index, lambda t: len(t.split()), token_budget=10_000, vector_k=0)
    sel = r.select("seraphina", "Tell me about the Shadowfangs.")  # key 'shadowfang', matchWholeWords unset = off in SillyTavern
    assert "seraphina-001-shadowfang" in turn_ids(sel)
    assert sel.turn[0].key == "shadowfang"


def test_bm25_ranks_by_shared_content_words_and_updates():
    from lore.lexical import Bm25Index, terms

    def e(i: str, text: str) -> LoreEntry:
        return LoreEntry(id=i, kind=Kind.lore, name=i.title(), text=text)

    assert terms("What's the lamp fuel that burns blue?") == ["lamp", "fuel", "burn", "blue"]
    idx = Bm25Index()
    idx.rebuild([e("oil", "Bluewick oil burns blue without smoke in every lamp."), e("eel", "Eels live in warm water."), e("glass", "Smokeglass is blown over the vents.")])
    assert [eid for eid, _ in idx.search("what lamp fuel burns blue and gives no smoke?", 3)] == ["oil"]  # "smokeglass" is another term
    idx.remove("oil")
    assert [eid for eid, _ in idx.search("lamp fuel burns blue", 3)] == []
    idx.add(e("eel", "Eels glow blue."))
    assert idx.search("blue", 3)[0][0] == "eel" and len(idx) == 2


def test_hybrid_fuses_vectors_and_bm25_after_keys(tmp_path):
    r = world(tmp_path, {
        "oil": lore("Bluewick Oil", "Rendered from eels, it burns blue without smoke in every lamp.", name_is_key=False, keys=["bluewick"]),
        "inn": lore("The Inn", "An inn with a lamp over the door.", keys=["inn"], name_is_key=False),
    }, vector_k=4, token_budget=100)
    sel = r.select("tester", "What lamp fuel burns blue without smoke?")
    assert turn_ids(sel)[0] == "oil" and sel.turn[0].lexical > 0 and sel.turn[0].key is None
    sel = r.select("tester", "Is the inn open? What fuel burns blue?")
    assert turn_ids(sel)[:2] == ["inn", "oil"]  # a key hit comes before any similarity hit
    assert [p.entry.id for p in r.select("tester", "burns blue without smoke", mode="keywords").turn] == []


def test_an_entry_past_the_recursion_limit_can_still_come_in_by_similarity(tmp_path):
    # 'mill' is named in the text of 'a' (recursion step 1) and is the entry most similar to the line;
    # with recursion off (max_recursion 0) it must still be found by similarity, not shut out as 'recursion'
    entries = {
        "a": lore("A", "The rebels meet at the mill.", keys=["rebels"], name_is_key=False),
        "mill": lore("Mill", "The mill grinds barley and rye for the bakers.", keys=["mill"], name_is_key=False),
        "goats": lore("Goats", "Unrelated goats.", keys=["goat"], name_is_key=False),
    }
    line = "do the rebels buy barley and rye for the bakers?"
    sel = world(tmp_path / "0", entries, max_recursion=0, vector_k=8).select("tester", line)
    assert turn_ids(sel)[:2] == ["a", "mill"] and sel.turn[1].key is None and sel.turn[1].lexical > 0
    assert "mill" not in dropped(sel)
    sel = world(tmp_path / "1", entries, max_recursion=1, vector_k=8).select("tester", line)
    assert turn_ids(sel)[:2] == ["a", "mill"] and sel.turn[1].found_in == "recursion:a"
    # a secondary-key or probability veto still keeps it out of the similarity hits
    vetoed = {**entries, "mill": {**entries["mill"], "secondary_keys": ["flour"]}}
    sel = world(tmp_path / "2", vetoed, max_recursion=1, vector_k=8).select("tester", line)
    assert "mill" not in turn_ids(sel) and dropped(sel)["mill"] == SECONDARY
    delayed = {**entries, "mill": {**entries["mill"], "delay_until_recursion": True}}
    sel = world(tmp_path / "3", delayed, max_recursion=0, vector_k=8).select("tester", "the mill grinds barley and rye")
    assert "mill" not in turn_ids(sel) and dropped(sel)["mill"] == RECURSION  # its key is in the line: the delay holds
