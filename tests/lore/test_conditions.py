"""State-gated lore (``when:``): the condition language, its load errors, and selection against a game state.

The language (`lore.conditions`) is checked against a straightforward reference with
hypothesis; selection runs the real `Retriever` on a real chromadb index on disk
(`FakeHashEmbedder`, a fake, see tests/lore/helpers.py); `lore check` / `lore why`
go through the real CLI entry point.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.cli import main
from lore.conditions import When, validate_state
from lore.explain import diagnose, explain, format_explanation
from lore.index import LoreIndex
from lore.loader import LoreFileError, load_dir, parse_lore_text
from lore.retrieve import STATE, Retriever
from lore.schema import LoreEntry
from tests.conftest import SAMPLES
from tests.lore.helpers import NPC, FakeHashEmbedder, lore_file, world, write_world

# ---- the language ---------------------------------------------------------


def when(raw: dict) -> When:
    return When.model_validate(raw)


@pytest.mark.parametrize(
    "raw, state, holds",
    [
        ({"quest.heron": "done"}, {"quest.heron": "done"}, True),
        ({"quest.heron": "done"}, {"quest.heron": "started"}, False),
        ({"quest.heron": "done"}, {}, False),
        ({"gold": 5}, {"gold": 5.0}, True),  # 5 equals 5.0
        ({"gold": 5}, {"gold": "5"}, False),  # a string never equals a number
        ({"night": True}, {"night": 1}, False),  # a bool is not a number
        ({"count": 1}, {"count": True}, False),
        ({"night": True}, {"night": True}, True),
        ({"weather": ["rain", "fog"]}, {"weather": "fog"}, True),
        ({"weather": ["rain", "fog"]}, {"weather": "sun"}, False),
        ({"weather": ["rain", "fog"]}, {}, False),
        ({"gold": {"gte": 10, "lt": 100}}, {"gold": 10}, True),
        ({"gold": {"gte": 10, "lt": 100}}, {"gold": 100}, False),
        ({"gold": {"gte": 10, "lt": 100}}, {"gold": 9.5}, False),
        ({"gold": {"gt": 1}}, {"gold": "12"}, False),  # numeric ops need a number in the state: no error, no hold
        ({"gold": {"gt": 0}}, {"gold": True}, False),
        ({"gold": {"lte": 0}}, {}, False),
        ({"gold": {"ne": 3}}, {}, True),  # a missing key: ne holds ...
        ({"gold": {"exists": False}}, {}, True),  # ... and so does exists: false, and nothing else
        ({"gold": {"exists": True}}, {}, False),
        ({"gold": {"exists": True}}, {"gold": 0}, True),
        ({"gold": {"exists": False}}, {"gold": False}, False),
        ({"gold": {"ne": 3}}, {"gold": "3"}, True),  # ne is exactly not eq
        ({"gold": {"in": [1, "x"]}}, {"gold": 1.0}, True),
        ({"a": 1, "b": {"exists": False}}, {"a": 1}, True),  # all must hold
        ({"a": 1, "b": {"exists": False}}, {"a": 1, "b": 2}, False),
        ({"a": "done"}, {"a": None}, False),  # a value outside the language equals nothing ...
        ({"a": {"ne": "done", "exists": True}}, {"a": [1]}, True),  # ... but is set
    ],
)
def test_holds(raw, state, holds):
    w = when(raw)
    assert w.holds(state) is holds
    assert (w.unmet(state) == []) is holds


def test_unmet_says_which_part_failed_in_words():
    w = when({"quest.heron": "done", "gold": {"gte": 10}, "weather": ["rain", "fog"], "curfew": {"exists": False}, "night": True})
    assert w.unmet({"quest.heron": "started", "gold": "ten", "curfew": 1, "night": 1}) == [
        "needs quest.heron = done, state has quest.heron = started",
        "needs gold >= 10, state has gold = ten (not a number)",
        "weather is not set",
        "needs curfew unset, state has curfew = 1",
        "needs night = true, state has night = 1",
    ]
    assert w.unmet({}) == ["quest.heron is not set", "gold is not set", "weather is not set", "night is not set"]
    assert when({"gold": {"gt": 1, "lt": 5}}).unmet({}) == ["gold is not set"]  # once per key, not per operator
    assert when({"code": 12}).unmet({"code": "12"}) == ['needs code = 12, state has code = "12"']  # a string that reads as a number is quoted
    assert w.describe() == "quest.heron = done and gold >= 10 and weather in [rain, fog] and curfew is not set and night = true"
    assert when({"g": {"gt": 1, "lte": 2.5, "ne": "x", "exists": True}}).describe() == "g != x and g > 1 and g <= 2.5 and g is set"


@pytest.mark.parametrize(
    "raw, loc, message",
    [
        ({"a": {"equals": 1}}, ("a",), "unknown operator 'equals' (operators: eq, ne, gt, gte, lt, lte, in, exists)"),
        ({"a": {"gt": "ten"}}, ("a", "gt"), "needs a finite number (not true/false, not a string), got ten (str)"),
        ({"a": {"gte": True}}, ("a", "gte"), "needs a finite number (not true/false, not a string), got true (bool)"),
        ({"a": {"lt": float("nan")}}, ("a", "lt"), "needs a finite number (not true/false, not a string), got nan (float)"),
        ({"a": {"eq": [1]}}, ("a", "eq"), "needs a string, a number or true/false, got a list"),
        ({"a": {"in": 3}}, ("a", "in"), "needs a list of values, got 3 (int)"),
        ({"a": {"in": []}}, ("a", "in"), "needs at least one value (an empty list never holds)"),
        ({"a": {"exists": 1}}, ("a", "exists"), "needs true or false, got 1 (int)"),
        ({"a": {}}, ("a",), "an empty mapping: give at least one operator (eq, ne, gt, gte, lt, lte, in, exists)"),
        ({"a": None}, ("a",), "needs a value: a string, a number or true/false (equals), a list (any of) or a mapping of operators, got nothing (null)"),
        ({"a": [1, {"b": 2}]}, ("a",), "a list (any of): item 2: needs a string, a number or true/false, got a mapping"),
        ({"bad key": 1}, ("bad key", "[key]"), "state key 'bad key': use 1-64 characters of A-Z a-z 0-9 _ . -"),
        ({"k" * 65: 1}, ("k" * 65, "[key]"), f"state key '{'k' * 65}': use 1-64 characters of A-Z a-z 0-9 _ . -"),
        ({}, (), "an empty when: give at least one state key and its condition (or remove the field)"),
    ],
)
def test_validation_errors_name_the_field(raw, loc, message):
    with pytest.raises(ValidationError) as exc:
        when(raw)
    [err] = exc.value.errors()
    assert (tuple(err["loc"]), err["msg"]) == (loc, message)


def test_a_when_serializes_as_written_and_round_trips():
    raw = {"quest.heron": "done", "w": ["rain", "fog"], "gold": {"gte": 10, "in": [10, 20]}, "n": {"eq": True}}
    w = when(raw)
    assert w.model_dump() == {"quest.heron": "done", "w": ["rain", "fog"], "gold": {"gte": 10, "in": [10, 20]}, "n": True}
    assert When.model_validate_json(w.model_dump_json()) == w


def test_validate_state_is_for_the_boundary():
    assert validate_state({"quest.heron": "done", "gold": 12, "x": 0.5, "night": True}) == {"quest.heron": "done", "gold": 12, "x": 0.5, "night": True}
    for bad, part in (({"a": None}, "state a"), ({"a": [1]}, "state a"), ({"a": math.inf}, "state a"), ({"bad key": 1}, "state key 'bad key'"), ({3: 1}, "state key 3")):
        with pytest.raises(ValueError, match="^" + part.replace(".", r"\.")):
            validate_state(bad)


# ---- property tests against a straightforward reference ------------------------


def _kind(v):
    if type(v) is bool:
        return "bool"
    if type(v) in (int, float):
        return "number"
    if type(v) is str:
        return "str"
    return None


def _equal(a, b):
    return _kind(a) is not None and _kind(a) == _kind(b) and a == b


def reference_holds(raw: dict, state: dict) -> bool:
    """The spec, written out op by op."""
    for key, cond in raw.items():
        ops = cond if isinstance(cond, dict) else {"in": cond} if isinstance(cond, list) else {"eq": cond}
        for op, want in ops.items():
            if op == "exists":
                ok = (key in state) == want
            elif key not in state:
                ok = op == "ne"
            elif op == "eq":
                ok = _equal(state[key], want)
            elif op == "ne":
                ok = not _equal(state[key], want)
            elif op == "in":
                ok = any(_equal(state[key], w) for w in want)
            elif _kind(state[key]) != "number":
                ok = False
            else:
                ok = {"gt": state[key] > want, "gte": state[key] >= want, "lt": state[key] < want, "lte": state[key] <= want}[op]
            if not ok:
                return False
    return True


KEYS = st.sampled_from(["a", "b", "quest.heron"])
NUMBERS = st.one_of(st.integers(-3, 3), st.sampled_from([-1.5, 0.0, 1.0, 2.0, 2.5]))
SCALARS = st.one_of(st.booleans(), NUMBERS, st.sampled_from(["", "done", "started", "1", "true"]))
OPS = st.fixed_dictionaries({}, optional={
    "eq": SCALARS, "ne": SCALARS, "gt": NUMBERS, "gte": NUMBERS, "lt": NUMBERS, "lte": NUMBERS,
    "in": st.lists(SCALARS, min_size=1, max_size=3), "exists": st.booleans(),
}).filter(bool)
CONDITIONS = st.one_of(SCALARS, st.lists(SCALARS, min_size=1, max_size=3), OPS)
WHENS = st.dictionaries(KEYS, CONDITIONS, min_size=1, max_size=3)
STATES = st.dictionaries(KEYS, st.one_of(SCALARS, st.none(), st.just([1])), max_size=3)


@settings(max_examples=400, deadline=None)
@given(WHENS, STATES)
def test_holds_matches_the_reference(raw, state):
    w = when(raw)
    assert w.holds(state) is reference_holds(raw, state)
    assert (w.unmet(state) == []) is w.holds(state)
    back = When.model_validate_json(w.model_dump_json())
    assert back == w and back.holds(state) is w.holds(state)
    assert w.describe()


JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=5), st.sampled_from(["eq", "gt", "in", "exists"])), inner, max_size=3)),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(JUNK, STATES)
def test_any_input_validates_or_fails_as_a_validation_error(raw, state):
    try:
        w = When.model_validate(raw)
    except ValidationError as exc:
        assert all(e["msg"] for e in exc.errors())
        return
    w.holds(state)  # checking a state never raises
    w.unmet(state)


# ---- lore files ---------------------------------------------------------------


def test_a_bad_when_is_a_load_error_naming_file_and_line(tmp_path):
    path = tmp_path / "a.md"
    text = """\
