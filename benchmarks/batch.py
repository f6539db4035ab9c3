"""Batch quest generation on the bundled model: quests/minute, tokens/s, prefill vs decode share.

    .venv/bin/python benchmarks/batch.py                  # 3 sample quests, SmolLM2, 2 threads
    .venv/bin/python benchmarks/batch.py --quests 15 --compare-grammar

Prints one table. With ``--compare-grammar`` it also times, side by side in the
same run, one quest's JSON through llama-cpp-python's own ``grammar=`` sampling
(the whole-document grammar applied to every token of the vocabulary at every
step) against `narrative.models.generate_json` (structure forced, per-string
grammars, grammar checked last), and prints the tokens/s ratio.
Absolute numbers depend on the machine's load; compare ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quests", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-chars", type=int, default=160)
    ap.add_argument("--compare-grammar", action="store_true")
    args = ap.parse_args()

    from narrative.batch.runner import BatchOptions, QuestGenerator, read_lore_files, run_batch
    from narrative.batch.spec import load_specs
    from narrative.settings import load_settings

    s = load_settings()
    s.batch_model.n_threads = args.threads
    lore = read_lore_files(ROOT / "samples" / "lore")
    specs = [sf.spec.id for sf in load_specs(ROOT / "samples" / "quests")[0]][: args.quests]
    opts = BatchOptions(retries=0, max_chars=args.max_chars)
    with tempfile.TemporaryDirectory() as tmp:
        summ = run_batch(ROOT / "samples" / "quests", Path(tmp), s, opts, only=specs, progress=False, entries=lore)
    gen_s = summ.prefill_s + summ.decode_s
    rows = [
        ("model", Path(s.batch_model.path).name if not s.batch_model.path.startswith("bundled:") else s.batch_model.path),
        ("quests generated / failed", f"{summ.generated} / {summ.failed}"),
        ("wall s", f"{summ.wall_s:.1f}"),
        ("quests per minute", f"{60 * summ.generated / summ.wall_s:.2f}"),
        ("prompt tokens (total)", summ.prompt_tokens),
        ("completion tokens (total)", summ.completion_tokens),
        ("prefill tok/s", f"{summ.prompt_tokens / summ.prefill_s:.0f}" if summ.prefill_s else "-"),
        ("decode tok/s", f"{summ.completion_tokens / summ.decode_s:.1f}" if summ.decode_s else "-"),
        ("prefill share of model time", f"{100 * summ.prefill_s / gen_s:.0f}%"),
        ("decode share of model time", f"{100 * summ.decode_s / gen_s:.0f}%"),
    ]
    if args.compare_grammar:
        rows += compare_grammar(s, lore, specs[0], args.max_chars)
    w = max(len(r[0]) for r in rows)
    print(f"{'metric':{w}}  value")
    for k, v in rows:
        print(f"{k:{w}}  {v}")
    return 0


def compare_grammar(s, lore, quest_id: str, max_chars: int) -> list[tuple[str, str]]:
    import llama_cpp

    from narrative.batch.output import generation_schema
    from narrative.batch.runner import BatchOptions, QuestGenerator
    from narrative.batch.spec import load_specs
    from narrative.models import generate_json

    spec = next(sf.spec for sf in load_specs(ROOT / "samples" / "quests")[0] if sf.spec.id == quest_id)
    gen = QuestGenerator(s, BatchOptions(max_chars=max_chars), lore)
    m = gen.model
    pr = gen.prompt(spec)
    tokens = m.bos() + m.tokenize(m.format.system(pr.system) + m.format.user(pr.user) + m.format.assistant_open)
    schema = generation_schema(spec, max_chars)
    ours = generate_json(m, tokens, schema, max_tokens=600, temperature=0.7, seed=1)
    grammar = llama_cpp.LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
    llm = m.llm
    t0 = time.perf_counter()
    first = None
    n = 0
    for tok in llm.generate(tokens, temp=0.7, top_p=0.95, top_k=40, repeat_penalty=1.1, grammar=grammar, reset=True):
        first = first or time.perf_counter()
        if m.is_stop(tok) or n >= 600:
            break
        n += 1
    t1 = time.perf_counter()
    theirs_tps = n / (t1 - first) if first and t1 > first else 0.0
    return [
        ("grammar= (whole vocab) decode tok/s", f"{theirs_tps:.1f} ({n} tokens)"),
        ("generate_json decode tok/s", f"{ours.decode_tps:.1f} ({ours.completion_tokens} tokens, {ours.grammar_resamples} resamples)"),
        ("speed-up", f"{ours.decode_tps / theirs_tps:.1f}x" if theirs_tps else "-"),
    ]


if __name__ == "__main__":
    sys.exit(main())
