"""``narrative demo``: the product end to end on the bundled sample world.

1. index ``samples/lore`` into the state dir (only changed files are re-embedded);
2. start ``narrative serve`` as a child process (a real sidecar on ZeroMQ);
3. a scripted client talks to two NPCs, three turns each, printing each line as
   it streams and one line of figures per turn (TTFT, tokens/s, lore used); the
   first NPC has game actions and an ``emotion`` field declared and hears a game
   event before the second line (its actions and fields are printed);
4. stop the sidecar;
5. a build-time batch run: quest text for the first ``--batch-quests`` specs in
   ``samples/quests`` (``narrative batch``: incremental, so a rerun skips them).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPT: dict[str, list[str]] = {
    "odile-brask": [
        "Evening. I'm new in Cinderfen. What's good here?",
        "I heard a Compact barge went missing in the Sedge Maze. Know anything?",
        "Who would you hire as a guide through the Maze?",
    ],
    "hale-corrow": [
        "Captain, what do the Ashwardens actually do?",
        "Is it true Vent Nine went cold?",
        "What would happen if someone jammed the sluices?",
    ],
}


ACTIONS = [  # what the first NPC may do (PROTOCOL.md "Game events, state and NPC actions")
    {"name": "give_item", "description": "Hand the player something from behind the bar.",
     "parameters": {"type": "object", "properties": {"item": {"type": "string", "enum": ["ale", "room key", "bluewick oil"]}},
                    "required": ["item"]}},
    {"name": "open_shop", "description": "Show the player what the inn sells.", "parameters": {"type": "object", "properties": {}}},
]
FIELDS = {"emotion": {"enum": ["neutral", "warm", "wary", "amused"]}}
EVENT = "The player put five silver marks on the bar."


def _wait_ready(client, proc: subprocess.Popen, timeout_s: float):
    from bridge.client import SidecarTimeout, new_id
    from bridge.protocol import Hello

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited with code {proc.returncode} before it was ready (see its log above)")
        try:
            return client.request(Hello(id=new_id(), client="demo"), timeout_s=2)
        except SidecarTimeout:
            continue
    raise RuntimeError(f"the sidecar was not ready after {timeout_s:.0f} s")


def run_demo(args: argparse.Namespace) -> int:
    from app.runtime import open_index
    from app.settings import load_settings
    from bridge.client import SidecarClient, summarize_done

    settings = load_settings(getattr(args, "config", None))
    state_dir = args.state_dir or settings.state_dir
    settings.state_dir = state_dir
    print(f"== 1. indexing {args.lore} into {state_dir}", flush=True)
    t0 = time.perf_counter()
    index, embedder = open_index(settings)
    report = index.sync(args.lore, progress=True)
    for problem in report.problems:
        print(f"   {problem}")
    print(f"   {report.summary()} ({len(index.entries)} entries, {len(index.npcs())} NPCs)")
    del index, embedder

    print(f"== 2. starting the sidecar on {args.endpoint}", flush=True)
    cmd = [sys.executable, "-m", "app", "serve", "--endpoint", args.endpoint, "--lore", str(args.lore), "--state-dir", str(state_dir)]
    if getattr(args, "config", None):
        cmd += ["--config", str(args.config)]
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with SidecarClient(args.endpoint, timeout_s=300) as client:
            ready = _wait_ready(client, proc, 300)
            print(f"   ready: {ready.server}, models {ready.models}, {len(ready.npcs)} NPCs, n_ctx {ready.limits['n_ctx']}")
            npcs = args.npcs or list(SCRIPT)
            print("== 3. conversations", flush=True)
            for n, npc in enumerate(npcs):
                lines = SCRIPT.get(npc, ["Hello. Who are you?", "What do you do here?", "What worries you these days?"])
                session = f"demo-{time.time_ns()}"
                print(f"\n--- {npc} ---")
                if n == 0:
                    client.declare(ACTIONS, fields=FIELDS, npc=npc, session=session)
                    print(f"   (declared for {npc}: {', '.join(a['name'] for a in ACTIONS)}; field emotion)")
                for i, line in enumerate(lines):
                    if n == 0 and i == 1:
                        client.event(EVENT, npc=npc, session=session)
                        print(f"   (game event: {EVENT})")
                    print(f"player> {line}")
                    print(f"{npc}> ", end="", flush=True)
                    for msg in client.say(npc, line, session=session, seed=7):
                        if msg.type == "chunk":
                            print(msg.text, end="", flush=True)
                        elif msg.type == "action":
                            print(f"\n   [action {msg.name} {msg.args}]", end="")
                        else:
                            fields = f", fields {msg.fields}" if msg.fields else ""
                            print(f"\n   [{summarize_done(msg)}{fields}]")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    if not getattr(args, "no_batch", False):
        out = Path("build/narrative")
        print(f"\n== 4. build-time batch: samples/quests -> {out}", flush=True)
        cmd = [sys.executable, "-m", "app", "batch", "samples/quests", "--out", str(out), "--lore", str(args.lore), "--state-dir", str(state_dir)]
        specs = sorted(p.stem for p in Path("samples/quests").glob("*.yaml"))
        if args.batch_quests and args.batch_quests < len(specs):
            # grammar-constrained JSON on 2 CPU cores takes ~13 s per quest (benchmarks/batch.py, quiet machine): the demo does a few;
            # `narrative batch samples/quests --out build/narrative` does the rest, skipping these
            print(f"   {args.batch_quests} of {len(specs)} specs (--batch-quests 0 for all)")
            cmd += ["--only", *specs[: args.batch_quests]]
        if getattr(args, "config", None):
            cmd += ["--config", str(args.config)]
        rc = subprocess.call(cmd)
        if rc != 0:
            print(f"   batch exited with {rc}: see {out / 'report.md'}")
        quests = sorted((out / "quests").glob("*.json"))
        if quests:
            print(f"   {len(quests)} quest files; the first one, {quests[0]}:")
            print("   " + quests[0].read_text(encoding="utf-8")[:1200].replace("\n", "\n   "))
    print(f"\n== done in {time.perf_counter() - t0:.0f} s")
    return 0