---
kind: lore
name: A
when:
  quest.heron: done
  gold:
    gte: ten
  'bad key': 1
  night: {equals: true}
---
Body.
"""
    with pytest.raises(LoreFileError) as exc:
        parse_lore_text(text, path, "a")
    assert [str(p) for p in exc.value.problems] == [
        f"{path}:7: error: when.gold.gte: needs a finite number (not true/false, not a string), got ten (str)",
        f"{path}:8: error: when.bad key: state key 'bad key': use 1-64 characters of A-Z a-z 0-9 _ . -",
        f"{path}:9: error: when.night: unknown operator 'equals' (operators: eq, ne, gt, gte, lt, lte, in, exists)",
    ]
    flow = "---\nkind: lore\nname: A\nkeys: [a]\nwhen: {quest.heron: {in: []}}\n---\nBody.\n"
    with pytest.raises(LoreFileError) as exc:
        parse_lore_text(flow, path, "a")
    assert [str(p) for p in exc.value.problems] == [f"{path}:5: error: when.quest.heron.in: needs at least one value (an empty list never holds)"]


def test_ungated_entries_serialize_as_before():
    """No ``when`` key in an ungated entry's JSON: the catalog, chunk ids and batch digests of existing lore do not change."""
    files, problems = load_dir(SAMPLES)
    assert not problems
    gated = {e.id for f in files for e in f.entries if e.when is not None}
    assert gated == {"heron-found"}
    for f in files:
        for e in f.entries:
            assert ('"when"' in e.model_dump_json()) is (e.id in gated)
            assert ("when" in e.model_dump()) is (e.id in gated)
    gated = LoreEntry(id="g", kind="lore", name="G", when={"a": 1})
    assert json.loads(gated.model_dump_json())["when"] == {"a": 1}


