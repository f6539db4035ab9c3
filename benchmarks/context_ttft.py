"""TTFT per dialogue turn over a long lore prefix: our context engine vs
llama-cpp-python's ``create_chat_completion``, side by side in one run.

    .venv/bin/python benchmarks/context_ttft.py            # SmolLM2 ~6k lore, tiny qwen35 ~32k lore, and both doubled
    .venv/bin/python benchmarks/context_ttft.py --quick    # smaller lore, for a smoke run

For each model and lore size, five turns with one NPC, then one turn after
another NPC spoke in between (A -> B -> A):

- ours: `narrative.context.ContextEngine` fed token lists (system + lore as the
  stable prefix, each turn appended as tokens, checkpoints at block boundaries,
  each NPC in its own llama.cpp sequence);
- baseline: ``Llama.create_chat_completion(messages=..., stream=True)`` with the
  whole message history each turn (what a client of llama-cpp-python does); its
  TTFT is call -> first streamed content chunk.

TTFT is wall time (ms) from the call to the first sampled token. Only ratios
within one run mean anything (2 shared CPU cores). The lore is the sample world
(samples/lore) repeated to the target token count.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from narrative.context import ContextEngine  # noqa: E402
from narrative.llm import LlamaModel, SamplingParams, resolve_model_path  # noqa: E402
from narrative.settings import BUNDLED_MODEL, ModelSettings  # noqa: E402

LINES = [
    "Who runs the docks these days?",
    "What do you know about the salt tunnels?",
    "Is the Lantern Guild honest?",
    "Where would a smuggler hide a crate?",
    "What happened at the old lighthouse?",
]
OTHER_LINE = "Good evening. Any news from the harbor?"
GEN = 12  # tokens generated per turn


def lore_text(model: LlamaModel, n_tokens: int) -> str:
    files = sorted((ROOT / "samples" / "lore").rglob("*.md"))
    base = "\n\n".join(f.read_text(encoding="utf-8") for f in files if f.name != "README.md")
    per = max(1, model.count_tokens(base))
    text = (base + "\n\n") * (n_tokens // per + 1)
    toks = model.tokenize(text)[:n_tokens]
    return model.detokenize(toks)


def ours(model: LlamaModel, system: str, other_system: str, threads: int) -> list[float]:
    fmt = model.format
    for s in range(model.n_seq_max):
        model.seq_clear(s)
    eng = ContextEngine(model)
    out = []

    def turn(key: str, prefix: list[int], history: list[int], line: str) -> list[int]:
        user = model.chat_tokens(fmt.user_pieces(line, then_assistant=True))
        prompt = history + user
        g = eng.generate(key, prompt, SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, seed=0), boundaries=(len(prefix), len(history)), max_tokens=GEN)
        out.append(g.ttft_ms) if key == "A" else None
        return prompt + g.tokens + model.marker_tokens(fmt.assistant_close)

    pa = model.bos() + model.chat_tokens(fmt.system_pieces(system))
    pb = model.bos() + model.chat_tokens(fmt.system_pieces(other_system))
    hist = list(pa)
    for line in LINES:
        hist = turn("A", pa, hist, line)
    turn("B", pb, list(pb), OTHER_LINE)
    turn("A", pa, hist, "And the harbor master?")
    return out


def baseline(path: Path, n_ctx: int, system: str, other_system: str, threads: int, gpu_settings: dict | None = None) -> list[float]:
    import llama_cpp

    gpu = {}
    if gpu_settings:
        from narrative.llm.model import _llama_kwargs

        kw = _llama_kwargs(ModelSettings(path=str(path), **gpu_settings))
        gpu = {k: kw[k] for k in ("n_gpu_layers", "flash_attn", "type_k", "type_v")}
    llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, n_threads=threads, verbose=False, **gpu)
    out = []

    def turn(messages: list[dict], record: bool) -> str:
        t0 = time.perf_counter()
        first = None
        text = []
        for chunk in llm.create_chat_completion(messages=messages, max_tokens=GEN, temperature=0.0, stream=True):
            delta = chunk["choices"][0]["delta"]
            if first is None and (delta.get("content") or chunk["choices"][0].get("finish_reason")):
                first = time.perf_counter()
            text.append(delta.get("content") or "")
        if record:
            out.append(((first or time.perf_counter()) - t0) * 1000)
        return "".join(text)

    msgs = [{"role": "system", "content": system}]
    for line in LINES:
        msgs.append({"role": "user", "content": line})
        msgs.append({"role": "assistant", "content": turn(msgs, True)})
    turn([{"role": "system", "content": other_system}, {"role": "user", "content": OTHER_LINE}], False)
    msgs.append({"role": "user", "content": "And the harbor master?"})
    turn(msgs, True)
    llm.close()
    return out


def run_case(name: str, path: str, lore_tokens: int, threads: int, with_baseline: bool = True, gpu: dict | None = None) -> tuple[str, int, list[float], list[float]]:
    """`gpu`: ModelSettings fields for offloading (n_gpu_layers, flash_attn, KV types), from --gpu PRESET."""
    gpu = gpu or {}
    n_ctx = lore_tokens + 2048
    model = LlamaModel(ModelSettings(path=path, n_ctx=2 * n_ctx, n_batch=512, n_threads=threads, n_seq_max=2, **gpu))
    try:
        lore = lore_text(model, lore_tokens)
        system = "You are Mara Thorn, the harbor master of Cinderfen. Stay in character.\n\n" + lore
        other = "You are Oren, a smuggler of Cinderfen. Stay in character.\n\n" + lore_text(model, 300)
        n_prefix = len(model.bos() + model.chat_tokens(model.format.system_pieces(system)))
        a = ours(model, system, other, threads)
    finally:
        model.close()
    b = baseline(resolve_model_path(path), n_ctx, system, other, threads, gpu) if with_baseline else []
    return name, n_prefix, a, b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1/4 of the lore sizes")
    ap.add_argument("--no-double", action="store_true", help="skip the doubled-lore runs")
    ap.add_argument("--ours-only", action="store_true", help="only our engine (1x and 2x lore): the flatness check, fast")
    ap.add_argument("--baseline-doubled", action="store_true",
                    help="also run create_chat_completion on the doubled lore (slow: it re-decodes the whole prompt every turn on qwen35)")
    ap.add_argument("--qwen35", type=Path, help="tiny qwen35 GGUF (default: built by tests/fixtures/make_qwen35.py)")
    ap.add_argument("--models", nargs="*", choices=["qwen35", "smollm2"], default=["qwen35", "smollm2"])
    ap.add_argument("--gpu", metavar="PRESET", help="offload with this preset's GPU settings (n_gpu_layers, flash_attn, KV types), e.g. qwen3.5-27b-dialogue")
    args = ap.parse_args()
    gpu = {}
    if args.gpu:
        from narrative.presets import PRESETS

        gpu = {k: PRESETS[args.gpu].settings[k] for k in ("n_gpu_layers", "flash_attn", "type_k", "type_v")}

    if args.qwen35:
        qwen35 = str(args.qwen35)
    else:
        from tests.fixtures.make_qwen35 import build_fixtures

        qwen35 = str(build_fixtures(ROOT / "tests" / ".fixtures")["qwen35"])
    scale = 4 if args.quick else 1
    cases = [("tiny qwen35", qwen35, 32000 // scale, True), ("SmolLM2-135M", BUNDLED_MODEL, 6000 // scale, True)]
    if not args.no_double:
        cases += [(n, p, 2 * t, args.baseline_doubled) for n, p, t, _ in cases]
    cases = [c for c in cases if ("qwen35" if "qwen35" in c[0] else "smollm2") in args.models]
    if args.ours_only:
        cases = [(n, p, t, False) for n, p, t, _ in cases]
    print("TTFT in ms per turn (turn 1 = full prefill of the prefix; A>B>A = NPC A's turn 6 after NPC B spoke)")
    print()
    print("| model | prefix tokens | engine | turn 1 | turn 2 | turn 3 | turn 4 | turn 5 | A>B>A | max(turns 2..5) / turn 1 |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for name, path, lore, with_baseline in cases:
        print(f"running {name} with ~{lore} lore tokens ...", file=sys.stderr, flush=True)
        name, n_prefix, a, b = run_case(name, path, lore, args.threads, with_baseline, gpu)
        for label, t in (("ours", a), ("create_chat_completion", b)):
            if not t:
                continue
            ratio = max(t[1:5]) / t[0] if t[0] else float("nan")
            cells = " | ".join(f"{x:,.0f}" for x in t)
            print(f"| {name} | {n_prefix:,} | {label} | {cells} | {100 * ratio:.1f}% |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
