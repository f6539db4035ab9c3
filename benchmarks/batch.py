"""Batch quest generation on the bundled model: quests/minute, tokens/s, prefill vs decode share.

    .venv/bin/python benchmarks/batch.py                  # 3 sample quests, SmolLM2, 2 threads
    .venv/bin/python benchmarks/batch.py --quests 15 --compare-grammar
    .venv/bin/python benchmarks/batch.py --quests 8 --parallel 4 --model tests/.fixtures/tiny-qwen35moe.gguf

Prints one table. With ``--compare-grammar`` it also times the grammar's cost:
one quest's JSON through `narrative.llm.generate_json` (llama-cpp-python's
``grammar=`` sampling, the grammar applied to the whole vocabulary every step)
against the same sampler chain, seed and number of tokens without a grammar
(free text, not JSON), and prints the tokens/s ratio.
With ``--parallel N`` the same quests also run on the batched decoder with one sequence
and with ``narrative batch --parallel N`` (N sequences of one batched context), and the
three rows are printed: the first two differ by the decoder, the last two by batching.
Absolute numbers depend on the machine's load; compare ratios.
Each row is printed as soon as its run ends, the N-sequence run first (a run cut short by a
time limit still leaves the rows before it). ``--gpu PRESET`` takes the batch model's settings
from a `narrative.presets` preset (all layers on the GPU, its KV type and n_batch), with
``--n-ctx`` tokens per item; "load s" is the model's load, part of the wall time
(quests/min without it in the next column).

    python benchmarks/batch.py --quests 16 --parallel 16 --max-chars 60 --model M35.gguf --gpu qwen3.5-35b-a3b-batch --threads 8
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before anything imports numpy: CUDA builds crash otherwise)

import argparse
import logging
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
    ap.add_argument("--parallel", type=int, default=1, help="also run the quests with --parallel N, side by side")
    ap.add_argument("--model", help="batch model GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--gpu", metavar="PRESET", help="the batch model's settings from this preset (e.g. qwen3.5-35b-a3b-batch: all layers on the GPU); needs --model")
    ap.add_argument("--n-ctx", type=int, default=8192, help="with --gpu: context of one item (--parallel N gives N times this)")
    args = ap.parse_args()

    from lore.loader import load_catalog as read_lore_files
    from narrative.batch.generator import BatchOptions
    from narrative.batch.runner import run_batch
    from narrative.batch.spec import load_specs
    from app.settings import load_settings

    s = load_settings()
    s.batch_model.n_threads = args.threads
    if args.model:
        s.batch_model.path = args.model
    if args.gpu:
        from narrative.presets import preset_settings
        from narrative.settings import ModelSettings

        if not args.model:
            ap.error("--gpu needs --model")
        s.batch_model = ModelSettings(**{**preset_settings(args.gpu, args.model, n_ctx=args.n_ctx, n_seq_max=1), "n_threads": args.threads})
        print(f"batch model settings: {s.batch_model.model_dump()}", file=sys.stderr, flush=True)
    loads: list[float] = []

    class _LoadTime(logging.Handler):  # QuestGenerator logs "batch model %s loaded in %.2f s"
        def emit(self, rec: logging.LogRecord) -> None:
            if str(rec.msg).startswith("batch model") and rec.args:
                loads.append(float(rec.args[-1]))

    glog = logging.getLogger("narrative.batch.generator")
    glog.addHandler(_LoadTime())
    glog.setLevel(logging.INFO)
    lore = read_lore_files(ROOT / "samples" / "lore")
    specs = [sf.spec.id for sf in load_specs(ROOT / "samples" / "quests")[0]][: args.quests]
    opts = BatchOptions(retries=0, max_chars=args.max_chars, quality_gate=not args.model)  # a random-weight fixture writes gibberish
    # the N-sequence run first, then the batched decoder at 1 sequence, then today's path: each row printed when it ends
    plan = [(args.parallel, True), (1, True), (1, None)] if args.parallel > 1 else [(1, None)]
    if args.parallel > 1:
        print("| --parallel | decoder | quests generated / failed | wall s | load s | quests/min | quests/min without the load | completion tokens | tokens/s (wall) |")
        print("|---:|---|---|---:|---:|---:|---:|---:|---:|", flush=True)
    summ = None
    for n, batched in plan:
        k = len(loads)
        with tempfile.TemporaryDirectory() as tmp:
            x = run_batch(ROOT / "samples" / "quests", Path(tmp), s.batch_model, opts, lore, only=specs, progress=False,
                          **(dict(parallel=n, batched=batched) if batched else {}))
        if batched is None:
            summ = x
        if args.parallel > 1:
            ld = sum(loads[k:])
            dec = "batched" if batched else "one at a time (Llama.generate)"
            print(f"| {n} | {dec} | {x.generated} / {x.failed} | {x.wall_s:.1f} | {ld:.1f} | {60 * x.generated / x.wall_s:.2f} | "
                  f"{60 * x.generated / (x.wall_s - ld) if x.wall_s > ld else float('nan'):.2f} | {x.completion_tokens} | "
                  f"{x.completion_tokens / x.wall_s:.1f} |", flush=True)
    if args.parallel > 1:
        print()
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
    from narrative.batch.output import generation_schema
    from narrative.batch.generator import BatchOptions, QuestGenerator
    from narrative.batch.spec import load_specs
    from narrative.llm import generate_json

    spec = next(sf.spec for sf in load_specs(ROOT / "samples" / "quests")[0] if sf.spec.id == quest_id)
    gen = QuestGenerator(s.batch_model, BatchOptions(max_chars=max_chars), lore)
    m = gen.model
    pr = gen.prompt(spec)
    tokens = m.bos() + m.chat_tokens(m.format.system_pieces(pr.system) + m.format.user_pieces(pr.user, then_assistant=True))
    g = generate_json(m, tokens, generation_schema(spec, max_chars), BatchOptions(max_chars=max_chars).params(1), max_tokens=600)
    # The same chain as generate_json (penalty, top-k, top-p, temperature, seeded draw), no grammar,
    # capped at the same number of tokens; the prompt is evaluated first so only decoding is timed.
    llm = m.llm
    with m.lock:
        llm.reset()
        llm.set_seed(1)
        llm.eval(tokens)
        t0 = time.perf_counter()
        n = 0
        stream = llm.generate(tokens, temp=0.7, top_p=0.95, top_k=40, min_p=0.0, repeat_penalty=1.1, reset=True)
        for tok in stream:
            if m.is_stop(tok) or n >= g.completion_tokens:
                break
            n += 1
        stream.close()
        free_tps = n / (time.perf_counter() - t0)
    gen.close()
    return [
        ("grammar= decode tok/s (generate_json)", f"{g.decode_tps:.1f} ({g.completion_tokens} tokens)"),
        ("no grammar decode tok/s", f"{free_tps:.1f} ({n} tokens)"),
        ("grammar cost", f"{free_tps / g.decode_tps:.2f}x slower" if g.decode_tps else "-"),
    ]


if __name__ == "__main__":
    sys.exit(main())
