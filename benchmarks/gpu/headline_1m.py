"""Issue 12's headline through the project's own path: one conversation with ~1M tokens of lore.

Qwen3.5-35B-A3B shape (a random-weight GGUF from make_shaped.py), one sequence with a context of
1,010,000 tokens (YaRN factor 4, as `narrative.presets.preset_settings` sets past 262,144), quantized
KV, flash attention, all layers on the GPU: preset -> ModelSettings -> LlamaModel -> ContextEngine.

1. Lore: ~1M tokens of varied lore-like text (the sample world's paragraphs reshuffled, their names
   swapped per entry, dated chronicle headers and generated sentences between them), tokenized in
   pieces as plain text inside the NPC's system turn.
2. Turn 1: the system turn (lore) + the player's first line, decoded by `ContextEngine.step` in
   ``prefill_chunk`` pieces (the preset's n_batch); a progress line every ``--every`` tokens
   (cumulative tokens, tok/s in the window and overall, and an extrapolation of the time left,
   labelled as such). Past ``--deadline`` the prefill stops (the turn is cancelled; what was decoded
   stays cached) and the next turns run at the depth reached.
3. Turns 2..N: the reply and the next player line appended (two prefill pieces with a recurrent-state
   checkpoint between them, as every dialogue turn), ``--gen`` tokens greedy: TTFT, decode tok/s and
   where the time went (the engine's own timers).
4. GPU memory: nvidia-smi at each phase (the pipeline also polls it: smi_peaks.py), beside
   `narrative.presets.plan` for the same settings (what ``narrative models plan`` prints).

    python headline_1m.py --model M.gguf [--ctx 1010000] [--kv q4_0] [--turns 5] [--gen 32] [--deadline EPOCH]
    python headline_1m.py --model tiny.gguf --cpu --ctx 8192      # a dry run of the logic on a CPU

PHASE lines go to stderr (smi_peaks.py reads them from drv_*.log); results to stdout (Markdown) and --json.
"""
from __future__ import annotations

import llama_cpp  # noqa: F401  (before anything imports numpy: CUDA builds crash otherwise)

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(os.environ.get("PROJ_ROOT", Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(ROOT))

from narrative.context import ActiveTurn, ContextEngine  # noqa: E402
from narrative.llm import LlamaModel, SamplingParams  # noqa: E402
from narrative.presets import GiB, MiB, plan_for_settings, preset_settings  # noqa: E402
from narrative.settings import ContextSettings, ModelSettings  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, seed=0)
LINES = [
    "Good evening, Mara. What news from the docks?",
    "Who runs the salt tunnels these days?",
    "Is the Lantern Guild honest, in your opinion?",
    "Where would a smuggler hide a crate of bluewick oil?",
    "What really happened at the old lighthouse?",
    "Tell me about the night the lanterns went out.",
    "Have you ever seen a soot-scale yourself?",
    "Which way to the Hush Chapel from here?",
]


def mark(label: str) -> None:
    print(f"PHASE {time.time():.3f} {label}", file=sys.stderr, flush=True)


