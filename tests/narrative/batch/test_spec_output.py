"""Quest specs, the output schema, post-checks and the manifest: no model needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from narrative.batch.checks import check_quest, lore_vocabulary
from narrative.batch.manifest import Components, Manifest, atomic_write, reasons
from narrative.batch.output import OutputInvalid, QuestMeta, generation_schema, validate_generation
from narrative.batch.spec import SpecError, load_specs, parse_spec

ROOT = Path(__file__).resolve().parents[3]
QUESTS = ROOT / "samples" / "quests"
META = QuestMeta(key="k", model="m.gguf", seed=1, prompt_version="v", attempt=1)


def test_every_sample_spec_loads():
    specs, problems = load_specs(QUESTS)
    assert problems == []
    assert len(specs) >= 10
    for sf in specs:
        assert sf.spec.id == sf.path.stem
        assert sf.spec.referenced_ids()[0] == sf.spec.giver


def test_unquoted_colon_in_a_constraint_is_kept_as_text():
    spec = parse_spec("id: q\ngiver: a\nobjective: o\nconstraints:\n  - No blades: wardens do not fight.\n", Path("q.yaml"))
    assert spec.constraints == ["No blades: wardens do not fight."]


def test_errors_name_file_line_and_field():
    with pytest.raises(SpecError) as exc:
        parse_spec("id: q\ngiver: a\nobjective: o\nstages: [offer, bargain]\nkeep_lines:\n  farewell: hi\n", Path("q.yaml"))
    text = str(exc.value)
    assert "q.yaml:4: stages.1" in text
    with pytest.raises(SpecError) as exc:
        parse_spec("id: q\ngiver: a\nobjective: o\nrewrad: 5\n", Path("q.yaml"))
    assert "q.yaml:4: rewrad" in str(exc.value)


def _spec(**kw):
    base = "id: q\ngiver: odile-brask\nobjective: Carry the barrel.\nstages: [offer, accept]\n"
    extra = "".join(f"{k}: {json.dumps(v)}\n" for k, v in kw.items())
    return parse_spec(base + extra, Path("q.yaml"))


def test_schema_keeps_hand_written_lines_as_const_and_bounds_the_rest():
    spec = _spec(keep_lines={"offer": "Only eels, pet."}, limits={"accept": 50})
    schema = generation_schema(spec)
    d = schema["properties"]["dialogue"]["properties"]
    assert d["offer"] == {"type": "string", "const": "Only eels, pet."}
    assert d["accept"]["maxLength"] == 50
    assert list(schema["properties"]["journal"]["properties"]) == ["started", "finished"]
    assert generation_schema(spec, cap=20)["properties"]["summary"]["maxLength"] == 20


def _doc(**over):
    doc = {
        "title": "The Eel Run",
        "summary": "Odile wants a barrel carried to Widow's Elbow.",
        "dialogue": {"offer": "Only eels, pet.", "accept": "Good. Mind the eel pie."},
        "journal": {"started": "I took the barrel.", "finished": "I delivered the barrel."},
    }
    doc.update(over)
    return json.dumps(doc)


def test_validation_accepts_a_good_text_and_rejects_broken_ones():
    spec = _spec(keep_lines={"offer": "Only eels, pet."})
    quest = validate_generation(_doc(), spec, META)
    assert [e.step for e in quest.journal] == ["started", "finished"]
    with pytest.raises(OutputInvalid, match="not JSON"):
        validate_generation(_doc()[:-5], spec, META)
    with pytest.raises(OutputInvalid, match="dialogue stages"):
        validate_generation(_doc(dialogue={"offer": "Only eels, pet."}), spec, META)
    with pytest.raises(OutputInvalid, match="kept line"):
        validate_generation(_doc(dialogue={"offer": "Only fish.", "accept": "Good."}), spec, META)
    with pytest.raises(OutputInvalid, match="title"):  # a lone surrogate (the grammar allows \\uXXXX escapes)
        validate_generation(_doc(title="Eel \ud800 run"), spec, META)


def test_post_checks_find_placeholders_missing_mentions_forbidden_words_and_invented_names():
    spec = _spec(must_mention=["eel pie", "Widow's Elbow", "moonrise"], forbid=["Thatcher"])
    quest = validate_generation(
        _doc(dialogue={"offer": "Take it to {{destination}}, pet. TODO", "accept": "Ask Gregorius Vantablack, the Thatcher, for eel pie."}),
        spec,
        META,
    )
    from lore.loader import load_dir

    files, _ = load_dir(ROOT / "samples" / "lore")
    vocab = lore_vocabulary([e for f in files for e in f.entries], spec)
    found = {(f.check, f.field) for f in check_quest(quest, spec, vocab)}
    assert ("placeholder", "dialogue.offer") in found
    assert ("forbidden", "dialogue.accept") in found
    assert ("unknown_name", "dialogue.accept") in found
    assert ("must_mention", "*") in found
    msgs = [f.message for f in check_quest(quest, spec, vocab) if f.check == "must_mention"]
    assert msgs == ["'moonrise' is never mentioned"]  # eel pie and Widow's Elbow are there
    unknown = [f.message for f in check_quest(quest, spec, vocab) if f.check == "unknown_name"]
    assert "Gregorius" in unknown[0] and "Thatcher" not in unknown[0]  # Thatcher is in the lore (Odile's secret)


def test_manifest_reasons_and_atomic_write(tmp_path):
    c = Components(spec="s", lore={"a": "1", "b": "2"}, model="m", settings="x", prompt_version="v", generator="g", seed=1)
    assert reasons(None, c) == ["new"]
    assert reasons(c.as_dict(), c) == []
    c2 = Components(spec="s2", lore={"a": "1", "b": "3"}, model="m2", settings="x", prompt_version="v", generator="g", seed=2)
    assert reasons(c.as_dict(), c2) == ["spec changed", "lore changed: b", "model changed", "seed changed"]
    c3 = Components(spec="s", lore={"a": "1", "b": "2"}, model="m", settings="x", prompt_version="v", generator="g2", seed=1)
    assert reasons(c.as_dict(), c3) == ["generator changed"] and c3.key != c.key
    old = {k: v for k, v in c.as_dict().items() if k != "generator"}  # a record written before the component existed
    assert reasons(old, c) == ["generator changed"]
    m = Manifest(tmp_path / "manifest.json")
    m.record("q", {"key": c.key})
    assert Manifest.load(tmp_path / "manifest.json").items == {"q": {"key": c.key}}
    atomic_write(tmp_path / "x.json", b"{}")
    assert (tmp_path / "x.json").read_bytes() == b"{}"
    assert not list(tmp_path.glob(".*.tmp"))


def test_only_with_an_unknown_quest_id_is_a_usage_error(tmp_path, capsys):
    from narrative.batch.generator import BatchOptions
    from narrative.batch.runner import UnknownQuest, run_batch
    from app.cli import main
    from app.settings import load_settings

    with pytest.raises(UnknownQuest, match=r"'harrows-lmap'.*known: .*harrows-lamp"):
        run_batch(QUESTS, tmp_path / "out", load_settings().batch_model, BatchOptions(), {}, only=["harrows-lamp", "harrows-lmap"])
    assert not (tmp_path / "out").exists()  # nothing planned, nothing written
    # a typo in --only used to generate nothing and exit 0
    rc = main(["batch", str(QUESTS), "--out", str(tmp_path / "out"), "--lore", str(ROOT / "samples" / "lore"), "--lore-files", "--only", "harrows-lmap"])
    assert rc == 2 and "harrows-lmap" in capsys.readouterr().err


def test_a_spec_naming_missing_or_disabled_lore_is_reported_with_line_and_field(tmp_path):
    from lore.loader import load_catalog as read_lore_files
    from narrative.batch.generator import BatchOptions
    from narrative.batch.runner import run_batch
    from app.settings import load_settings

    entries = read_lore_files(ROOT / "samples" / "lore")
    entries["smokeglass"] = entries["smokeglass"].model_copy(update={"disabled": True})
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "missing.yaml").write_text("giver: nettle-amsby\nobjective: Fetch it.\nlore:\n  - smokeglass-x\n")
    (specs / "disabled.yaml").write_text("giver: nettle-amsby\nobjective: Fetch it.\nsteps:\n  - id: one\n    objective: Go.\n    location: smokeglass\n")
    (specs / "not-npc.yaml").write_text("objective: Fetch it.\ngiver: quenchhouse\n")
    summary = run_batch(specs, tmp_path / "out", load_settings().batch_model, BatchOptions(), entries, dry_run=True, progress=False)
    errors = {it.spec_file.spec.id: it.error for it in summary.plan}
    assert errors["missing"] == f"{specs / 'missing.yaml'}:4: lore.0: quest 'missing' names lore entry 'smokeglass-x', which is not in the lore"
    assert errors["disabled"] == f"{specs / 'disabled.yaml'}:6: steps.0.location: quest 'disabled' names lore entry 'smokeglass', which is disabled"
    assert errors["not-npc"].startswith(f"{specs / 'not-npc.yaml'}:2: giver: ") and "is a place, not an npc entry" in errors["not-npc"]


def test_dry_run_writes_nothing(tmp_path):
    from lore.loader import load_catalog as read_lore_files
    from narrative.batch.generator import BatchOptions
    from narrative.batch.runner import run_batch
    from app.settings import load_settings

    entries = read_lore_files(ROOT / "samples" / "lore")
    out = tmp_path / "out"
    summary = run_batch(ROOT / "samples" / "quests", out, load_settings().batch_model, BatchOptions(), entries, dry_run=True, progress=False)
    assert len(summary.plan) == 15 and all(it.action == "generate" for it in summary.plan)
    assert not out.exists()  # no folder, no lock file, no report
