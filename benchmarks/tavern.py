"""A crowded tavern: many NPC conversations at once on one model, batched vs serial, in one run.

    .venv/bin/python benchmarks/tavern.py                          # tiny qwen35 fixture + SmolLM2 on the CPU
    .venv/bin/python benchmarks/tavern.py --model M.gguf --preset qwen3.5-27b-dialogue --gpu   # on a GPU

Scenarios (each prints a Markdown table; ``--json`` writes every row):

- ``throughput``: for 1, 2, 4, 8 concurrent conversations (each NPC its own
  prefix of ``--lore`` tokens, prefilled before timing), every conversation
  asks one line at the same moment, ``--rounds`` times. *batched*: all turns
  submitted to `narrative.scheduler.Scheduler` (continuous batching); *serial*:
  the same turns one after the other through `ContextEngine.generate` (the
  sidecar before batching: one decode worker). Aggregate tok/s = generated
  tokens / wall time of the round; TTFT per turn from the moment all asked
  (what a player waiting in line sees), p50/p99 over all turns.
- ``shared``: two players at the same NPC (same prefix of ``--shared-lore``
  tokens): first-turn TTFT of player 1 (full prefill) and player 2 (prefix
  shared from player 1's checkpoint with ``llama_memory_seq_cp``).
- ``cached``: ``--n-seq`` conversations with one NPC whose prefix is
  ``--cached-lore`` tokens (prefilled once, shared), all talking: each
  conversation asks its next line as soon as its last reply ends, for
  ``--cached-turns`` turns each; TTFT p50/p99 of those turns (each one decodes
  its line, checkpoints, and joins the other conversations' decoding).

Sampling is greedy; EOS ends a turn early (random-weight files rarely emit it).
GPU settings (``--gpu``): the preset's n_gpu_layers / flash_attn / KV types;
import order: ``llama_cpp`` before numpy (see ../shared/notes/gpu-h200.md).
Only ratios within one run mean anything on the shared CPU machine.
"""

from __future__ import annotations

import llama_cpp  # noqa: F401  (before anything imports numpy: CUDA builds crash otherwise)

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.context_ttft import LINES, lore_text  # noqa: E402
from narrative.context import ContextEngine  # noqa: E402
from narrative.llm import LlamaModel, SamplingParams  # noqa: E402
from narrative.scheduler import Scheduler  # noqa: E402
from narrative.settings import BUNDLED_MODEL, ContextSettings, ModelSettings  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, seed=0)
NAMES = ["Mara", "Oren", "Ilsa", "Brann", "Tove", "Keld", "Wren", "Sabel", "Ansel", "Dagny", "Eirik", "Fenna", "Gorm", "Hild", "Ivo", "Jorun"]


def mark(label: str) -> None:
    print(f"PHASE {time.time():.3f} {label}", file=sys.stderr, flush=True)


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))
    return xs[k]


class Tavern:
    def __init__(self, model: LlamaModel, chunk: int) -> None:
        self.model = model
        self.chunk = chunk
        self.fmt = model.format
        self.reset()

    def reset(self) -> None:
        for s in range(self.model.n_seq_max):
            self.model.seq_clear(s)
        self.eng = ContextEngine(self.model, ContextSettings(prefill_chunk=self.chunk, max_queue=256, ram_mib=0))
        self.sch = Scheduler(self.eng, self.model.lock)
        self.hist: dict[str, list[int]] = {}
        self.prefix: dict[str, list[int]] = {}

    def npc_prefix(self, name: str, lore: str) -> list[int]:
        return self.model.bos() + self.model.tokenize(self.fmt.system(f"You are {name}, a resident of Cinderfen. Stay in character.\n\n" + lore))

    def user(self, line: str) -> list[int]:
        return self.model.tokenize(self.fmt.user(line) + self.fmt.assistant_open)

    def prompt(self, key: str, line: str) -> tuple[list[int], tuple[int, int]]:
        h = self.hist[key]
        return h + self.user(line), (len(self.prefix[key]), len(h))

    def record(self, key: str, prompt: list[int], g) -> None:
        self.hist[key] = prompt + g.tokens + self.model.tokenize(self.fmt.assistant_close)

    def batched(self, keys: list[str], line_of, gen: int) -> tuple[list, float]:
        t0 = time.perf_counter()
        futs = []
        for k in keys:
            p, b = self.prompt(k, line_of(k))
            futs.append((k, p, self.sch.submit(k, p, GREEDY, max_tokens=gen, boundaries=b, client=k)))
        self.sch.run_until_idle()
        wall = time.perf_counter() - t0
        gens = []
        for k, p, f in futs:
            g = f.result()
            self.record(k, p, g)
            gens.append(g)
        return gens, wall

    def serial(self, keys: list[str], line_of, gen: int) -> tuple[list, float, list[float]]:
        """One at a time; TTFT measured from the common start (turn k waits for turns 0..k-1)."""
        t0 = time.perf_counter()
        gens, ttfts = [], []
        for k in keys:
            p, b = self.prompt(k, line_of(k))
            ts = time.perf_counter()
            g = self.eng.generate(k, p, GREEDY, max_tokens=gen, boundaries=b)
            ttfts.append((ts - t0) * 1000 + g.ttft_ms)
            self.record(k, p, g)
            gens.append(g)
        return gens, time.perf_counter() - t0, ttfts


