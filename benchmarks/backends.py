"""Quests/min of the batch: in process vs 1 vs 2 OpenAI-compatible endpoints, same specs, one run.

    .venv/bin/python benchmarks/backends.py                 # 4 sample quests, SmolLM2, 1 thread per model
    .venv/bin/python benchmarks/backends.py --quests 8 --max-chars 60

Starts two ``python -m llama_cpp.server`` processes on loopback (the bundled SmolLM2, 1 thread
each, concurrency 1) and runs the same specs three times into fresh folders (``--force``):

- in process: ``narrative batch`` as before (`narrative.batch.runner.run_batch`, 1 thread);
- 1 endpoint: `narrative.batch.fanout.run_fanout` on server A;
- 2 endpoints: `run_fanout` on servers A and B.

Every row generates the same items with the same seeds. On one machine the endpoints share
its cores: 2 endpoints help only while there are idle cores (a cluster's nodes each bring
their own). Absolute numbers depend on the machine's load; compare rows of one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quests", type=int, default=4)
    ap.add_argument("--max-chars", type=int, default=24)
    ap.add_argument("--lore-budget", type=int, default=100)
    args = ap.parse_args()

    from lore.loader import load_catalog
    from narrative.batch.fanout import run_fanout
    from narrative.batch.generator import BatchOptions
    from narrative.batch.runner import run_batch
    from narrative.batch.spec import load_specs
    from narrative.settings import EndpointSettings, ModelSettings
    from tests.narrative.openai_server import start_servers

    quests, lore = ROOT / "samples" / "quests", ROOT / "samples" / "lore"
    only = sorted(sf.spec.id for sf in load_specs(quests)[0])[: args.quests]
    entries = load_catalog(lore)
    opts = BatchOptions(max_chars=args.max_chars, max_tokens=300, retries=1, retry_on_findings=False, lore_budget=args.lore_budget)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        servers = start_servers(2, tmp)
        try:
            a, b = servers
            runs = [
                ("in process (llama.cpp, 1 thread)", None),
                ("1 endpoint (llama_cpp.server A)", [a.url]),
                ("2 endpoints (A + B)", [a.url, b.url]),
            ]
            for label, urls in runs:
                out = tmp / label.split()[0]
                t0 = time.perf_counter()
                if urls is None:
                    ms = ModelSettings(n_threads=1, n_seq_max=1)
                    s = run_batch(quests, out, ms, opts, entries, force=True, only=only, progress=False)
                else:
                    ms = ModelSettings(backend="openai", endpoints=[EndpointSettings(url=u) for u in urls])
                    s = run_fanout(quests, out, ms, opts, entries, force=True, only=only, progress=False)
                wall = time.perf_counter() - t0
                rows.append((label, s.generated, s.failed, s.completion_tokens, wall, 60 * s.generated / wall))
                print(f"{label}: {s.line()}", file=sys.stderr)
        finally:
            for srv in servers:
                srv.stop()
    print(f"\n{len(only)} quests ({', '.join(only)}), --max-chars {args.max_chars}, SmolLM2-135M Q4_1, 1 thread per model\n")
    print("| backend | generated | failed | completion tokens | wall s | quests/min |")
    print("|---|---|---|---|---|---|")
    for label, gen, failed, tok, wall, qpm in rows:
        print(f"| {label} | {gen} | {failed} | {tok} | {wall:.1f} | {qpm:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
