"""Load (issue 13): 50 clients at once and one flooding client, on loopback, bounded.

Runs ``benchmarks/load.py --json`` (its own sidecar process over the one-NPC world): every
request is answered (a turn or ``busy``), the flooder is held to its per-connection bound and
cannot starve the others, and the sidecar's memory stays bounded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fifty_clients_and_a_flood_are_all_answered_and_bounded():
    out = subprocess.run([sys.executable, "benchmarks/load.py", "--json", "--clients", "50", "--flood", "2000", "--timeout", "400"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    fig = json.loads(out.stdout.strip().splitlines()[-1])
    print("\nLOAD", json.dumps(fig))
    assert fig["sidecar_alive"]
    assert fig["outcomes"] == {"done": 50}, fig["outcomes"]  # nobody starved, nobody refused (50 <= max_queued)
    flood = fig["flood_replies"]
    assert flood.get("busy", 0) >= 2000 - 8 - 100, flood  # at most max_queued_per_client (8) admitted at a time
    assert fig["peak_rss_mib"] < 1500, fig["peak_rss_mib"]
