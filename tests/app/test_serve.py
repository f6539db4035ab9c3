"""`narrative serve` as a process: it prints the endpoint clients should use (the real port when bound to '*'),
answers there, and sends `shutdown` before it exits on SIGTERM. Real parts: the CLI, the bundled models, chromadb, ZeroMQ."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from bridge.client import SidecarClient
from tests.conftest import ROOT, SAMPLES

FILES = ["npcs/odile-brask.md", "places/cracked-bellows.md"]


def test_serve_prints_the_bound_endpoint_and_says_shutdown_on_sigterm(tmp_path):
    lore = tmp_path / "lore"
    for rel in FILES:
        (lore / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLES / rel, lore / rel)
    cmd = [sys.executable, "-m", "app", "serve", "--lore", str(lore), "--state-dir", str(tmp_path / "state"),
           "--endpoint", "tcp://127.0.0.1:*", "--no-watch"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        endpoint = None
        deadline = time.monotonic() + 600
        seen = []
        while endpoint is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"clients connect to: (tcp://127\.0\.0\.1:(\d+))", line)
            if m:
                endpoint = m.group(1)
        assert endpoint is not None, "no endpoint printed:\n" + "".join(seen)
        assert not endpoint.endswith(":*")
        with SidecarClient(endpoint, timeout_s=60) as c:
            assert c.hello("serve-test").npcs == ["odile-brask"]
            proc.send_signal(signal.SIGTERM)
            shutdown = []
            end = time.monotonic() + 30
            while not shutdown and time.monotonic() < end:
                shutdown = [e for e in c.events(timeout_s=0.5) if e.type == "shutdown"]
            assert shutdown and shutdown[0].reason == "stopping" and shutdown[0].message == "SIGTERM"
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