# ---- selection ------------------------------------------------------------------

DONE = {"quest.heron": "done"}


def lore(name: str, text: str, **kw) -> dict:
    return {"kind": "lore", "name": name, "text": text, "name_is_key": False, **kw}


WORLD = {
    "inn": {"kind": "npc", "name": "Innkeeper", "npc": {**NPC, "location": "bellows"}},
    "guard": {"kind": "npc", "name": "Guard", "npc": NPC},
    "bellows": {"kind": "place", "name": "The Bellows", "text": "The inn is full of smoke at night.", "when": {"night": True}},
    "calendar": lore("Calendar", "It is early spring.", constant=True),
    "news": lore("News", "The barge was found scuttled.", constant=True, when={"quest.heron": "done"}),
    "backdrop": lore("Backdrop", "The fen burns below the town.", position="prefix", when={"quest.heron": {"exists": True}}),
    "hoard": lore("Hoard", "Chests of sealed papers.", keys=["hoard"], when={"quest.heron": "done"}),
    "rumour": lore("Rumour", "People whisper about the hoard.", keys=["rumour"]),
    "ledger": lore("Ledger", "The compact ledger records every debt owed.", keys=["xyzzy"], when={"gold": {"gte": 10}}),
}


def ids(picks) -> list[str]:
    return [p.entry.id for p in picks]


