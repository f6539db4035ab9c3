"""Real OpenAI-compatible servers for the backend tests: ``python -m llama_cpp.server`` (llama-cpp-python's
server, its ``[server]`` extra) on a loopback port with the bundled SmolLM2 GGUF. No mocks.

llama.cpp's own ``llama-server`` is not built here (it would take ~15 min of CPU on the
team's 2-core machines); the client speaks the API both share (see README, "Backends").
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaCppServer:
    """One ``python -m llama_cpp.server`` process on 127.0.0.1 (1 thread; the model id is ``smollm2``).

    ``url`` is the OpenAI base URL (``http://127.0.0.1:PORT/v1``). `kill` sends SIGKILL (a crashed node).
    """

    def __init__(self, log_dir: Path, n_ctx: int = 4096) -> None:
        from narrative.llm import resolve_model_path

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_dir / f"llama_cpp_server_{self.port}.log"
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(resolve_model_path("bundled:smollm2")),
            "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(n_ctx), "--n_threads", "1", "--n_threads_batch", "1",
        ]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 180.0) -> "LlamaCppServer":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"llama_cpp.server on port {self.port} not ready after {timeout_s} s")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def start_servers(n: int, log_dir: Path) -> list[LlamaCppServer]:
    """Start `n` servers at once (they load in parallel) and wait for all of them."""
    servers = [LlamaCppServer(log_dir) for _ in range(n)]
    try:
        return [s.wait_ready() for s in servers]
    except Exception:
        for s in servers:
            s.stop()
        raise
