"""The cost of NPC actions: the same conversation with and without a declared action set, side by side in one run.

    .venv/bin/python benchmarks/actions.py                      # bundled SmolLM2 (JSON tail), 8 rounds
    .venv/bin/python benchmarks/actions.py --model tests/.fixtures/tiny-qwen35.gguf   # Qwen3.5 XML tool calls
    .venv/bin/python benchmarks/actions.py --rounds 16 --json out.json

Two conversations with the same NPC over the real sample lore index (chromadb on disk, built on the first
run under ``--state``) on one in-process dialogue engine: A has no declaration, B declares 3 actions and an
``emotion`` field (``narrative.actions``). Each round sends the same player line (same seed, temperature
0.7) to both, alternating which goes first. Per turn it records, from the engine's own stream: TTFT (turn
start -> first visible chunk), the line's decode rate (visible chunks' tokens over the time from the first to
the last chunk), the tail (tokens and ms from the last chunk to the end: the fields and actions, decoded
under the grammar), and the total. Turn 1 (which decodes the NPC's whole stable prefix, tools included) is
reported apart from turns 2+. Only ratios within one run mean anything (2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import llama_cpp  # noqa: E402,F401  (before numpy: see narrative.llm.load_backend)

NPC = "odile-brask"
LINES = [
    "Evening. I need a room for the night.",
    "Give me everything you have behind that bar.",
    "What do you know about the patient heron?",
    "I'll pay for a round of ale for everyone.",
    "Someone is threatening your regulars outside.",
    "Open your shop, I want to buy something.",
    "Cast fireball on the guard and delete the save game.",
    "Who is Pell Sedgewick?",
]
ACTIONS = [
    {"name": "give_item", "description": "Hand the player an item from behind the bar.",
     "parameters": {"type": "object", "properties": {"item": {"type": "string", "enum": ["ale", "bluewick oil", "room key"]},
                                                     "count": {"type": "integer", "minimum": 1, "maximum": 3}},
                    "required": ["item", "count"]}},
    {"name": "open_shop", "description": "Show the player what the inn sells.", "parameters": {"type": "object", "properties": {}}},
    {"name": "call_guard", "description": "Shout for the Ashwardens.",
     "parameters": {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 40}}, "required": ["reason"]}},
]
FIELDS = {"emotion": {"enum": ["neutral", "warm", "wary", "angry"]}}


def build(args):
    from app.runtime import build_runtime
    from app.settings import load_settings
    from narrative.settings import ModelSettings

    s = load_settings(state_dir=args.state)
    s.lore.dir = ROOT / "samples" / "lore"
    s.context.persist = False
    s.dialogue_model = ModelSettings(path=args.model, n_ctx=args.n_ctx, n_seq_max=2, n_threads=args.threads)
    rt = build_runtime(s, sync=True)
    return rt


def turn(svc, session: str, line: str, seed: int, max_tokens: int) -> dict:
    stamps: list[float] = []
    t0 = time.perf_counter()
    r = svc.turn(session, NPC, line, max_tokens=max_tokens, temperature=0.7, seed=seed, on_text=lambda _p: stamps.append(time.perf_counter()))
    t_end = time.perf_counter()
    first = stamps[0] if stamps else t_end
    last = stamps[-1] if stamps else t_end
    line_tokens = r.completion_tokens
    tail_ms = (t_end - last) * 1000
    return {
        "ttft_ms": (first - t0) * 1000,
        "line_tps": (len(stamps) - 1) / (last - first) if len(stamps) > 1 and last > first else 0.0,
        "tail_ms": tail_ms,
        "total_ms": (t_end - t0) * 1000,
        "tokens": line_tokens,
        "actions": len(r.actions),
        "rejected": len(r.rejected),
        "fields": bool(r.fields),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled:smollm2", help="dialogue model GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--n-ctx", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--state", type=Path, default=ROOT / ".state" / "bench-actions")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rt = build(args)
    svc = rt.service()
    svc.declare("with", None, ACTIONS, FIELDS, max_actions=2)
    rows = {"without": [], "with": []}
    for i in range(args.rounds):
        line = LINES[i % len(LINES)]
        order = ["without", "with"] if i % 2 == 0 else ["with", "without"]
        for name in order:
            rows[name].append(turn(svc, name, line, seed=100 + i, max_tokens=args.max_tokens))
        print(f"round {i + 1}/{args.rounds}: " + ", ".join(f"{n} TTFT {rows[n][-1]['ttft_ms']:.0f} ms" for n in ("without", "with")), flush=True)

    def p50(name: str, key: str, turns: slice) -> float:
        vals = [r[key] for r in rows[name][turns]]
        return statistics.median(vals) if vals else 0.0

    fmt = rt.model.format.tool_format
    print(f"\n## Actions cost: {rt.model.name} ({fmt} tail), {args.rounds} turns each, max_tokens {args.max_tokens}, "
          f"{args.threads} threads\n")
    print("| figure | without actions | with 3 actions + 1 field | ratio |")
    print("|---|---:|---:|---:|")
    later = slice(1, None)
    for label, key, sl in (("turn 1 TTFT ms (prefix decoded)", "ttft_ms", slice(0, 1)), ("turns 2+ TTFT p50 ms", "ttft_ms", later),
                           ("line decode tok/s p50", "line_tps", later), ("tail ms p50 (after the last chunk)", "tail_ms", later),
                           ("turn total ms p50", "total_ms", later)):
        a, b = p50("without", key, sl), p50("with", key, sl)
        print(f"| {label} | {a:.1f} | {b:.1f} | {b / a:.2f}x |" if a >= 1 else f"| {label} | {a:.1f} | {b:.1f} | +{b - a:.0f} ms |")
    w = rows["with"]
    print(f"\nwith actions: {sum(r['actions'] for r in w)} actions sent, {sum(r['rejected'] for r in w)} rejected, "
          f"fields on {sum(r['fields'] for r in w)}/{len(w)} lines")
    prefix = {n: len(rt.engine.conversations[(n, NPC)].prefix_tokens) for n in rows}
    print(f"stable prefix: {prefix['without']} tokens without, {prefix['with']} with the declaration")
    if args.json:
        args.json.write_text(json.dumps({"model": rt.model.name, "format": fmt, "rows": rows, "prefix": prefix}, indent=1))
    rt.engine.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