def dropped(sel) -> dict[str, str]:
    return {p.entry.id: p.reason for p in sel.dropped}


def test_a_gated_keyed_entry_is_selected_only_while_its_condition_holds(tmp_path):
    r = world(tmp_path, WORLD)
    line = "What do you know of the hoard?"
    sel = r.select("guard", line)
    assert "hoard" not in ids(sel.turn) and dropped(sel)["hoard"] == STATE
    sel = r.select("guard", line, state={"quest.heron": "started"})
    assert "hoard" not in ids(sel.turn) and dropped(sel)["hoard"] == STATE
    sel = r.select("guard", line, state=DONE)
    assert "hoard" in ids(sel.turn) and "hoard" not in dropped(sel)
    assert next(p for p in sel.turn if p.entry.id == "hoard").why == "key:hoard"
    # by recursion: the rumour's text names the hoard
    sel = r.select("guard", "Any rumour?")
    assert ids(sel.turn) == ["rumour"] and dropped(sel)["hoard"] == STATE
    sel = r.select("guard", "Any rumour?", state=DONE)
    assert ids(sel.turn) == ["news", "backdrop", "rumour", "hoard"] and sel.turn[3].found_in == "recursion:rumour"


def test_a_gated_entry_found_by_similarity_is_dropped_for_state(tmp_path):
    r = world(tmp_path, WORLD, vector_k=5)
    line = "who keeps the compact ledger of every debt?"
    sel = r.select("guard", line, state={"gold": 9})
    assert "ledger" not in ids(sel.turn) and dropped(sel)["ledger"] == STATE
    ledger = next(p for p in sel.dropped if p.entry.id == "ledger")
    assert ledger.key is None and ledger.lexical is not None  # found by similarity, not by a key
    sel = r.select("guard", line, state={"gold": 10})
    ledger = next(p for p in sel.turn if p.entry.id == "ledger")
    assert ledger.key is None and ledger.lexical is not None