def throughput(model: LlamaModel, lore_tokens: int, concs: list[int], rounds: int, gen: int, chunk: int, rows: list) -> None:
    lore = lore_text(model, lore_tokens) if lore_tokens else ""
    print(f"\n### throughput: {model.name}, NPC prefix ~{lore_tokens} lore tokens, {gen} tokens per reply, {rounds} round(s), prefill chunk {chunk}\n")
    print("| conversations | mode | generated tokens | wall s | aggregate tok/s | decode tok/s per stream | TTFT p50 ms | TTFT p99 ms | batched / serial tok/s | replies equal to serial (greedy) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for c in concs:
        res = {}
        said: dict[str, list] = {}
        for mode in ("serial", "batched"):
            tv = Tavern(model, chunk)
            keys = [NAMES[i % len(NAMES)] + str(i) for i in range(c)]
            for k in keys:
                tv.prefix[k] = tv.hist[k] = tv.npc_prefix(k, lore)
            mark(f"tp_c{c}_{mode}_warm")
            tv.batched(keys, lambda k: "Good evening.", 1)  # prefill every prefix (not timed)
            toks, wall, ttfts, dtps = 0, 0.0, [], []
            for r in range(rounds):
                mark(f"tp_c{c}_{mode}_r{r}")
                line_of = lambda k, r=r: LINES[(r + keys.index(k)) % len(LINES)]  # noqa: E731
                if mode == "batched":
                    gens, w = tv.batched(keys, line_of, gen)
                    ttfts += [g.ttft_ms for g in gens]
                else:
                    gens, w, tt = tv.serial(keys, line_of, gen)
                    ttfts += tt
                said.setdefault(mode, []).extend(g.tokens for g in gens)
                toks += sum(len(g.tokens) for g in gens)
                dtps += [g.decode_tps for g in gens if g.decode_tps]
                wall += w
            res[mode] = dict(conversations=c, mode=mode, tokens=toks, wall_s=round(wall, 3), tok_s=round(toks / wall, 2),
                             ttft_p50_ms=round(pct(ttfts, 50), 1), ttft_p99_ms=round(pct(ttfts, 99), 1), steps=tv.eng.stats.steps,
                             stream_tok_s=round(statistics.mean(dtps), 2) if dtps else 0.0)
        ratio = res["batched"]["tok_s"] / res["serial"]["tok_s"] if res["serial"]["tok_s"] else float("nan")
        same = sum(a == b for a, b in zip(said["serial"], said["batched"]))
        res["batched"]["same_tokens_as_serial"] = f"{same}/{len(said['serial'])}"
        for mode in ("serial", "batched"):
            r = res[mode]
            r["model"] = model.name
            rows.append(r)
            print(f"| {c} | {mode} | {r['tokens']} | {r['wall_s']:.2f} | {r['tok_s']:.1f} | {r['stream_tok_s']:.1f} | {r['ttft_p50_ms']:,.0f} | {r['ttft_p99_ms']:,.0f} | "
                  f"{f'{ratio:.2f}x' if mode == 'batched' else ''} | {r.get('same_tokens_as_serial', '')} |", flush=True)


def shared(model: LlamaModel, lore_tokens: int, gen: int, chunk: int, rows: list) -> None:
    tv = Tavern(model, chunk)
    lore = lore_text(model, lore_tokens)
    prefix = tv.npc_prefix("Mara", lore)
    out = []
    for k in ("player1", "player2"):
        tv.prefix[k] = tv.hist[k] = list(prefix)
        mark(f"shared_{k}")
        gens, _ = tv.batched([k], lambda _k: LINES[0], gen)
        out.append(gens[0])
    r = dict(scenario="shared", model=model.name, prefix_tokens=len(prefix), first_ttft_ms=round(out[0].ttft_ms, 1), second_ttft_ms=round(out[1].ttft_ms, 1),
             second_cached=out[1].cached_tokens, shared_prefixes=tv.eng.stats.shared_prefixes)
    rows.append(r)
    print(f"\n### prefix sharing: {model.name}, two players at one NPC, prefix {len(prefix):,} tokens\n")
    print("| player | TTFT ms | prompt tokens reused |\n|---|---:|---:|")
    print(f"| 1 (prefills the NPC's prefix) | {out[0].ttft_ms:,.1f} | {out[0].cached_tokens:,} |")
    print(f"| 2 (same NPC, prefix shared) | {out[1].ttft_ms:,.1f} | {out[1].cached_tokens:,} |", flush=True)


def cached(model: LlamaModel, lore_tokens: int, n_conv: int, turns: int, gen: int, chunk: int, rows: list) -> None:
    """n_conv conversations at one NPC with a long cached prefix, each asking again as soon as it is answered."""
    tv = Tavern(model, chunk)
    lore = lore_text(model, lore_tokens)
    prefix = tv.npc_prefix("Mara", lore)
    keys = [f"player{i}" for i in range(n_conv)]
    for k in keys:
        tv.prefix[k] = tv.hist[k] = list(prefix)
    mark("cached_prefill")
    t0 = time.perf_counter()
    first, _ = tv.batched(keys[:1], lambda _k: "Good evening.", 1)
    prefill_s = time.perf_counter() - t0
    mark("cached_join")
    joined, _ = tv.batched(keys[1:], lambda _k: "Good evening.", 1) if n_conv > 1 else ([], 0.0)
    left = {k: turns for k in keys}
    ttfts: list[float] = []
    pending = {}
    sch = tv.sch
    mark("cached_turns")
    t_start = time.perf_counter()
    n_tok = 0

    def submit(k: str) -> None:
        p, b = tv.prompt(k, LINES[(turns - left[k]) % len(LINES)])
        pending[k] = (p, sch.submit(k, p, GREEDY, max_tokens=gen, boundaries=b, client=k))

    for k in keys:
        submit(k)
    while pending:
        sch.step_once()
        for k, (p, f) in list(pending.items()):
            if f.done():
                g = f.result()
                ttfts.append(g.ttft_ms)
                n_tok += len(g.tokens)
                tv.record(k, p, g)
                del pending[k]
                left[k] -= 1
                if left[k] > 0:
                    submit(k)
    wall = time.perf_counter() - t_start
    r = dict(scenario="cached", model=model.name, prefix_tokens=len(prefix), conversations=n_conv, turns=len(ttfts),
             first_prefill_s=round(prefill_s, 2), join_ttft_ms=[round(g.ttft_ms, 1) for g in joined],
             ttft_p50_ms=round(pct(ttfts, 50), 1), ttft_p99_ms=round(pct(ttfts, 99), 1), ttft_max_ms=round(max(ttfts), 1),
             aggregate_tok_s=round(n_tok / wall, 2), ram_mib=round(tv.eng.ram_bytes() / 2**20, 1),
             engine_ms={k: round(getattr(tv.eng.stats, k), 1) for k in ("decode_ms", "prefill_ms", "checkpoint_ms", "sample_ms")},
             state_buffers_allocated=tv.model.state_buffer_counts()["checkpoint_allocated"])
    rows.append(r)
    print(f"\n### turns with a cached prefix: {model.name}, {n_conv} conversations at one NPC, prefix {len(prefix):,} tokens, {gen} tokens per reply\n")
    print("| first prefill s | join TTFT ms (shared prefix), max | turns | TTFT p50 ms | TTFT p99 ms | aggregate tok/s |\n|---:|---:|---:|---:|---:|---:|")
    print(f"| {prefill_s:.2f} | {max(r['join_ttft_ms'] or [0]):,.0f} | {len(ttfts)} | {r['ttft_p50_ms']:,.1f} | {r['ttft_p99_ms']:,.1f} | {r['aggregate_tok_s']:.1f} |", flush=True)


def load(path: str, preset: str | None, gpu: bool, n_seq: int, per_seq: int, n_batch: int, threads: int | None) -> LlamaModel:
    if preset:
        from narrative.presets import preset_settings

        s = preset_settings(preset, path, n_ctx=per_seq * n_seq, n_seq_max=n_seq)
    else:
        s = dict(path=path, n_ctx=per_seq * n_seq)
    s.update(n_seq_max=n_seq, n_batch=n_batch)
    if threads:
        s["n_threads"] = threads
    if not gpu:
        s["n_gpu_layers"] = 0
    elif "n_gpu_layers" not in s or s["n_gpu_layers"] == 0:
        s.update(n_gpu_layers=-1, flash_attn=True)
    ms = ModelSettings(**s)
    print(f"settings: {ms.model_dump()}", file=sys.stderr, flush=True)
    return LlamaModel(ms)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", help="GGUF path (repeatable); default: tiny qwen35 fixture and SmolLM2")
    ap.add_argument("--preset", help="narrative preset whose settings to use (e.g. qwen3.5-27b-dialogue)")
    ap.add_argument("--gpu", action="store_true", help="offload all layers (the preset's GPU settings)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--scenarios", default="throughput,shared,cached")
    ap.add_argument("--conc", default="1,2,4,8")
    ap.add_argument("--lore", type=int, default=300, help="lore tokens in each NPC's prefix (throughput)")
    ap.add_argument("--gen", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=0, help="prefill chunk (0: n_batch)")
    ap.add_argument("--n-batch", type=int, default=512)
    ap.add_argument("--n-seq", type=int, default=8)
    ap.add_argument("--per-seq", type=int, default=0, help="KV cells per sequence (default: enough for the largest prefix + 2048)")
    ap.add_argument("--shared-lore", type=int, default=1500)
    ap.add_argument("--cached-lore", type=int, default=2000)
    ap.add_argument("--cached-turns", type=int, default=3)
    ap.add_argument("--cached-conv", default="", help="conversation counts for the cached scenario (default: --n-seq)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    paths = a.model
    if not paths:
        from tests.fixtures.make_qwen35 import build_fixtures

        paths = [str(build_fixtures(ROOT / "tests" / ".fixtures")["qwen35"]), BUNDLED_MODEL]
    scen = set(a.scenarios.split(","))
    concs = [int(x) for x in a.conc.split(",")]
    rows: list = []
    for path in paths:
        need = max(a.lore, a.shared_lore if "shared" in scen else 0, a.cached_lore if "cached" in scen else 0)
        per_seq = a.per_seq or (need + 2048 + (64 + 2 * a.gen) * (a.cached_turns + a.rounds + 2))
        mark(f"load {path}")
        model = load(path, a.preset, a.gpu, a.n_seq, per_seq, a.n_batch, a.threads)
        chunk = a.chunk or a.n_batch
        try:
            if "throughput" in scen:
                throughput(model, a.lore, [c for c in concs if c <= model.n_seq_max], a.rounds, a.gen, chunk, rows)
            if "shared" in scen:
                shared(model, a.shared_lore, a.gen, chunk, rows)
            if "cached" in scen:
                for n in [int(x) for x in (a.cached_conv or str(a.n_seq)).split(",")]:
                    cached(model, a.cached_lore, min(n, model.n_seq_max), a.cached_turns, a.gen, chunk, rows)
        finally:
            model.close()
    mark("done")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
