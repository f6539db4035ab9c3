"""Load on one sidecar: N clients at once (one turn each) plus one client flooding `say`.

    .venv/bin/python benchmarks/load.py                      # 50 clients + a 2,000-frame flood, own sidecar
    .venv/bin/python benchmarks/load.py --endpoint tcp://127.0.0.1:5555 --npc odile-brask   # a running sidecar
    .venv/bin/python benchmarks/load.py --json               # one JSON line of figures (tests/safety/test_load.py)

Without ``--endpoint`` it starts its own sidecar process over the one-NPC world of
``tests/safety/world.py`` (real SmolLM2, real dialogue engine, fake lore retriever) with the
default admission bounds, and samples that process's RSS (psutil) every 100 ms.

Prints: every request's outcome (done / busy / other error / no answer), p50 and p99 TTFT
(request sent -> first chunk, queueing included), the longest wait (sent -> done), the
flooder's busy count, and the sidecar's peak RSS. Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

from bridge import protocol as p  # noqa: E402


def one_turn(endpoint: str, npc: str, i: int, max_tokens: int, timeout_s: float, out: list) -> None:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    rid = f"c{i}"
    t0 = time.perf_counter()
    s.send(p.encode(p.Say(id=rid, npc=npc, text=f"Hello, I am traveller {i}. Any work?", max_tokens=max_tokens, seed=i, session=f"load-{i}")))
    ttft = None
    outcome = "no_answer"
    deadline = t0 + timeout_s
    while time.perf_counter() < deadline:
        if not s.poll(int((deadline - time.perf_counter()) * 1000) + 1):
            break
        msg = p.decode(s.recv())
        if msg.type == "chunk" and ttft is None:
            ttft = time.perf_counter() - t0
        elif msg.type == "done":
            outcome = "done"
            break
        elif msg.type == "error":
            outcome = msg.code
            break
    out.append({"i": i, "outcome": outcome, "ttft_s": ttft, "wait_s": time.perf_counter() - t0})
    s.close(linger=0)


def flood(endpoint: str, npc: str, frames: int, seconds: float, result: dict) -> None:
    """One connection sending `frames` say requests as fast as it can, reading what comes back."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    counts: dict[str, int] = {}
    t_end = time.perf_counter() + seconds
    for i in range(frames):
        s.send(p.encode(p.Say(id=f"f{i}", npc=npc, text="Again!", max_tokens=4)))
        while s.poll(0):
            m = p.decode(s.recv())
            key = m.code if m.type == "error" else m.type
            counts[key] = counts.get(key, 0) + 1
    while time.perf_counter() < t_end:  # keep reading until the end of the run
        if s.poll(200):
            m = p.decode(s.recv())
            key = m.code if m.type == "error" else m.type
            counts[key] = counts.get(key, 0) + 1
        if result.get("stop"):
            break
    result["counts"] = counts
    s.close(linger=0)


def sample_rss(pid: int, stop: threading.Event, peak: list) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            peak[0] = max(peak[0], proc.memory_info().rss)
        except psutil.Error:
            return
        stop.wait(0.1)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def run(endpoint: str, npc: str, clients: int, flood_frames: int, max_tokens: int, timeout_s: float, pid: int | None) -> dict:
    peak = [0]
    stop = threading.Event()
    if pid is not None:
        threading.Thread(target=sample_rss, args=(pid, stop, peak), daemon=True).start()
    results: list = []
    fres: dict = {}
    t0 = time.perf_counter()
    ft = threading.Thread(target=flood, args=(endpoint, npc, flood_frames, timeout_s, fres), daemon=True)
    ft.start()
    time.sleep(0.2)  # the flood is in before the clients
    threads = [threading.Thread(target=one_turn, args=(endpoint, npc, i, max_tokens, timeout_s, results)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fres["stop"] = True
    ft.join(5)
    stop.set()
    ttfts = [r["ttft_s"] * 1000 for r in results if r["ttft_s"] is not None]
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r["outcome"]] = outcomes.get(r["outcome"], 0) + 1
    return {
        "clients": clients,
        "outcomes": outcomes,
        "ttft_p50_ms": round(statistics.median(ttfts), 1) if ttfts else None,
        "ttft_p99_ms": round(pct(ttfts, 0.99), 1) if ttfts else None,
        "longest_wait_ms": round(max(r["wait_s"] for r in results) * 1000, 1) if results else None,
        "flood_frames": flood_frames,
        "flood_replies": fres.get("counts", {}),
        "peak_rss_mib": round(peak[0] / 2**20, 1) if pid is not None else None,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoint", help="a running sidecar (default: start one over the one-NPC test world)")
    ap.add_argument("--npc", default="mira")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--flood", type=int, default=2000, help="say frames the flooding client sends")
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds each client waits at most")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sc = None
    pid = None
    endpoint = args.endpoint
    if endpoint is None:
        from tests.safety.procs import SidecarProcess

        sc = SidecarProcess(Path(tempfile.mkdtemp(prefix="narrative-load-")))
        endpoint, pid = sc.endpoint, sc.proc.pid
    try:
        fig = run(endpoint, args.npc, args.clients, args.flood, args.max_tokens, args.timeout, pid)
        if sc is not None:
            fig["sidecar_alive"] = sc.alive()
    finally:
        if sc is not None:
            sc.stop()
    if args.json:
        print(json.dumps(fig))
    else:
        for k, v in fig.items():
            print(f"{k:>16}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