def test_gated_prefix_lore_is_never_in_the_prefix_and_stands_in_each_turn_while_it_holds(tmp_path):
    r = world(tmp_path, WORLD)
    prefix = [(p.entry.id, p.tokens, p.why) for p in r.prefix("inn")]
    assert prefix == [("inn", prefix[0][1], "card"), ("calendar", prefix[1][1], "constant")]  # no scene, no news, no backdrop
    states = [None, {}, DONE, {"quest.heron": "started", "night": True}, {**DONE, "night": True}]
    turns = {}
    for state in states:
        sel = r.select("inn", "Good evening.", state=state)
        assert [(p.entry.id, p.tokens, p.why) for p in sel.prefix] == prefix  # byte-stable whatever the state
        turns[json.dumps(state)] = ([(p.entry.id, p.why) for p in sel.turn], dropped(sel))
    assert turns["null"] == ([], {"bellows": STATE, "news": STATE, "backdrop": STATE})
    assert turns[json.dumps(DONE)] == ([("news", "when:constant"), ("backdrop", "when:prefix")], {"bellows": STATE})
    assert turns[json.dumps({"quest.heron": "started", "night": True})] == ([("bellows", "when:scene"), ("backdrop", "when:prefix")], {"news": STATE})
    assert turns[json.dumps({**DONE, "night": True})][0] == [("bellows", "when:scene"), ("news", "when:constant"), ("backdrop", "when:prefix")]
    # standing lore comes before the entries the line triggers, and is not triggered a second time by its name
    sel = r.select("inn", "Tell me about the hoard and The Bellows.", state={**DONE, "night": True})
    assert ids(sel.turn) == ["bellows", "news", "backdrop", "hoard"]
    assert [(p.entry.id, p.tokens) for p in r.prefix("inn")] == [(x[0], x[1]) for x in prefix]
    # for another NPC, the place is not its scene: it is keyed lore, gated as usual
    assert "bellows" not in ids(r.select("guard", "Is The Bellows open?").turn)
    assert dropped(r.select("guard", "Is The Bellows open?"))["bellows"] == STATE
    assert "bellows" in ids(r.select("guard", "Is The Bellows open?", state={"night": True}).turn)


def test_standing_lore_already_in_the_conversation_is_not_injected_again(tmp_path):
    r = world(tmp_path, WORLD)
    sel = r.select("inn", "Evening.", exclude={"news"}, state=DONE)
    assert ids(sel.turn) == ["backdrop"] and sel.present == ["news"]
    sel = r.select("inn", "Evening.", exclude={"news", "hoard"}, state={})
    assert sel.present == [] and dropped(sel)["news"] == STATE
    sel = r.select("guard", "the hoard?", exclude={"hoard"}, state=DONE)
    assert sel.present == ["hoard"] and "hoard" not in ids(sel.turn)
    assert r.select("guard", "the hoard?", exclude={"hoard"}).present == []  # triggered, but its condition does not hold


def test_a_when_on_an_npc_card_is_ignored(tmp_path):
    r = world(tmp_path, {
        "inn": {"kind": "npc", "name": "Innkeeper", "npc": NPC, "when": {"night": True}},
        "guard": {"kind": "npc", "name": "Guard", "npc": NPC},
    })
    assert ids(r.prefix("inn")) == ["inn"]
    assert ids(r.select("guard", "Where is the Innkeeper?").turn) == ["inn"]


def test_ungated_selection_is_unchanged_by_gated_entries(tmp_path):
    ungated = {k: v for k, v in WORLD.items() if "when" not in v}
    a = world(tmp_path / "a", ungated)
    b = world(tmp_path / "b", WORLD)
    for npc, line in (("inn", "Any rumour?"), ("guard", "What of the calendar?"), ("inn", "hello")):
        for r in (a, b):
            assert [(p.entry.id, p.why, p.tokens) for p in r.prefix(npc)] == [(p.entry.id, p.why, p.tokens) for p in a.prefix(npc)]
        sa, sb = a.select(npc, line), b.select(npc, line, state={**DONE, "night": True, "gold": 0})
        assert [p.entry.id for p in sb.turn if p.entry.when is None] == ids(sa.turn)


