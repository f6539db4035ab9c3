"""Peak GPU memory of one model configuration beside `narrative.presets.plan` and llama.cpp's own buffer sizes.

Loads the model through the project's path with llama.cpp's log on (buffer sizes), decodes a full
n_batch prompt into sequence 0 and one token into every other sequence (the largest compute graph
and every recurrent cell in use), and reads nvidia-smi's memory.used before and after.

    python plan_probe.py --model M.gguf --preset qwen3.5-27b-dialogue --per-seq 135096 --seqs 4
"""
from __future__ import annotations

import llama_cpp  # noqa: F401  (before numpy)

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(os.environ.get("PROJ_ROOT", Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(ROOT))

import narrative.llm.model as nm  # noqa: E402
from narrative.presets import GiB, MiB, plan, PRESETS, preset_settings  # noqa: E402
from narrative.settings import ModelSettings  # noqa: E402


def used_mib() -> int:
    r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"], capture_output=True, text=True)
    return int(r.stdout.split()[0])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--preset", required=True)
    ap.add_argument("--per-seq", type=int, required=True)
    ap.add_argument("--seqs", type=int, required=True)
    ap.add_argument("--weights-bytes", type=int, default=0)
    a = ap.parse_args()
    s = preset_settings(a.preset, a.model, n_ctx=a.per_seq * a.seqs, n_seq_max=a.seqs)
    ms = ModelSettings(**s)
    orig = nm._llama_kwargs
    nm._llama_kwargs = lambda st: dict(orig(st), verbose=True)
    base = used_mib()
    m = nm.LlamaModel(ms)
    after_load = used_mib()
    toks = (m.tokenize("the harbor town of cinderfen " * 600))[: m.n_batch]
    m.decode(0, toks, 0)
    for q in range(1, a.seqs):
        m.decode(q, toks[:1], 0)
    peak = used_mib()
    p = PRESETS[a.preset]
    wb = a.weights_bytes or Path(a.model).stat().st_size
    pl = plan(p.arch, n_ctx=ms.n_ctx, n_seq_max=ms.n_seq_max, type_k=ms.type_k, type_v=ms.type_v, n_ubatch=min(ms.n_batch, 512), weights_bytes=wb)
    meas = (peak - base) * MiB
    print(f"PROBE preset={a.preset} per_seq={a.per_seq} seqs={a.seqs} n_ctx={ms.n_ctx} base_mib={base} after_load_mib={after_load} peak_mib={peak} "
          f"measured_gib={meas / GiB:.3f} plan_gib={pl.total / GiB:.3f} plan_err={(pl.total - meas) / meas * 100:+.2f}% "
          f"rows={[(k, round(v / MiB, 1)) for k, v in pl.rows()]}", flush=True)
    m.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
