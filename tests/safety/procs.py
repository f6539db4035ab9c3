"""Start and kill real sidecar processes (`tests.safety.sidecar_proc`) for the fault matrix and the fuzzer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class SidecarProcess:
    """One ``python -m tests.safety.sidecar_proc`` child; `endpoint` once it serves."""

    def __init__(self, state_dir: Path, *, save_every_s: float = 0.0, **settings) -> None:
        self.state_dir = Path(state_dir)
        self.endpoint_file = self.state_dir / f"endpoint-{time.monotonic_ns()}.json"
        cmd = [sys.executable, "-m", "tests.safety.sidecar_proc", "--state-dir", str(self.state_dir),
               "--endpoint-file", str(self.endpoint_file), "--save-every-s", str(save_every_s)]
        for k, v in settings.items():
            cmd += ["--setting", f"{k}={json.dumps(v)}"]
        self.log = open(self.state_dir / f"sidecar-{time.monotonic_ns()}.log", "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = self._wait_endpoint()

    def _wait_endpoint(self, timeout_s: float = 180.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.endpoint_file.is_file():
                return json.loads(self.endpoint_file.read_text())["endpoint"]
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}: {self.output()}")
            time.sleep(0.1)
        raise RuntimeError("sidecar did not bind in time")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text()[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.log.close()
        return self.proc.returncode