def test_the_catalog_keeps_when_and_a_bad_edit_keeps_the_last_good_version(tmp_path):
    r = world(tmp_path, WORLD)
    again = LoreIndex(tmp_path / "state", FakeHashEmbedder())  # opened from disk
    for eid in ("news", "hoard", "ledger", "bellows"):
        assert again.entries[eid].when == r.index.entries[eid].when == LoreEntry.model_validate(WORLD[eid] | {"id": eid}).when
    assert again.entries["calendar"].when is None
    r2 = Retriever(again, lambda t: len(t.split()), vector_k=0, token_budget=600, prefix_budget=1500)
    assert ids(r2.prefix("inn")) == ["inn", "calendar"]
    assert ids(r2.select("guard", "the hoard?", state=DONE).turn) == ["news", "backdrop", "hoard"]

    root = tmp_path / "lore"
    (root / "hoard.md").write_text(lore_file("Chests.", id="hoard", kind="lore", name="Hoard", keys=["hoard"], when={"quest.heron": {"equals": "done"}}))
    report = again.sync(root)
    assert [str(p) for p in report.problems] == [f"{root / 'hoard.md'}:8: error: when.quest.heron: unknown operator 'equals' (operators: eq, ne, gt, gte, lt, lte, in, exists)"]
    assert again.entries["hoard"].when.model_dump() == {"quest.heron": "done"} and len(again.entries) == len(WORLD) + 1
    report = again.sync_file(root, root / "hoard.md")
    assert report.problems and again.entries["hoard"].text == "Chests of sealed papers."
    (root / "hoard.md").write_text(lore_file("Chests.", id="hoard", kind="lore", name="Hoard", keys=["hoard"], when={"quest.heron": ["done", "told"]}))
    assert not again.sync_file(root, root / "hoard.md").problems
    assert again.entries["hoard"].when.holds({"quest.heron": "told"})


def test_the_sample_worlds_gated_news_follows_the_quest(tmp_path):
    index = LoreIndex(tmp_path / "state", FakeHashEmbedder())
    assert not index.sync(SAMPLES).problems
    r = Retriever(index, lambda t: len(t.split()), vector_k=0)
    done = {"quest.the-heron-that-never-docked": "done"}
    for npc in ("odile-brask", "hale-corrow", "ysolde-harrow"):
        prefix = ids(r.prefix(npc))
        assert "heron-found" not in prefix and "cinderfen-reckoning" in prefix
        sel = r.select(npc, "Any news?", state=done)
        assert ids(sel.prefix) == prefix and sel.turn[0].entry.id == "heron-found" and sel.turn[0].why == "when:constant"
        sel = r.select(npc, "Any news?", state={"quest.the-heron-that-never-docked": "started"})
        assert "heron-found" not in ids(sel.turn) and dropped(sel)["heron-found"] == STATE


# ---- lore check, lore why -------------------------------------------------------


