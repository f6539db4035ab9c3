"""Issue 12: the return cost of an NPC evicted to the RAM store, with the batched context engine.

One model with ``--n-seq`` hot sequences (the 27B dialogue preset: 4), each NPC's prefix holding
``--lore`` tokens of its own lore (distinct text per NPC, so no prefix is shared), through the
project's path: preset -> ModelSettings -> LlamaModel -> ContextEngine (``[context] ram_mib``
large enough for every snapshot). Per lore size:

1. fill: turn 1 of NPCs 0..n-1 (each prefills its lore: the cost of a return *without* a snapshot);
2. hot: turn 2 of each (the baseline: a conversation that stayed in its sequence);
3. the (n+1)th NPC's turn 1: every sequence is taken, so the least recently used (NPC 0) is
   snapshotted into the RAM store (full sequence state: KV cells + recurrent state);
4. return to NPC 0: NPC 1 (now the least recently used) is snapshotted and NPC 0's snapshot loaded;
5. a turn of an NPC that stayed hot, and NPC 0's next turn (hot again);
6. under batching: three hot NPCs decoding together (``begin``/``step``, the calls the scheduler
   makes), then NPC 1 returns in the middle of their replies: its TTFT and the stall it causes
   to the others' streams (its ``begin`` runs between two steps: save + load are synchronous);
7. where the time of a snapshot goes: llama.cpp's copy into a fresh and a warm buffer, the load.

Every turn: TTFT, tokens decoded, engine counters (snapshots_saved/loaded) and each full-state
save/load (`LlamaModel.state_get`/`state_set` wrapped: size, ms). Greedy, ``--gen`` tokens.

    python snapshot_return.py --model M27.gguf [--preset qwen3.5-27b-dialogue] [--n-seq 4] [--lore 32768,8192]
    python snapshot_return.py --model tiny.gguf --cpu --lore 512,256      # a dry run of the logic on a CPU

PHASE lines go to stderr; results to stdout (Markdown) and --json.
"""
from __future__ import annotations

import llama_cpp  # noqa: F401  (before anything imports numpy: CUDA builds crash otherwise)

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from headline_1m import LINES, lore_tokens, mark, smi_mib  # noqa: E402  (also puts the project root on sys.path)

from narrative.context import ActiveTurn, ContextEngine  # noqa: E402
from narrative.llm import LlamaModel, SamplingParams  # noqa: E402
from narrative.presets import preset_settings  # noqa: E402
from narrative.settings import ContextSettings, ModelSettings  # noqa: E402

GREEDY = SamplingParams(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, seed=0)
NAMES = ["Mara", "Oren", "Ilsa", "Brann", "Tove", "Keld", "Wren", "Sabel", "Ansel", "Dagny"]
MiB = 1 << 20


class StateTimer:
    """Wraps the model's state_get/state_set: (op, partial, bytes, ms) of every call."""

    def __init__(self, model: LlamaModel) -> None:
        self.log: list[tuple[str, bool, int, float]] = []
        get, put = model.state_get, model.state_set

        def state_get(seq: int, *, partial: bool):
            t = time.perf_counter()
            d = get(seq, partial=partial)
            self.log.append(("save", partial, len(d), (time.perf_counter() - t) * 1000))
            return d

        def state_set(seq: int, data, *, partial: bool) -> None:
            n = len(data)
            t = time.perf_counter()
            put(seq, data, partial=partial)
            self.log.append(("load", partial, n, (time.perf_counter() - t) * 1000))

        model.state_get, model.state_set = state_get, state_set

    def full(self, since: int, op: str) -> tuple[float, float]:
        """(MiB, ms) summed over the full-state calls of `op` since log index `since`."""
        xs = [x for x in self.log[since:] if not x[1] and x[0] == op]
        return sum(x[2] for x in xs) / MiB, sum(x[3] for x in xs)


