"""``narrative batch --parallel N``: quests decoded at once as sequences of one batched context (tiny qwen35moe
fixture: real MoE/hybrid decoding, real grammars), written, recorded and resumed like the one-at-a-time path."""

from __future__ import annotations

import json

from lore.loader import load_catalog as read_lore_files
from narrative.batch.generator import BATCHED_GENERATOR, BatchOptions
from narrative.batch.runner import run_batch
from tests.narrative.batch.test_batch import LORE, OPTIONS, QUESTS, assert_consistent, read_quests, settings_for

ONLY = ["harrows-lamp", "a-tin-for-mother", "forged-tallies", "arrears-in-kilnrow"]


def test_parallel_items_validate_record_their_decoder_and_resume(tmp_path, fixture_paths):
    s = settings_for(fixture_paths["qwen35moe"], LORE)
    entries = read_lore_files(LORE)
    opts = BatchOptions(**OPTIONS)
    only = ONLY
    done: list[str] = []
    summary = run_batch(QUESTS, tmp_path / "p", s.batch_model, opts, entries, progress=False, only=only, parallel=4,
                        on_item=lambda r: done.append(r.quest_id))
    assert summary.generated == len(only), [(r.quest_id, r.status, r.error) for r in summary.items]
    assert sorted(done) == sorted(only)
    assert_consistent(tmp_path / "p", QUESTS)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())["items"]
    assert {rec["components"]["generator"] for rec in manifest.values()} == {BATCHED_GENERATOR}

    again = run_batch(QUESTS, tmp_path / "p", s.batch_model, opts, entries, progress=False, only=only, parallel=4)
    assert again.generated == 0 and all(r.status == "skipped" for r in again.items)
    # the one-at-a-time decoder is another generator: a --parallel 1 run would regenerate them
    plan = run_batch(QUESTS, tmp_path / "p", s.batch_model, opts, entries, progress=False, only=only, dry_run=True)
    assert all(it.action == "generate" for it in plan.plan)
    assert all(it.reasons == ["generator changed"] for it in plan.plan), [it.reasons for it in plan.plan]
    assert read_quests(tmp_path / "p")  # untouched by the dry run