def test_lore_check_names_file_and_line_and_warns_about_a_card(tmp_path, capsys):
    root = tmp_path / "lore"
    root.mkdir()
    (root / "card.md").write_text(lore_file(kind="npc", name="Guard", npc=NPC, when={"night": True}))
    (root / "ok.md").write_text(lore_file("Fine.", kind="lore", name="Ok", keys=["ok"], when={"quest.heron": "done", "gold": {"gte": 3}}))
    assert main(["lore", "check", str(root)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{root / 'card.md'}:7: warning: when: an NPC card is never gated, so this condition is ignored; put a when on the lore entries it should gate",
    ]
    (root / "bad.md").write_text(lore_file("x", kind="lore", name="Bad", keys=["bad"], when={"gold": {"gte": "3"}, "night": {"eq": None}, "a b": 1}))
    (root / "op.md").write_text(lore_file("x", kind="lore", name="Op", keys=["op"], when={"gold": {"over": 3}}))
    assert main(["lore", "check", str(root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{root / 'bad.md'}:8: error: when.gold.gte: needs a finite number (not true/false, not a string), got \"3\" (str)",
        f"{root / 'bad.md'}:10: error: when.night.eq: needs a string, a number or true/false, got nothing (null)",
        f"{root / 'bad.md'}:11: error: when.a b: state key 'a b': use 1-64 characters of A-Z a-z 0-9 _ . -",
        f"{root / 'card.md'}:7: warning: when: an NPC card is never gated, so this condition is ignored; put a when on the lore entries it should gate",
        f"{root / 'op.md'}:7: error: when.gold: unknown operator 'over' (operators: eq, ne, gt, gte, lt, lte, in, exists)",
    ], "\n".join(out)


def test_explain_shows_the_condition_and_what_is_unmet(tmp_path):
    r = world(tmp_path, WORLD)
    d = explain(r, "inn", "the hoard?", state={"quest.heron": "started"})
    inc = {x["entry"]: x for x in d["included"]}
    drop = {x["entry"]: x for x in d["dropped"]}
    assert d["state"] == {"quest.heron": "started"}
    assert inc["backdrop"]["when"] == "quest.heron is set" and inc["backdrop"]["holds"] is True
    assert inc["backdrop"]["placement"] == "turn" and inc["backdrop"]["why"] == "when:prefix"
    assert drop["hoard"]["reason"] == "state" and drop["hoard"]["holds"] is False
    assert drop["hoard"]["unmet"] == ["needs quest.heron = done, state has quest.heron = started"]
    assert drop["bellows"]["unmet"] == ["night is not set"] and drop["bellows"]["placement"] == "turn"
    assert "when" not in inc["calendar"] and "when" not in inc["inn"]
    text = format_explanation(d)
    assert "state: quest.heron=started" in text
    assert "does not hold: needs quest.heron = done, state has quest.heron = started" in text
    why = diagnose(r, "inn", "hello", "news", state={"quest.heron": "started"})
    assert why[0] == "triggered (when:constant) but dropped: state"
    assert "when quest.heron = done: does not hold: needs quest.heron = done, state has quest.heron = started" in why
    assert why[-1].startswith("placement: it would be prefix lore, but an entry with a when is never in the prefix")
    assert diagnose(r, "inn", "hello", "news", state=DONE)[0].startswith("included in the turn (when:constant)")


def test_lore_why_and_query_take_a_state(tmp_path, capsys):
    root = write_world(tmp_path / "lore", WORLD)
    base = ["lore", "why", "--state-dir", str(tmp_path / "state"), "--words", "--npc", "inn"]
    assert main([*base, "--lore", str(root), "Tell me of the hoard.", "--state", "quest.heron=done", "--state", "night=true"]) == 0
    out = capsys.readouterr().out
    assert "state: quest.heron=done, night=true" in out
    rows = {line.split()[1]: line for line in out.splitlines() if line.split()[:1] in (["turn"], ["prefix"], ["state"])}
    assert "when quest.heron = done: holds" in rows["hoard"] and rows["hoard"].startswith("turn")
    assert "when:scene, when night = true: holds" in rows["bellows"]

    assert main([*base, "Tell me of the hoard.", "--state-json", '{"quest.heron": "started", "gold": 12}', "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["state"] == {"quest.heron": "started", "gold": 12}
    hoard = next(x for x in d["dropped"] if x["entry"] == "hoard")
    assert (hoard["reason"], hoard["unmet"]) == ("state", ["needs quest.heron = done, state has quest.heron = started"])
    assert main([*base, "Tell me of the hoard.", "--state-json", '{"quest.heron": "started"}', "--state", "quest.heron=done", "--json"]) == 0
    assert "hoard" in [x["entry"] for x in json.loads(capsys.readouterr().out)["included"]]  # --state wins over --state-json

    assert main([*base, "--entry", "news", "hello", "--state", "quest.heron=done"]) == 0
    assert capsys.readouterr().out.startswith("news: included in the turn (when:constant)")

    query = ["lore", "query", "--state-dir", str(tmp_path / "state"), "--words", "--npc", "guard", "the hoard?"]
    assert main(query) == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()]
    assert ["dropped", "hoard", "key:hoard"] in rows and ["dropped", "news", "when:constant"] in rows
    assert main([*query, "--state", "quest.heron=done"]) == 0
    rows = [line.split()[:3] for line in capsys.readouterr().out.splitlines()]
    assert ["turn", "hoard", "key:hoard"] in rows and ["turn", "news", "when:constant"] in rows

    for bad, msg in ((["--state", "quest.heron"], "write KEY=VALUE"), (["--state-json", "[1]"], "needs a JSON object"),
                     (["--state-json", '{"a": null}'], "state a: a value is a string"), (["--state", "a b=1"], "state key 'a b'")):
        assert main([*base, "hello", *bad]) == 2
        assert msg in capsys.readouterr().err


@pytest.mark.parametrize("text, value", [("12", 12), ("-3", -3), ("0.5", 0.5), ("1e3", 1000.0), ("true", True), ("False", False),
                                         ("done", "done"), ("nan", "nan"), ("", ""), ("1_000", "1_000"), ("a=b", "a=b")])
def test_state_values_from_the_command_line(text, value):
    from app.lore_commands import parse_state_value

    got = parse_state_value(text)
    assert got == value and type(got) is type(value)