def scenario(model: LlamaModel, L: int, n_seq: int, gen: int, ram_mib: int, tm: StateTimer, deadline: float,
             pool: bool = True, churn: int = 0) -> dict:
    fmt = model.format
    for s in range(model.n_seq_max):
        model.seq_clear(s)
    eng = ContextEngine(model, ContextSettings(ram_mib=ram_mib))
    if not pool:  # as before 2026-12-02: every full-state save into a freshly allocated buffer
        model.keep_free_snapshot_bytes(0)
    buffers0 = model.state_buffer_counts()
    names = NAMES[: n_seq + 1]
    prefix: dict[str, list[int]] = {}
    hist: dict[str, list[int]] = {}
    mark(f"L{L}_tokenize")
    for i, k in enumerate(names):
        head = model.bos() + model.marker_tokens(fmt.system_open) + model.tokenize(
            f"You are {k}, a resident of Cinderfen. Stay in character. Everything below is what {k} knows.\n\n")
        prefix[k] = hist[k] = head + lore_tokens(model, L, seed=1000 * i + 7) + model.marker_tokens(fmt.system_close)
    rows: list[dict] = []
    said = {k: 0 for k in names}

    def user(line: str) -> list[int]:
        return model.chat_tokens(fmt.user_pieces(line, then_assistant=True))

    def prompt(k: str) -> tuple[list[int], tuple[int, int]]:
        p = hist[k] + user(LINES[said[k] % len(LINES)])
        return p, (len(prefix[k]), len(hist[k]))

    def counters() -> tuple[int, int, int]:
        return eng.stats.snapshots_saved, eng.stats.snapshots_loaded, len(tm.log)

    def row(phase: str, k: str, g, c0: tuple[int, int, int], begin_ms: float | None = None) -> dict:
        sv, ld, i0 = c0
        smib, sms = tm.full(i0, "save")
        lmib, lms = tm.full(i0, "load")
        r = dict(lore=L, phase=phase, npc=k, ttft_ms=round(g.ttft_ms, 1), evaluated=g.prompt_tokens - g.cached_tokens, cached=g.cached_tokens,
                 tokens=len(g.tokens), decode_tps=round(g.decode_tps, 1), saved=eng.stats.snapshots_saved - sv, loaded=eng.stats.snapshots_loaded - ld,
                 save_mib=round(smib, 1), save_ms=round(sms, 1), load_mib=round(lmib, 1), load_ms=round(lms, 1))
        if begin_ms is not None:
            r["begin_ms"] = round(begin_ms, 1)
        rows.append(r)
        print(f"| {phase} | {k} | {r['ttft_ms']:,.1f} | {r['evaluated']:,} | {r['cached']:,} | {r['saved']} / {r['loaded']} | "
              f"{r['save_mib']:,.1f} MiB in {r['save_ms']:,.1f} ms | {r['load_mib']:,.1f} MiB in {r['load_ms']:,.1f} ms | {r['decode_tps']:.1f} |", flush=True)
        return r

    def turn(phase: str, k: str) -> dict:
        p, b = prompt(k)
        c0 = counters()
        g = eng.generate(k, p, GREEDY, max_tokens=gen, boundaries=b)
        hist[k] = p + g.tokens + model.marker_tokens(fmt.assistant_close)
        said[k] += 1
        return row(phase, k, g, c0)

    print(f"\n### {L:,} lore tokens per NPC ({len(prefix[names[0]]):,}-token prefix), {n_seq} sequences, {len(names)} NPCs, {gen} tokens per reply, "
          f"snapshot buffers {'pooled' if pool else 'fresh per save (pool off)'}\n")
    print("| phase | NPC | TTFT ms | tokens decoded | tokens reused | snapshots saved / loaded | full-state saves | full-state loads | decode tok/s |")
    print("|---|---|---:|---:|---:|---|---|---|---:|", flush=True)
    mark(f"L{L}_fill")
    for k in names[:n_seq]:
        turn("1 fill (prefill)", k)
    mark(f"L{L}_hot")
    for k in names[:n_seq]:
        turn("2 hot", k)
    out: dict = dict(lore=L, prefix_tokens=len(prefix[names[0]]), n_seq=n_seq, pool=pool)
    if time.time() > deadline:
        out["stopped"] = "deadline after the hot turns"
        out["rows"] = rows
        return out
    mark(f"L{L}_fifth")
    turn(f"3 NPC {n_seq + 1} arrives (evicts {names[0]})", names[n_seq])
    mark(f"L{L}_return")
    turn(f"4 return of {names[0]} (evicts {names[1]})", names[0])
    mark(f"L{L}_after")
    turn("5 stayed hot", names[2])
    turn("5 returned one, hot again", names[0])

    # 6. under batching: three hot NPCs decoding, then NPC 1 returns between two steps
    mark(f"L{L}_batched")
    busy = [names[2], names[3], names[n_seq]] if n_seq >= 3 else [names[n_seq]]
    turns = {}
    for k in busy:
        p, b = prompt(k)
        turns[k] = (p, eng.begin(ActiveTurn(k, p, GREEDY, 2 * gen, b)))
    ends: list[float] = []
    while len([t for _, t in turns.values() if t.phase == "decode"]) < len(busy) or len(ends) < 8:
        eng.step()
        ends.append(time.perf_counter())
        if all(t.done for _, t in turns.values()):
            break
    before = [(b - a) * 1000 for a, b in zip(ends[-6:-1], ends[-5:])]
    k1 = names[1]
    p1, b1 = prompt(k1)
    c0 = counters()
    t_b = time.perf_counter()
    ret = eng.begin(ActiveTurn(k1, p1, GREEDY, gen, b1))
    begin_ms = (time.perf_counter() - t_b) * 1000
    eng.step()
    gap_ms = (time.perf_counter() - ends[-1]) * 1000
    while eng.active:
        eng.step()
    for k, (p, t) in turns.items():
        g = t.generation()
        hist[k] = p + g.tokens + model.marker_tokens(fmt.assistant_close)
        said[k] += 1
    g1 = ret.generation()
    hist[k1] = p1 + g1.tokens + model.marker_tokens(fmt.assistant_close)
    said[k1] += 1
    r6 = row(f"6 return of {k1} while {len(busy)} others decode (evicts {names[0]})", k1, g1, c0, begin_ms)
    step_ms = statistics.median(before) if before else float("nan")
    out["batched"] = dict(others=len(busy), step_ms_before=round(step_ms, 1), begin_ms=round(begin_ms, 1), gap_ms=round(gap_ms, 1),
                          return_ttft_ms=r6["ttft_ms"])
    print(f"\nunder batching: the others' step took {step_ms:.1f} ms (median of the last 5 before); the return's `begin` "
          f"(save {r6['save_mib']:,.1f} MiB + load {r6['load_mib']:,.1f} MiB) took {begin_ms:,.1f} ms, so their next token came "
          f"{gap_ms:,.1f} ms after the previous one", flush=True)

    # 7. where a snapshot's time goes (llama.cpp's calls on a hot NPC's sequence; the load puts back the same state)
    mark(f"L{L}_parts")
    seq = eng.convs[names[2]].seq
    ctx = model._ctx
    flags = llama_cpp.LLAMA_STATE_SEQ_FLAGS_NONE
    t = time.perf_counter()
    size = int(llama_cpp.llama_state_seq_get_size_ext(ctx, seq, flags))
    t_size = time.perf_counter() - t
    t = time.perf_counter()
    buf = (ctypes.c_uint8 * size)()
    t_alloc = time.perf_counter() - t
    t = time.perf_counter()
    n = llama_cpp.llama_state_seq_get_data_ext(ctx, buf, size, seq, flags)
    t_get1 = time.perf_counter() - t
    t = time.perf_counter()
    n = llama_cpp.llama_state_seq_get_data_ext(ctx, buf, size, seq, flags)
    t_get2 = time.perf_counter() - t
    t = time.perf_counter()
    ok = llama_cpp.llama_state_seq_set_data_ext(ctx, buf, n, seq, flags)
    t_set = time.perf_counter() - t
    del buf
    parts = dict(mib=round(size / MiB, 1), size_query_ms=round(t_size * 1000, 1), alloc_ms=round(t_alloc * 1000, 1), get_fresh_ms=round(t_get1 * 1000, 1),
                 get_warm_ms=round(t_get2 * 1000, 1), set_ms=round(t_set * 1000, 1), set_ok=bool(ok))
    out["parts"] = parts
    print(f"\nparts of one full-state snapshot ({parts['mib']:,.1f} MiB, {names[2]}'s sequence): size query {parts['size_query_ms']} ms, "
          f"buffer allocation {parts['alloc_ms']} ms, llama.cpp copy into it {parts['get_fresh_ms']} ms (fresh pages) / {parts['get_warm_ms']} ms "
          f"(warm), load back {parts['set_ms']} ms (ok {parts['set_ok']})", flush=True)
    # the same NPC's next turn after the load: the state still holds (a wrong state would re-decode or fail)
    turn("7 after the parts (state loaded back)", names[2])
    # 8. churn: the coldest NPC comes back, evicting the least recently used, `churn` times (a busy tavern);
    # from the second on, a save can reuse the buffer the previous return's load gave back
    for i in range(churn):
        k = min((c for c in eng.convs.values() if c.seq is None and c.snapshot is not None), key=lambda c: c.last_used).key
        turn(f"8 churn {i + 1}: return of {k}", k)
    churn_rows = [r for r in rows if r["phase"].startswith("8 churn")]
    if churn_rows:
        out["churn"] = dict(returns=len(churn_rows), ttft_ms_median=round(statistics.median(r["ttft_ms"] for r in churn_rows), 1),
                            save_ms_median=round(statistics.median(r["save_ms"] for r in churn_rows), 1),
                            load_ms_median=round(statistics.median(r["load_ms"] for r in churn_rows), 1),
                            buffers={k: v - buffers0[k] for k, v in model.state_buffer_counts().items() if k.startswith("snapshot")})
    out["rows"] = rows
    out["stats"] = {k: v for k, v in vars(eng.stats).items() if isinstance(v, int)}
    out["ram_mib"] = round(eng.ram_bytes() / MiB, 1)
    hot = [r["ttft_ms"] for r in rows if r["phase"].startswith("2 hot") or r["phase"].startswith("5 stayed")]
    fill = [r["ttft_ms"] for r in rows if r["phase"].startswith("1 fill")]
    ret4 = next(r for r in rows if r["phase"].startswith("4 return"))
    out["summary"] = dict(hot_ttft_ms_median=round(statistics.median(hot), 1), fill_ttft_ms_median=round(statistics.median(fill), 1),
                          return_ttft_ms=ret4["ttft_ms"], return_save_mib=ret4["save_mib"], return_save_ms=ret4["save_ms"],
                          return_load_mib=ret4["load_mib"], return_load_ms=ret4["load_ms"], batched=out["batched"])
    print(f"\nsummary: hot turn TTFT median {out['summary']['hot_ttft_ms_median']:,.1f} ms; return from the RAM store "
          f"{ret4['ttft_ms']:,.1f} ms (save {ret4['save_mib']:,.1f} MiB {ret4['save_ms']:,.1f} ms + load {ret4['load_mib']:,.1f} MiB {ret4['load_ms']:,.1f} ms); "
          f"re-prefilling instead: {out['summary']['fill_ttft_ms_median']:,.1f} ms (median turn 1); engine stats {out['stats']}", flush=True)
    eng.cancel_all(RuntimeError("end of scenario"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--preset", default="qwen3.5-27b-dialogue")
    ap.add_argument("--n-seq", type=int, default=4)
    ap.add_argument("--lore", default="32768,8192", help="lore tokens per NPC, one scenario each (in this order)")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--ram-mib", type=int, default=32768)
    ap.add_argument("--deadline", type=float, default=0.0, help="epoch s: no new scenario after it (0: none)")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--churn", type=int, default=0, help="returns of the coldest NPC after the scenario (phase 8)")
    ap.add_argument("--pool", choices=["on", "off", "both"], default="on",
                    help="full-state snapshot buffers pooled (on, the engine's default), fresh per save (off, as before), "
                         "or both: each lore size off then on, side by side in this run")
    a = ap.parse_args()
    lores = [int(x) for x in a.lore.split(",")]
    per_seq = max(lores) + 3072
    s = preset_settings(a.preset, a.model, n_ctx=per_seq * a.n_seq, n_seq_max=a.n_seq)
    if a.cpu:
        s["n_gpu_layers"] = 0
    if a.threads:
        s["n_threads"] = a.threads
    ms = ModelSettings(**s)
    print(f"settings: {ms.model_dump()}", file=sys.stderr, flush=True)
    deadline = a.deadline or float("inf")
    mark("load")
    t0 = time.perf_counter()
    model = LlamaModel(ms)
    load_s = time.perf_counter() - t0
    print(f"# Snapshot return cost: {Path(a.model).name}, preset {a.preset}, {a.n_seq} sequences x {model.n_ctx:,} cells, "
          f"KV {ms.type_k}/{ms.type_v}, n_batch {model.n_batch}, {'CPU' if a.cpu else 'all layers on the GPU'}; loaded in {load_s:.1f} s, "
          f"GPU {smi_mib()} MiB used", flush=True)
    tm = StateTimer(model)
    res: dict = dict(model=Path(a.model).name, preset=a.preset, settings=ms.model_dump(), load_s=round(load_s, 2), scenarios=[])
    try:
        for L in lores:
            if time.time() > deadline:
                print(f"\n(deadline: the {L:,}-token scenario was not run)", flush=True)
                res["scenarios"].append(dict(lore=L, stopped="deadline before it"))
                continue
            modes = {"on": [True], "off": [False], "both": [False, True]}[a.pool]
            runs = [scenario(model, L, a.n_seq, a.gen, a.ram_mib, tm, deadline, pool=m, churn=a.churn) for m in modes]
            res["scenarios"].extend(runs)
            if len(runs) == 2 and all("churn" in r for r in runs):
                off, on = runs[0]["churn"], runs[1]["churn"]
                print(f"\nchurn at {L:,} lore tokens ({on['returns']} returns each): return TTFT median {off['ttft_ms_median']:,.1f} ms fresh "
                      f"vs {on['ttft_ms_median']:,.1f} ms pooled ({off['ttft_ms_median'] / max(on['ttft_ms_median'], 1e-9):.2f}x); save median "
                      f"{off['save_ms_median']:,.1f} vs {on['save_ms_median']:,.1f} ms; buffers pooled run {on['buffers']}", flush=True)
            res["state_calls"] = tm.log
            if a.json:
                a.json.write_text(json.dumps(res, indent=1))
    finally:
        mark("done")
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
        model.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
