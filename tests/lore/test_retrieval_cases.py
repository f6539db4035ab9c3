"""Retrieval on the sample world: hand-written player lines and the entry each must surface.

Uses the same `Retriever.select` the dialogue engine calls each turn, with the
dialogue model's tokenizer for the budget and the bundled embedder for vectors.
"""

from __future__ import annotations

import yaml

from tests.conftest import ROOT

CASES = yaml.safe_load((ROOT / "tests" / "data" / "retrieval_cases.yaml").read_text())


def test_at_least_80_percent_of_labelled_questions_surface_their_entry(runtime):
    assert len(CASES) >= 10
    misses = []
    for case in CASES:
        sel = runtime.retriever.select(case["npc"], case["line"])
        if case["expect"] not in sel.ids:
            misses.append(f"{case['npc']}: {case['line']!r} -> want {case['expect']}, got {[p.entry.id for p in sel.turn]}")
    recall = 1 - len(misses) / len(CASES)
    print(f"\nretrieval recall {recall:.0%} over {len(CASES)} cases; misses:\n" + "\n".join(misses))
    assert recall >= 0.8, "\n".join(misses)


def test_scope_hides_secrets_from_npcs_outside_it(runtime):
    # heron-job is known_by the Reedcutters only: a Reedcutter sees it, the Warden-Captain never does
    line = "What really happened in the heron job?"
    inside = runtime.retriever.select("pell-sedgewick", line).ids
    outside = runtime.retriever.select("hale-corrow", line).ids
    assert "heron-job" in inside
    assert "heron-job" not in outside
