"""Soak test (opt-in, not in CI): mixed traffic on loopback for a long time, memory and latency sampled every minute.

    .venv/bin/python benchmarks/soak.py                   # one hour, own sidecar (one-NPC test world)
    .venv/bin/python benchmarks/soak.py --minutes 5       # a short run
    .venv/bin/python benchmarks/soak.py --endpoint tcp://127.0.0.1:5555 --npc odile-brask

Traffic, in a loop: a few clients taking turns (new and returning sessions), pings, lore
queries, garbage frames, a client that disconnects mid-stream, a burst that gets ``busy``.
Every minute it prints one row: minute, turns done, p50/p99 TTFT of that minute (ms),
errors by code, the sidecar's RSS (MiB); at the end, the curve (RSS and p50 TTFT per minute).
A leak shows as RSS growing minute after minute; a queue problem as TTFT growing.
"""

from __future__ import annotations

import argparse
import random
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


class Minute:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ttft: list[float] = []
        self.turns = 0
        self.errors: dict[str, int] = {}

    def add(self, ttft: float | None, err: str | None) -> None:
        with self.lock:
            if err:
                self.errors[err] = self.errors.get(err, 0) + 1
            else:
                self.turns += 1
                if ttft is not None:
                    self.ttft.append(ttft * 1000)


def turn(sock: zmq.Socket, npc: str, session: str, rid: str, stat: "list[Minute]", leave_after: int | None = None) -> None:
    t0 = time.perf_counter()
    sock.send(p.encode(p.Say(id=rid, npc=npc, text=random.choice(["Hello.", "Any news?", "What do you sell?", "Goodbye."]), session=session, max_tokens=8)))
    ttft = None
    n = 0
    while sock.poll(120_000):
        m = p.decode(sock.recv())
        if m.id != rid:
            continue
        if m.type == "chunk":
            ttft = ttft or time.perf_counter() - t0
            n += 1
            if leave_after is not None and n >= leave_after:
                return
        elif m.type == "done":
            stat[-1].add(ttft, None)
            return
        elif m.type == "error":
            stat[-1].add(None, m.code)
            return
    stat[-1].add(None, "timeout")


def worker(endpoint: str, npc: str, k: int, stop: threading.Event, stat: "list[Minute]") -> None:
    ctx = zmq.Context.instance()
    n = 0
    while not stop.is_set():
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(endpoint)
        try:
            r = random.random()
            if r < 0.6:
                turn(s, npc, f"soak-{k}-{n % 5}", f"t{n}", stat)
            elif r < 0.7:
                turn(s, npc, f"soak-{k}-gone", f"t{n}", stat, leave_after=1)  # disconnect mid-stream
            elif r < 0.8:
                s.send(random.randbytes(random.randint(0, 64)))  # garbage
                s.poll(10_000) and s.recv()
            elif r < 0.9:
                for i in range(20):  # a burst: most get busy
                    s.send(p.encode(p.Say(id=f"b{i}", npc=npc, text="Quick!", max_tokens=2)))
                deadline = time.time() + 60
                while time.time() < deadline and s.poll(5000):
                    m = p.decode(s.recv())
                    if m.type == "error":
                        stat[-1].add(None, m.code)
            else:
                s.send(p.encode(p.Ping(id="p")))
                s.poll(10_000) and s.recv()
        finally:
            s.close(linger=0)
        n += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--endpoint")
    ap.add_argument("--npc", default="mira")
    args = ap.parse_args()
    import psutil

    sc = None
    endpoint, proc = args.endpoint, None
    if endpoint is None:
        from tests.safety.procs import SidecarProcess

        sc = SidecarProcess(Path(tempfile.mkdtemp(prefix="narrative-soak-")))
        endpoint, proc = sc.endpoint, psutil.Process(sc.proc.pid)
    stat = [Minute()]
    stop = threading.Event()
    threads = [threading.Thread(target=worker, args=(endpoint, args.npc, k, stop, stat), daemon=True) for k in range(args.clients)]
    for t in threads:
        t.start()
    curve = []
    print(f"{'min':>4} {'turns':>6} {'p50 ms':>8} {'p99 ms':>8} {'RSS MiB':>8}  errors")
    try:
        t_end = time.time() + args.minutes * 60
        minute = 0
        while time.time() < t_end:
            time.sleep(min(60, max(0, t_end - time.time())))
            minute += 1
            m, stat[-1:] = stat[-1], [Minute()]
            rss = proc.memory_info().rss / 2**20 if proc else float("nan")
            xs = sorted(m.ttft)
            p50 = statistics.median(xs) if xs else float("nan")
            p99 = xs[int(0.99 * (len(xs) - 1))] if xs else float("nan")
            curve.append((minute, rss, p50))
            print(f"{minute:>4} {m.turns:>6} {p50:>8.0f} {p99:>8.0f} {rss:>8.1f}  {m.errors}", flush=True)
            if sc is not None and not sc.alive():
                print("the sidecar died:\n" + sc.output())
                return 1
    finally:
        stop.set()
        for t in threads:
            t.join(130)
        if sc is not None:
            sc.stop()
    print("\ncurve (minute: RSS MiB, p50 TTFT ms):")
    for minute, rss, p50 in curve:
        print(f"  {minute:>3}: {rss:8.1f} MiB  {p50:8.0f} ms  " + "#" * int(rss / 20))
    return 0


if __name__ == "__main__":
    sys.exit(main())