def smi_mib() -> int | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        r = subprocess.run([exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
        return int(r.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


# ---- lore ------------------------------------------------------------------

FIRST = ["Aldric", "Brenna", "Corwin", "Dagny", "Edda", "Fenwick", "Garrow", "Hesper", "Isolde", "Jory", "Kestrel", "Lisbet",
         "Marek", "Nell", "Osric", "Perrin", "Quill", "Rowan", "Sabel", "Tamsin", "Ulric", "Vesna", "Wystan", "Yara", "Zeb"]
LAST = ["Harrow", "Ashdown", "Kilnworth", "Tallowby", "Quench", "Marrow", "Sedgewick", "Bellows", "Cinderhall", "Lockwood",
        "Brannock", "Gallow", "Fenner", "Smeltby", "Wickham", "Duskmoor", "Sallow", "Peatley", "Emberly", "Soothe"]
TRADES = ["kilnwright", "bargewoman", "ashwarden", "lamplighter", "peat-cutter", "diver", "ledger-keeper", "smokeglass blower",
          "chandler", "ferryman", "choir-sister", "tallow merchant", "vent-sweep", "toll clerk", "smuggler", "herbalist"]
PLACES = ["Cinderfen", "Kilnrow", "Lowmarket", "the Sallow Lock", "Brannock Hollow", "the Quenchhouse", "Gallowmere",
          "the Hush Chapel", "the Tallow Exchange", "the Cracked Bellows", "the Sedge Maze", "the First Cut", "Vent Nine"]
THINGS = ["a crate of bluewick oil", "a soot-scale the size of a palm", "the Harrow Ledger", "a smokeglass lens",
          "an ashcloak stiff with tar", "the Ninefold Key", "a barge of wet peat", "a sealed letter from the Ashwardens",
          "three barrels of lamp tallow", "a lantern that would not go out", "a map of the salt tunnels", "a debt of forty crowns"]
VERBS = ["carried", "lost", "sold", "hid", "stole back", "burned", "pawned", "smuggled", "swore on", "buried", "traded away", "found"]
SEASONS = ["the wet spring", "the smoke summer", "the first frost", "the long thaw", "the ember harvest", "deep winter"]
WHY = ["to pay a toll nobody else would pay", "because the Choir asked it", "on a wager made at the Cracked Bellows",
       "to keep a promise to a drowned brother", "for reasons the ledgers do not give", "while the vents burned cold",
       "after the Grey Cough took half the street", "so that the lock-keepers would look the other way"]
AFTER = ["Nobody in {p} speaks of it now.", "The Ashwardens fined {n} nine crowns for it.", "{n} was never seen in {p} again.",
         "The Choir still sings a verse about it.", "Some say the Sootwyrm took the rest.", "The ledger entry is smudged past reading.",
         "Children in {p} still play the game it started.", "The toll-house kept the receipt, and the receipt is all that is left."]


def _paragraphs() -> list[str]:
    files = sorted((ROOT / "samples" / "lore").rglob("*.md"))
    out = []
    for f in files:
        if f.name == "README.md":
            continue
        text = f.read_text(encoding="utf-8")
        if text.startswith("---"):
            text = text.split("---", 2)[-1]
        out += [re.sub(r"\s+", " ", p).strip() for p in text.split("\n\n") if len(p.strip()) > 80]
    return out


def lore_entries(seed: int = 0):
    """Endless lore-like text, one chronicle entry at a time: a sample paragraph with its proper names
    swapped for others, under a dated header, between generated sentences (no two entries equal)."""
    rng = random.Random(seed)
    paras = _paragraphs()
    names = sorted({w for p in paras for w in re.findall(r"\b[A-Z][a-z]{3,}\b", p)} - {"The", "They", "When", "This", "There", "Their", "Nobody", "Some", "Children", "Whenever"})
    i = 0
    while True:
        i += 1
        year = 300 + i // 40
        n = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        p = rng.choice(PLACES)
        swap = {w: rng.choice(FIRST + LAST) for w in rng.sample(names, min(6, len(names)))}
        body = re.sub(r"\b[A-Z][a-z]{3,}\b", lambda m: swap.get(m.group(), m.group()), rng.choice(paras))
        lead = (f"In {rng.choice(SEASONS)} of the year {year}, {n}, a {rng.choice(TRADES)} of {p}, {rng.choice(VERBS)} "
                f"{rng.choice(THINGS)} {rng.choice(WHY)}.")
        tail = rng.choice(AFTER).format(n=n.split()[0], p=p)
        yield f"## Chronicle {i}: {n} ({p}, year {year})\n\n{lead} {body} {tail}\n\n"


def lore_tokens(model: LlamaModel, n_tokens: int, seed: int = 0) -> list[int]:
    """~n_tokens of lore as plain-text token ids, tokenized ~32 KB at a time (exactly n_tokens, cut)."""
    out: list[int] = []
    buf: list[str] = []
    size = 0
    for e in lore_entries(seed):
        buf.append(e)
        size += len(e)
        if size >= 32_000:
            out += model.tokenize("".join(buf))
            buf, size = [], 0
            if len(out) >= n_tokens:
                break
    return out[:n_tokens]


# ---- the run ---------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--preset", default="qwen3.5-35b-a3b-batch")
    ap.add_argument("--ctx", type=int, default=1_010_000, help="context of the one conversation (n_ctx, n_seq_max 1)")
    ap.add_argument("--kv", default="q4_0", choices=["f16", "q8_0", "q4_0"])
    ap.add_argument("--lore", type=int, default=0, help="lore tokens (default: ctx - 1024, room for the turns)")
    ap.add_argument("--turns", type=int, default=5, help="turns after the first (the prefill)")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--every", type=int, default=65_536, help="a progress line every this many prefilled tokens")
    ap.add_argument("--deadline", type=float, default=0.0, help="epoch seconds: stop the prefill there (0: never)")
    ap.add_argument("--n-batch", type=int, default=0, help="default: the preset's")
    ap.add_argument("--cpu", action="store_true", help="no offload (a dry run of the logic)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()

    s = preset_settings(a.preset, a.model, n_ctx=a.ctx, n_seq_max=1)  # YaRN factor 4 past 262,144 per sequence
    s.update(type_k=a.kv, type_v=a.kv, flash_attn=True)
    if a.n_batch:
        s["n_batch"] = a.n_batch
    if a.cpu:
        s["n_gpu_layers"] = 0
    if a.threads:
        s["n_threads"] = a.threads
    ms = ModelSettings(**s)
    print(f"settings: {ms.model_dump()}", file=sys.stderr, flush=True)
    res: dict = dict(model=Path(a.model).name, preset=a.preset, settings=ms.model_dump(), gpu=not a.cpu)
    try:
        pl = plan_for_settings(ms, label="headline")
        res["plan_mib"] = {k: round(v / MiB, 1) for k, v in pl.rows()}
        print("### plan (narrative.presets.plan, the numbers `narrative models plan --model` uses)\n")
        for k, v in pl.rows():
            print(f"- {k}: {v / MiB:,.0f} MiB ({v / GiB:.2f} GiB)")
        print(flush=True)
    except Exception as exc:  # noqa: BLE001  (the gguf package missing: the pipeline prints the CLI's plan too)
        print(f"plan: not computed ({exc})", flush=True)
    smi: dict[str, int | None] = {"idle": smi_mib()}

    mark("load")
    t0 = time.perf_counter()
    model = LlamaModel(ms)
    res["load_s"] = round(time.perf_counter() - t0, 2)
    smi["after_load"] = smi_mib()
    n_ctx = model.n_ctx
    print(f"loaded in {res['load_s']} s: n_ctx per sequence {n_ctx:,}, n_batch {model.n_batch}, GPU {smi['after_load']} MiB used", flush=True)

    mark("tokenize")
    fmt = model.format
    n_lore = a.lore or (n_ctx - 1024)
    t0 = time.perf_counter()
    lore = lore_tokens(model, n_lore)
    res["tokenize_s"] = round(time.perf_counter() - t0, 2)
    head = model.bos() + model.marker_tokens(fmt.system_open) + model.tokenize("You are Mara, the keeper of the Cracked Bellows in Cinderfen. "
                                                                                  "Stay in character. Everything below is the chronicle of the fen.\n\n")
    prefix = head + lore + model.marker_tokens(fmt.system_close)
    print(f"lore: {len(lore):,} tokens tokenized in {res['tokenize_s']} s; prefix {len(prefix):,} tokens", flush=True)

    eng = ContextEngine(model, ContextSettings(ram_mib=0))
    chunk = eng.prefill_chunk
    key = "player/mara"

    def user(line: str) -> list[int]:
        return model.chat_tokens(fmt.user_pieces(line, then_assistant=True))

    # ---- turn 1: the prefill --------------------------------------------------
    prompt = prefix + user(LINES[0])
    cancel = threading.Event()
    t = ActiveTurn(key, prompt, GREEDY, a.gen, (len(prefix),), cancel)
    mark("prefill")
    print(f"\n### prefill: {len(prompt):,} prompt tokens in pieces of {chunk} (n_ubatch {min(model.n_batch, 512)})\n")
    print("| tokens | elapsed s | window tok/s | overall tok/s | GPU MiB | extrapolated s left (labelled estimate) |\n|---:|---:|---:|---:|---:|---:|", flush=True)
    eng.begin(t)
    t_start = time.perf_counter()
    nxt, t_prev, pos_prev = a.every, t_start, 0
    windows: list[tuple[float, float, float]] = []  # (mid depth, tokens, seconds)
    stopped = False
    t_pre_end = None
    while not t.done:
        eng.step()
        if t_pre_end is None and t.phase != "prefill":
            t_pre_end = time.perf_counter()  # the prompt is in (turn 1's own decode steps follow)
        if t.pos >= nxt or (t.phase != "prefill" and pos_prev < t.pos):
            now = time.perf_counter()
            n = t.pos - pos_prev
            windows.append(((pos_prev + t.pos) / 2, n, now - t_prev))
            est = ""
            if len(windows) >= 2 and t.pos < len(prompt):  # seconds per token ~ c0 + c1 * depth (attention grows with depth)
                (d1, n1, s1), (d2, n2, s2) = windows[-2], windows[-1]
                c1 = (s2 / n2 - s1 / n1) / (d2 - d1) if d2 != d1 else 0.0
                c0 = s2 / n2 - c1 * d2
                left = len(prompt) - t.pos
                est = f"{left * (c0 + c1 * (t.pos + len(prompt)) / 2):,.0f}"
            print(f"| {t.pos:,} | {now - t_start:,.1f} | {n / (now - t_prev):,.0f} | {t.pos / (now - t_start):,.0f} | {smi_mib()} | {est} |", flush=True)
            t_prev, pos_prev = now, t.pos
            while nxt <= t.pos:
                nxt += a.every
        if a.deadline and not stopped and t.phase == "prefill" and time.time() > a.deadline:
            stopped = True
            cancel.set()
            print(f"\nDEADLINE: prefill stopped at {t.pos:,} of {len(prompt):,} tokens (the rest not decoded)", flush=True)
    prefill_s = (t_pre_end or time.perf_counter()) - t_start
    smi["after_prefill"] = smi_mib()
    depth = len(eng.cached_tokens(key))
    res.update(prefill_tokens=t.pos, prefill_s=round(prefill_s, 2), prefill_tok_s=round(t.pos / prefill_s, 1), stopped_at_deadline=stopped,
               windows=[dict(mid_depth=int(d), tokens=int(n), s=round(x, 3)) for d, n, x in windows])
    g1 = None if stopped else t.generation()
    if g1 is not None:
        res["turn1"] = dict(ttft_ms=round(g1.ttft_ms, 1), decode_tps=round(g1.decode_tps, 2), tokens=len(g1.tokens))
        hist = prompt + g1.tokens + model.marker_tokens(fmt.assistant_close)
        print(f"\nturn 1 (the whole prompt prefilled): TTFT {g1.ttft_ms / 1000:,.1f} s, then {len(g1.tokens)} tokens at {g1.decode_tps:.1f} tok/s; "
              f"prefill {t.pos:,} tokens in {prefill_s:,.1f} s = {t.pos / prefill_s:,.0f} tok/s", flush=True)
    else:
        hist = eng.cached_tokens(key) + model.marker_tokens(fmt.system_close)
        print(f"turn 1 stopped at depth {depth:,}: prefill {t.pos:,} tokens in {prefill_s:,.1f} s = {t.pos / prefill_s:,.0f} tok/s", flush=True)

    # ---- turns 2..N over the cached prefix ------------------------------------------
    mark("turns")
    rows = []
    print(f"\n### turns over the cached lore ({a.gen} tokens each, greedy)\n")
    print("| turn | depth (cached tokens) | new tokens decoded | TTFT ms | decode tok/s | prefill ms | checkpoint ms | decode ms | sample ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for i in range(a.turns):
        p = hist + user(LINES[(i + 1) % len(LINES)])
        st = dict(vars(eng.stats))
        g = eng.generate(key, p, GREEDY, max_tokens=a.gen, boundaries=(len(prefix), len(hist)))
        d = {k: round(getattr(eng.stats, k) - st[k], 1) for k in ("prefill_ms", "checkpoint_ms", "decode_ms", "sample_ms")}
        r = dict(turn=i + 2, depth=g.cached_tokens, evaluated=g.prompt_tokens - g.cached_tokens, ttft_ms=round(g.ttft_ms, 1),
                 decode_tps=round(g.decode_tps, 2), tokens=len(g.tokens), finish=g.finish_reason, **d)
        rows.append(r)
        print(f"| {r['turn']} | {r['depth']:,} | {r['evaluated']} | {r['ttft_ms']:,.1f} | {r['decode_tps']:.1f} | {d['prefill_ms']:,.1f} | "
              f"{d['checkpoint_ms']:,.1f} | {d['decode_ms']:,.1f} | {d['sample_ms']:,.1f} |", flush=True)
        hist = p + g.tokens + model.marker_tokens(fmt.assistant_close)
    smi["after_turns"] = smi_mib()
    res["turns"] = rows
    res["smi_mib"] = smi
    mark("done")
    print(f"\nGPU memory (nvidia-smi, MiB): {smi}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
