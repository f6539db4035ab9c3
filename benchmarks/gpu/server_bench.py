"""llama-server anchor: N concurrent /completion requests against a running `llama-server -np N`.

Each request: a distinct prompt of ~P tokens, ``n_predict`` tokens with ``ignore_eos`` (fixed
length), temperature 0, no prompt cache reuse. Aggregate decode tok/s = all predicted tokens /
the longest request's decode time (the server's own ``timings``); also wall-clock tok/s.

    python server_bench.py --port 8099 --conc 1,8 --n-predict 128 --json out.json
"""
from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.request

WORDS = "the harbor town of cinderfen sits where the black river meets the sea and its docks are run by the lantern guild".split()


def one(port: int, i: int, n_predict: int, prompt_words: int, out: list) -> None:
    prompt = f"Request {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(prompt_words))
    body = json.dumps({"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "temperature": 0.0, "cache_prompt": False}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        d = json.loads(r.read())
    out.append(dict(wall_s=time.perf_counter() - t0, **d.get("timings", {})))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--conc", default="1,8")
    ap.add_argument("--n-predict", type=int, default=128)
    ap.add_argument("--prompt-words", type=int, default=200)
    ap.add_argument("--json")
    a = ap.parse_args()
    for _ in range(600):  # wait for the server
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{a.port}/health", timeout=2).read()
            break
        except Exception:  # noqa: BLE001
            time.sleep(1)
    one(a.port, 999, 8, a.prompt_words, [])  # warm-up
    rows = []
    print("| concurrent | predicted tokens | wall s | wall tok/s | aggregate decode tok/s (server timings) | per-stream decode tok/s | prompt ms p50 |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for c in [int(x) for x in a.conc.split(",")]:
        out: list = []
        th = [threading.Thread(target=one, args=(a.port, i, a.n_predict, a.prompt_words, out)) for i in range(c)]
        t0 = time.perf_counter()
        for t in th:
            t.start()
        for t in th:
            t.join()
        wall = time.perf_counter() - t0
        n = sum(int(o.get("predicted_n", 0)) for o in out)
        dec = max(o.get("predicted_ms", 0) for o in out) / 1000
        per = sum(o.get("predicted_per_second", 0) for o in out) / len(out)
        pms = sorted(o.get("prompt_ms", 0) for o in out)[len(out) // 2]
        r = dict(concurrent=c, tokens=n, wall_s=round(wall, 3), wall_tok_s=round(n / wall, 1), agg_decode_tok_s=round(n / dec, 1) if dec else 0,
                 per_stream_tok_s=round(per, 1), prompt_ms_p50=round(pms, 1))
        rows.append(r)
        print(f"| {c} | {n} | {wall:.2f} | {r['wall_tok_s']} | {r['agg_decode_tok_s']} | {r['per_stream_tok_s']} | {r['prompt_ms_p50']} |", flush=True)
    if a.json:
        open(a.json, "w").write(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
