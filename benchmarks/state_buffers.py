"""Host buffers for sequence states: a fresh buffer per save (before 2026-12-02) vs the pool, side by side.

A full-state save (`LlamaModel.state_get(partial=False)`: an NPC evicted to the RAM store) has llama.cpp
write the state into a host buffer. On the H200 host ~80% of a 27B save at 32k lore (723 of 900 ms) was
allocating and zero-filling a fresh 1.2 GiB ctypes buffer, llama.cpp's own copy 107 ms
(docs/batching-h200.md, "Returning to an NPC from the RAM store"). Full states now come from
`narrative.llm.model._StatePool` with headroom, so an eviction after a return writes into the buffer the
return gave back.

This measures the host side only, with the project's own `_StatePool`/`StateBuffer`: per size, N rounds of
"take a buffer, write `size` bytes into it (ctypes.memmove from a source buffer: the stand-in for
llama.cpp's copy), give it back", once with a pool that keeps nothing (the old path: a fresh buffer every
time) and once with the engine's snapshot pool, alternating, medians printed. Sizes: the 27B recurrent-state
checkpoint (150 MiB) and its 8k / 32k lore snapshots (431 / 1,248 MiB); each round of the pooled mode grows
the state by one turn's worth (0.3%) as a returning conversation would.

    .venv/bin/python benchmarks/state_buffers.py [--sizes-mib 150,431,1248] [--rounds 7]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from narrative.llm.model import _StatePool  # noqa: E402

MiB = 1 << 20


def one_save(pool: _StatePool, src, size: int) -> float:
    t = time.perf_counter()
    buf = pool.take(size)
    ctypes.memmove(buf.buf, src, size)
    buf.n = size
    ms = (time.perf_counter() - t) * 1000
    buf.release()
    return ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mib", default="150,431,1248", help="state sizes in MiB (default: the 27B checkpoint, 8k and 32k snapshots)")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args()
    print("| state | fresh buffer per save, ms (median) | pooled buffer, ms (median) | fresh / pooled | pooled: allocated / reused |")
    print("|---:|---:|---:|---:|---:|")
    for mib in (float(x) for x in a.sizes_mib.split(",")):
        size = int(mib * MiB)
        grown = int(size * 1.003 ** a.rounds) + 1
        src = (ctypes.c_uint8 * grown)()
        ctypes.memset(src, 7, grown)
        fresh = _StatePool(keep=0, slack=0.125, keep_bytes=0)  # keeps nothing: every take allocates
        pooled = _StatePool(keep=2, slack=0.125, keep_bytes=4 << 30)  # the engine's snapshot pool
        t_fresh, t_pooled = [], []
        s = size
        for _ in range(a.rounds):
            t_fresh.append(one_save(fresh, src, s))
            t_pooled.append(one_save(pooled, src, s))
            s = int(s * 1.003)
        f, p = statistics.median(t_fresh), statistics.median(t_pooled)
        print(f"| {mib:,.0f} MiB | {f:,.1f} | {p:,.1f} | {f / p:.1f}x | {pooled.allocated} / {pooled.reused} |", flush=True)
        del src
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
